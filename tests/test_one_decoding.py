"""One decoding from file to tensor: the image-folder datasets and predict see the same pixels.

Odd files a user has (an EXIF-rotated phone photo, a 16-bit scan, a CMYK print file, a palette PNG
with transparency) go through the evaluation dataset, the training dataset's loader, predict's
reader and ``from_pretrained(...).preprocess``; the tensors must be equal, not close.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sacvit
from deploy_helpers import save_tiny
from sacvit.data import build_dataset
from sacvit.data.preprocess import load_rgb, open_image, preprocess_for, to_rgb
from sacvit.deploy.predict import find_images, load_images, predict_files

SIZE = 32


def odd_files(folder: Path) -> dict[str, Path]:
    """The four odd files, written into ``folder``: name → path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    rgb[:, :10] = 255  # a bright left band: a rotation moves it
    files = {name: folder / name for name in ("rotated.jpg", "gray16.png", "cmyk.jpg", "palette.png")}
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise
    Image.fromarray(rgb).save(files["rotated.jpg"], exif=exif, quality=95)
    ramp = (np.linspace(0, 65535, 30 * 50).reshape(30, 50)).astype(np.uint16)  # 16-bit gray, full range
    Image.fromarray(ramp).save(files["gray16.png"])
    Image.fromarray(rgb).convert("CMYK").save(files["cmyk.jpg"])
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(files["palette.png"], transparency=0)
    return files


@pytest.fixture
def folder(tmp_path) -> tuple[Path, dict[str, dict[str, Path]]]:
    """``root/{train,val}/{a,b}/`` with the odd files in every class folder."""
    root = tmp_path / "data"
    made = {f"{split}/{c}": odd_files(root / split / c) for split in ("train", "val") for c in ("a", "b")}
    return root, made


def test_the_odd_files_are_what_they_claim(folder):
    _, made = folder
    files = made["val/a"]
    with Image.open(files["rotated.jpg"]) as im:
        assert im.getexif().get(0x0112) == 6 and im.size == (50, 30)
    with Image.open(files["gray16.png"]) as im:
        assert im.mode.startswith("I")
    with Image.open(files["cmyk.jpg"]) as im:
        assert im.mode == "CMYK"
    with Image.open(files["palette.png"]) as im:
        assert im.mode == "P" and "transparency" in im.info


def test_evaluation_dataset_tensor_equals_predicts(folder, tmp_path):
    root, _ = folder
    ckpt = save_tiny(tmp_path / "ckpt.safetensors", data="imagefolder")
    model = sacvit.from_pretrained(ckpt)
    pre = preprocess_for("imagefolder", SIZE)
    assert model.preprocess == pre
    ds = build_dataset("imagefolder", root, "test", SIZE)
    assert len(ds) == 8
    paths = [Path(p) for p, _ in ds.samples]
    served, ok, failed = load_images(paths, model.preprocess)  # what `sacvit predict` feeds the model
    assert not failed and ok == paths
    for i, path in enumerate(paths):
        x, _ = ds[i]
        assert torch.equal(x, served[i]), path.name
        assert torch.equal(x, pre.load(path)), path.name
        assert torch.equal(x, model.preprocess(open_image(path))), path.name


def test_holdout_and_calibration_splits_are_transformed_as_evaluation(folder):
    """--holdout 6: three validation and three calibration images, disjoint, none trained on."""
    root, _ = folder
    pre = preprocess_for("imagefolder", SIZE)
    splits = {s: build_dataset("imagefolder", root, s, SIZE, holdout=6) for s in ("train", "holdout", "calibration")}
    paths = {s: {p for p, _ in ds.samples} for s, ds in splits.items()}
    assert len(paths["holdout"]) == len(paths["calibration"]) == 3
    assert not (paths["holdout"] & paths["calibration"]) and not (paths["train"] & (paths["holdout"] | paths["calibration"]))
    for split in ("holdout", "calibration"):
        for (path, _), (x, _) in zip(splits[split].samples, splits[split]):
            assert torch.equal(x, pre.load(path)), path


def test_training_dataset_decodes_as_predict(folder):
    root, made = folder
    ds = build_dataset("imagefolder", root, "train", SIZE, holdout=1, is_training=True)
    for path, _ in ds.samples:
        mine, theirs = ds.loader(path), to_rgb(open_image(path))
        assert mine.mode == "RGB" and np.array_equal(np.asarray(mine), np.asarray(theirs)), path
    x, _ = ds[0]
    assert x.shape == (3, SIZE, SIZE)
    # upright: EXIF orientation 6 turns the 50×30 pixels into a 30×50 picture, bright band on top
    rotated = load_rgb(made["train/a"]["rotated.jpg"])
    assert rotated.size == (30, 50) and np.asarray(rotated)[:8].mean() > 240
    # 16-bit: scaled to 8 bits (mean ≈ 127.5), not clipped to white
    assert 120 < np.asarray(load_rgb(made["train/a"]["gray16.png"])).mean() < 135


def test_a_broken_link_is_skipped_with_a_warning_in_a_dataset_and_reported_by_predict(folder, tmp_path, capsys):
    root, _ = folder
    link = root / "val" / "a" / "gone.png"
    link.symlink_to(tmp_path / "nowhere.png")
    ds = build_dataset("imagefolder", root, "test", SIZE)
    assert len(ds) == 8 and [p for p, _ in ds.skipped] == [str(link)]
    err = capsys.readouterr().err
    assert f"skipping unreadable image {link}: broken symbolic link" in err
    assert f"skipped 1 unreadable image of 9 in {root / 'val'} (first: {link}" in err
    found = find_images([root / "val"])
    assert link in found and len(found) == 9
    ckpt = save_tiny(tmp_path / "ckpt.safetensors", data="imagefolder")
    results = {r.path: r for r in predict_files(sacvit.from_pretrained(ckpt), found)}
    assert "broken symbolic link" in results[str(link)].error
    assert sum(r.ok for r in results.values()) == 8

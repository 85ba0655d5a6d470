"""Using a trained SAC-ViT: preprocessing, from_pretrained, predict, calibrate, visualize (end to end)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_helpers import CLASSES, image_files, save_tiny, tiny_sacvit
from PIL import Image

import sacvit
from sacvit.cli import main
from sacvit.data import build_dataset
from sacvit.data.preprocess import Preprocess, open_image, preprocess_for
from sacvit.deploy import find_images, predict_files
from sacvit.io.checkpoint import CheckpointMeta, read_metadata, save_checkpoint, update_metadata
from sacvit.engine.evaluate import SAC_ONLY, collect
from sacvit.viz import figure5_size


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return image_files(tmp_path_factory.mktemp("images"))


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return save_tiny(tmp_path / "last.safetensors")


GOOD = ("rgb.png", "gray.png", "rgba.png", "palette.gif", "cmyk.jpg", "gray16.png", "photo.jpg")
BAD = ("truncated.jpg", "notes.jpg")


# ------------------------------------------------------------------ preprocessing
def test_gray_preprocessing_is_the_evaluation_tensor(tmp_path):
    ds = build_dataset("synthetic", split="test", img_size=32, length=3)
    pre = preprocess_for("synthetic", 32)
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(ds.images[i].numpy()).save(path)
        assert torch.equal(pre(open_image(path)), ds[i][0])


def test_rgb_preprocessing_is_the_imagefolder_tensor(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "val" / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "val" / c / "x.png")
    ds = build_dataset("imagefolder", tmp_path, "test", 32)
    pre = preprocess_for("imagefolder", 32)
    for (path, _), (x, _) in zip(ds.samples, ds):
        assert torch.equal(pre(open_image(path)), x)


def test_every_image_mode_reads_and_bad_files_say_why(files):
    pre = preprocess_for("synthetic", 32)
    for name in GOOD:
        x = pre(open_image(files[name]))
        assert x.shape == (3, 32, 32) and torch.isfinite(x).all() and x.std() > 0.1, name
    # 16-bit gray is scaled to 8 bits, not clipped: it matches the 8-bit version within a level
    eight = pre(Image.fromarray(np.asarray(open_image(files["gray16.png"]), dtype=np.uint16).__rshift__(8)
                                .astype(np.uint8)))
    assert (pre(open_image(files["gray16.png"])) - eight).abs().max() <= 1 / 127.5 + 1e-6
    for name in BAD:
        with pytest.raises(ValueError, match=f"cannot read image .*{name}"):
            open_image(files[name])
    with pytest.raises(ValueError, match="no such file"):
        open_image(files["rgb.png"].with_name("missing.png"))


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert open_image(tmp_path / "rot.jpg").size == (20, 40)


def test_preprocess_round_trips_through_metadata(ckpt):
    meta = read_metadata(ckpt)
    assert Preprocess.from_dict(meta.preprocess) == preprocess_for("synthetic", 32)


# ------------------------------------------------------------------ checkpoint metadata
def test_update_metadata_keeps_the_weights_bit_identical(ckpt, tmp_path):
    from safetensors.torch import load_file

    before = load_file(str(ckpt))
    meta = update_metadata(ckpt, threshold=0.42, calibration={"criterion": "test"})
    assert meta.threshold == 0.42 and meta.calibration == {"criterion": "test"}
    after = load_file(str(ckpt))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.safetensors"]  # no temporary left
    assert meta.preprocess == read_metadata(ckpt).preprocess
    with pytest.raises(ValueError, match="plain ViT .* no exit threshold"):
        plain = tmp_path / "plain.safetensors"
        save_checkpoint(plain, torch.nn.Linear(2, 2), CheckpointMeta(model_name="deit_demo_patch8_112",
                                                                     class_names=["a", "b"]))
        update_metadata(plain, threshold=0.5)


def test_from_pretrained_rebuilds_everything(ckpt):
    update_metadata(ckpt, threshold=0.61)
    pretrained = sacvit.from_pretrained(ckpt)
    model = pretrained.model
    ref = tiny_sacvit()
    assert not model.training and pretrained.threshold == model.sac_config.threshold == 0.61
    assert list(pretrained.class_names) == list(CLASSES) and pretrained.meta.path == str(ckpt)
    assert pretrained.preprocess == preprocess_for("synthetic", 32)
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert not hasattr(model, "class_names") and not hasattr(model, "checkpoint_meta")  # nothing ad hoc on the module
    own = ref.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------ predict
def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def test_predict_json_matches_model_predict_and_reports_bad_files(ckpt, files, capsys):
    folder = files["rgb.png"].parent
    rc, out, err = _run(capsys, "predict", folder, "--checkpoint", ckpt, "--json", "--batch-size", 3,
                        "--threshold", 0.5, "--top-k", 2)
    assert rc == 1
    records = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    assert set(records) == set(GOOD) | set(BAD)
    for name in BAD:
        assert "error" in records[name] and f"{name}: " in err
    assert "2 of 9 files could not be read" in err
    model = sacvit.from_pretrained(ckpt)
    x = torch.stack([model.preprocess(open_image(files[n])) for n in GOOD])
    pred = model.predict(x, 0.5)
    probs = pred.logits.softmax(-1)
    for i, name in enumerate(GOOD):
        r = records[name]
        assert r["stage"] == ("SAC" if pred.stage[i] else "EE") and r["threshold"] == 0.5
        assert r["top_k"][0]["index"] == int(probs[i].argmax()) and len(r["top_k"]) == 2
        assert r["top_k"][0]["prob"] == pytest.approx(float(probs[i].max()), abs=1e-6)
        assert r["gmacs"] == pytest.approx(float(pred.gmacs[i]))
        assert r["box_input"] == (pred.box[i].tolist() if pred.stage[i] else None)
        assert (r["box"] is None) == (r["box_input"] is None) and r["size"] is not None
    assert {r["stage"] for r in records.values() if "stage" in r} == {"EE", "SAC"}  # η = 0.5 splits them


def test_predict_table_and_exit_codes(ckpt, files, capsys, tmp_path):
    rc, out, err = _run(capsys, "predict", files["rgb.png"], files["gray.png"], "--checkpoint", ckpt)
    lines = out.splitlines()
    assert rc == 0 and err == "" and len(lines) == 5 and "η = 0.76" in lines[0] and "stage" in lines[1]
    assert len({len(line.rstrip()) for line in lines[1:3]}) == 1  # header and rule aligned
    assert _run(capsys, "predict", files["notes.jpg"], "--checkpoint", ckpt)[0] == 1
    junk = tmp_path / "junk.safetensors"
    junk.write_text("no")
    for argv in (["--checkpoint", junk], ["--checkpoint", tmp_path / "missing.safetensors"],
                 ["--checkpoint", ckpt, "--top-k", 0], ["--checkpoint", ckpt, "--batch-size", 0]):
        rc, _, err = _run(capsys, "predict", files["rgb.png"], *argv)
        assert rc == 2 and err.startswith("sacvit predict: error:"), err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _run(capsys, "predict", empty, "--checkpoint", ckpt)
    assert rc == 2 and "no image files" in err


def test_find_images_recurses_and_keeps_missing_paths(files, tmp_path):
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    (sub / "x.png").write_bytes(files["rgb.png"].read_bytes())
    (sub / "readme.txt").write_text("skip me")
    found = find_images([tmp_path / "a", tmp_path / "missing.jpg"])
    assert found == [sub / "x.png", tmp_path / "missing.jpg"]
    model = sacvit.from_pretrained(save_tiny(tmp_path / "c.safetensors"))
    results = list(predict_files(model, found))
    assert results[0].ok and not results[1].ok and "no such file" in results[1].error


# ------------------------------------------------------------------ calibrate
def test_calibration_meets_its_budget_and_predict_uses_it(ckpt, files, capsys):
    model = sacvit.from_pretrained(ckpt)
    data = build_dataset("synthetic", split="calibration", img_size=32)  # calibrate's default split
    records = collect(model.model, data, batch_size=32)
    ee, sac = float(records.gmacs_ee.mean()), float(records.gmacs_sac.mean())
    budget = ee + 0.4 * (sac - ee)
    result = sacvit.calibrate(ckpt, data="synthetic", budget_gmacs=budget)
    eta = read_metadata(ckpt).threshold
    assert eta == result.choice.threshold and read_metadata(ckpt).calibration["budget"] == {"budget_gmacs": budget}
    again = collect(sacvit.from_pretrained(ckpt).model, data, batch_size=32).row(eta)
    assert again["gmacs"] <= budget + 1e-9 and again["top1"] == pytest.approx(result.choice.top1)
    assert again["gmacs"] == pytest.approx(result.choice.gmacs)
    # predict's default is now the stored η
    rc, out, _ = _run(capsys, "predict", files["rgb.png"], "--checkpoint", ckpt, "--json")
    r = json.loads(out)
    assert rc == 0 and r["threshold"] == eta and (r["stage"] == "EE") == (r["ee_confidence"] >= eta)
    for kind, value, check in (("max_drop", 1.0, lambda row, sac_top1: row["top1"] >= sac_top1 - 1.0 - 1e-9),
                               ("exit_share", 0.7, lambda row, _: row["exit_share"] >= 0.7)):
        eta = sacvit.calibrate(ckpt, data="synthetic", rule="estimate", **{kind: value}).choice.threshold
        assert check(records.row(eta), records.row(SAC_ONLY)["top1"]), kind


KEYS = {"threshold", "certified", "rule", "max_drop", "delta", "images", "gmacs", "exit_share", "top1",
        "reference_top1", "bound"}


def test_certified_calibrate_json(ckpt, capsys):
    before = read_metadata(ckpt).threshold
    # ε = 0 against SAC only cannot be certified (the loss is 0 at SAC only, H0: drop ≥ 0 holds)
    rc, out, _ = _run(capsys, "calibrate", "--checkpoint", ckpt, "--data", "synthetic", "--max-drop", 0,
                      "--test", "exact", "--json")
    r = json.loads(out)
    assert rc == 2 and KEYS <= set(r) and r["certified"] is False and r["threshold"] is None
    assert r["rule"] == "certified" and r["bound"] >= 0 and read_metadata(ckpt).threshold == before
    # ε = 100 pt: everything is certified, the cheapest point (every image exits) is returned and stored
    rc, out, _ = _run(capsys, "calibrate", "--checkpoint", ckpt, "--data", "synthetic", "--max-drop", 100, "--json")
    r = json.loads(out)
    assert rc == 0 and r["certified"] is True and isinstance(r["threshold"], float) and r["exit_share"] == 1.0
    meta = read_metadata(ckpt)
    assert meta.threshold == r["threshold"] and meta.calibration["certified"] is True
    assert meta.calibration["delta"] == 0.05 and "probability" in meta.calibration["statement"]
    # label-free
    rc, out, _ = _run(capsys, "calibrate", "--checkpoint", ckpt, "--data", "synthetic", "--agreement",
                      "--max-drop", 100, "--json", "--dry-run")
    r = json.loads(out)
    assert rc == 0 and r["test"] == "agreement" and r["top1"] is None and r["certified"] is True
    # bad budgets are refused by the parser
    for bad in (("--max-drop", -3), ("--delta", 0), ("--delta", 1.5)):
        with pytest.raises(SystemExit) as e:
            _run(capsys, "calibrate", "--checkpoint", ckpt, *bad)
        assert e.value.code == 2


def test_calibrate_cli_and_an_impossible_budget(ckpt, capsys, tmp_path):
    rc, out, _ = _run(capsys, "calibrate", "--checkpoint", ckpt, "--data", "synthetic", "--exit-share", 0.5,
                      "--out", tmp_path / "cal")
    assert rc == 0 and "chosen: η =" in out and "stored in" in out
    assert (tmp_path / "cal" / "calibration.csv").is_file() and (tmp_path / "cal" / "calibration.png").is_file()
    eta = read_metadata(ckpt).threshold
    rc, _, _ = _run(capsys, "eval", "--checkpoint", ckpt, "--data", "synthetic", "--split", "holdout",
                    "--timing-batches", 0, "--out", tmp_path / "eval")
    thresholds = (tmp_path / "eval" / "results.csv").read_text()
    assert rc == 0 and f",{eta}," in thresholds  # eval sweeps the calibrated η by default
    before = ckpt.read_bytes()
    rc, _, err = _run(capsys, "calibrate", "--checkpoint", ckpt, "--data", "synthetic", "--budget-gmacs", 1e-6)
    assert rc == 2 and "no threshold meets" in err and ckpt.read_bytes() == before
    rc, out, _ = _run(capsys, "calibrate", "--checkpoint", ckpt, "--data", "synthetic", "--exit-share", 1.0,
                      "--dry-run")
    assert rc == 0 and "unchanged" in out and ckpt.read_bytes() == before


# ------------------------------------------------------------------ visualize
def test_visualize_writes_figure5_pngs(ckpt, files, capsys, tmp_path):
    out = tmp_path / "viz"
    rc, stdout, err = _run(capsys, "visualize", files["rgb.png"], files["gray.png"], files["notes.jpg"],
                           "--checkpoint", ckpt, "--out", out, "--threshold", 0.5)
    assert rc == 1 and "notes.jpg" in err
    assert sorted(p.name for p in out.iterdir()) == ["gray.png", "rgb.png"]
    for name in ("gray.png", "rgb.png"):
        img = np.asarray(Image.open(out / name).convert("RGB")).astype(np.float32)
        assert (img.shape[1], img.shape[0]) == figure5_size(1)
        assert img.std() > 20  # not blank
        colour = np.abs(img[..., 0] - img[..., 2]) > 40  # the heat map and the box are coloured
        assert colour.mean() > 0.05
    rc, _, _ = _run(capsys, "visualize", files["rgb.png"].parent, "--checkpoint", ckpt, "--out", out, "--grid")
    sheet = Image.open(out / "grid.png")
    assert rc == 1 and sheet.size == figure5_size(len(GOOD), per_row=2)


# ------------------------------------------------------------------ the one-line API
def test_classify_one_line(ckpt, files, tmp_path):
    from PIL import Image

    pretrained = sacvit.from_pretrained(ckpt)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (200, 90), "gray").save(wide)
    one = pretrained.classify(wide, threshold=SAC_ONLY)  # every image through SAC: a box
    assert one.label in pretrained.class_names and 0 < one.score <= 1 and one.stage == "sac"
    assert one.size == (200, 90) and one.path == str(wide)
    x0, y0, x1, y1 = one.box
    assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 90
    assert [c for c, _ in one.top_k][0] == one.label and len(one.top_k) == min(5, len(pretrained.class_names))
    many = pretrained.classify([files["rgb.png"], Image.open(files["gray.png"])], threshold=0.0)  # all exit
    assert [r.stage for r in many] == ["ee", "ee"] and all(r.box is None for r in many)
    with pytest.raises(ValueError, match="notes.jpg"):
        pretrained.classify(files["notes.jpg"])


def test_box_to_original_undoes_resize_and_crop():
    gray = preprocess_for("synthetic", 32)  # central square resized to 32
    assert gray.box_to_original((8, 8, 16, 16), (32, 32)) == (8, 8, 16, 16)
    assert gray.box_to_original((8, 8, 16, 16), (64, 64)) == (16, 16, 32, 32)
    assert gray.box_to_original((0, 0, 32, 32), (96, 64)) == (16, 0, 80, 64)  # the sides were cropped
    rgb = preprocess_for("imagefolder", 112)  # short side to 128, centre crop 112: 8 px off each side
    assert rgb.box_to_original((0, 0, 112, 112), (128, 128)) == (8, 8, 120, 120)
    assert rgb.box_to_original((0, 0, 112, 112), (256, 128)) == (72, 8, 184, 120)

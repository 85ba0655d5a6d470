"""Class names are compared by name wherever a checkpoint meets labelled data.

A renamed or reordered class folder must not silently shift every label: eval, calibrate and bench
with data refuse it (exit 2, one line naming the classes), so do train --resume and train --init
with a loaded head; --ignore-class-names is the explicit way to match by index.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sacvit.cli
from deploy_helpers import CLASSES, KW, NAME, save_tiny, tiny_sacvit
from sacvit.data import build_dataset, check_class_names
from sacvit.data.preprocess import preprocess_for
from sacvit.io.checkpoint import CheckpointMeta, save_checkpoint
from sacvit.engine.train import TrainConfig, train
from sacvit.engine.train_setup import build_model as _build_model


# ------------------------------------------------------------------ the one function
def _message(ckpt, data) -> str:
    with pytest.raises(ValueError) as info:
        check_class_names(ckpt, data, "ckpt vs data")
    text = str(info.value)
    assert "\n" not in text and text.startswith("class names differ, ckpt vs data: ")
    return text


def test_equal_names_pass():
    check_class_names(["a", "b"], ("a", "b"), "x")


def test_a_renamed_class_is_named():
    text = _message(["cat", "dog", "fox"], ["cat", "dogs", "fox"])
    assert "'dog' of the checkpoint is 'dogs' in the data (renamed?)" in text


def test_a_reordered_list_says_so():
    text = _message(["cat", "dog", "fox"], ["dog", "cat", "fox"])
    assert "same names in a different order" in text and "#0 'cat' vs 'dog'" in text


def test_missing_and_extra_names_and_counts():
    text = _message(["a", "b", "c"], ["a", "b"])
    assert "missing from the data: 'c'" in text and "(3 classes in the checkpoint, 2 in the data)" in text
    text = _message(["a", "b"], ["a", "x", "y"])
    assert "missing from the data: 'b'" in text and "not in the checkpoint: 'x', 'y'" in text
    long = _message([f"c{i}" for i in range(10)], [f"d{i}" for i in range(10)])
    assert "… and 6 more" in long


# ------------------------------------------------------------------ the commands
def _folder(root: Path, names: list[str], per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(root / split / name / f"{k}.png")
    return root


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return save_tiny(tmp_path / "ckpt.safetensors", data="imagefolder")


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = sacvit.cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def _eval(ckpt, data, tmp_path, *more):
    return ("eval", "--checkpoint", ckpt, "--data", "imagefolder", "--data-dir", data, "--thresholds", "0.5",
            "--timing-batches", 0, "--out", tmp_path / "eval", *more)


def test_eval_refuses_a_renamed_class_folder(ckpt, tmp_path, capsys):
    renamed = ["a-level-3" if c == "level-3" else c for c in CLASSES]  # sorts first: every label would shift
    data = _folder(tmp_path / "data", renamed)
    rc, out, err = _cli(capsys, *_eval(ckpt, data, tmp_path))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("sacvit eval: error: class names differ") and "'level-3'" in err and "'a-level-3'" in err
    assert "--ignore-class-names" in err and not (tmp_path / "eval").exists()
    rc, out, err = _cli(capsys, *_eval(ckpt, data, tmp_path, "--ignore-class-names"))
    assert rc == 0, err


def test_eval_refuses_the_same_classes_in_another_order(tmp_path, capsys):
    model = tiny_sacvit()
    ckpt = save_checkpoint(tmp_path / "swapped.safetensors", model, CheckpointMeta(
        model_name=NAME, model_kwargs=KW, sac_config=model.sac_config, class_names=[CLASSES[1], CLASSES[0], *CLASSES[2:]],
        epoch=1, preprocess=preprocess_for("imagefolder", 32).to_dict()))
    data = _folder(tmp_path / "data", CLASSES)
    rc, _, err = _cli(capsys, *_eval(ckpt, data, tmp_path))
    assert rc == 2 and "same names in a different order" in err and "'level-1' vs 'level-0'" in err


def test_calibrate_and_bench_refuse_a_renamed_class(ckpt, tmp_path, capsys):
    data = _folder(tmp_path / "data", [*CLASSES[:3], "level-9"])
    rc, _, err = _cli(capsys, "calibrate", "--checkpoint", ckpt, "--data", "imagefolder", "--data-dir", data,
                      "--exit-share", 0.5, "--dry-run")
    assert rc == 2 and "'level-3' of the checkpoint is 'level-9'" in err and err.startswith("sacvit calibrate: error")
    rc, _, err = _cli(capsys, "bench", "--checkpoint", ckpt, "--data", "imagefolder", "--data-dir", data,
                      "--methods", "deit,sacvit", "--batch", 2, "--repeats", 1, "--latency-repeats", 0,
                      "--out", tmp_path / "bench")
    assert rc == 2 and "'level-3' of the checkpoint is 'level-9'" in err


def _synthetic(names: list[str] | None = None):
    train_set = build_dataset("synthetic", split="train", img_size=32, length=32)
    val_set = build_dataset("synthetic", split="holdout", img_size=32, length=16)
    if names is not None:
        train_set.classes = val_set.classes = list(names)
    return train_set, val_set


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(model=NAME, model_kwargs={k: v for k, v in KW.items() if k != "num_classes"}, data="synthetic",
                epochs=1, batch_size=16, warmup_epochs=0.0, drop_path=0.0, sac={"window": 3, "gca_start": 1},
                out_dir=str(out), threads=1, ema=False, eval_every=0)
    return TrainConfig(**{**base, **kw})


def test_train_resume_refuses_renamed_classes(tmp_path):
    train(_cfg(tmp_path / "run"), *_synthetic())
    with pytest.raises(ValueError, match=r"--resume from .* 'level-2' of the checkpoint is 'level-two'"):
        train(_cfg(tmp_path / "run", epochs=2, resume=True),
              *_synthetic(["level-0", "level-1", "level-two", "level-3"]))


def test_train_init_with_a_loaded_head_refuses_renamed_classes(ckpt, tmp_path):
    cfg = _cfg(tmp_path / "run", init=str(ckpt))
    _build_model(cfg, 4, 32, list(CLASSES))  # the same names: fine
    with pytest.raises(ValueError, match=r"--init .*its head is loaded.* 'level-0' of the checkpoint is 'zero'"):
        _build_model(cfg, 4, 32, ["zero", *CLASSES[1:]])
    _build_model(cfg, 3, 32, ["x", "y", "z"])  # another class count: the head is not loaded, nothing to compare

"""A newcomer's mistakes get a message that says what to do; long commands say first what they do."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sacvit.cli
from deploy_helpers import save_tiny, tiny_sacvit
from sacvit.data import recorded_source
from sacvit.io.checkpoint import DataSpec, read_metadata, save_checkpoint

TINY_TRAIN = ["--model", "sacvit_demo_patch8_112", "--model-kwargs", '{"depth": 1, "embed_dim": 32}',
              "--data", "synthetic", "--img-size", "32", "--batch-size", "16", "--train-length", "32",
              "--val-length", "16", "--epochs", "1", "--threads", "1", "--no-cache"]


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = sacvit.cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def _usage_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as done:
        sacvit.cli.main([str(a) for a in argv])
    assert done.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return save_tiny(tmp_path / "ckpt.safetensors")  # synthetic data's classes and preprocessing


# ------------------------------------------------------------------ what to do next
def test_a_window_too_large_for_the_grid_names_the_fix(tmp_path, capsys):
    argv = [a if a != "32" else "64" for a in TINY_TRAIN]  # 64 px, patch 8: a 4×4 EE grid
    rc, _, err = _cli(capsys, "train", *argv, "--out-dir", tmp_path / "run")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "window=5 (the default) does not fit the 4×4 EE grid" in err
    assert """pass --sac '{"window": 4}' (the largest window that fits""" in err and "--img-size" in err
    rc, _, err = _cli(capsys, "train", *argv, "--sac", '{"window": 6, "alpha": 0.9}', "--out-dir", tmp_path / "r2")
    assert rc == 2 and "window=6 does not fit" in err and """--sac '{"window": 4, "alpha": 0.9}'""" in err


def test_no_adaptive_size_that_fits_names_the_largest(tmp_path, capsys):
    argv = [a if a != "32" else "64" for a in TINY_TRAIN]
    rc, _, err = _cli(capsys, "train", *argv, "--sac", '{"cluster_mode": "adaptive", "adaptive_sizes": [5, 6]}',
                      "--out-dir", tmp_path / "run")
    assert rc == 2 and "fits the 4×4 EE grid" in err and '"adaptive_sizes" of at most 4' in err


def _image_folder(root: Path) -> Path:
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / split / c / "0.png")
    return root


def test_an_image_folder_without_data_imagefolder_gets_the_hint(tmp_path, capsys):
    data = _image_folder(tmp_path / "pets")
    rc, _, err = _cli(capsys, "train", "--data-dir", data, "--out-dir", tmp_path / "run")
    assert rc == 2 and f"pass --data imagefolder --data-dir {data}" in err and "Fashion-MNIST" in err
    rc, _, err = _cli(capsys, "train", "--data-dir", data / "train", "--out-dir", tmp_path / "run")
    assert rc == 2 and f"pass --data imagefolder --data-dir {data} " in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _cli(capsys, "train", "--data-dir", empty, "--out-dir", tmp_path / "run")
    assert rc == 2 and "sudo apt-get install dataset-fashion-mnist" in err and "--data-dir DIR" in err
    assert "imagefolder" not in err


@pytest.mark.parametrize("argv, option", [
    (["bench", "--thresholds=-0.2"], "--thresholds"),
    (["demo", "--tolerance", "-1"], "--tolerance"),
    (["demo", "--tolerance", "nan"], "--tolerance"),
])
def test_negative_bench_thresholds_and_demo_tolerance_are_usage_errors(argv, option, capsys):
    err = _usage_error(capsys, *argv)
    assert f"argument {option}: " in err and "must be" in err


def test_a_lower_bound_alone_reads_as_one(capsys):
    assert "values must be ≥ 0, got '-0.2'" in _usage_error(capsys, "bench", "--thresholds=-0.2")


# ------------------------------------------------------------------ what a run is about to do
def test_eval_says_what_it_evaluates_and_heads_the_table(ckpt, tmp_path, capsys):
    rc, out, _ = _cli(capsys, "eval", "--checkpoint", ckpt, "--data", "synthetic", "--length", 8,
                      "--thresholds", "0.5", "--timing-batches", 0, "--device", "cpu", "--out", tmp_path / "eval")
    assert rc == 0
    first, second, header = out.splitlines()[:3]
    assert first == f"eval: {ckpt} (sacvit_demo_patch8_112, 4 classes, η = 0.76 (not calibrated: the SACConfig default))"
    assert second.strip() == "on synthetic (test split): 8 images, 1 threshold, device cpu"
    assert header == "split: test, 8 images of synthetic, checkpoint η = 0.76 (not calibrated: the SACConfig default)"


def test_eval_heads_a_calibrated_eta_as_calibrated(ckpt, tmp_path, capsys):
    rc, _, err = _cli(capsys, "calibrate", "--checkpoint", ckpt, "--data", "synthetic", "--length", 16,
                      "--exit-share", 0.5, "--device", "cpu")
    assert rc == 0, err
    eta = read_metadata(ckpt).threshold
    rc, out, _ = _cli(capsys, "eval", "--checkpoint", ckpt, "--data", "synthetic", "--length", 8,
                      "--thresholds", "0.5", "--timing-batches", 0, "--device", "cpu", "--out", tmp_path / "eval")
    assert rc == 0
    assert out.splitlines()[2] == f"split: test, 8 images of synthetic, checkpoint η = {eta:.4g} (calibrated)"


def test_eval_defaults_to_the_checkpoints_training_data(tmp_path, capsys):
    model = tiny_sacvit()
    ckpt = save_tiny(tmp_path / "ckpt.safetensors", model)
    meta = read_metadata(ckpt)
    save_checkpoint(ckpt, model, meta.replace(data=DataSpec(name="synthetic", seed=3, image_size=32)))
    rc, out, err = _cli(capsys, "eval", "--checkpoint", ckpt, "--length", 8, "--thresholds", "0.5",
                        "--timing-batches", 0, "--device", "cpu", "--out", tmp_path / "eval")
    assert rc == 0, err  # not cluttered-fmnist (which would need the Fashion-MNIST files)
    assert "on synthetic (test split): 8 images" in out and "8 images of synthetic" in out


def test_the_recorded_data_fills_in_only_what_was_not_given():
    spec = DataSpec(name="imagefolder", folder="/data/pets", seed=7, holdout=100)
    assert recorded_source(spec) == ("imagefolder", "/data/pets", 7, 100)
    assert recorded_source(spec, data_dir="/other", seed=1) == ("imagefolder", "/other", 1, 100)
    assert recorded_source(spec, data="synthetic") == ("synthetic", None, 0, None)  # another dataset: its defaults
    assert recorded_source(None) == ("cluttered-fmnist", None, 0, None)


def test_calibrate_says_what_it_calibrates_first(ckpt, capsys):
    rc, out, err = _cli(capsys, "calibrate", "--checkpoint", ckpt, "--data", "synthetic", "--length", 16,
                        "--exit-share", 0.5, "--dry-run", "--device", "cpu")
    assert rc == 0, err
    first = out.splitlines()[0]
    assert first.startswith(f"calibrate: {ckpt} (sacvit_demo_patch8_112, 4 classes, η now 0.76) on synthetic")
    assert first.endswith("16 images; budget --exit-share 0.5; device cpu")
    rc, out, err = _cli(capsys, "calibrate", "--checkpoint", ckpt, "--data", "synthetic", "--length", 16,
                        "--dry-run", "--device", "cpu", "--json")
    assert rc in (0, 2) and out.startswith("{") and len(out.strip().splitlines()) == 1  # --json: nothing else


def test_train_says_what_it_trains_on_first(tmp_path, capsys):
    rc, out, _ = _cli(capsys, "train", *TINY_TRAIN, "--sac", '{"window": 2}', "--device", "cpu",
                      "--out-dir", tmp_path / "run")
    assert rc == 0
    first, second = out.splitlines()[:2]
    assert first == ("train: sacvit_demo_patch8_112 on synthetic: 32 training images, 16 validation images, 4 classes "
                     "(level-0, level-1, level-2, level-3)")
    assert second.strip() == (f"random initialisation (seed 0); device cpu; 1 epoch × 2 steps of 16; "
                              f"writing {tmp_path / 'run'}")

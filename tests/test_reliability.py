"""Reliability: nothing lost on a crash, no input takes training down without a clear message.

Every fault is injected for real: SIGKILL of a subprocess (and of one torchrun worker) at a step
drawn from a seed, damaged checkpoint files, a full disk while saving (the writer raises ENOSPC),
non-finite losses, unreadable images. Each run is compared with an uninterrupted one of the same
configuration: the final metrics, the step log and the weights must be bit-identical (one
process, CPU) — so the tests also catch any change of the training numerics by the checkpointing.
Everything runs on a 32-px, width-32, depth-2 model and 64 synthetic images (24 steps).
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sacvit.cli
from sacvit.config import ConfigTypeError, SACConfig
from sacvit.io.checkpoint import CheckpointError, load_checkpoint, read_metadata
from sacvit.engine.train import TrainConfig, train
from sacvit.engine.distributed import rng_state
from sacvit.io.checkpoint import sha256_file
from sacvit.io.train_state import Checkpointer, RankState, TrainState, load_latest, verify

ROOT = Path(__file__).resolve().parents[1]
SAC_NAME = "sacvit_demo_patch8_112"
KW = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2)
# drop-path, Mixup and CutMix draw from every RNG: a resume that restores one wrongly shows
BASE = dict(model=SAC_NAME, model_kwargs=KW, data="synthetic", train_length=64, val_length=32, epochs=3,
            batch_size=8, lr=2e-3, warmup_epochs=0.5, drop_path=0.1, mixup=0.8, cutmix=1.0,
            sac=dict(window=3, gca_start=1), select_after=0.5, log_every=1, threads=1, checkpoint_minutes=0.0)
TOTAL_STEPS = 24


def cfg(out: Path, **kw) -> TrainConfig:
    return TrainConfig(**{**BASE, "out_dir": str(out), **kw})


def cli_args(out: Path, **kw) -> list[str]:
    args = ["train"]
    for key, value in {**BASE, "out_dir": str(out), **kw}.items():
        if value is None:
            continue
        if isinstance(value, bool):
            args += [f"--{key.replace('_', '-')}"] if value else []
        else:
            args += [f"--{key.replace('_', '-')}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return args


def result(out: Path) -> dict:
    """What must not change: epoch records (less wall time), the step log, the deployed weights."""
    records = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("seconds")
    return {"metrics": records, "steps": (out / "steps.jsonl").read_text(),
            "weights": read_metadata(out / "last.safetensors").weights_sha256}


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def one_line_error(argv: list[str], capsys, code: int = 2) -> str:
    assert sacvit.cli.main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def wait_for_step(proc: subprocess.Popen, steps: Path, k: int, timeout: float = 120) -> None:
    """Poll ``steps.jsonl`` until it has ``k`` lines (the loop logs every step)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if steps.is_file() and steps.read_text().count("\n") >= k:
            return
        time.sleep(0.0005)
    raise AssertionError(f"the run never reached step {k} (exit code {proc.poll()})")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run, with no checkpoint but the epoch ends."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(cfg(out, checkpoint_every=0))
    return result(out)


# ------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("every", [dict(checkpoint_every=1), dict(checkpoint_minutes=1e-9)])
def test_mid_epoch_checkpoints_leave_training_unchanged(tmp_path, reference, every):
    out = tmp_path / "run"
    train(cfg(out, **every))  # a checkpoint after every step (by count, by time)
    assert result(out) == reference
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["latest", "step-000000023", "step-000000024"]  # the newest and the previous one
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000000024"


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    k = random.Random(10).randint(3, TOTAL_STEPS - 6)
    proc = subprocess.Popen([sys.executable, "-m", "sacvit.cli", *cli_args(out, checkpoint_every=2)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step(proc, out / "steps.jsonl", k)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    snap = load_latest(out)
    assert 0 < snap.state.step < TOTAL_STEPS  # killed mid-run; resumed from its last checkpoint
    train(cfg(out, checkpoint_every=2, resume=True))
    assert result(out) == reference


def _crash_after(monkeypatch, step: int) -> None:
    """Make the run stop (KeyboardInterrupt) right after committing the checkpoint of ``step``."""
    real = Checkpointer.save

    def save(self, *args, **kwargs):
        path = real(self, *args, **kwargs)
        if kwargs["step"] == step:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(Checkpointer, "save", save)


def _damage(folder: Path, how: str) -> None:
    if how == "truncated":
        data = (folder / "state.pt").read_bytes()
        (folder / "state.pt").write_bytes(data[: len(data) // 2])
    elif how == "bit-flip":
        data = bytearray((folder / "model.safetensors").read_bytes())
        data[-100] ^= 0x01
        (folder / "model.safetensors").write_bytes(bytes(data))
    elif how == "no-manifest":
        (folder / "manifest.json").unlink()


@pytest.mark.parametrize("how", ["truncated", "bit-flip", "no-manifest"])
def test_resume_falls_back_to_the_previous_good_checkpoint(tmp_path, reference, monkeypatch, capsys, how):
    out = tmp_path / "run"
    _crash_after(monkeypatch, 15)  # checkpoints at steps 5, 8 (epoch end), 10, 15
    with pytest.raises(KeyboardInterrupt):
        train(cfg(out, checkpoint_every=5))
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000000010", "step-000000015"]
    _damage(out / "checkpoints" / "step-000000015", how)
    with pytest.raises(CheckpointError):
        verify(out / "checkpoints" / "step-000000015")
    capsys.readouterr()
    train(cfg(out, checkpoint_every=5, resume=True))
    err = capsys.readouterr().err
    assert "refused checkpoint step-000000015" in err and "previous good one" in err and "step-000000010" in err
    assert result(out) == reference


def test_a_kill_between_commit_and_deploy_is_repaired_on_resume(tmp_path, reference, monkeypatch):
    out = tmp_path / "run"
    real, calls = Checkpointer._deploy, []

    def deploy(self, source):
        calls.append(source)
        if len(calls) == 3:  # the last epoch: committed, not yet copied to last.safetensors
            raise KeyboardInterrupt
        real(self, source)

    monkeypatch.setattr(Checkpointer, "_deploy", deploy)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(out))
    monkeypatch.undo()
    assert read_metadata(out / "last.safetensors").epoch == 2 and load_latest(out).epoch == 3
    train(cfg(out, resume=True))  # nothing left to train
    assert result(out) == reference


def test_every_checkpoint_damaged_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _crash_after(monkeypatch, 10)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(out, checkpoint_every=5))
    monkeypatch.undo()
    for folder in (out / "checkpoints").glob("step-*"):
        _damage(folder, "bit-flip")
    err = one_line_error(cli_args(out, checkpoint_every=5, resume=True), capsys)
    assert "no usable checkpoint" in err and "SHA-256" in err


def test_train_state_is_plain_values_and_a_malformed_one_is_named(tmp_path, capsys):
    rng = rng_state()
    state = TrainState(optimizer={"state": {}, "param_groups": []}, scheduler={"last_epoch": 3}, step=3, world_size=1,
                       history=[{"epoch": 1}], ranks=[RankState(rng, rng, torch.tensor(1.5, dtype=torch.float64))])
    torch.save(state.to_dict(), tmp_path / "state.pt")
    back = TrainState.from_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert (back.optimizer, back.scheduler, back.step, back.world_size, back.history, back.nonfinite, back.scaler) == \
        (state.optimizer, {"last_epoch": 3}, 3, 1, [{"epoch": 1}], 0, None)
    own = back.own(0, 1)
    assert torch.equal(own.loss_sum, torch.tensor(1.5, dtype=torch.float64)) and back.own(0, 2) is None
    assert torch.equal(own.rng["torch"], rng["torch"]) and torch.equal(own.epoch_rng["torch"], rng["torch"])
    for change, message in [({"format": "x"}, "not a sacvit training state"),
                            ({"step": "3"}, "'step' has type str, expected int"),
                            ({"world_size": 0}, "'world_size' is 0"), ({"ranks": []}, "0 'ranks' entries"),
                            ({"ranks": [{"rng": 1}]}, "'ranks' entry 0: 'rng' has type int"),
                            ({"history": [1]}, "history"),
                            ({"scaler": []}, "'scaler' has type list, expected dict or None")]:
        with pytest.raises(CheckpointError, match=message):
            TrainState.from_dict({**state.to_dict(), **change})
    # through the command: a consistent checkpoint (its manifest matches) whose state lacks a key
    out = tmp_path / "run"
    train(cfg(out, epochs=1))
    folder = next((out / "checkpoints").glob("step-*"))
    data = torch.load(folder / "state.pt", weights_only=True)
    del data["history"]
    torch.save(data, folder / "state.pt")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["state.pt"] = {"bytes": (folder / "state.pt").stat().st_size,
                                     "sha256": sha256_file(folder / "state.pt")}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    err = one_line_error(cli_args(out, epochs=2, resume=True), capsys)
    assert "malformed training state: no 'history'" in err and str(folder / "state.pt") in err


def _write_past_a_file_size_limit(real, obj, path, *args, **kwargs):
    """Run the real writer while the process may write at most 100 bytes per file: it fails with a real I/O
    error, raised as the writer's own exception type (RuntimeError from torch.save, SafetensorError)."""
    import resource
    import signal

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, limits[1]))
    try:
        return real(obj, path, *args, **kwargs)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("fault", ["enospc", "real-writer"])
@pytest.mark.parametrize("writer", ["torch.save", "safetensors"])
def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, reference, monkeypatch, capsys, writer, fault):
    out = tmp_path / "run"
    calls = []

    def full_disk(real):
        def write(obj, path, *args, **kwargs):
            calls.append(path)
            if len(calls) > (3 if writer == "torch.save" else 6):  # the 4th checkpoint's (step 15) first write
                if fault == "real-writer":
                    return _write_past_a_file_size_limit(real, obj, path, *args, **kwargs)
                Path(path).write_bytes(b"\0" * 100)  # a partial file, as a full disk leaves it
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(obj, path, *args, **kwargs)
        return write

    if writer == "torch.save":
        monkeypatch.setattr(torch, "save", full_disk(torch.save))
    else:
        import safetensors.torch

        monkeypatch.setattr(safetensors.torch, "save_file", full_disk(safetensors.torch.save_file))
    err = one_line_error(cli_args(out, checkpoint_every=5), capsys, code=1)
    monkeypatch.undo()
    assert ("No space left on device" if fault == "enospc" else "cannot write checkpoint") in err
    assert "step-000000010 is intact" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000000008", "step-000000010"]
    assert verify(out / "checkpoints" / "step-000000010")["step"] == 10
    train(cfg(out, checkpoint_every=5, resume=True))
    assert result(out) == reference


def test_a_tampered_weights_file_is_refused_by_every_command(tmp_path, capsys):
    out = tmp_path / "run"
    train(cfg(out, epochs=1, log_every=0))
    path = out / "last.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x40  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)
    assert "SHA-256" in one_line_error(["eval", "--checkpoint", str(path), "--data", "synthetic",
                                        "--out", str(tmp_path / "eval")], capsys)
    assert "SHA-256" in one_line_error(["bench", "--checkpoint", str(path), "--out", str(tmp_path / "b")], capsys)
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 40), (120, 30, 200)).save(image)
    for argv in (["predict", str(image)], ["visualize", str(image), "--out", str(tmp_path / "viz")],
                 ["calibrate", "--data", "synthetic", "--exit-share", "0.5"], ["export", "--out", str(tmp_path / "onnx")]):
        assert "SHA-256" in one_line_error([*argv, "--checkpoint", str(path)], capsys), argv
    path.write_bytes(bytes(data[: len(data) // 3]))
    assert str(path) in one_line_error(["eval", "--checkpoint", str(path), "--data", "synthetic"], capsys)


# ------------------------------------------------------------------------------------ numerical faults
def _poison_loss(monkeypatch, steps: set[int], value: float) -> None:
    from sacvit.engine import train as train_mod

    real, calls = train_mod.sac_loss, [0]

    def loss(*args, **kwargs):
        calls[0] += 1
        out = real(*args, **kwargs)
        return out * value if calls[0] in steps else out

    monkeypatch.setattr(train_mod, "sac_loss", loss)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch, value):
    out = tmp_path / "run"
    _poison_loss(monkeypatch, {3, 10, 11}, value)
    ckpt = train(cfg(out))
    records = result(out)["metrics"]
    assert [r["nonfinite_steps"] for r in records] == [1, 2, 0]
    assert all(np.isfinite(r["train_loss"]) for r in records)
    assert all(torch.isfinite(v).all() for v in load_checkpoint(ckpt)[0].state_dict().values())
    state = load_latest(out).state
    assert all(s["step"] == TOTAL_STEPS - 3 for s in state.optimizer["state"].values())  # 3 updates skipped
    assert state.scheduler["last_epoch"] == TOTAL_STEPS  # the schedule follows the data


def test_nonfinite_steps_in_a_row_stop_training_and_keep_the_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _poison_loss(monkeypatch, set(range(9, 100)), float("nan"))
    err = one_line_error(cli_args(out, checkpoint_every=2, max_nonfinite=3), capsys)
    assert "not finite for 3 steps in a row" in err and "step 11" in err
    snap = load_latest(out)  # step 10: its weights are those of step 8, steps 9 and 10 were skipped
    assert snap.state.step == 10 and snap.state.nonfinite == 2 and verify(snap.folder)
    assert all(torch.isfinite(v).all() for v in snap.model.state_dict().values())


# ------------------------------------------------------------------------------------ bad training files
def _png(path: Path, rng: np.random.RandomState) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.randint(0, 255, (36, 40, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def image_folder(root: Path, per_class: int = 12) -> list[Path]:
    """Readable PNGs in two classes, plus one file of each bad kind; returns the bad ones."""
    rng = np.random.RandomState(0)
    for c in ("cat", "dog"):
        for k in range(per_class):
            good = _png(root / "train" / c / f"{k}.png", rng)
    import io

    jpeg = io.BytesIO()
    Image.fromarray(rng.randint(0, 255, (36, 40, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    corrupt_png = bytearray(good)
    corrupt_png[60:80] = b"\xff" * 20  # inside the IDAT chunk: a CRC / zlib error
    bad = {"cat/empty.jpg": b"", "cat/truncated.jpg": jpeg.getvalue()[:300], "dog/text.png": b"just some notes\n",
           "dog/random.jpeg": bytes(rng.randint(0, 256, 700, dtype=np.uint8)),
           "dog/truncated.png": good[: len(good) // 2], "cat/corrupt.png": bytes(corrupt_png)}
    for name, data in bad.items():
        (root / "train" / name).write_bytes(data)
    return sorted(root / "train" / name for name in bad)


def test_unreadable_images_are_skipped_logged_and_counted(tmp_path, capsys, monkeypatch):
    from sacvit.data import build, build_dataset

    bad = image_folder(tmp_path / "data")
    ds = build_dataset("imagefolder", tmp_path / "data", "train", 32, holdout=4)
    assert sorted(Path(p) for p, _ in ds.skipped) == bad and len(ds) == 24 - 4
    reasons = dict(ds.skipped)
    assert reasons[str(tmp_path / "data/train/cat/empty.jpg")] == "empty file (0 bytes)"
    assert "truncated" in reasons[str(tmp_path / "data/train/cat/truncated.jpg")].lower()
    assert "cannot identify" in reasons[str(tmp_path / "data/train/dog/text.png")]
    err = capsys.readouterr().err
    assert all(str(p) in err for p in bad)
    monkeypatch.setattr(build, "_VERIFIED", {})  # forget this process's verification: use the cache file
    out = tmp_path / "run"
    train(cfg(out, data="imagefolder", data_dir=str(tmp_path / "data"), train_length=None, val_length=None,
              holdout=4, img_size=32, epochs=1, batch_size=4, mixup=0.0, cutmix=0.0, cache_dir=str(tmp_path / "c")))
    assert [r["skipped_files"] for r in result(out)["metrics"]] == [len(bad)]
    assert (tmp_path / "c").is_dir() and any((tmp_path / "c").glob("verified_*.json"))
    first = str(bad[0])
    capsys.readouterr()
    err = one_line_error(cli_args(tmp_path / "strict", data="imagefolder", data_dir=str(tmp_path / "data"),
                                  img_size=32, strict=True), capsys)
    assert first in err and "--strict" in err


def test_a_class_or_split_without_a_readable_image_is_an_error(tmp_path, capsys):
    image_folder(tmp_path / "data")
    for path in (tmp_path / "data" / "train" / "dog").iterdir():
        path.write_bytes(b"")
    err = one_line_error(cli_args(tmp_path / "run", data="imagefolder", data_dir=str(tmp_path / "data"),
                                  img_size=32), capsys)
    assert f"class folder {tmp_path / 'data' / 'train' / 'dog'} has no readable image" in err
    for path in (tmp_path / "data" / "train" / "cat").iterdir():
        path.write_bytes(b"GIF89a")
    err = one_line_error(cli_args(tmp_path / "run", data="imagefolder", data_dir=str(tmp_path / "data"),
                                  img_size=32), capsys)
    assert f"no readable image in {tmp_path / 'data' / 'train'}" in err


# ------------------------------------------------------------------------------------ torchrun restarts
def _descendants(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(c) for c in (task / "children").read_text().split()]
    return kids + [g for k in kids for g in _descendants(k)]


def _torchrun(out: Path, data: Path) -> subprocess.Popen:
    args = cli_args(out, data="imagefolder", data_dir=str(data), train_length=None, val_length=None, holdout=8,
                    img_size=32, batch_size=4, checkpoint_every=2, no_cache=True, threads=None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts=1",
           "--standalone", "-m", "sacvit.cli", *args]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through /proc")
def test_torchrun_restarts_a_killed_worker_and_resumes(tmp_path):
    """Two processes (gloo), an image folder with unreadable files; one worker SIGKILLed mid-epoch."""
    bad = image_folder(tmp_path / "data", per_class=16)
    straight = _torchrun(tmp_path / "straight", tmp_path / "data")
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err[-3000:]

    killed = _torchrun(tmp_path / "killed", tmp_path / "data")
    k = random.Random(20).randint(3, 3 * 6 - 4)  # 24 training images, 4 per global batch: 6 steps an epoch
    try:
        wait_for_step(killed, tmp_path / "killed" / "steps.jsonl", k)
        workers = [p for p in _descendants(killed.pid) if b"sacvit.cli" in Path(f"/proc/{p}/cmdline").read_bytes()
                   and b"torch.distributed.run" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 2, workers
        os.kill(workers[1], signal.SIGKILL)
    finally:
        _, err = killed.communicate(timeout=300)
    assert killed.returncode == 0, err[-3000:]
    assert "torchrun restart 1: resuming from" in err
    a, b = result(tmp_path / "straight"), result(tmp_path / "killed")
    assert [r["skipped_files"] for r in b["metrics"]] == [len(bad)] * 3
    assert b["metrics"] == a["metrics"] and b["steps"] == a["steps"] and b["weights"] == a["weights"]


# ------------------------------------------------------------------------------------ configuration, dependencies
@pytest.mark.parametrize("bad", [{"window": "a"}, {"window": True}, {"reuse": 1}, {"alpha": "0.5"},
                                 {"cluster_mode": "grid"}, {"adaptive_sizes": [3, "4"]}, {"gca_start": 1.5}])
def test_sac_config_type_errors(bad, tmp_path, capsys):
    with pytest.raises(ConfigTypeError, match=next(iter(bad))):
        SACConfig.from_dict(bad)
    err = one_line_error(cli_args(tmp_path / "run", sac=bad), capsys)
    assert f"SACConfig.{next(iter(bad))} must be" in err


def test_dependencies_are_ranges_and_the_constraints_pin_the_tested_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert "sacvit[onnx]" in extras["test"]  # the test extra includes the onnx extra
    requirements = project["dependencies"] + [r for reqs in extras.values() for r in reqs if not r.startswith("sacvit[")]
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    for requirement in requirements:
        name = requirement.split(">")[0].split("<")[0].split("=")[0].strip().lower()
        assert "==" not in requirement and ">=" in requirement and "<" in requirement, requirement
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert metadata.version(name) == pins[name], f"{name}: installed {metadata.version(name)}, pinned {pins[name]}"
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()

"""Engine: checkpoints, the training loop (resume, DDP equivalence), evaluation, CLI behaviour.

Everything runs on a 32-px, patch-4, width-32, depth-2 model and a synthetic 4-class dataset.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import sacvit  # noqa: F401
import sacvit.cli
from sacvit.io.checkpoint import CheckpointMeta, DataSpec, load_checkpoint, read_metadata, save_checkpoint
from sacvit import plots
from sacvit.data import build_dataset
from sacvit.engine.evaluate import COLUMNS, SAC_ONLY, evaluate
from sacvit.engine.train import TrainConfig, train
from sacvit.io.train_state import Checkpointer, RankState, TrainState, load_latest
from sacvit.report import SWEEP_TABLE, format_table, write_csv

SAC_NAME, PLAIN_NAME = "sacvit_demo_patch8_112", "deit_demo_patch8_112"
KW = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2)
SAC = dict(window=3, gca_start=1)
SRC = Path(__file__).resolve().parents[1] / "src"


def tiny_model(name: str = SAC_NAME, num_classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = {"sac": SAC} if name.startswith("sacvit_") else {}
    return timm.create_model(name, num_classes=num_classes, **KW, **extra)


def tiny_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(model=SAC_NAME, model_kwargs=KW, data="synthetic", train_length=64, val_length=32, epochs=2,
                batch_size=16, lr=2e-3, warmup_epochs=0.5, drop_path=0.0, sac=SAC, select_after=0.5,
                out_dir=str(out), threads=1)
    return TrainConfig(**{**base, **kw})


def save_tiny(path: Path, name: str = SAC_NAME) -> torch.nn.Module:
    model = tiny_model(name)
    save_checkpoint(path, model, CheckpointMeta(model_name=name, model_kwargs={**KW, "num_classes": 4},
                                                sac_config=getattr(model, "sac_config", None), class_names=list("abcd"),
                                                epoch=3, metrics={"val_top1": 50.0}))
    return model


def lines(path: Path) -> list[dict]:
    return [json.loads(s) for s in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "model.safetensors"
    model = tiny_model()
    data = DataSpec(name="synthetic", folder=None, seed=3, holdout=8, image_size=32)
    save_checkpoint(path, model, CheckpointMeta(model_name=SAC_NAME, model_kwargs={**KW, "num_classes": 4},
                                                sac_config=model.sac_config, class_names=list("abcd"), epoch=3,
                                                metrics={"val_top1_sac": 12.5}, data=data))
    loaded, meta = load_checkpoint(path, expected_model=SAC_NAME)
    assert type(loaded) is type(model) and loaded.sac_config == model.sac_config
    own = model.state_dict()
    assert loaded.state_dict().keys() == own.keys()
    assert all(torch.equal(v, own[k]) for k, v in loaded.state_dict().items())
    assert meta.class_names == tuple("abcd") and meta.epoch == 3 and meta.data == data
    assert meta.metrics == {"val_top1_sac": 12.5} and meta.model_kwargs["embed_dim"] == 32
    assert meta.sac_config == model.sac_config and meta.threshold == model.sac_config.threshold


def test_plain_checkpoint_round_trip(tmp_path):
    path = tmp_path / "plain.safetensors"
    model = save_tiny(path, PLAIN_NAME)
    loaded, meta = load_checkpoint(path)
    assert meta.sac_config is None and meta.threshold is None and not hasattr(loaded, "sac_config")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))


def test_atomic_save_leaves_no_tmp_and_survives_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_tiny(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_tiny(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]
    assert read_metadata(path).epoch == 3


def test_checkpoint_for_another_model_names_the_path(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_tiny(path, PLAIN_NAME)
    with pytest.raises(ValueError, match="deit_demo_patch8_112") as err:
        load_checkpoint(path, expected_model=SAC_NAME)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign", "missing"])
def test_bad_checkpoint_file_is_a_value_error(tmp_path, kind):
    path = tmp_path / "bad.safetensors"
    if kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        save_tiny(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":  # a valid safetensors file without sacvit metadata (e.g. timm DeiT weights)
        from safetensors.torch import save_file

        save_file({"cls_token": torch.zeros(1, 1, 32)}, str(path))
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------ training
def test_train_resume_and_evaluate(tmp_path, capsys):
    run = tmp_path / "sac"
    ckpt = train(tiny_cfg(run))
    assert ckpt == run / "last.safetensors" and ckpt.is_file()
    records = lines(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "lr", "val_top1_ee", "val_top1_sac", "seconds", "nonfinite_steps",
            "skipped_files"} <= records[0].keys()
    steps = records[-1]["steps"]
    snap = load_latest(run)
    assert snap.state.scheduler["last_epoch"] == steps and (snap.epoch, snap.batch) == (2, 0)
    assert (snap.folder / "ema.safetensors").read_bytes() == ckpt.read_bytes()  # the deployed copy

    train(tiny_cfg(run, epochs=3, resume=True))
    records = lines(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    state = load_latest(run).state
    assert records[-1]["steps"] == 3 * steps // 2
    assert state.scheduler["last_epoch"] == records[-1]["steps"]
    assert all(s["step"] == records[-1]["steps"] for s in state.optimizer["state"].values())  # continued
    scores = [r["val_top1_sac"] for r in records]  # the best epoch survives the resume
    assert read_metadata(run / "best.safetensors").epoch == 1 + scores.index(max(scores))

    base = train(tiny_cfg(tmp_path / "plain", model=PLAIN_NAME, sac={}, epochs=1))
    assert "val_top1" in lines(tmp_path / "plain" / "metrics.jsonl")[0]
    data = build_dataset("synthetic", None, "test", 32, length=32)
    rows = evaluate(ckpt, data, [0.3, 0.6], batch_size=16, baseline=base, timing_batches=1)
    assert [r["mode"] for r in rows] == ["sacvit", "sacvit", "ee_only", "sac_only", "baseline"]
    assert rows[2]["exit_share"] == 1.0 and rows[3]["exit_share"] == 0.0
    assert rows[2]["gmacs"] < rows[0]["gmacs"] <= rows[3]["gmacs"]
    model, _ = load_checkpoint(ckpt)
    x = torch.stack([data[i][0] for i in range(32)])
    y = torch.tensor([data[i][1] for i in range(32)])
    for row in rows[:4]:  # the one-pass sweep agrees with predict(x, η)
        pred = model.predict(x, row["threshold"])
        assert row["top1"] == pytest.approx(100 * (pred.logits.argmax(-1) == y).double().mean().item())
        assert row["exit_share"] == pytest.approx((pred.stage == 0).double().mean().item())
    for row in rows:  # 95% intervals around every accuracy; per-stage accuracies add up
        assert row["top1_low"] <= row["top1"] <= row["top1_high"]
    mixed = rows[0]
    if 0 < mixed["exit_share"] < 1:
        recomposed = mixed["exit_share"] * mixed["top1_exited"] + (1 - mixed["exit_share"]) * mixed["top1_sac"]
        assert recomposed == pytest.approx(mixed["top1"])
    table = format_table(rows, SWEEP_TABLE)
    assert "EE only" in table and "SAC only" in table and "baseline" in table and "95% CI" in table
    path = write_csv(tmp_path / "eval" / "results.csv", rows, COLUMNS)
    with open(path) as f:
        assert [r["mode"] for r in csv.DictReader(f)] == [r["mode"] for r in rows]
    assert plots.accuracy_vs_gmacs(rows, tmp_path / "eval" / "a.png").stat().st_size > 0
    assert plots.per_stage(rows, tmp_path / "eval" / "b.png").stat().st_size > 0


@pytest.mark.parametrize("scores, kept", [([70.0, 72.0, 71.0], 2), ([70.0, 72.0, 72.0], 2), ([None, 60.0], 2),
                                          ([75.0, None, 74.0], 1), ([70.0, 71.0, 73.5], 3)])
def test_best_checkpoint_is_the_first_epoch_with_the_top_score(tmp_path, scores, kept):
    from sacvit.engine.resume import keep_best

    model = tiny_model(PLAIN_NAME)
    for epoch, score in enumerate(scores, start=1):
        save_checkpoint(tmp_path / "last.safetensors", model, CheckpointMeta(
            model_name=PLAIN_NAME, model_kwargs={**KW, "num_classes": 4}, class_names=list("abcd"), epoch=epoch,
            metrics={} if score is None else {"val_top1": score}))
        keep_best(tmp_path)
        keep_best(tmp_path)  # again, as after a resume: nothing changes
    assert read_metadata(tmp_path / "best.safetensors").epoch == kept
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_resume_continues_exactly(tmp_path, monkeypatch):
    noisy = dict(epochs=3, drop_path=0.1, mixup=0.8, cutmix=1.0)  # RNG states must be restored too
    straight = train(tiny_cfg(tmp_path / "a", **noisy))
    real_save = Checkpointer.save

    def save_then_crash(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        if kwargs["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(tmp_path / "b", **noisy))
    monkeypatch.setattr(Checkpointer, "save", real_save)
    assert len(lines(tmp_path / "b" / "metrics.jsonl")) == 1  # crashed before logging epoch 2
    resumed = train(tiny_cfg(tmp_path / "b", **noisy, resume=True))
    a, b = load_checkpoint(straight)[0].state_dict(), load_checkpoint(resumed)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = lines(tmp_path / "a" / "metrics.jsonl"), lines(tmp_path / "b" / "metrics.jsonl")
    assert [r["train_loss"] for r in la] == [r["train_loss"] for r in lb]


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["train", "--model", SAC_NAME, "--model-kwargs", json.dumps(KW), "--data", "synthetic",
            "--train-length", "64", "--val-length", "32", "--epochs", "2", "--batch-size", "16", "--lr", "2e-3",
            "--warmup-epochs", "0.5", "--drop-path", "0", "--sac", json.dumps(SAC), "--select-after", "0.5",
            "--log-every", "1", "--out-dir", str(tmp_path / "ddp")]
    entry = ["-m", "sacvit.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", *entry, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    train(tiny_cfg(tmp_path / "single", log_every=1))
    ddp, single = lines(tmp_path / "ddp" / "steps.jsonl"), lines(tmp_path / "single" / "steps.jsonl")
    assert len(ddp) == len(single) == 8
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in single], rel=1e-4)
    e_ddp, e_single = lines(tmp_path / "ddp" / "metrics.jsonl"), lines(tmp_path / "single" / "metrics.jsonl")
    assert [r["train_loss"] for r in e_ddp] == pytest.approx([r["train_loss"] for r in e_single], rel=1e-4)
    assert e_ddp[-1]["val_top1_sac"] == pytest.approx(e_single[-1]["val_top1_sac"])


# ------------------------------------------------------------------------------------ CLI
KEY_OPTIONS = {
    "train": ["--model", "--data", "--data-dir", "--epochs", "--batch-size", "--lr", "--init", "--resume",
              "--select-after", "--out-dir", "torchrun", "--checkpoint-every", "--checkpoint-minutes",
              "--max-nonfinite", "--strict", "--max-restarts", "checkpoints/latest"],
    "eval": ["--checkpoint", "--baseline", "--thresholds", "--data", "--out"],
}


@pytest.mark.parametrize("command", list(sacvit.cli.COMMANDS))
def test_every_command_has_help(command, capsys):
    module = importlib.import_module(sacvit.cli.COMMANDS[command])
    parser = argparse.ArgumentParser(prog="sacvit")
    module.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as done:
        parser.parse_args([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in KEY_OPTIONS.get(command, ["--help"]):
        assert option in text, f"`sacvit {command} --help` does not mention {option}"


def _cli_error(argv: list[str], capsys, monkeypatch) -> str:
    assert sacvit.cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_cli_missing_or_empty_dataset(tmp_path, folder, capsys, monkeypatch):
    data = tmp_path / "imagenet"
    if folder == "empty":
        data.mkdir()
    err = _cli_error(["train", "--model", PLAIN_NAME, "--data", "imagefolder", "--data-dir", str(data),
                      "--out-dir", str(tmp_path / "run")], capsys, monkeypatch)
    assert str(data) in err


def test_cli_checkpoint_for_another_model(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    saver = Checkpointer(run, CheckpointMeta(model_name=PLAIN_NAME, model_kwargs={**KW, "num_classes": 4},
                                             class_names=list("abcd")))
    state = TrainState(optimizer={}, scheduler={}, step=1, world_size=1, ranks=[RankState(rng={})])
    saver.save(tiny_model(PLAIN_NAME), None, state, step=1, epoch=1, batch=0, record={"epoch": 1})
    err = _cli_error(["train", "--model", SAC_NAME, "--model-kwargs", json.dumps(KW), "--data", "synthetic",
                      "--out-dir", str(run), "--resume"], capsys, monkeypatch)
    assert str(run / "checkpoints") in err and PLAIN_NAME in err
    err = _cli_error(["eval", "--checkpoint", str(run / "last.safetensors"), "--model", SAC_NAME,
                      "--data", "synthetic", "--out", str(tmp_path / "eval")], capsys, monkeypatch)
    assert str(run / "last.safetensors") in err
    missing = tmp_path / "nope.safetensors"
    assert str(missing) in _cli_error(["eval", "--checkpoint", str(missing), "--data", "synthetic"], capsys, monkeypatch)


# ------------------------------------------------------------------------------------ viz
@pytest.mark.parametrize("threshold", [0.0, SAC_ONLY])
def test_plot_clusters_writes_png(tmp_path, threshold):
    from sacvit.viz import plot_clusters

    data = build_dataset("synthetic", None, "test", 32, length=6)
    x = torch.stack([data[i][0] for i in range(6)])
    out = plot_clusters(tiny_model(), x, data.images[:6], tmp_path / "fig" / "clusters.png", threshold,
                        labels=data.targets[:6], class_names=data.classes)
    assert out.is_file() and out.stat().st_size > 1000

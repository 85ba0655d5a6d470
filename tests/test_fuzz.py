"""Fuzzing (hypothesis): random and mutated inputs give clear, typed errors, never a crash or a hang.

Targets: the image loader and its verification, the checkpoint loader (``.safetensors`` weights,
the ``state.pt`` of a training checkpoint, ``.pth`` backbone files), the checkpoint metadata
parser and the ``--sac`` JSON option. A ``.pt`` whose pickle would run code is refused. Examples
are bounded and derandomized (the same inputs every run, so CI cannot flake); each input is
written to a file, as users hand them over. A longer, random campaign:
``SACVIT_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

import sacvit.cli
from sacvit.cli.common import json_dict
from sacvit.config import SACConfig
from sacvit.data.imagefolder import check_image, safe_loader
from sacvit.io.checkpoint import CheckpointMeta, load_checkpoint, read_metadata, save_checkpoint, sha256_file
from sacvit.engine.distributed import rng_state
from sacvit.io.train_state import TRAIN_FORMAT, RankState, TrainState, _read_state
from sacvit.model.registry import read_state_dict

_CAMPAIGN = os.environ.get("SACVIT_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(_CAMPAIGN or 200), deadline=5000 if _CAMPAIGN else None, derandomize=not _CAMPAIGN,
                database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KW = dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=2)


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (12, 10, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


SAMPLES = {fmt: _image_bytes(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")}


@st.composite
def mutated(draw, original: bytes, header: int = 64) -> bytes:
    """``original`` with a few bytes replaced (mostly in its first ``header`` bytes), cut, or extended."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        end = header if draw(st.booleans()) else len(data)
        data[draw(st.integers(0, min(end, len(data)) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return bytes(data[:cut]) + draw(st.binary(max_size=16))


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------ images
def _check_loader(path: Path) -> None:
    reason = check_image(str(path))
    assert reason is None or isinstance(reason, str)
    try:
        image = safe_loader(str(path))
    except ValueError as err:
        assert str(path) in str(err)
    else:
        assert image.mode == "RGB"


# ------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> bytes:
    torch.manual_seed(0)
    model = timm.create_model("sacvit_demo_patch8_112", sac={"window": 1, "gca_start": 0}, **KW)
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    save_checkpoint(path, model, CheckpointMeta(model_name="sacvit_demo_patch8_112", model_kwargs=KW,
                                                sac_config=model.sac_config, class_names=["a", "b"], epoch=1,
                                                metrics={"val_top1": 50.0}))
    return path.read_bytes()


def _check_checkpoint(path: Path) -> None:
    try:
        read_metadata(path)
        load_checkpoint(path)
    except ValueError as err:  # CheckpointError, or another model than expected
        assert str(path) in str(err) and "\n" not in str(err)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
META_KEYS = ["format", "model_name", "model_kwargs", "sac_config", "class_names", "epoch", "metrics", "weights_sha256"]


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(META_KEYS), st.one_of(st.text(max_size=30), JSON.map(json.dumps)),
                               min_size=1, max_size=4))
def test_fuzzed_metadata_into_the_metadata_parser(tmp_path, checkpoint, changes):
    from safetensors.torch import load_file

    original = tmp_path / "original.safetensors"
    original.write_bytes(checkpoint)
    from safetensors import safe_open

    with safe_open(str(original), framework="pt") as f:
        metadata = {**f.metadata(), **changes}
    path = tmp_path / "x.safetensors"
    save_file(load_file(str(original)), str(path), metadata=metadata)
    _check_checkpoint(path)


@FUZZ
@given(sac=st.dictionaries(st.sampled_from([f.name for f in dataclasses.fields(SACConfig)] + ["bogus"]), JSON,
                           max_size=4))
def test_fuzzed_sac_config_into_the_metadata(tmp_path, checkpoint, sac):
    from safetensors import safe_open
    from safetensors.torch import load_file

    original = tmp_path / "original.safetensors"
    original.write_bytes(checkpoint)
    with safe_open(str(original), framework="pt") as f:
        metadata = f.metadata()
    metadata["sac_config"] = json.dumps({**json.loads(metadata["sac_config"]), **sac})
    path = tmp_path / "x.safetensors"
    save_file(load_file(str(original)), str(path), metadata=metadata)
    _check_checkpoint(path)


# ------------------------------------------------------------------------------------ .pt files
@pytest.fixture(scope="module")
def state_pt(tmp_path_factory) -> bytes:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    opt.step()
    path = tmp_path_factory.mktemp("pt") / "state.pt"
    state = TrainState(optimizer=opt.state_dict(), scheduler={"last_epoch": 3}, step=3, world_size=1,
                       history=[{"epoch": 1, "train_loss": 0.5}],
                       ranks=[RankState(rng_state(), None, torch.zeros((), dtype=torch.float64))])
    torch.save(state.to_dict(), path)
    return path.read_bytes()


def _check_pt(path: Path) -> None:
    for read in (_read_state, read_state_dict):
        try:
            read(path)
        except ValueError as err:
            assert str(path) in str(err)


def _check(path: Path) -> None:
    {".safetensors": _check_checkpoint, ".pt": _check_pt}.get(path.suffix, _check_loader)(path)


TARGETS = ["x.jpg", "x.png", "x.gif", "x.bmp", "x.webp", "x.tif", "x.safetensors", "x.pt"]


@pytest.mark.parametrize("name", TARGETS)
@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(tmp_path, name, data):
    _check(_write(tmp_path, name, data))


@pytest.mark.slow
@pytest.mark.parametrize("kind", [*SAMPLES, "safetensors", "pt"])
@FUZZ
@given(data=st.data())
def test_mutated_files(tmp_path, checkpoint, state_pt, kind, data):
    """A few bytes changed (mostly in the header), cut short or extended."""
    if kind == "safetensors":
        original, header, name = checkpoint, int.from_bytes(checkpoint[:8], "little") + 8, "x.safetensors"
    elif kind == "pt":
        original, header, name = state_pt, len(state_pt), "x.pt"
    else:
        original, header, name = SAMPLES[kind], 64, f"x.{kind.lower()}"
    _check(_write(tmp_path, name, data.draw(mutated(original, header))))


class RunsCode:
    """Unpickling this calls ``Path.touch`` on a marker file: code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": TRAIN_FORMAT, "model": RunsCode(marker)}, evil)
    torch.load(evil, weights_only=False)  # the payload is real: a plain torch.load runs it
    assert marker.exists()
    marker.unlink()
    for read in (_read_state, read_state_dict):
        with pytest.raises(ValueError, match="evil.pt"):
            read(evil)
    assert not marker.exists()
    # and through the commands: --init of train, a training checkpoint's state.pt on --resume
    args = ["train", "--model", "deit_demo_patch8_112", "--model-kwargs", json.dumps({**KW, "num_classes": 4}),
            "--data", "synthetic", "--train-length", "16", "--val-length", "8", "--img-size", "16", "--epochs", "1",
            "--batch-size", "8", "--threads", "1"]
    assert sacvit.cli.main([*args, "--init", str(evil), "--out-dir", str(tmp_path / "a")]) == 2
    assert not marker.exists() and "evil.pt" in capsys.readouterr().err
    assert sacvit.cli.main([*args, "--out-dir", str(tmp_path / "b")]) == 0
    folder = next((tmp_path / "b" / "checkpoints").glob("step-*"))
    (folder / "state.pt").write_bytes(evil.read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())  # a consistent manifest: only the pickle is bad
    manifest["files"]["state.pt"] = {"bytes": evil.stat().st_size, "sha256": sha256_file(evil)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert sacvit.cli.main([*args, "--out-dir", str(tmp_path / "b"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and "state.pt" in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------ --sac JSON
@FUZZ
@given(text=st.one_of(st.text(max_size=40), JSON.map(json.dumps)))
def test_fuzzed_sac_option_text(text):
    try:
        value = json_dict(text)
    except argparse.ArgumentTypeError:
        return
    try:
        SACConfig.from_dict(value)
    except ValueError:
        pass


@FUZZ
@given(sac=st.dictionaries(st.sampled_from([f.name for f in dataclasses.fields(SACConfig)]), JSON, max_size=5))
def test_fuzzed_sac_fields_give_typed_errors(sac):
    try:
        cfg = SACConfig.from_dict(sac)
    except ValueError as err:
        assert "\n" not in str(err)
    else:
        assert SACConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg

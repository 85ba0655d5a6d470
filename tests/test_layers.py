"""The codebase's shape, checked: layers point down (import-linter), and each config has one spelling."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from sacvit.cli import build_parser
from sacvit.config import SACConfig
from sacvit.engine.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_import_layers_and_no_cycles():
    """pyproject's [tool.importlinter] contracts: apps → engine → io → data → core, no cycle."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.is_file():
        pytest.fail("import-linter is not installed: pip install -e '.[test]'")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def _train_options() -> dict[str, object]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    train = sub.choices["train"]
    return {a.dest: a.default for a in train._actions if a.dest not in ("help", "func")}


def test_every_train_config_field_is_an_option_with_its_default():
    options = _train_options()
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        assert f.name in options, f"TrainConfig.{f.name} has no sacvit train option"
        assert options[f.name] == getattr(defaults, f.name), f"--{f.name.replace('_', '-')} default differs"
    assert set(options) <= {f.name for f in dataclasses.fields(TrainConfig)}, "an option that is no TrainConfig field"


def test_sac_config_holds_architecture_and_inference_only():
    names = {f.name for f in dataclasses.fields(SACConfig)}
    assert not names & {"kl_weight", "kl_tau", "select_after"}
    assert {"kl_weight", "kl_tau", "select_after", "amp"} <= {f.name for f in dataclasses.fields(TrainConfig)}

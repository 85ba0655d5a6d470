"""Pieces every command's parser shares: the help formatter and the option value types."""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from ..data import DATASET_NAMES, SPLITS

__all__ = ["HelpFormatter", "add_data_options", "checkpoint_eta", "json_dict", "nonnegative", "number_list", "open_unit_interval",
           "positive", "thresholds", "unit_interval"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the example block's line breaks; append ``(default: X)`` unless the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, True, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def add_data_options(p: argparse.ArgumentParser, split: str, split_help: str) -> None:
    """The options that name a checkpoint's labelled data: ``--data``, ``--data-dir``, ``--split``
    (default ``split``), ``--length``, ``--seed``, ``--batch-size`` and ``--device``."""
    a = p.add_argument
    a("--data", choices=DATASET_NAMES, default=None, help="dataset (default: the checkpoint's training data)")
    a("--data-dir", default=None,
      help="dataset folder (default: the checkpoint's, for its training dataset; for Fashion-MNIST: the system copy)")
    a("--split", choices=SPLITS, default=split, help=split_help)
    a("--length", type=int, default=None, help="use only this many images of the split")
    a("--seed", type=int, default=None, help="layout seed of generated data (default: the training seed)")
    a("--batch-size", type=int, default=64, help="batch size")
    a("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device")


def json_dict(text: str) -> dict[str, Any]:
    """An option value that must be a JSON object, e.g. ``'{"window": 5}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"window\": 5}'")
    return value


def number_list(kind: Callable[[str], Any] = float, lo: float | None = None,
                hi: float | None = None) -> Callable[[str], list[Any]]:
    """An option value of comma-separated numbers of ``kind``, each in ``[lo, hi]`` when given."""
    what = "integers" if kind is int else "numbers"

    def parse(text: str) -> list[Any]:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not values or any(v != v for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        if any((lo is not None and v < lo) or (hi is not None and v > hi) for v in values):
            rule = f"in [{lo:g}, {hi:g}]" if lo is not None and hi is not None else \
                f"≥ {lo:g}" if lo is not None else f"≤ {hi:g}"
            raise argparse.ArgumentTypeError(f"values must be {rule}, got {text!r}")
        return values

    return parse


thresholds = number_list(float, 0.0, 1.0)


def _bounded(test: Callable[[float], bool], what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value != value or not test(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


nonnegative = _bounded(lambda v: 0 <= v < float("inf"), "≥ 0")
positive = _bounded(lambda v: 0 < v < float("inf"), "> 0")
unit_interval = _bounded(lambda v: 0 <= v <= 1, "in [0, 1]")
open_unit_interval = _bounded(lambda v: 0 < v < 1, "in (0, 1)")


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {text}")
    return value


def checkpoint_eta(meta: Any) -> str:
    """A checkpoint's default η for a summary line: ``η = 0.643 (calibrated)``.

    ``meta`` is a :class:`~sacvit.meta.CheckpointMeta`."""
    if meta.threshold is None:
        return "no exit threshold (plain ViT)"
    how = "calibrated" if meta.calibration else "not calibrated: the SACConfig default"
    return f"η = {meta.threshold:.4g} ({how})"

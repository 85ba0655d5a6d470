"""Is the training budget enough? (``sacvit demo --against OTHER``.)

Each compared model of this run is set against the same model trained in another run folder with
another budget (e.g. 4 and 8 epochs), on the validation split — the split that also picks every
model's best epoch, never the calibration or the test split. A budget is enough for a model when
the longer budget's paired 95% interval on validation does not lie above zero: more training
stops helping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..io.run_files import CHECKPOINT
from ..io.checkpoint import read_metadata
from .evidence import paired
from .runs import chosen_weights

__all__ = ["budget_check"]


def _budget(weights: Path) -> dict[str, Any]:
    """A run's budget and the epoch its reported weights come from."""
    config = json.loads((weights.parent / "config.json").read_text())
    return {"folder": str(weights.parent), "epochs": int(config["epochs"]), "epoch": read_metadata(weights).epoch}


def budget_check(this: dict[str, tuple[str, Path]], other_out: Path, correct: Callable[[str, Path], np.ndarray],
                 seed: int = 0) -> dict[str, Any]:
    """Every measure of ``this`` (label → (run folder name, reported weights)) whose run ``other_out``
    also holds, both on the validation split: ``correct(label, weights)`` is the per-image
    correctness there (a label such as "SAC-ViT, EE stage" names what is measured).

    Returns ``{"against": other_out, "rows": [...]}``; a row holds each run's budget (epochs,
    the epoch reported), validation top-1, and ``diff``: this run − the other run, paired (95%
    interval, McNemar's p). ``longer_helps`` is true when the longer budget's interval lies above 0.
    """
    rows = []
    for label, (name, weights) in this.items():
        folder = Path(other_out) / name
        if not (folder / "config.json").is_file() or not (folder / CHECKPOINT).is_file():
            continue
        theirs = chosen_weights(folder)
        a, b = correct(label, theirs), correct(label, weights)
        diff = paired(a, b, seed)
        mine, other = _budget(weights), _budget(theirs)
        longer = diff["diff_low"] > 0 if mine["epochs"] > other["epochs"] else diff["diff_high"] < 0
        rows.append({"model": label, "this": {**mine, "top1": 100 * float(b.mean())},
                     "other": {**other, "top1": 100 * float(a.mean())}, "images": len(a), "diff": diff,
                     "longer_helps": bool(longer) and mine["epochs"] != other["epochs"]})
    return {"against": str(other_out), "rows": rows}

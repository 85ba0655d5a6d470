"""Which exit score? The paper's max-probability, temperature-scaled max-probability and the
top-1 − top-2 margin, measured on the validation split only (:mod:`sacvit.model.exit_score`).

For each score: the EE stage's expected calibration error (probabilities only), the certified η
against the baseline (same ε, δ as the demo's) with its GMACs share, and the validation top-1 at
matched GMACs (25/30/40% of the baseline's). The temperature is fitted on the same validation split
(negative log-likelihood of the EE logits), so its certificate is optimistic by that choice; the
default stays the paper's score unless the validation numbers say otherwise, and the study says
which it would pick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..engine.calibrate import certified_choice
from ..engine.evaluate import ee_logits
from ..io.checkpoint import load_checkpoint
from ..model.exit_score import calibration_error, exit_score, fit_temperature
from .config import DemoConfig
from .evidence import Evidence
from .family import matched_threshold

__all__ = ["SHARES", "exit_score_study"]

SHARES = (0.25, 0.30, 0.40)


def exit_score_study(cfg: DemoConfig, ev: Evidence, ckpt: Path, base_h: np.ndarray,
                     baseline_gmacs: float) -> dict[str, Any]:
    """The three exit scores of the SAC-ViT checkpoint ``ckpt`` on the validation split."""
    model, _ = load_checkpoint(ckpt)
    logits, labels = ee_logits(model, ev.datasets["holdout"])
    temperature = fit_temperature(logits, labels)
    right = logits.argmax(-1) == labels
    rows = []
    for score, extra in (("max_prob", {}), ("temperature", {"exit_temperature": temperature}), ("margin", {})):
        records = ev.stages(ckpt, "holdout", sac={"exit_score": score, **extra})
        choice = certified_choice(records, base_h, max_drop=cfg.tolerance, delta=cfg.delta)
        matched = {f"{round(100 * s)}%": records.row(matched_threshold(records, s, baseline_gmacs))["top1"]
                   for s in SHARES}
        ece = None if score == "margin" else calibration_error(exit_score(logits, score, temperature), right)
        rows.append({"score": score, "ece": ece, "certified": bool(choice.certified), "threshold": choice.threshold,
                     "gmacs_share": choice.gmacs / baseline_gmacs, "bound": choice.bound,
                     "holdout_top1_at_matched_gmacs": matched})
    best = max(rows, key=lambda r: np.mean(list(r["holdout_top1_at_matched_gmacs"].values())))["score"]
    return {"temperature": temperature, "images": int(len(labels)), "scores": rows, "held_out_best": best,
            "default": "max_prob"}

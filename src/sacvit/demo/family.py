"""Figure 1: SAC-ViT and its predecessors (CF-ViT, LF-ViT, DVT) under one protocol.

Every member is fine-tuned from the same stand-in with the same recipe and budget as SAC-ViT
(:func:`~.runs.fine_tune`; DVT's every stage starts from the stand-in too), its η is certified on
the calibration split against the baseline with the same ε and δ (:func:`~.evidence.calibrate`), and it
is reported on the whole test split with a 95% interval and paired differences against the
baseline and against SAC-ViT at its own certified η.

*Matched GMACs*: for each target share of the baseline's GMACs (20/25/33/40%), each method's η is
the one whose **calibration-split** mean GMACs is nearest to the target (nothing chosen on the test split),
and the test top-1 at that η is compared with SAC-ViT's at its own matched η, paired on the same
images.

Settings of the predecessors (choices, see DESIGN): CF-ViT and LF-ViT keep their papers'
selection (:mod:`sacvit.model.family`) except LF-ViT's window side, which is the demo's
data-dependent choice for SAC-ViT (``cfg.sac["window"]``, 3 EE tokens = 48 px for 24–40 px
garments) so that both localise at the same scale; DVT uses :class:`~sacvit.config.DVTConfig`'s
defaults (7×7 → 10×10 → 14×14 tokens, one η at every exit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..engine.evaluate import SAC_ONLY
from ..stats import wilson_interval
from .config import DemoConfig
from .evidence import Evidence, calibrate, paired, sac_correct
from .runs import fine_tune

__all__ = ["FAMILY_NAMES", "LAST_STAGE", "MEMBERS", "MATCHED_SHARES", "member_sac", "matched_threshold", "run_family"]

#: The predecessors the demo trains, by method: their demo-geometry variants.
MEMBERS = {"cfvit": "cfvit_demo_patch8_112", "lfvit": "lfvit_demo_patch8_112", "dvt": "dvt_demo_patch8_112"}
#: The methods' names in reports, and the validation metric of each one's last stage (its training log).
FAMILY_NAMES = {"cfvit": "CF-ViT", "lfvit": "LF-ViT", "dvt": "DVT"}
LAST_STAGE = {"cfvit": "val_top1_sac", "lfvit": "val_top1_sac", "dvt": "val_top1"}
#: Shares of the baseline's GMACs at which the methods are compared at matched compute.
MATCHED_SHARES = (0.20, 0.25, 0.33, 0.40)
_GRID = np.r_[SAC_ONLY, np.linspace(1.0, 0.0, 201)]
#: Each method's two ends: every image exits at the first stage (η = 0), every image runs to the last.
_STAGES = {"first": 0.0, "last": SAC_ONLY}


def member_sac(cfg: DemoConfig, method: str) -> dict[str, Any]:
    """The demo's SAC-configuration changes of a predecessor (LF-ViT: SAC-ViT's window side)."""
    return {"window": cfg.sac["window"]} if method == "lfvit" and "window" in cfg.sac else {}


def _member(ev: Evidence, ckpt: Path, base_c: np.ndarray, cfg: DemoConfig) -> dict[str, Any]:
    c, t = ev.records(ckpt, "calibration"), ev.records(ckpt, "test")
    choice, eta = calibrate(c, base_c, cfg.tolerance, cfg.delta)
    return {"ckpt": ckpt, "calibration": c, "test": t, "choice": choice, "eta": eta}


def matched_threshold(h, share: float, baseline_gmacs: float) -> float:
    """The η whose calibration-split mean GMACs is nearest to ``share`` of the baseline's."""
    gmacs = np.array([h.row(float(t))["gmacs"] for t in _GRID])
    return float(_GRID[int(np.argmin(np.abs(gmacs - share * baseline_gmacs)))])


def run_family(cfg: DemoConfig, ev: Evidence, standin: Path, sacvit: dict[str, Any], base_c: np.ndarray,
               base_t: np.ndarray, baseline_gmacs: float) -> dict[str, Any]:
    """Train (or reuse), certify and report every member in ``cfg.members``.

    Args:
        sacvit: SAC-ViT's own ``{"ckpt", "calibration", "test", "choice", "eta"}`` (already calibrated).
        base_c, base_t: the baseline's per-image correctness on the calibration and test splits.
        baseline_gmacs: the baseline's GMACs per image.

    Returns:
        ``family`` (one object per method, the baseline first; a method's ``stage_top1`` holds the
        test top-1 of its ``first`` stage, every image exiting, and of its ``last``, none exiting,
        and ``sacvit_vs_this_by_stage`` SAC-ViT's same stage paired against it), ``matched`` (the matched-GMACs
        table), ``curves`` (each method's test sweep, for the figure), and per method its
        ``checkpoints``, reported ``thresholds`` and calibration ``choices``.
    """
    members = {"sacvit": sacvit}
    for method in cfg.members:
        ckpt = fine_tune(cfg, method, MEMBERS[method], standin, sac=member_sac(cfg, method))
        members[method] = _member(ev, ckpt, base_c, cfg)
    n = len(base_t)
    base_top1 = 100 * float(base_t.mean())
    family: list[dict[str, Any]] = [{
        "method": "baseline", "certified": None, "threshold": None, "gmacs_share": 1.0, "test_top1": base_top1,
        "test_top1_ci": list(_wilson(base_t)), "throughput_ratio": 1.0, "images": n}]
    sac_at_eta = sac_correct(sacvit["test"], sacvit["eta"])
    ends = {method: {stage: sac_correct(m["test"], eta) for stage, eta in _STAGES.items()} for method, m in members.items()}
    for method, m in members.items():
        row = m["test"].row(m["eta"])
        correct = sac_correct(m["test"], m["eta"])
        entry = {"method": method, "certified": bool(m["choice"].certified), "threshold": m["choice"].threshold,
                 "reported_threshold": m["eta"], "calibration_bound": m["choice"].bound,
                 "gmacs": row["gmacs"], "gmacs_share": row["gmacs"] / baseline_gmacs, "exit_share": row["exit_share"],
                 "test_top1": row["top1"], "test_top1_ci": [row["top1_low"], row["top1_high"]],
                 "vs_baseline": paired(base_t, correct, cfg.seed), "throughput_ratio": None, "images": n,
                 "checkpoint": str(m["ckpt"])}
        entry["stage_top1"] = {stage: 100 * float(c.mean()) for stage, c in ends[method].items()}
        if method != "sacvit":
            entry["sacvit_vs_this"] = paired(correct, sac_at_eta, cfg.seed)
            entry["sacvit_vs_this_by_stage"] = {stage: paired(c, ends["sacvit"][stage], cfg.seed)
                                                for stage, c in ends[method].items()}
        family.append(entry)
    matched = []
    for share in MATCHED_SHARES:
        etas = {method: matched_threshold(m["calibration"], share, baseline_gmacs) for method, m in members.items()}
        sac_c = sac_correct(sacvit["test"], etas["sacvit"])
        for method, m in members.items():
            row = m["test"].row(etas[method])
            item = {"target_share": share, "method": method, "threshold": etas[method],
                    "gmacs_share": row["gmacs"] / baseline_gmacs, "test_top1": row["top1"],
                    "test_top1_ci": [row["top1_low"], row["top1_high"]]}
            if method != "sacvit":
                item["sacvit_vs_this"] = paired(sac_correct(m["test"], etas[method]), sac_c, cfg.seed)
            matched.append(item)
    curves = {method: [m["test"].row(float(t)) for t in _GRID] for method, m in members.items()}
    return {"family": family, "matched": matched, "curves": curves,
            "checkpoints": {method: str(m["ckpt"]) for method, m in members.items()},
            "thresholds": {method: m["eta"] for method, m in members.items()},
            "choices": {method: m["choice"] for method, m in members.items()}}


def _wilson(correct: np.ndarray) -> tuple[float, float]:
    low, high = wilson_interval(int(correct.sum()), len(correct))
    return 100 * low, 100 * high

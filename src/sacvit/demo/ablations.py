"""Figure 3 of the paper: each design of SAC-ViT removed in turn, same stand-in, recipe and budget.

Each variant is a SAC-ViT fine-tuned with one change of its :class:`~sacvit.config.SACConfig` or of
the recipe's loss (except "no early exit", the full method evaluated with η > 1), its own η calibrated on the validation split (a window side is a model choice, so not the calibration split)
with the demo's criterion, and reported on the test split, whatever it shows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import SACConfig
from .config import DemoConfig
from .evidence import SAC_ONLY, Evidence, calibrate, paired, sac_correct
from .runs import SAC_MODEL, fine_tune

__all__ = ["ABLATIONS", "run_ablations"]

#: ``(key, label, change)``: SACConfig fields, or TrainConfig fields (the loss); ``None``: no training
#: (the full method at η > 1).
ABLATIONS: tuple[tuple[str, str, dict[str, Any] | None], ...] = (
    ("no_exit", "no early exit (η > 1)", None),
    ("no_clustering", "no clustering: whole image through SAC at full res.", {"window": 7}),
    ("no_reuse", "no feature reuse", {"reuse": False}),
    ("no_kl", "no KL term", {"kl_weight": 0.0}),
    ("full_attention", "full attention over the SAC tokens", {"attention": "full"}),
    ("center_window", "centre window instead of the GCA window", {"window_policy": "center"}),
    ("random_window", "random window instead of the GCA window", {"window_policy": "random"}),
    ("window_3", "window side m = 3", {"window": 3}),
    ("window_4", "window side m = 4", {"window": 4}),
    ("window_5", "window side m = 5", {"window": 5}),
)


def run_ablations(cfg: DemoConfig, ev: Evidence, ckpt: dict[str, Path], standin: Path, baseline_holdout,
                  main_test, main_eta: float, main_met: bool) -> list[dict[str, Any]]:
    """Train (or reuse) every variant and return one row per variant, the full method first.

    Each row holds the test numbers at the variant's own η and, in ``holdout_*``, what that η
    reached on the validation split (where a window side may be chosen, never on the test split).
    ``criterion_met`` is whether that η was certified (the full method's: ``main_met``, from the
    calibration split), ``None`` for "no early exit", whose η > 1 is not chosen.
    """
    base_t = ev.plain(ckpt["baseline"], "test")
    main_window = {**cfg.sac}.get("window", SACConfig().window)
    main_holdout = ev.stages(ckpt["sacvit"], "holdout")
    refs = {"vs_baseline": base_t, "vs_full": sac_correct(main_test, main_eta)}
    rows = [_row("SAC-ViT (every design)", "full", main_test, main_holdout, main_eta, main_met, refs, cfg.seed)]
    for key, label, change in ABLATIONS:
        if cfg.ablation_keys is not None and key not in cfg.ablation_keys:
            continue
        if change is None:
            rows.append(_row(label, key, main_test, main_holdout, SAC_ONLY, None, refs, cfg.seed))
            continue
        if change.get("window") == main_window and set(change) == {"window"}:
            continue  # the full method itself
        sac_fields = {f.name for f in dataclasses.fields(SACConfig)}
        path = fine_tune(cfg, f"ablation_{key}", SAC_MODEL, standin,
                         sac={k: v for k, v in change.items() if k in sac_fields},
                         recipe_changes={k: v for k, v in change.items() if k not in sac_fields})
        holdout = ev.stages(path, "holdout")
        choice, eta = calibrate(holdout, baseline_holdout, cfg.tolerance, cfg.delta)
        rows.append(_row(label, key, ev.stages(path, "test"), holdout, eta, choice.certified, refs, cfg.seed))
    return rows


def _row(label: str, key: str, records, holdout, eta: float, met: bool | None, refs, seed: int) -> dict[str, Any]:
    """One variant at its η; ``refs``: the per-image correctness it is paired against (the
    baseline's, and the full method's at its own η)."""
    row, correct = records.row(eta, label=label), sac_correct(records, eta)
    sac_only, ee_only, held = records.row(SAC_ONLY), records.row(0.0), holdout.row(eta)
    return {**row, "key": key, "criterion_met": met, "top1_sac_only": sac_only["top1"],
            "gmacs_sac_only": sac_only["gmacs"], "top1_ee_only": ee_only["top1"],
            "holdout_top1": held["top1"], "holdout_gmacs": held["gmacs"],
            **{name: paired(ref, correct, seed) for name, ref in refs.items()}}

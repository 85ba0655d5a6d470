"""Measurements of the demo: per-image results on the validation, calibration and test splits, η
calibrated on the calibration split only, rows with 95% intervals, paired tests, and the check
that the calibration and test splits agree (:func:`exchangeability`).

Per-image results are cached under ``OUT/records`` keyed by the checkpoint's SHA-256, the split
and the window policy, so a rerun of the demo recomputes nothing that has not changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.calibrate import Choice, certified_choice
from ..engine.evaluate import SAC_ONLY, CascadeRecords, StageRecords, collect, collect_cascade, plain_correct
from ..io.checkpoint import load_checkpoint, read_metadata
from ..stats import compare, gap, ks_two_sample, wilson_interval
from .standin import sha256

__all__ = ["Evidence", "calibrate", "plain_row"]


def model_identity(ckpt: Path) -> str:
    """A digest of what a checkpoint computes: its weights and model definition, not its default η.

    Storing a calibrated η in the metadata (``update_metadata``) keeps the cached records valid.
    """
    meta = read_metadata(ckpt)
    if not meta.weights_sha256:
        return sha256(ckpt)
    sac = {k: v for k, v in (meta.sac_config.to_dict() if meta.sac_config else {}).items() if k != "threshold"}
    what = [meta.weights_sha256, meta.model_name, meta.model_kwargs, sac]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


class Evidence:
    """Cached per-image results of checkpoints on the demo's splits."""

    def __init__(self, out: Path, datasets: dict[str, Any], seed: int = 0) -> None:
        self.dir = Path(out) / "records"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.datasets, self.seed = datasets, seed

    def _key(self, ckpt: Path, split: str, tag: str) -> Path:
        return self.dir / f"{model_identity(ckpt)[:16]}_{split}_{len(self.datasets[split])}_{tag}.npz"

    def stages(self, ckpt: Path, split: str, policy: str | None = None,
               sac: dict[str, Any] | None = None) -> StageRecords:
        """Both stages of a SAC-ViT checkpoint on ``split`` (optionally with another window policy,
        or other inference-time :class:`~sacvit.config.SACConfig` fields such as the exit score)."""
        changes = {**({"window_policy": policy} if policy else {}), **(sac or {})}
        tag = policy or "own"
        if sac:
            tag += "-" + "-".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(sac.items()))
        path = self._key(ckpt, split, f"stages-{tag}")
        if path.is_file():
            return StageRecords.load(path)
        model, _ = load_checkpoint(ckpt)
        if changes:
            model.sac_config = dataclasses.replace(model.sac_config, **changes)
        torch.manual_seed(self.seed)  # the random window policy draws from the global generator
        records = collect(model, self.datasets[split])
        records.save(path)
        return records

    def records(self, ckpt: Path, split: str):
        """The per-image records of an adaptive checkpoint: both stages of a SAC-ViT-family model,
        every stage of a DVT cascade."""
        if read_metadata(ckpt).model_name.startswith("dvt_"):
            return self.cascade(ckpt, split)
        return self.stages(ckpt, split)

    def cascade(self, ckpt: Path, split: str):
        """Every stage of a DVT checkpoint on ``split``."""
        path = self._key(ckpt, split, "cascade")
        if path.is_file():
            return CascadeRecords.load(path)
        model, _ = load_checkpoint(ckpt)
        records = collect_cascade(model, self.datasets[split])
        records.save(path)
        return records

    def plain(self, ckpt: Path, split: str) -> np.ndarray:
        """Per-image correctness of a plain ViT checkpoint on ``split``."""
        path = self._key(ckpt, split, "plain")
        if path.is_file():
            with np.load(path) as f:
                return f["correct"]
        model, _ = load_checkpoint(ckpt)
        correct = plain_correct(model, self.datasets[split])
        np.savez(path, correct=correct)
        return correct


def calibrate(records: StageRecords, reference_correct: np.ndarray, tolerance: float,
              delta: float = 0.05) -> tuple[Choice, float]:
    """η on calibration records: the cheapest one *certified* within ``tolerance`` points of the
    reference (the baseline's per-image results on the same images) with probability ≥ 1 − δ.

    Returns:
        The choice and the η to report: the certified one, or SAC only (no early exit) when
        nothing is certified — the miss is reported (``choice.certified`` is False), not hidden.
    """
    choice = certified_choice(records, reference_correct, max_drop=tolerance, delta=delta)
    return choice, choice.threshold if choice.certified else SAC_ONLY


def plain_row(label: str, mode: str, correct: np.ndarray, gmacs: float) -> dict[str, Any]:
    """A row of a plain model: top-1 with its 95% interval and its GMACs."""
    n, k = len(correct), int(correct.sum())
    low, high = wilson_interval(k, n)
    return {"label": label, "mode": mode, "threshold": None, "top1": 100 * k / n, "top1_low": 100 * low,
            "top1_high": 100 * high, "exit_share": None, "top1_exited": None, "top1_sac": None,
            "gmacs": gmacs, "images": n}


def sac_correct(records: StageRecords, threshold: float) -> np.ndarray:
    """Per-image correctness of SAC-ViT at ``threshold``."""
    return records.at(threshold)[1]


def paired(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """B vs A on the same images: the difference with its paired-bootstrap 95% interval and McNemar's p."""
    return compare(a, b, seed=seed).to_dict()


def exchangeability(eta: float, labels: dict[str, np.ndarray], baseline: dict[str, np.ndarray],
                    sac: dict[str, StageRecords]) -> dict[str, Any]:
    """Do the calibration and test splits agree? The guarantee of a certified η transfers to the
    test split only if the two are drawn alike; this measures it on the run's own records.

    Args:
        eta: the certified (reported) η.
        labels, baseline, sac: per split (``"calibration"``, ``"test"``): the labels, the baseline's
            per-image correctness and SAC-ViT's records.

    Returns:
        ``diff_gap``: the gap between the two splits' paired difference (SAC-ViT at η − baseline),
        with a 95% interval and p (:func:`sacvit.stats.gap`); ``sac_only_gap``, ``ee_gap`` and
        ``baseline_gap`` (each model's top-1 on calibration − test); ``confidence_ks``: the EE
        confidence distributions (two-sample KS statistic, p); ``per_class``: per class, each split's
        paired difference and the exit share.
    """
    (cal, test), zeros = ("calibration", "test"), {k: np.zeros(len(v), bool) for k, v in baseline.items()}
    exited, at = {}, {}
    for k in (cal, test):
        exited[k], at[k], _ = sac[k].at(eta)  # the exit rule of predict (float32 comparison)
    ks, p = ks_two_sample(sac[cal].confidence, sac[test].confidence)
    per_class = []
    for c in sorted(set(np.asarray(labels[cal]).tolist()) | set(np.asarray(labels[test]).tolist())):
        item: dict[str, Any] = {"class": int(c)}
        for k in (cal, test):
            m = np.asarray(labels[k]) == c
            item[k] = {"images": int(m.sum()), "diff": 100 * float(at[k][m].mean() - baseline[k][m].mean()),
                       "exit_share": float(exited[k][m].mean())} if m.any() else None
        per_class.append(item)
    return {"threshold": eta,
            "diff_gap": gap(baseline[cal], at[cal], baseline[test], at[test]).to_dict(),
            "sac_only_gap": gap(zeros[cal], sac[cal].correct_sac, zeros[test], sac[test].correct_sac).to_dict(),
            "ee_gap": gap(zeros[cal], sac[cal].correct_ee, zeros[test], sac[test].correct_ee).to_dict(),
            "baseline_gap": gap(zeros[cal], baseline[cal], zeros[test], baseline[test]).to_dict(),
            "confidence_ks": {"statistic": ks, "p_value": p},
            "exit_share": {k: float(exited[k].mean()) for k in (cal, test)},
            "per_class": per_class}


__all__ += ["sac_correct", "paired", "exchangeability", "SAC_ONLY"]

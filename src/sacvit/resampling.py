"""Does the certificate hold? Resampling calibration sets from a pool whose curve is the truth.

:func:`resample_check` draws calibration sets from a pool of per-image records (the population),
applies each calibration rule of :mod:`sacvit.certify` and scores the returned η by its true drop
on the whole pool: the certified rule's violation rate must stay ≤ δ (within Monte-Carlo error).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from .certify import _agreement_threshold, _certified_threshold, _estimate_threshold, _prepare, drop_loss

__all__ = ["RuleCheck", "ResampleCheck", "resample_check"]


@dataclass
class RuleCheck:
    """One rule under resampling: the share of draws whose η has a true drop > ε, its Monte-Carlo
    standard error, the share of draws returning an η, and the mean true GMACs at the returned η as
    a share of SAC-only GMACs (None when no draw returned one)."""

    violation_rate: float
    se: float
    returned_rate: float
    gmacs_share: float | None


@dataclass
class ResampleCheck:
    n_cal: int
    draws: int
    max_drop: float
    delta: float
    test: str
    rules: dict[str, RuleCheck] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def resample_check(pool_confidence, pool_correct_ee, pool_correct_sac, pool_reference_correct, pool_gmacs_ee,
                   pool_gmacs_sac, *, n_cal: int, draws: int = 200, max_drop: float = 0.5, delta: float = 0.05,
                   rules: Sequence[str] = ("certified", "estimate"), test: str = "betting", seed: int = 0,
                   pool_agree_ee=None, grid: int | Sequence[float] = 200) -> ResampleCheck:
    """Does the guarantee hold? The pool is the population (its curve is the true curve): draw
    ``draws`` calibration sets of ``n_cal`` images with replacement, apply each rule
    (``"certified"``: :func:`certify` with ``test``; ``"estimate"``: :func:`estimate_rule`;
    ``"agreement"``: :func:`certify_agreement`, needs ``pool_agree_ee``, and its violation is a
    true share of disagreeing exits > ε) and score the returned η on the whole pool."""
    c32, ee, sac, ref, g_ee, g_sac = _prepare(pool_confidence, pool_correct_ee, pool_correct_sac,
                                              pool_reference_correct, pool_gmacs_ee, pool_gmacs_sac)
    disagree = None if pool_agree_ee is None else ~_prepare(pool_confidence, pool_agree_ee)[1].astype(bool)
    eps, rng, found = max_drop / 100, np.random.default_rng(seed), {r: [] for r in rules}
    for _ in range(draws):
        i = rng.integers(0, len(c32), n_cal)
        for r in rules:
            if r == "certified":
                thr, _, best = _certified_threshold(c32[i], ref[i], ee[i], sac[i], g_ee[i], g_sac[i], eps, delta,
                                                    test, grid, 0, delta / 10)
            elif r == "agreement":
                thr, _, best = _agreement_threshold(c32[i], ~disagree[i], g_ee[i], g_sac[i], eps, delta, grid)
            elif r == "estimate":
                t = _estimate_threshold(c32[i], ref[i], ee[i], sac[i], g_ee[i], g_sac[i], eps)
                thr, best = [t], None if t is None else 0
            else:
                raise ValueError(f"unknown rule {r!r}")
            if best is not None:
                ex = c32 >= np.float32(thr[best])
                true = np.mean(ex & disagree) if r == "agreement" else np.mean(np.where(ex, drop_loss(ref, ee),
                                                                                        drop_loss(ref, sac)))
                found[r].append((true > eps + 1e-12, np.where(ex, g_ee, g_sac).mean() / g_sac.mean()))
    out = ResampleCheck(n_cal, draws, max_drop, delta, test)
    for r, hits in found.items():
        rate = sum(h[0] for h in hits) / draws
        out.rules[r] = RuleCheck(float(rate), math.sqrt(rate * (1 - rate) / draws), len(hits) / draws,
                                 float(np.mean([h[1] for h in hits])) if hits else None)
    return out

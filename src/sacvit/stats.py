"""Statistics for honest accuracy claims: intervals for one accuracy, paired tests for two.

* :func:`wilson_interval` — 95% (by default) Wilson score interval of an accuracy ``k / n``;
* :func:`mcnemar` — exact McNemar test of two classifiers on the same images (two-sided
  binomial test on the discordant pairs);
* :func:`paired_bootstrap` — percentile interval of the accuracy difference of two classifiers
  on the same images, resampling images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Paired", "wilson_interval", "mcnemar", "paired_bootstrap", "compare"]


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n`` (``z = 1.96``: 95%), as fractions."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    log_half = n * math.log(0.5)
    tail = sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half)
               for i in range(k + 1))
    return min(1.0, 2 * tail)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test: ``(b_only, a_only, p)`` with the counts of images only B / only A gets right."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired results must have the same length, got {a.shape} and {b.shape}")
    b_only, a_only = int((b & ~a).sum()), int((a & ~b).sum())
    return b_only, a_only, _binom_two_sided(b_only, b_only + a_only)


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, samples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``acc(B) − acc(A)`` (fractions), resampling the shared images."""
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired results must be non-empty and of the same length")
    diff = b - a
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for s in range(0, samples, 1000):  # chunks keep the memory small on 50k-image test sets
        k = min(1000, samples - s)
        means[s:s + k] = diff[rng.integers(0, diff.size, size=(k, diff.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass
class Paired:
    """B compared with A on the same images (accuracies and differences in points)."""

    top1_a: float
    top1_b: float
    diff: float
    diff_low: float
    diff_high: float
    b_only: int
    a_only: int
    p_value: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def compare(correct_a: np.ndarray, correct_b: np.ndarray, samples: int = 10_000, seed: int = 0) -> Paired:
    """Accuracy difference B − A with its paired-bootstrap 95% interval and McNemar's exact p."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    lo, hi = paired_bootstrap(a, b, samples, seed)
    b_only, a_only, p = mcnemar(a, b)
    return Paired(top1_a=100 * a.mean(), top1_b=100 * b.mean(), diff=100 * (b.mean() - a.mean()),
                  diff_low=100 * lo, diff_high=100 * hi, b_only=b_only, a_only=a_only, p_value=p, n=a.size)

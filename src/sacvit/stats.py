"""Statistics for honest accuracy claims: intervals for one accuracy, paired tests for two.

* :func:`wilson_interval` — 95% (by default) Wilson score interval of an accuracy ``k / n``;
* :func:`mcnemar` — exact McNemar test of two classifiers on the same images (two-sided
  binomial test on the discordant pairs);
* :func:`paired_bootstrap` — percentile interval of the accuracy difference of two classifiers
  on the same images, resampling images;
* :func:`gap` — do two independent splits agree on a paired difference? (the calibration → test
  check of the split design);
* :func:`ks_two_sample` — do two samples (e.g. exit confidences on two splits) share a distribution?
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Gap", "Paired", "wilson_interval", "mcnemar", "paired_bootstrap", "compare", "gap", "ks_two_sample"]


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


@dataclass
class Gap:
    """A paired difference B − A measured on two independent splits, and their gap (points).

    ``gap = diff_1 − diff_2`` with a normal 95% interval from the per-image variances of both
    splits and a two-sided z-test p-value; splits drawn alike give ``|gap|`` beyond the interval
    in about 5% of draws.
    """

    diff_1: float
    diff_2: float
    gap: float
    gap_low: float
    gap_high: float
    p_value: float
    n_1: int
    n_2: int

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def gap(a_1: np.ndarray, b_1: np.ndarray, a_2: np.ndarray, b_2: np.ndarray, z: float = 1.959964) -> Gap:
    """Gap between split 1's and split 2's paired accuracy difference B − A (per-image 0/1 arrays)."""
    d1 = np.asarray(b_1, dtype=float) - np.asarray(a_1, dtype=float)
    d2 = np.asarray(b_2, dtype=float) - np.asarray(a_2, dtype=float)
    if d1.size < 2 or d2.size < 2:
        raise ValueError("gap needs at least two images per split")
    g = d1.mean() - d2.mean()
    se = math.sqrt(d1.var(ddof=1) / d1.size + d2.var(ddof=1) / d2.size)
    p = 1.0 if se == 0 else math.erfc(abs(g) / se / math.sqrt(2))
    return Gap(diff_1=float(100 * d1.mean()), diff_2=float(100 * d2.mean()), gap=float(100 * g),
               gap_low=float(100 * (g - z * se)), gap_high=float(100 * (g + z * se)), p_value=float(p),
               n_1=int(d1.size), n_2=int(d2.size))


def ks_two_sample(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov statistic and its asymptotic p-value (Kolmogorov's series)."""
    x, y = np.sort(np.asarray(x, dtype=float)), np.sort(np.asarray(y, dtype=float))
    if x.size == 0 or y.size == 0:
        raise ValueError("ks_two_sample needs two non-empty samples")
    grid = np.concatenate([x, y])
    d = float(np.max(np.abs(np.searchsorted(x, grid, "right") / x.size - np.searchsorted(y, grid, "right") / y.size)))
    en = math.sqrt(x.size * y.size / (x.size + y.size))
    lam = (en + 0.12 + 0.11 / en) * d
    p = 1.0 if lam < 1e-3 else 2 * sum((-1) ** (k - 1) * math.exp(-2 * (k * lam) ** 2) for k in range(1, 101))
    return d, float(min(max(p, 0.0), 1.0))

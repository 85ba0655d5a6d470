"""Certified early-exit thresholds: Learn-then-Test calibration with a finite-sample guarantee.

"The cheapest η whose calibration top-1 is within ε of the reference" chosen from point estimates
breaks its promise about half the time: the cheapest point that *looks* good is the one the noise
helped most. Here η is certified in the sense of Learn-then-Test (Angelopoulos, Bates, Candès,
Jordan & Lei 2021, "Learn then Test: Calibrating predictive algorithms to achieve risk control"):
with probability ≥ 1 − δ over i.i.d. calibration images, top-1 at the returned η, on images drawn
like them, is at most ε below the reference's. Jazbec et al. 2024 ("Fast yet Safe: Early-Exiting
with Risk Control") apply the same construction to early-exit networks.

* Paired loss per image: :func:`drop_loss` = 1[ref right ∧ model wrong] − 1[ref wrong ∧ model
  right] ∈ {−1, 0, 1}; its mean is the top-1 drop. Each η of a grid is a null H0(η): E[loss] ≥ ε;
  rejecting H0(η) certifies η.
* Two finite-sample-valid p-values: :func:`pvalue_betting`, a test by betting (Waudby-Smith &
  Ramdas 2023, "Estimating means of bounded random variables by betting"), and
  :func:`pvalue_exact`, an exact binomial test on the discordant pairs.
* :func:`fixed_sequence` over the grid, ordered from "SAC only" towards "everything exits": test in
  that order and stop at the first p > δ. Only the first true null met can be falsely rejected
  (the walk stops there otherwise), so P(any false certificate) ≤ δ: every rejected η is certified
  simultaneously and :func:`certify` returns the cheapest.
* Label-free variant (:func:`certify_agreement`, as in Schuster et al. 2022, CALM "Confident
  Adaptive Language Modeling"): control the share of images that exit with an EE prediction other
  than the model's own SAC-only one. That share bounds the top-1 drop w.r.t. SAC only.

Grid. ``grid=int``: about that many points evenly spaced in exit share over the distinct float32
confidences of the calibration images. It uses no labels, as is usual in LTT, but strictly the
theorem covers a grid fixed before the data: pass an array of thresholds for that;
:func:`resample_check` measures what happens in practice. Image i exits iff
``float32(c_i) >= float32(η)``. Every threshold returned is a float32 value that selects exactly
the exits that were evaluated; equal confidences always exit together.

Units: ``max_drop`` and ``bound`` are in points (%), as on the CLI; internally ε = max_drop / 100.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

__all__ = ["SAC_ONLY", "Certificate", "drop_loss", "binom_cdf",
           "clopper_pearson_upper", "pvalue_betting", "pvalue_exact", "fixed_sequence", "certify",
           "certify_agreement", "estimate_rule"]

SAC_ONLY = 1.25  # exactly representable in float32 and above any probability: nobody exits
_LOGFACT = np.zeros(1)


def drop_loss(reference_correct, correct) -> np.ndarray:
    """Per-image paired loss ``ref − model`` ∈ {−1, 0, 1} (int8); its mean is the top-1 drop."""
    return np.asarray(reference_correct, np.int8) - np.asarray(correct, np.int8)


def _log_binom_cdf(k: int, n: int, p: float) -> float:
    """log P(Bin(n, p) ≤ k), summing the log pmf (log-gamma table) with log-sum-exp."""
    global _LOGFACT
    k, n = int(math.floor(k)), int(n)
    if k < 0 or p >= 1.0:
        return 0.0 if k >= n else -math.inf
    if k >= n or p <= 0.0:
        return 0.0
    if n >= len(_LOGFACT):
        _LOGFACT = np.array([math.lgamma(i + 1.0) for i in range(max(n + 1, 2 * len(_LOGFACT)))])
    j = np.arange(k + 1)
    t = _LOGFACT[n] - _LOGFACT[j] - _LOGFACT[n - j] + j * math.log(p) + (n - j) * math.log1p(-p)
    m = float(t.max())
    return min(0.0, m + math.log(float(np.exp(t - m).sum())))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) ≤ k), accurate (relative ~1e-9) for n up to millions."""
    return math.exp(_log_binom_cdf(k, n, p))


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """Clopper–Pearson upper bound: the p with P(Bin(n, p) ≤ k) = alpha, so that P(p_true > bound)
    ≤ alpha (rounded up: bisection keeps the side where the CDF is ≤ alpha)."""
    if k >= n:
        return 1.0
    if k < 0:
        return 0.0
    if k == 0:
        return math.nextafter(-math.expm1(math.log(alpha) / n), 1.0)  # closed form, rounded up
    lo, hi, la = 0.0, 1.0, math.log(alpha)
    for _ in range(48):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _log_binom_cdf(k, n, mid) > la else (lo, mid)
    return hi


def _cp_lower(k: int, n: int, alpha: float) -> float:
    return 1.0 - clopper_pearson_upper(n - k, n, alpha) if k > 0 else 0.0


def _log_wealth(loss: np.ndarray, eps, level: float, clip: float) -> np.ndarray:
    """log K_t, t = 1…n, along the last axis of ``loss`` (rows: hypotheses), ``eps`` broadcast."""
    x = np.asarray(loss, np.float64)
    n, pad = x.shape[-1], [(0, 0)] * (x.ndim - 1) + [(1, 0)]
    t = np.arange(1, n + 1, dtype=np.float64)
    prev_mean = np.pad(np.cumsum(x, -1)[..., :-1] / t[:-1], pad)  # mean of the images before t (0 at t = 1)
    var = np.pad((0.25 + np.cumsum((x - prev_mean) ** 2, -1)) / (t + 1), pad, constant_values=0.25)[..., :-1]
    lam = np.minimum(clip, np.sqrt(2 * math.log(1 / level) / (n * var)))  # var: prior 1/4 weighing one image
    with np.errstate(divide="ignore"):
        return np.cumsum(np.log1p(lam * (np.asarray(eps, np.float64)[..., None] - x)), -1)


def pvalue_betting(loss, eps, *, level: float = 0.05, seed: int | None = 0, clip: float = 0.5):
    """Betting p-value for H0: E[loss] ≥ eps, losses in [−1, 1] (Waudby-Smith & Ramdas 2023).

    Wealth ``K_t = Π_{s≤t} (1 + λ_s (eps − x_s))`` with the predictable plug-in bet
    ``λ_s = min(clip, sqrt(2 log(1/level) / (n σ̂²_{s−1})))`` (σ̂² from the images before s), and
    p = min(1, 1 / max_t K_t). Validity: λ_s ≥ 0 is fixed before x_s is seen, so under H0
    E[1 + λ_s(eps − x_s) | past] ≤ 1, and each factor is > 0 (λ ≤ 1/2, |eps − x| < 2 for eps > −1):
    K is a non-negative supermartingale with K_0 = 1, and Ville's inequality gives
    P(max_t K_t ≥ 1/α) ≤ α for every α. ``level`` only tunes the bets. The bets do not depend on
    eps, so p falls monotonically in eps and inverting the test gives a confidence bound.

    Args:
        loss: ``(n,)``, or ``(hypotheses, n)`` for one p-value per row; eps: a float or one per row.
        seed: images are visited in the order ``default_rng(seed).permutation(n)`` (``None``: as
            given), which does not depend on their values; a uniform permutation of an i.i.d.
            sample is i.i.d. again, so a split stored in some order (e.g. by class) is fine.
    """
    if not 0 < clip <= 0.5:
        raise ValueError(f"clip must be in (0, 1/2] so that the wealth stays positive, got {clip}")
    x = np.asarray(loss)
    if seed is not None:
        x = x[..., np.random.default_rng(seed).permutation(x.shape[-1])]
    rows = np.atleast_2d(x)
    e = np.broadcast_to(np.asarray(eps, np.float64), rows.shape[:-1])
    step = max(1, 2**21 // rows.shape[-1])  # rows per block: bounded memory for large n
    top = np.concatenate([_log_wealth(rows[i:i + step], e[i:i + step], level, clip).max(-1)
                          for i in range(0, len(rows), step)])
    p = np.exp(-np.maximum(top, 0.0))
    return float(p[0]) if x.ndim == 1 else p


def _exact_from_counts(n_plus: int, n_minus: int, n: int, eps: float, gamma: float) -> float:
    d = n_plus + n_minus
    if eps == 0:
        return binom_cdf(n_plus, d, 0.5)
    d_b = clopper_pearson_upper(d, n, gamma) if eps > 0 else _cp_lower(d, n, gamma)  # the worst case for H0
    if d_b < eps or d_b == 0:
        return gamma if d_b < eps else 1.0  # d_b < eps: H0 needs d ≥ eps; d_b = 0 < -eps: nothing to reject
    return min(1.0, binom_cdf(n_plus, d, min(1.0, max(0.0, 0.5 + eps / (2 * d_b)))) + gamma)


def pvalue_exact(loss, eps: float, *, gamma: float = 0.005) -> float:
    """Exact p-value for H0: E[loss] ≥ eps from the discordant pairs of ``loss`` ∈ {−1, 0, 1}.

    With p± = P(loss = ±1), d = p₊ + p₋ and q = p₊ / d, the drop is d(2q − 1), and given the
    number D = n₊ + n₋ of discordant images, n₊ ~ Bin(D, q). eps = 0: the one-sided sign test
    P(Bin(D, 1/2) ≤ n₊). eps > 0: H0 ⇔ q ≥ 1/2 + eps/(2d), whose right side falls with d; with
    d_U the Clopper–Pearson upper bound on d at level ``gamma``, p = min(1, P(Bin(D, q₀) ≤ n₊)
    + gamma) at q₀ = 1/2 + eps/(2 d_U) (the binomial part is 0 when d_U < eps: H0 needs d ≥ eps).
    Validity: d_U is a function of D, and on the event d ≤ d_U (probability ≥ 1 − gamma) any H0
    distribution has q ≥ q₀, so conditionally on D the binomial part is stochastically ≥ uniform;
    hence P(p ≤ α) ≤ (α − gamma) + gamma = α for α ≥ gamma, and p ≥ gamma always, so p is valid at
    every level. eps < 0 is the mirror image with the lower bound on d.
    """
    x = np.asarray(loss)
    return _exact_from_counts(int((x == 1).sum()), int((x == -1).sum()), x.size, float(eps), gamma)


def _exact_bound(n_plus: int, n_minus: int, n: int, delta: float, gamma: float) -> float:
    """The smallest eps the exact test rejects at δ, in closed form: (2 q_U − 1) d_U."""
    d = n_plus + n_minus
    q_u = clopper_pearson_upper(n_plus, d, delta - gamma) if d else 1.0
    d_b = clopper_pearson_upper(d, n, gamma) if q_u >= 0.5 else _cp_lower(d, n, gamma)
    return (2 * q_u - 1) * d_b


def fixed_sequence(pvalues, delta: float) -> int:
    """Number of leading hypotheses rejected: walk in order, stop at the first p > δ (or NaN)."""
    bad = np.flatnonzero(~(np.asarray(pvalues, np.float64) <= delta))
    return int(bad[0]) if bad.size else len(pvalues)


@dataclass
class Certificate:
    """An operating point and what is known about it.

    ``certified`` means a guarantee holds. For ``rule="certified"``, ``threshold`` is None exactly
    when ``certified`` is False and the other numbers are then at SAC only. ``rule="estimate"``
    (:func:`estimate_rule`) is never certified but has a threshold when its point estimate is met.
    top1 / reference_top1 (%) are on the calibration images (None for ``test="agreement"``);
    ``bound`` is the one-sided (1 − δ) upper confidence bound in points on the drop (or, for
    agreement, on the disagreement share) at the threshold, by inverting the test — or the best
    bound on the grid when nothing is certified. ``gmacs`` is the mean per image.
    """

    threshold: float | None
    certified: bool
    rule: str
    test: str
    max_drop: float
    delta: float
    images: int
    gmacs: float
    exit_share: float
    top1: float | None
    reference_top1: float | None
    bound: float
    statement: str

    def to_dict(self) -> dict:
        return {k: v if v is None or isinstance(v, (str, bool, int)) else float(v) for k, v in asdict(self).items()}


def _prepare(confidence, *arrays) -> list[np.ndarray]:
    c = np.asarray(confidence).astype(np.float32)
    if c.ndim != 1 or c.size == 0 or not np.all((c >= 0) & (c <= 1)):
        raise ValueError("confidence must be a non-empty 1-D array of probabilities in [0, 1]")
    out = [np.asarray(a) for a in arrays]
    if any(a.shape != c.shape for a in out):
        raise ValueError(f"every per-image array must have shape {c.shape}")
    return [c, *out]


def _candidates(c32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct operating point: float32 thresholds (descending, SAC only first), exit counts."""
    u, counts = np.unique(c32, return_counts=True)
    u, k = u[::-1], np.cumsum(counts[::-1])
    mid = ((u[:-1].astype(np.float64) + u[1:]) / 2).astype(np.float32)
    mid = np.where(mid > u[1:], mid, np.nextafter(u[1:], np.float32(2)))  # rounding must not reach u[j+1]
    return np.concatenate([[np.float32(SAC_ONLY)], mid, [np.float32(0)]]).astype(np.float32), np.r_[0, k]


def _grid(c32: np.ndarray, grid) -> np.ndarray:
    if not isinstance(grid, (int, np.integer)):
        return np.unique(np.asarray(grid, np.float32))[::-1]
    thr, k = _candidates(c32)
    target = np.linspace(0, len(c32), max(int(grid), 2))  # evenly spaced exit counts: the nearest point to each
    pos = np.clip(np.searchsorted(k, target), 1, len(k) - 1)
    return thr[np.unique(np.r_[0, np.where(target - k[pos - 1] <= k[pos] - target, pos - 1, pos)])]


def _losses(c32, thr, ref, ee, sac, g_ee, g_sac) -> tuple[np.ndarray, np.ndarray]:
    """``(thresholds, N)`` paired losses and mean GMACs per threshold (float32 comparison)."""
    exited = c32[None, :] >= np.asarray(thr, np.float32)[:, None]
    return (np.where(exited, drop_loss(ref, ee), drop_loss(ref, sac)).astype(np.int8),
            np.where(exited, g_ee, g_sac).mean(1))


def _walk(loss: np.ndarray, eps: float, delta: float, test: str, seed, gamma: float) -> int:
    """Fixed-sequence test over the rows of ``loss``, computing p-values only until the first failure."""
    n, done = loss.shape[1], 0
    if test == "betting":
        x = loss[:, np.random.default_rng(seed).permutation(n)] if seed is not None else loss
        step = max(8, 2**21 // n)
        while done < len(x):
            block = x[done:done + step]
            k = fixed_sequence(pvalue_betting(block, eps, level=delta, seed=None), delta)
            done += k
            if k < len(block):
                break
        return done
    if test != "exact":
        raise ValueError(f"test must be 'betting' or 'exact', got {test!r}")
    n_plus, n_minus = (loss == 1).sum(1), (loss == -1).sum(1)
    while done < len(loss) and _exact_from_counts(int(n_plus[done]), int(n_minus[done]), n, eps, gamma) <= delta:
        done += 1
    return done


def _bound(loss: np.ndarray, test: str, delta: float, seed, gamma: float) -> np.ndarray:
    """Per row, the (1 − δ) upper confidence bound on the drop (a fraction) by inverting ``test``."""
    if test == "betting":  # bisection: the betting p-value falls monotonically in eps
        x = np.atleast_2d(loss)
        lo, hi = np.full(len(x), -1.0), np.full(len(x), 1.0)
        for _ in range(24):
            ok = pvalue_betting(x, (lo + hi) / 2, level=delta, seed=seed) <= delta
            lo, hi = np.where(ok, lo, (lo + hi) / 2), np.where(ok, (lo + hi) / 2, hi)
        return hi
    return np.array([_exact_bound(int((r == 1).sum()), int((r == -1).sum()), r.size, delta, gamma)
                     for r in np.atleast_2d(loss)])


def _point(c32, thr, ee, sac, g_ee, g_sac) -> tuple[float, float, float]:
    """Mean GMACs, exit share and top-1 (%) at ``thr``."""
    ex = c32 >= np.float32(thr)
    return float(np.where(ex, g_ee, g_sac).mean()), float(ex.mean()), 100 * float(np.where(ex, ee, sac).mean())


def _certified_threshold(c32, ref, ee, sac, g_ee, g_sac, eps, delta, test, grid, seed, gamma):
    thr = _grid(c32, grid)
    loss, gmacs = _losses(c32, thr, ref, ee, sac, g_ee, g_sac)
    k = _walk(loss, eps, delta, test, seed, gamma)
    return thr, loss, (int(np.argmin(gmacs[:k])) if k else None)  # all k are certified at once: the cheapest


def certify(confidence, correct_ee, correct_sac, reference_correct, gmacs_ee, gmacs_sac, *, max_drop: float = 0.5,
            delta: float = 0.05, test: str = "betting", grid: int | Sequence[float] = 200, seed: int | None = 0,
            gamma: float | None = None) -> Certificate:
    """The cheapest η certified to lose at most ``max_drop`` points of top-1 against the reference.

    Args:
        confidence, correct_ee, correct_sac, reference_correct, gmacs_ee, gmacs_sac: ``(N,)`` per
            calibration image (gmacs_sac: the total cost of an image that goes through both stages).
        max_drop: ε in points (0.5 = half a point of top-1); delta: the error probability δ.
        test: ``"betting"`` (:func:`pvalue_betting`) or ``"exact"`` (:func:`pvalue_exact`).
        grid: number of thresholds (see the module docstring) or a fixed array of thresholds.
        seed: the betting test's image order; gamma: the exact test's level split (default δ/10).
    """
    c32, ee, sac, ref, g_ee, g_sac = _prepare(confidence, correct_ee, correct_sac, reference_correct, gmacs_ee,
                                              gmacs_sac)
    gamma = delta / 10 if gamma is None else gamma
    if not 0 < gamma < delta < 1:
        raise ValueError(f"need 0 < gamma < delta < 1, got gamma={gamma}, delta={delta}")
    thr, loss, best = _certified_threshold(c32, ref, ee, sac, g_ee, g_sac, max_drop / 100, delta, test, grid, seed,
                                           gamma)
    n, ref_top1, t = len(c32), 100 * float(np.mean(ref)), None if best is None else float(thr[best])
    bound = 100 * float(_bound(loss if t is None else loss[best], test, delta, seed, gamma).min())
    g, share, top1 = _point(c32, SAC_ONLY if t is None else t, ee, sac, g_ee, g_sac)
    if t is None:
        text = (f"Not certified: on the {n} calibration images no threshold is shown to stay within {max_drop:g} pt "
                f"of the reference's top-1 at δ = {delta:g}; the best {1 - delta:.0%} upper bound on the drop over "
                f"the grid is {bound:.3g} pt ({test} test). More images or a larger max_drop are needed.")
    else:
        text = (f"With probability ≥ {1 - delta:.0%} over the {n} calibration images, images drawn like them have "
                f"top-1 at η = {t:.7g} at most {max_drop:g} pt below the reference's ({test} test, Learn-then-Test "
                f"fixed sequence over {len(thr)} thresholds). Here: {top1:.2f}% vs {ref_top1:.2f}%, {share:.1%} "
                f"exit at EE, {g:.4g} GMACs/image, {1 - delta:.0%} upper bound on the drop {bound:.3g} pt.")
    return Certificate(t, t is not None, "certified", test, max_drop, delta, n, g, share, top1, ref_top1, bound, text)


def _agreement_threshold(c32, agree, g_ee, g_sac, eps, delta, grid) -> tuple[np.ndarray, np.ndarray, int | None]:
    thr = _grid(c32, grid)
    exited = c32[None, :] >= thr[:, None]
    k, j = (exited & ~agree.astype(bool)).sum(1), 0
    while j < len(thr) and binom_cdf(int(k[j]), len(c32), eps) <= delta:
        j += 1
    return thr, k, int(np.argmin(np.where(exited[:j], g_ee, g_sac).mean(1))) if j else None


def certify_agreement(confidence, agree_ee, gmacs_ee, gmacs_sac, *, max_drop: float = 0.5, delta: float = 0.05,
                      grid: int | Sequence[float] = 200) -> Certificate:
    """Label-free: the cheapest η at which at most ``max_drop`` % of images exit with an EE prediction
    other than the model's own SAC-only prediction, w.p. ≥ 1 − δ (Schuster et al. 2022).

    ``agree_ee[i]``: the EE prediction equals the SAC-only one. Loss 1[exited ∧ disagree], H0:
    P(loss) ≥ ε, exact p-value P(Bin(n, ε) ≤ k) (valid: under H0 k ~ Bin(n, P) is stochastically
    ≥ Bin(n, ε)). Top-1 at η can fall below SAC-only top-1 only on such images, so this bounds the
    drop w.r.t. SAC only — relative to the model's own predictions, with no claim about accuracy
    (``top1`` and ``reference_top1`` are None; ``bound`` is on the disagreement share, in points).
    """
    c32, agree, g_ee, g_sac = _prepare(confidence, agree_ee, gmacs_ee, gmacs_sac)
    n = len(c32)
    thr, k, best = _agreement_threshold(c32, agree, g_ee, g_sac, max_drop / 100, delta, grid)
    t = None if best is None else float(thr[best])
    bound = 100 * clopper_pearson_upper(int(k.min() if t is None else k[best]), n, delta)
    g, share, _ = _point(c32, SAC_ONLY if t is None else t, agree, agree, g_ee, g_sac)
    text = (f"Not certified: with {n} images the {1 - delta:.0%} upper bound on the share of exits that disagree "
            f"with SAC only is at best {bound:.3g} pt > {max_drop:g} pt." if t is None else
            f"With probability ≥ {1 - delta:.0%} over the {n} calibration images, at η = {t:.7g} at most "
            f"{max_drop:g}% of images drawn like them exit with a prediction other than the model's own SAC-only "
            f"one, so top-1 is at most {max_drop:g} pt below SAC only (no labels used: relative to the model's "
            f"own SAC-only predictions, not to accuracy). Here: {share:.1%} exit, {g:.4g} GMACs/image.")
    return Certificate(t, t is not None, "certified", "agreement", max_drop, delta, n, g, share, None, None, bound,
                       text)


def _estimate_threshold(c32, ref, ee, sac, g_ee, g_sac, eps) -> float | None:
    """The old rule over every distinct point: the cheapest η whose calibration drop is ≤ eps."""
    thr, k = _candidates(c32)
    o = np.argsort(-c32, kind="stable")

    def swap(a, b):  # per exit count j: sum of a over the j most confident images + b over the rest
        return np.r_[0, np.cumsum(a[o])] + b.sum() - np.r_[0, np.cumsum(b[o])]

    drop, g = swap(drop_loss(ref, ee), drop_loss(ref, sac))[k] / len(c32), swap(g_ee, g_sac)[k]
    ok = np.flatnonzero(drop <= eps + 1e-12)
    return float(thr[ok[np.argmin(g[ok])]]) if ok.size else None


def estimate_rule(confidence, correct_ee, correct_sac, reference_correct, gmacs_ee, gmacs_sac, *, max_drop: float = 0.5,
                  delta: float = 0.05, test: str = "betting", seed: int | None = 0) -> Certificate:
    """The point-estimate rule, for contrast: the cheapest η (over every distinct operating point)
    whose calibration top-1 is within ``max_drop`` points of the reference's. No guarantee:
    ``certified`` is False and ``rule="estimate"``; ``threshold`` is None only when no point meets
    it. ``bound``: the ``test``'s (1 − δ) upper bound on the drop at that η (at SAC only if None)."""
    c32, ee, sac, ref, g_ee, g_sac = _prepare(confidence, correct_ee, correct_sac, reference_correct, gmacs_ee,
                                              gmacs_sac)
    t = _estimate_threshold(c32, ref, ee, sac, g_ee, g_sac, max_drop / 100)
    loss, _ = _losses(c32, [SAC_ONLY if t is None else t], ref, ee, sac, g_ee, g_sac)
    bound = 100 * float(_bound(loss, test, delta, seed, delta / 10)[0])
    g, share, top1 = _point(c32, SAC_ONLY if t is None else t, ee, sac, g_ee, g_sac)
    ref_top1 = 100 * float(np.mean(ref))
    text = (f"Point estimate: no threshold is within {max_drop:g} pt of the reference on these images." if t is None
            else f"Point estimate, no guarantee: on the {len(c32)} calibration images top-1 at η = {t:.7g} is "
            f"{ref_top1 - top1:.3g} pt below the reference's (at most {max_drop:g} pt), but the {1 - delta:.0%} upper "
            f"bound on the drop is {bound:.3g} pt.")
    return Certificate(t, False, "estimate", test, max_drop, delta, len(c32), g, share, top1, ref_top1, bound, text)

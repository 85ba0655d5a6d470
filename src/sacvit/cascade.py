"""A cascade of S stages with one exit threshold η (DVT), and its certified η.

An image is answered by the first stage ``s < S − 1`` whose top-1 softmax probability reaches η,
else by the last stage (:func:`stage_at`; float32 comparison, as ``predict``). Unlike two stages,
the answering stage is not monotone in one confidence, so the thresholds tested are a fixed grid
of quantiles of the exit confidences (:func:`grid`), walked from "no exit" (η > 1) downwards in the
same Learn-then-Test fixed sequence as :func:`sacvit.certify.certify`, with the same paired loss
``1[reference right ∧ cascade wrong] − 1[reference wrong ∧ cascade right]`` and the same p-values.
"""

from __future__ import annotations

import numpy as np

from .certify import SAC_ONLY, Certificate, _bound, _walk, drop_loss

__all__ = ["stage_at", "grid", "certify_cascade"]


def stage_at(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """``(N,)`` index of the stage that answers each image at η (``confidence``: ``(N, S)``)."""
    c = np.asarray(confidence, np.float32)
    hit = c[:, :-1] >= np.float32(threshold)
    return np.where(hit.any(1), hit.argmax(1), c.shape[1] - 1)


def grid(confidence: np.ndarray, points: int = 200) -> np.ndarray:
    """Descending float32 thresholds: "no exit" (η > 1), quantiles of the exit confidences, then 0."""
    c = np.asarray(confidence, np.float32)[:, :-1].ravel()
    q = np.quantile(c, np.linspace(1.0, 0.0, max(int(points), 2))).astype(np.float32)
    return np.unique(np.r_[np.float32(SAC_ONLY), q, np.float32(0)])[::-1]


def certify_cascade(confidence, correct, reference_correct, gmacs, *, max_drop: float = 0.5, delta: float = 0.05,
                    test: str = "betting", points: int = 200, seed: int | None = 0,
                    gamma: float | None = None) -> Certificate:
    """The cheapest η certified to lose at most ``max_drop`` top-1 points against the reference.

    Args:
        confidence, correct, gmacs: ``(N, S)`` per calibration image and stage: top-1 probability,
            whether the stage's prediction is right, and the total GMACs when that stage answers.
        reference_correct: ``(N,)`` the reference's correctness on the same images.
        max_drop, delta, test, seed, gamma: as :func:`sacvit.certify.certify`.
    """
    c, ok, g = (np.asarray(a) for a in (confidence, correct, gmacs))
    ref = np.asarray(reference_correct, bool)
    if c.ndim != 2 or c.shape[1] < 2 or ok.shape != c.shape or g.shape != c.shape or ref.shape != c.shape[:1]:
        raise ValueError("confidence, correct and gmacs must be (N, S ≥ 2) and reference_correct (N,)")
    gamma = delta / 10 if gamma is None else gamma
    thr = grid(c, points)
    rows = np.arange(len(c))
    stages = [stage_at(c, t) for t in thr]
    loss = np.stack([drop_loss(ref, ok[rows, s]) for s in stages]).astype(np.int8)
    cost = np.array([g[rows, s].mean() for s in stages])
    k = _walk(loss, max_drop / 100, delta, test, seed, gamma)
    best = int(np.argmin(cost[:k])) if k else None
    at = 0 if best is None else best  # thr[0] is "no exit": the full cascade
    bound = 100 * float(_bound(loss if best is None else loss[best], test, delta, seed, gamma).min())
    s = stages[at]
    top1, share, n = 100 * float(ok[rows, s].mean()), float((s == 0).mean()), len(c)
    t = None if best is None else float(thr[best])
    if t is None:
        text = (f"Not certified: on the {n} calibration images no threshold keeps the cascade within {max_drop:g} pt "
                f"of the reference at δ = {delta:g}; best {1 - delta:.0%} upper bound on the drop {bound:.3g} pt.")
    else:
        text = (f"With probability ≥ {1 - delta:.0%} over the {n} calibration images, images drawn like them have "
                f"top-1 at η = {t:.7g} (one threshold at every exit) at most {max_drop:g} pt below the reference's "
                f"({test} test, fixed sequence over {len(thr)} thresholds); upper bound on the drop {bound:.3g} pt.")
    return Certificate(t, t is not None, "certified", test, max_drop, delta, n, float(cost[at]), share, top1,
                       100 * float(ref.mean()), bound, text)

"""The split-agreement statistics: a gap interval that covers at its level, a KS test that rejects at its level."""

import numpy as np
import pytest

from sacvit.stats import gap, ks_two_sample


def _split(rng, n, p_a, p_b):
    return rng.random(n) < p_a, rng.random(n) < p_b


def test_gap_interval_covers_when_splits_are_drawn_alike():
    rng = np.random.default_rng(0)
    misses = 0
    for _ in range(400):
        a1, b1 = _split(rng, 1000, 0.72, 0.73)
        a2, b2 = _split(rng, 1000, 0.72, 0.73)
        g = gap(a1, b1, a2, b2)
        assert g.gap_low <= g.gap <= g.gap_high and g.gap == pytest.approx(g.diff_1 - g.diff_2)
        misses += not g.gap_low <= 0 <= g.gap_high
    assert 0.02 <= misses / 400 <= 0.09  # 5% ± Monte-Carlo error


def test_gap_finds_a_real_shift():
    rng = np.random.default_rng(1)
    a1, b1 = _split(rng, 20_000, 0.70, 0.75)  # +5 pt on split 1
    a2, b2 = _split(rng, 20_000, 0.70, 0.70)  # none on split 2
    g = gap(a1, b1, a2, b2)
    assert g.p_value < 1e-3 and g.gap_low > 0
    with pytest.raises(ValueError, match="two images"):
        gap(a1[:1], b1[:1], a2, b2)


def test_ks_two_sample():
    assert ks_two_sample(np.array([0.0, 1.0]), np.array([2.0, 3.0]))[0] == 1.0
    rng = np.random.default_rng(2)
    rejections = sum(ks_two_sample(rng.random(500), rng.random(500))[1] < 0.05 for _ in range(300))
    assert rejections / 300 <= 0.09  # at its level (asymptotic p: slightly conservative)
    d, p = ks_two_sample(rng.random(2000), rng.random(2000) ** 1.3)
    assert p < 1e-4 and 0 < d < 1

"""Choosing η on held-out records: the curve is exact and every budget is met."""

import numpy as np
import pytest
import torch

from sacvit.engine.calibrate import choose_threshold, curve
from sacvit.engine.evaluate import StageRecords


def records(n=200, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    if ties:
        conf = np.round(conf, 1)
    correct_ee = rng.random(n) < conf  # confident images are right more often
    correct_sac = rng.random(n) < 0.8
    return StageRecords(confidence=conf.astype(np.float32), correct_ee=correct_ee, correct_sac=correct_sac,
                        gmacs_ee=np.full(n, 1.0, np.float32), gmacs_sac=np.full(n, 3.5, np.float32))


@pytest.mark.parametrize("ties", [False, True])
def test_curve_equals_the_threshold_rule(ties):
    r = records(ties=ties)
    c = curve(r)
    assert c.exit_share[0] == 0 and c.exit_share[-1] == 1
    assert np.all(np.diff(c.threshold) < 0) and np.all(np.diff(c.gmacs) < 0)
    for t, top1, g, e in zip(c.threshold, c.top1, c.gmacs, c.exit_share):
        row = r.row(float(t))
        assert row["top1"] == pytest.approx(top1) and row["gmacs"] == pytest.approx(g)
        assert row["exit_share"] == pytest.approx(e)


def test_each_budget_is_met_and_is_the_best_that_does():
    r = records()
    c = curve(r)
    pick = choose_threshold(r, budget_gmacs=2.0)
    assert r.row(pick.threshold)["gmacs"] <= 2.0
    assert pick.top1 == pytest.approx(c.top1[c.gmacs <= 2.0].max())
    pick = choose_threshold(r, max_drop=1.0)
    assert r.row(pick.threshold)["top1"] >= c.top1[0] - 1.0
    assert pick.gmacs == pytest.approx(c.gmacs[c.top1 >= c.top1[0] - 1.0].min())
    pick = choose_threshold(r, max_drop=0.5, reference_top1=70.0)
    assert pick.top1 >= 69.5
    pick = choose_threshold(r, exit_share=0.77)
    assert r.row(pick.threshold)["exit_share"] >= 0.77


def test_impossible_budgets_say_so():
    r = records()
    with pytest.raises(ValueError, match="no threshold meets 0.5 GMACs"):
        choose_threshold(r, budget_gmacs=0.5)
    with pytest.raises(ValueError, match="within 1 points of 99.00%"):
        choose_threshold(r, max_drop=1, reference_top1=99.0)
    with pytest.raises(ValueError, match="exactly one"):
        choose_threshold(r, budget_gmacs=2.0, exit_share=0.5)


def test_thresholds_exit_exactly_their_images_in_float32():
    """Neighbouring confidences one float32 step apart: the stored η must not exit the lower one too."""
    base = np.float32(0.7)
    steps = [base]
    for _ in range(40):
        steps.append(np.nextafter(steps[-1], np.float32(1.0), dtype=np.float32))
    conf = np.array(steps + [np.float32(0.2), np.float32(0.9)], dtype=np.float32)
    rng = np.random.default_rng(0)
    records = StageRecords(confidence=conf, correct_ee=rng.random(conf.size) < 0.5,
                           correct_sac=rng.random(conf.size) < 0.5, gmacs_ee=np.full(conf.size, 1.0),
                           gmacs_sac=np.full(conf.size, 3.0))
    c = curve(records)
    for thr, share in zip(c.threshold, c.exit_share):
        assert np.float32(thr) == thr or thr > 1  # a float32 value
        exited = torch.from_numpy(conf) >= thr  # what predict compares (float32 tensor vs Python float)
        assert int(exited.sum()) == round(share * conf.size)
        assert int((records.at(thr)[0]).sum()) == round(share * conf.size)

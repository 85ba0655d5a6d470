"""One exit threshold over a cascade of stages (DVT): the answering stage and its certified η."""

import numpy as np
import pytest

from sacvit.cascade import certify_cascade, grid, stage_at
from sacvit.engine.calibrate import certified_choice
from sacvit.engine.evaluate import CascadeRecords


def test_the_first_confident_stage_answers_and_the_last_otherwise():
    conf = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.9], [0.1, 0.2, 0.99], [0.5, 0.5, 0.0]], np.float32)
    assert stage_at(conf, 0.7).tolist() == [0, 1, 2, 2]
    assert stage_at(conf, 0.5).tolist() == [0, 1, 2, 0]
    assert stage_at(conf, 0.0).tolist() == [0, 0, 0, 0]
    assert stage_at(conf, 1.25).tolist() == [2, 2, 2, 2]  # the last stage's own confidence never exits
    g = grid(conf)
    assert g[0] > 1 and g[-1] == 0 and np.all(np.diff(g) < 0)


def _population(n, rng):
    """Three stages, each more accurate and more expensive; confident images are right more often."""
    conf = rng.uniform(0.2, 1.0, size=(n, 3)).astype(np.float32)
    acc = np.array([0.70, 0.80, 0.88])
    correct = rng.uniform(size=(n, 3)) < np.clip(acc + 0.5 * (conf - 0.6), 0, 1)
    gmacs = np.broadcast_to(np.array([0.25, 0.6, 1.6]), (n, 3)).copy()
    reference = rng.uniform(size=n) < 0.88
    return conf, correct, gmacs, reference


def test_certified_eta_keeps_its_promise_on_resampled_calibration_sets():
    rng = np.random.default_rng(0)
    conf, correct, gmacs, ref = _population(200_000, rng)
    eps, delta, draws, violations, returned = 0.02, 0.1, 60, 0, 0
    rows = np.arange(len(conf))
    for d in range(draws):
        idx = rng.integers(0, len(conf), size=3000)
        cert = certify_cascade(conf[idx], correct[idx], ref[idx], gmacs[idx], max_drop=100 * eps, delta=delta,
                               points=60, seed=d)
        if cert.threshold is None:
            continue
        returned += 1
        s = stage_at(conf, cert.threshold)
        true_drop = ref.mean() - correct[rows, s].mean()
        violations += true_drop > eps
    assert returned >= draws // 2  # it has power: most draws certify an η
    assert violations / draws <= delta + 3 * np.sqrt(delta * (1 - delta) / draws)


def test_nothing_certified_when_every_exit_loses_and_the_choice_says_so():
    rng = np.random.default_rng(1)
    n = 2000
    conf = np.column_stack([np.full(n, 0.99), np.full(n, 0.99), rng.uniform(size=n)]).astype(np.float32)
    correct = np.column_stack([np.zeros(n, bool), np.zeros(n, bool), rng.uniform(size=n) < 0.97])
    gmacs = np.broadcast_to(np.array([1.0, 2.0, 3.0]), (n, 3)).copy()
    records = CascadeRecords(conf, correct, gmacs)
    choice = certified_choice(records, np.ones(n, bool), max_drop=0.5)
    assert choice.threshold is None and not choice.certified and "Not certified" in choice.statement
    assert records.row(0.5)["stage_shares"] == [n, 0, 0] and records.row(0.5)["top1"] == 0.0
    # the full cascade (η > 1) equal to the reference is certified: "no exit" is a valid answer
    assert certified_choice(records, correct[:, 2], max_drop=0.5).threshold == 1.25
    with pytest.raises(ValueError, match="cascade"):
        certified_choice(records, None, max_drop=0.5, rule="estimate")

"""Certified early-exit thresholds: the p-values are valid and powerful, and the guarantee holds
under resampling where the point-estimate rule breaks it."""

import json
import math

import numpy as np
import pytest

from sacvit import certify as C
from sacvit.resampling import resample_check


def losses(p_plus, p_minus, n, rng):
    u = rng.random(n)
    return np.where(u < p_plus, 1, np.where(u < p_plus + p_minus, -1, 0)).astype(np.int8)


def brute_cdf(k, n, p):
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k + 1))


def test_drop_loss_is_the_paired_difference():
    ref = np.array([1, 1, 0, 0], bool)
    model = np.array([1, 0, 1, 0], bool)
    assert C.drop_loss(ref, model).tolist() == [0, 1, -1, 0]


@pytest.mark.parametrize("n,k,p", [(10, 3, 0.3), (20, 0, 0.1), (15, 14, 0.9), (30, 12, 0.37), (60, 45, 0.8)])
def test_binomial_cdf_matches_brute_force(n, k, p):
    assert C.binom_cdf(k, n, p) == pytest.approx(brute_cdf(k, n, p), rel=1e-10)


def test_binomial_pieces_edge_cases_and_large_n():
    assert C.binom_cdf(-1, 10, 0.3) == 0 and C.binom_cdf(10, 10, 0.3) == 1
    assert C.binom_cdf(3, 10, 0.0) == 1 and C.binom_cdf(3, 10, 1.0) == 0
    n = 100_000  # P(X ≤ n/2) = 1/2 + pmf(n/2)/2 for p = 1/2; and the complement identity at p ≠ 1/2
    pmf = math.exp(math.lgamma(n + 1) - 2 * math.lgamma(n / 2 + 1) - n * math.log(2))
    assert C.binom_cdf(n // 2, n, 0.5) == pytest.approx(0.5 + pmf / 2, rel=1e-9)
    assert C.binom_cdf(3050, n, 0.03) + C.binom_cdf(n - 3051, n, 0.97) == pytest.approx(1, rel=1e-9)


@pytest.mark.parametrize("k,n,alpha", [(0, 100, 0.05), (5, 100, 0.05), (3, 40, 0.01), (250, 10_000, 0.005)])
def test_clopper_pearson_upper_solves_its_equation(k, n, alpha):
    u = C.clopper_pearson_upper(k, n, alpha)
    assert C.binom_cdf(k, n, u) == pytest.approx(alpha, rel=1e-6) and C.binom_cdf(k, n, u) <= alpha
    if k == 0:
        assert u == pytest.approx(1 - alpha ** (1 / n))
    if (k, n) == (5, 100):
        assert u == pytest.approx(0.10225, abs=1e-4)  # the textbook one-sided 95% bound for 5/100


# p₊ − p₋ = ε exactly: the boundary of H0, where a valid test rejects at most δ of the time
BOUNDARY = [(0.0525, 0.0475, 0.005), (0.0125, 0.0025, 0.01), (0.3, 0.29, 0.01), (0.005, 0.0, 0.005)]


@pytest.mark.parametrize("test", ["betting", "exact"])
def test_pvalues_are_valid_at_the_boundary_of_the_null(test):
    rng, delta, sims = np.random.default_rng(0), 0.1, 300
    for p_plus, p_minus, eps in BOUNDARY:
        p = [C.pvalue_betting(x, eps, level=delta) if test == "betting" else C.pvalue_exact(x, eps, gamma=delta / 10)
             for x in (losses(p_plus, p_minus, 2000, rng) for _ in range(sims))]
        assert np.mean(np.array(p) <= delta) <= delta + 3 * math.sqrt(delta * (1 - delta) / sims), (p_plus, eps)


@pytest.mark.parametrize("test", ["betting", "exact"])
def test_pvalues_have_power_one_point_below_the_null(test):
    rng, eps = np.random.default_rng(1), 0.005
    for p_plus, p_minus in [(0.0275, 0.0325), (0.04, 0.045)]:  # drop = ε − 1 pt, 6–8.5% discordant images
        p = [C.pvalue_betting(x, eps) if test == "betting" else C.pvalue_exact(x, eps)
             for x in (losses(p_plus, p_minus, 10_000, rng) for _ in range(40))]
        assert np.mean(np.array(p) <= 0.05) >= 0.8
    assert (C.pvalue_betting(np.zeros(10_000), eps) < 1e-6) and (C.pvalue_exact(np.zeros(10_000), eps) <= 0.0051)


def test_pvalue_details():
    x = losses(0.03, 0.02, 3000, np.random.default_rng(2))
    order = np.random.default_rng(7).permutation(x.size)  # the order is fixed by the seed, not by the values
    assert C.pvalue_betting(x, 0.02, seed=7) == C.pvalue_betting(x[order], 0.02, seed=None)
    p = [C.pvalue_betting(x, e) for e in np.linspace(-0.02, 0.05, 15)]  # monotone in ε: invertible
    assert np.all(np.diff(p) <= 0) and p[0] == 1
    rows = np.stack([x, x[::-1], np.zeros_like(x)])
    assert np.allclose(C.pvalue_betting(rows, 0.02), [C.pvalue_betting(r, 0.02) for r in rows])
    p = C.pvalue_betting(np.r_[np.zeros(999), 1], 0.005, seed=None)  # bets stay small enough: wealth > 0
    assert np.isfinite(p) and 0 < p < 0.2
    assert C.pvalue_exact(x, 0.05, gamma=0.01) >= 0.01  # valid at levels below γ too: p ≥ γ
    n_plus, n_minus = int((x == 1).sum()), int((x == -1).sum())
    assert C.pvalue_exact(x, 0.0) == pytest.approx(C.binom_cdf(n_plus, n_plus + n_minus, 0.5))  # the sign test


def test_fixed_sequence_stops_at_the_first_non_rejection():
    assert C.fixed_sequence([0.01, 0.02, 0.2, 0.01], 0.05) == 2
    assert C.fixed_sequence([0.01, 0.05], 0.05) == 2
    assert C.fixed_sequence([0.3, 0.01], 0.05) == 0
    assert C.fixed_sequence([0.01, float("nan"), 0.01], 0.05) == 1
    assert C.fixed_sequence([], 0.05) == 0


def test_candidate_thresholds_split_adjacent_float32_values():
    a = np.float32(0.5)
    conf = np.array([a, np.nextafter(a, np.float32(1)), np.nextafter(a, np.float32(0)), a, 1.0, 0.0, 0.25],
                    np.float32)
    thr, k = C._candidates(conf)
    assert thr.dtype == np.float32 and np.all(np.diff(thr) < 0) and thr[0] > 1
    assert [int((conf >= t).sum()) for t in thr] == k.tolist() == [0, 1, 2, 4, 5, 6, 7]


def population(n, seed=0, steep=False, baseline=False):
    """Confidence uniform (with ties); EE right more often when confident; SAC fixed at 85%."""
    rng = np.random.default_rng(seed)
    conf = np.round(rng.random(n), 3).astype(np.float32)
    sac = rng.random(n) < 0.85
    agree = rng.random(n) < (np.clip((conf - 0.35) * 12, 0, 1) if steep else 0.6 + 0.4 * conf)
    ee = np.where(agree, sac, rng.random(n) < 0.1)  # a disagreeing EE prediction is rarely right
    ref = rng.random(n) < np.where(sac, 0.95, 0.3) if baseline else sac.copy()
    return conf, ee, sac, ref, np.full(n, 1.0), np.full(n, 3.0), agree


def check_fields(cert, conf, ee, sac, ref, g_ee, g_sac):
    if cert.rule == "certified":
        assert (cert.threshold is None) == (not cert.certified)
    t = C.SAC_ONLY if cert.threshold is None else cert.threshold
    assert float(np.float32(t)) == t  # float32-representable
    exited = conf.astype(np.float32) >= np.float32(t)
    assert cert.exit_share == pytest.approx(exited.mean())
    assert cert.gmacs == pytest.approx(np.where(exited, g_ee, g_sac).mean())
    assert cert.top1 == pytest.approx(100 * np.where(exited, ee, sac).mean())
    assert cert.reference_top1 == pytest.approx(100 * ref.mean()) and cert.images == len(conf)
    assert json.loads(json.dumps(cert.to_dict())) == cert.to_dict()
    return exited


@pytest.mark.parametrize("test", ["betting", "exact"])
@pytest.mark.parametrize("baseline", [False, True])
def test_certify_returns_a_certified_threshold_whose_exits_were_tested(test, baseline):
    conf, ee, sac, ref, g_ee, g_sac, _ = population(6000, baseline=baseline)
    cert = C.certify(conf, ee, sac, ref, g_ee, g_sac, max_drop=1.0, delta=0.05, test=test)
    assert cert.certified and cert.rule == "certified" and cert.test == test and 0 < cert.exit_share < 1
    exited = check_fields(cert, conf, ee, sac, ref, g_ee, g_sac)
    loss = C.drop_loss(ref, np.where(exited, ee, sac))  # the certificate's test rejects at exactly these exits
    p = C.pvalue_betting(loss, 0.01, level=0.05) if test == "betting" else C.pvalue_exact(loss, 0.01, gamma=0.005)
    assert p <= 0.05 and cert.bound <= 1.0 and "95%" in cert.statement
    assert cert.gmacs < g_sac.mean()
    fixed = C.certify(conf, ee, sac, ref, g_ee, g_sac, max_drop=1.0, test=test, grid=np.linspace(1.25, 0, 126))
    assert fixed.certified and fixed.threshold in np.linspace(1.25, 0, 126).astype(np.float32)
    check_fields(fixed, conf, ee, sac, ref, g_ee, g_sac)


@pytest.mark.parametrize("test", ["betting", "exact"])
def test_nothing_is_certified_when_sac_only_is_already_too_far_below(test):
    conf, ee, sac, ref, g_ee, g_sac, _ = population(3000)
    ref = ref | (np.random.default_rng(3).random(len(ref)) < 0.2)  # the reference is ~3 pt better than SAC only
    cert = C.certify(conf, ee, sac, ref, g_ee, g_sac, max_drop=0.5, test=test)
    assert not cert.certified and cert.threshold is None and cert.exit_share == 0 and cert.bound > 0.5
    check_fields(cert, conf, ee, sac, ref, g_ee, g_sac)
    assert cert.gmacs == pytest.approx(3.0) and "Not certified" in cert.statement


def test_estimate_rule_is_the_cheapest_point_estimate_and_claims_no_guarantee():
    conf, ee, sac, ref, g_ee, g_sac, _ = population(3000, baseline=True)
    est = C.estimate_rule(conf, ee, sac, ref, g_ee, g_sac, max_drop=1.0)
    assert est.rule == "estimate" and not est.certified and est.threshold is not None
    exited = check_fields(est, conf, ee, sac, ref, g_ee, g_sac)
    assert est.reference_top1 - est.top1 <= 1.0 + 1e-9
    for t in np.unique(conf):  # no cheaper threshold meets the point estimate
        ex = conf >= t
        if ex.sum() > exited.sum():
            assert 100 * (ref.mean() - np.where(ex, ee, sac).mean()) > 1.0
    cert = C.certify(conf, ee, sac, ref, g_ee, g_sac, max_drop=1.0)
    assert cert.gmacs >= est.gmacs


def test_resampling_shows_the_guarantee_hold_where_the_estimate_rule_breaks_it():
    pool = population(20_000, seed=4, steep=True)  # the true drop rises steeply through ε
    draws, delta = 150, 0.1
    check = resample_check(*pool[:6], n_cal=1000, draws=draws, max_drop=1.0, delta=delta,
                             rules=("certified", "estimate", "agreement"), pool_agree_ee=pool[6])
    limit = delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    cert, est, agree = (check.rules[r] for r in ("certified", "estimate", "agreement"))
    assert cert.returned_rate > 0.9 and cert.violation_rate <= limit and cert.gmacs_share < 1
    assert est.returned_rate == 1 and est.violation_rate > 0.3  # the point estimate breaks its promise
    assert agree.returned_rate > 0.9 and agree.violation_rate <= limit and agree.gmacs_share < 1
    assert cert.gmacs_share > est.gmacs_share  # the guarantee costs compute
    assert cert.se == pytest.approx(math.sqrt(cert.violation_rate * (1 - cert.violation_rate) / draws))
    assert json.loads(json.dumps(check.to_dict()))["rules"]["estimate"]["violation_rate"] == est.violation_rate


def test_agreement_certificate_is_label_free():
    conf, _, _, _, g_ee, g_sac, agree = population(5000)
    cert = C.certify_agreement(conf, agree, g_ee, g_sac, max_drop=1.0, delta=0.05)
    assert cert.certified and cert.test == "agreement" and cert.top1 is None and cert.reference_top1 is None
    exited = conf >= np.float32(cert.threshold)
    assert cert.exit_share == pytest.approx(exited.mean()) and float(np.float32(cert.threshold)) == cert.threshold
    k = int((exited & ~agree).sum())
    assert C.binom_cdf(k, len(conf), 0.01) <= 0.05 and cert.bound <= 1.0 and "own SAC-only" in cert.statement
    small = C.certify_agreement(conf[:100], agree[:100], g_ee[:100], g_sac[:100], max_drop=0.5)  # 0.995¹⁰⁰ > δ
    assert not small.certified and small.threshold is None and small.bound > 0.5 and small.exit_share == 0

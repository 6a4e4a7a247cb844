"""Anytime-valid canary gates (rollout.stats.sequential): validity, power, messages, cost.

Everything is simulated with fixed seeds, so results are deterministic; the
bounds asserted are ones a correct implementation meets with overwhelming
probability (null error rates far below the asserted caps, detection sizes
well inside the asserted limits), so a change of seeds would not flip them.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from rollout.stats.boundaries import BetaBinomialBoundary
from rollout.stats.histogram import Histogram
from rollout.stats.quantile_cs import lower_boundary, read_ranks, upper_boundary
from rollout.stats.sequential import (
    DEFAULT_BET_FRACTIONS,
    Decision,
    ErrorRateRatioTest,
    PairedErrorRateTest,
    QuantileTest,
    SortedSample,
    bonferroni,
    hypergeometric,
    quantile_confidence_sequence,
    split_alpha,
)

# ----------------------------------------------------------------------------- simulators


def error_stream(rng: np.random.Generator, p_c: float, p_b: float, rate: float, share_c: float = 0.5):
    """Cumulative (n_c, e_c, n_b, e_b) once a second: Poisson arrivals split by share, Bernoulli errors."""
    n_c = e_c = n_b = e_b = 0
    while True:
        total = rng.poisson(2 * rate)
        a = int(rng.binomial(total, share_c))
        b = total - a
        n_c += a
        n_b += b
        e_c += int(rng.binomial(a, p_c))
        e_b += int(rng.binomial(b, p_b))
        yield n_c, e_c, n_b, e_b


def first_verdict(test, rng, p_c, p_b, rate, seconds, share_c=0.5):
    """(decision, min requests per version) at the first non-CONTINUE verdict, or CONTINUE at the end."""
    stream = error_stream(rng, p_c, p_b, rate, share_c)
    n_c = n_b = 0
    for _ in range(seconds):
        n_c, e_c, n_b, e_b = next(stream)
        res = test.update(n_c, e_c, n_b, e_b)
        if res.decision is not Decision.CONTINUE:
            return res.decision, min(n_c, n_b), res
    return Decision.CONTINUE, min(n_c, n_b), res


def latency_run(test, rng, ratio, sigma, rate, seconds, median=100.0):
    """Feed lognormal latencies (canary scaled by `ratio`) into two histograms, judge every second."""
    hc, hb = Histogram(), Histogram()
    res = None
    for _ in range(seconds):
        for v in rng.lognormal(math.log(median * ratio), sigma, rng.poisson(rate)).tolist():
            hc.record(v)
        for v in rng.lognormal(math.log(median), sigma, rng.poisson(rate)).tolist():
            hb.record(v)
        res = test.update(hc, hb)
        if res.decision is not Decision.CONTINUE:
            return res.decision, min(hc.count, hb.count), res
    return Decision.CONTINUE, min(hc.count, hb.count), res


# ----------------------------------------------------------------------------- boundaries


def test_beta_binomial_mixture_is_a_bernoulli_likelihood_ratio_mixture():
    """log M(s, v) equals the integral of Bernoulli likelihood ratios over a truncated beta prior.

    Increments are +h (prob. q) or -g; the null is q = g. The one-sided mixture
    puts a Beta(r/h, r/g) prior on q restricted to q >= g, so M is a test
    martingale when q = g and a supermartingale when q <= g: the property every
    bound here relies on, checked independently of confseq's algebra.
    """
    from scipy import integrate

    for g, h in ((0.05, 0.95), (0.95, 0.05), (0.5, 0.5)):
        bnd = BetaBinomialBoundary(g, h, 0.01, g * h * 400)
        a0, b0 = bnd.r / h, bnd.r / g
        n = 300

        def log_integral(log_f) -> float:  # log of int_g^1 exp(log_f(q)) dq, scaled to avoid overflow
            grid = np.linspace(g, 1, 20_001)[:-1]
            top = max(log_f(q) for q in grid)
            return top + math.log(integrate.quad(lambda q: math.exp(log_f(q) - top), g, 1, limit=400)[0])

        def log_prior(q: float) -> float:
            return (a0 - 1) * math.log(q) + (b0 - 1) * math.log(1 - q)

        log_norm = log_integral(log_prior)
        for k in (int(n * g * 0.5), int(n * g), min(n, int(n * g * 1.2) + 2)):  # number of +h steps (null mean n*g)
            s, v = k * h - (n - k) * g, g * h * n

            def log_lr(q: float) -> float:
                return k * math.log(q / g) + (n - k) * math.log((1 - q) / h) + log_prior(q)

            assert bnd.log_supermartingale(s, v) == pytest.approx(log_integral(log_lr) - log_norm, abs=1e-6)
        assert bnd.log_supermartingale(0.0, 0.0) == pytest.approx(0.0, abs=1e-12)


def test_boundary_cache_is_conservative_and_monotone():
    bnd = BetaBinomialBoundary(0.95, 0.05, 0.005, 0.95 * 0.05 * 5000)
    previous = 0.0
    for n in [50, 100, 255, 256, 300, 1_000, 1_001, 4_999, 10_000, 123_457, 1_000_000]:
        cached = bnd.at_count(n)
        exact = bnd.bound(bnd.g * bnd.h * n)
        assert cached >= exact  # rounding n up the grid only widens
        if math.isfinite(exact):
            assert cached <= exact * 1.01 + 1e-6  # ... by little
        if math.isfinite(cached):  # inf (no finite boundary yet at small n) claims nothing
            assert cached >= previous
            previous = cached
    assert math.isinf(bnd.at_count(5))  # too few samples for any finite boundary at this level


def test_boundary_crossing_probability_is_below_alpha():
    """Random walks with increments in {-g, h} and mean 0 rarely ever cross b(v) (checked every step)."""
    rng = np.random.default_rng(7)
    alpha, g, h, n, paths = 0.05, 0.2, 0.8, 3_000, 4_000
    bnd = BetaBinomialBoundary(g, h, alpha, g * h * 500)
    b = np.array([bnd.at_count(i) for i in range(1, n + 1)])
    steps = np.where(rng.random((paths, n)) < g, h, -g)
    crossed = (np.cumsum(steps, axis=1) >= b).any(axis=1).mean()
    assert crossed <= alpha + 0.015  # observed rate is far below alpha (the bound is conservative)


# ----------------------------------------------------------------------------- paired error rate


def test_hypergeometric_sampler_matches_the_distribution():
    rng = random.Random(3)
    total, marked, draws, reps = 30, 7, 12, 20_000
    freq = [0] * (marked + 1)
    for _ in range(reps):
        freq[hypergeometric(rng, total, marked, draws)] += 1
    for k in range(marked + 1):
        exact = math.comb(marked, k) * math.comb(total - marked, draws - k) / math.comb(total, draws)
        assert abs(freq[k] / reps - exact) < 5 * math.sqrt(exact * (1 - exact) / reps) + 1e-3
    # the symmetric shortcuts give the same edges
    assert hypergeometric(rng, 10, 10, 4) == 4
    assert hypergeometric(rng, 10, 0, 4) == 0
    assert hypergeometric(rng, 10, 3, 10) == 3
    with pytest.raises(ValueError):
        hypergeometric(rng, 5, 6, 1)


def test_pairing_pairs_min_of_counts_and_keeps_counts_consistent():
    t = PairedErrorRateTest(fail_margin=0.01, max_lag=None, seed=1)
    rng = np.random.default_rng(1)
    stream = error_stream(rng, 0.05, 0.03, rate=40)
    for _ in range(50):
        n_c, e_c, n_b, e_b = next(stream)
        t.update(n_c, e_c, n_b, e_b)
        assert t.pairs == min(n_c, n_b)  # FIFO with carry-over pairs every request of the smaller side
        assert t.n_plus + t.n_zero + t.n_minus == t.pairs
        assert t.n_plus <= e_c and t.n_minus <= e_b
    # uneven split with max_lag: the minority version is still fully paired, the surplus is dropped
    u = PairedErrorRateTest(fail_margin=0.01, max_lag=3, seed=2)
    n_c = n_b = 0
    for _ in range(30):
        n_c += 10
        n_b += 90
        u.update(n_c, 0, n_b, 0)
    assert u.pairs == n_c and u.dropped_stable > 0
    assert u.dropped_stable + u.pairs + sum(b[0] + b[1] for b in u._queue_b) == n_b


def test_paired_e_values_follow_the_formula():
    t = PairedErrorRateTest(fail_margin=0.01, pass_margin=0.005, compute_bounds=False)
    t.n_plus, t.n_zero, t.n_minus = 37, 1_200, 11
    m, mp = 0.01, 0.005
    cs = DEFAULT_BET_FRACTIONS
    fail = sum(
        (1 + c / (1 + m) * (1 - m)) ** 37 * (1 - c / (1 + m) * m) ** 1200 * (1 - c / (1 + m) * (1 + m)) ** 11 for c in cs
    ) / len(cs)
    pas = sum(
        (1 - c / (1 - mp) * (1 - mp)) ** 37 * (1 + c / (1 - mp) * mp) ** 1200 * (1 + c / (1 - mp) * (1 + mp)) ** 11
        for c in cs
    ) / len(cs)
    assert math.exp(t.log_e_fail()) == pytest.approx(fail, rel=1e-9)
    assert math.exp(t.log_e_pass()) == pytest.approx(pas, rel=1e-9)


def test_identical_versions_rarely_fail_paired():
    """200 stages of identical versions checked every second, at the edge of the null (margin 0)."""
    alpha, runs = 0.05, 200
    fails = 0
    for seed in range(runs):
        t = PairedErrorRateTest(fail_margin=0.0, alpha_fail=alpha, seed=seed, compute_bounds=False)
        decision, _, _ = first_verdict(t, np.random.default_rng(seed), 0.03, 0.03, rate=50, seconds=200)
        fails += decision is Decision.FAIL
    # Ville: P(false FAIL) <= alpha = 5 % (expected <= 10 of 200; observed far fewer)
    assert fails <= 20


def test_two_percent_vs_point_one_percent_fails_fast():
    runs = 40
    paired, ratio = [], []
    for seed in range(runs):
        t = PairedErrorRateTest(fail_margin=0.0, alpha_fail=0.01, seed=seed, compute_bounds=False)
        decision, n, _ = first_verdict(t, np.random.default_rng(seed), 0.02, 0.001, rate=200, seconds=60)
        assert decision is Decision.FAIL
        paired.append(n)
        r = ErrorRateRatioTest(max_ratio=1.0, alpha=0.01)
        decision, n, _ = first_verdict(r, np.random.default_rng(seed), 0.02, 0.001, rate=200, seconds=60)
        assert decision is Decision.FAIL
        ratio.append(n)
    # reference: 95th percentile of the stopping size ~996 per version (fixed horizon 796)
    assert np.percentile(paired, 95) < 2_000 and np.median(paired) < 1_200
    assert np.percentile(ratio, 95) < 1_600 and np.median(ratio) < 1_000


def test_canary_within_pass_margin_passes():
    for seed in range(20):
        t = PairedErrorRateTest(fail_margin=0.01, pass_margin=0.005, alpha_fail=0.01, seed=seed)
        decision, n, res = first_verdict(t, np.random.default_rng(seed), 0.001, 0.001, rate=200, seconds=120)
        assert decision is Decision.PASS
        assert n < 10_000  # reference: ~3,500 requests for "<= +0.5 points"
        assert res.bounds_canary is not None and res.bounds_canary[1] < 0.005


def test_canary_between_margins_stays_continue():
    """True difference +1 point, FAIL above +2 points, PASS below 0: both nulls are true, so
    any verdict is an error (probability <= alpha_fail + alpha_pass, and far less in the middle)."""
    decided = 0
    for seed in range(30):
        t = PairedErrorRateTest(fail_margin=0.02, pass_margin=0.0, alpha_fail=0.01, seed=seed, compute_bounds=False)
        decision, n, _ = first_verdict(t, np.random.default_rng(seed), 0.02, 0.01, rate=100, seconds=50)
        decided += decision is not Decision.CONTINUE
        assert n > 4_000 or decision is not Decision.CONTINUE
    assert decided <= 2


def test_paired_message_and_result_carry_the_numbers():
    t = PairedErrorRateTest(fail_margin=0.005, pass_margin=0.002, alpha_fail=0.01, seed=0)
    decision, _, res = first_verdict(t, np.random.default_rng(0), 0.03, 0.001, rate=200, seconds=60)
    assert decision is Decision.FAIL
    assert res.statistic >= res.threshold == pytest.approx(100)
    lo, hi = res.bounds_canary
    assert 0.005 < lo < res.estimate_canary - res.estimate_stable < hi
    msg = res.message
    assert msg.startswith("canary errors ") and "vs stable" in msg and "%" in msg
    assert "> +0.50 points credibly" in msg and "≥ 100" in msg and "pairs" in msg
    assert f"{res.n_canary:,}" in msg
    json.dumps(res.to_dict())  # serialisable for reports


def test_counters_must_not_go_backwards():
    t = PairedErrorRateTest()
    t.update(100, 1, 100, 0)
    with pytest.raises(ValueError):
        t.update(90, 1, 120, 0)
    with pytest.raises(ValueError):
        PairedErrorRateTest().update(10, 11, 10, 0)
    with pytest.raises(ValueError):
        PairedErrorRateTest(fail_margin=0.01, pass_margin=0.02)


# ----------------------------------------------------------------------------- ratio error rate


def test_ratio_e_value_is_the_per_second_likelihood_ratio_mixture():
    r = ErrorRateRatioTest(max_ratio=2.0, alpha=0.01)
    r.add(300, 6, 100, 1)  # one second: canary share 3/4
    theta = lambda ratio: ratio * 300 / (ratio * 300 + 100)  # noqa: E731
    t0 = theta(2.0)
    expected = sum((theta(rj) / t0) ** 6 * ((1 - theta(rj)) / (1 - t0)) ** 1 for rj in r.ratios) / len(r.ratios)
    assert math.exp(r.log_e()) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("max_ratio", "p_b"), [(1.0, 0.01), (2.0, 0.005)])
def test_ratio_null_rarely_fails_with_a_changing_split(max_ratio, p_b):
    """At the edge of the null (canary rate = r0 x stable) with the canary share ramping 10 % -> 50 %."""
    alpha, runs, fails = 0.05, 200, 0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        r = ErrorRateRatioTest(max_ratio=max_ratio, alpha=alpha)
        for s in range(240):
            share = 0.1 + 0.4 * s / 240
            total = rng.poisson(100)
            a = int(rng.binomial(total, share))
            res = r.add(a, int(rng.binomial(a, max_ratio * p_b)), total - a, int(rng.binomial(total - a, p_b)))
            if res.decision is Decision.FAIL:
                fails += 1
                break
    assert fails <= 20  # expected <= 10 of 200 at alpha = 5 %


# ----------------------------------------------------------------------------- latency quantiles


def test_read_ranks_matches_value_at_rank():
    rng = np.random.default_rng(5)
    h = Histogram()
    for v in rng.lognormal(3, 1.2, 3_000).tolist() + [0.0005, 0.0002]:
        h.record(v)
    ranks = [1, 2, 17, 1_500, 2_850, 2_999, 3_001, 3_002, 3_005, 2_850]
    assert read_ranks(h, ranks) == [h.value_at_rank(k) for k in ranks]
    s = SortedSample([3.0, 1.0, 2.0])
    assert read_ranks(s, [1, 2, 3]) == [1.0, 2.0, 3.0]


def test_quantile_confidence_sequence_covers_with_ties():
    """Integer latencies with F(9) = 0.95 exactly, so the p95 (= 9) sits on an atom and the lower
    bound is at its sharpest; checked every 25 samples, the p95 is rarely ever outside the CS."""
    alpha, runs, misses = 0.1, 200, 0
    values = np.arange(1, 21, dtype=float)
    probs = np.concatenate([np.full(9, 0.95 / 9), np.full(11, 0.05 / 11)])
    probs /= probs.sum()
    q95 = 9.0  # inf{x: F(x) >= 0.95}
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        h = Histogram()
        for _ in range(80):
            for v in rng.choice(values, 25, p=probs).tolist():
                h.record(v)
            cs = quantile_confidence_sequence(h, 0.95, alpha_lower=alpha / 2, alpha_upper=alpha / 2, n_opt=500)
            if not cs.lower <= q95 <= cs.upper:
                misses += 1
                break
    assert misses <= 25  # expected <= 10 of 200 (only the lower side can miss, at alpha / 2 = 5 %)


def test_identical_versions_rarely_fail_quantile():
    alpha, runs, fails = 0.05, 200, 0
    for seed in range(runs):
        t = QuantileTest(0.95, fail_margin=0.0, alpha_fail=alpha)
        decision, _, _ = latency_run(t, np.random.default_rng(seed), 1.0, 0.8, rate=50, seconds=60)
        fails += decision is Decision.FAIL
    assert fails <= 20  # expected <= 10 of 200 at alpha = 5 % (observed ~0: the CS is conservative)


def test_p95_thirty_percent_slower_fails():
    sizes = []
    for seed in range(20):
        t = QuantileTest(0.95, fail_margin=0.1, alpha_fail=0.01)
        decision, n, res = latency_run(t, np.random.default_rng(seed), 1.3, 0.5, rate=200, seconds=120)
        assert decision is Decision.FAIL
        c_lo, _ = res.bounds_canary
        _, s_hi = res.bounds_stable
        assert c_lo > 1.1 * s_hi
        sizes.append(n)
    assert max(sizes) < 12_000 and np.median(sizes) < 6_000


def test_p95_within_pass_margin_passes():
    for seed in range(10):
        t = QuantileTest(0.95, fail_margin=0.3, pass_margin=0.2, alpha_fail=0.01)
        decision, n, res = latency_run(t, np.random.default_rng(seed), 1.0, 0.5, rate=200, seconds=120)
        assert decision is Decision.PASS
        assert n < 10_000  # reference: ~2,900 requests for "p95 <= +20 %" at sigma 0.5
        assert res.bounds_canary[1] < 1.2 * res.bounds_stable[0]


def test_p95_between_margins_stays_continue():
    """Canary +10 %: above the PASS margin (0 %) and below the FAIL margin (+20 %) -> no verdict."""
    decided = 0
    for seed in range(12):
        t = QuantileTest(0.95, fail_margin=0.2, pass_margin=0.0, alpha_fail=0.01)
        decision, n, _ = latency_run(t, np.random.default_rng(seed), 1.1, 0.5, rate=100, seconds=50)
        decided += decision is not Decision.CONTINUE
        assert n > 4_000 or decision is not Decision.CONTINUE
    assert decided <= 1


def test_quantile_message_carries_the_numbers():
    t = QuantileTest(0.95, fail_margin=0.2, alpha_fail=0.01)
    decision, _, res = latency_run(t, np.random.default_rng(1), 1.5, 0.5, rate=200, seconds=60)
    assert decision is Decision.FAIL
    msg = res.message
    assert msg.startswith("canary p95 [") and " ms vs stable [" in msg
    assert "> +20 % credibly" in msg and "> 1.20" in msg and "requests" in msg
    assert f"{res.n_canary:,}/{res.n_stable:,}" in msg
    assert res.fail_statistic > res.fail_threshold == pytest.approx(1.2)
    json.dumps(res.to_dict())
    early = QuantileTest(0.99).update(Histogram(), Histogram())
    assert early.decision is Decision.CONTINUE and "undecided" in early.message


def test_quantile_gate_cost_per_update_is_bounded():
    """Count operations, not time: 1 pass over each histogram and amortised O(1) boundary solves."""
    rng = np.random.default_rng(11)
    hc, hb = Histogram(), Histogram()
    for v in rng.lognormal(4, 1, 100_000).tolist():
        hc.record(v)
    for v in rng.lognormal(4, 1, 100_000).tolist():
        hb.record(v)
    t = QuantileTest(0.99, fail_margin=0.2, pass_margin=0.1, alpha_fail=0.004, alpha_pass=0.006)
    t.update(hc, hb)  # warm the boundary cache at n = 100,000
    bounds = t.boundaries
    evals0 = sum(b.evaluations for b in set(bounds))
    reads0 = t.rank_reads
    updates = 100
    for _ in range(updates):  # 200 new requests per version per second
        for v in rng.lognormal(4, 1, 200).tolist():
            hc.record(v)
            hb.record(v * 1.01)
        t.update(hc, hb)
    assert t.rank_reads - reads0 == 2 * updates  # one pass per version per update
    evals = sum(b.evaluations for b in set(bounds)) - evals0
    # n grows 20 % -> ~37 new grid points per boundary, 4 boundaries, <~ 40 evaluations per solve
    assert evals <= 4 * 40 * 40
    assert evals / updates <= 64  # amortised: tens of betainc calls per second, not thousands
    assert lower_boundary(0.99, 0.002) is t.boundaries[0]  # boundaries are shared between gates
    assert upper_boundary(0.99, 0.002) is t.boundaries[1]


# ----------------------------------------------------------------------------- alpha split


def test_alpha_split():
    assert bonferroni(0.01, 4) == pytest.approx(0.0025)
    split = split_alpha(0.01, ["errors", "p95", "p99"])
    assert sum(split.values()) == pytest.approx(0.01) and split["p95"] == pytest.approx(0.01 / 3)
    weighted = split_alpha(0.01, {"errors": 2, "p95": 1, "p99": 1})
    assert weighted["errors"] == pytest.approx(0.005) and weighted["p99"] == pytest.approx(0.0025)
    with pytest.raises(ValueError):
        split_alpha(0.01, ["a", "a"])
    with pytest.raises(ValueError):
        bonferroni(0.01, 0)

"""One-sample anytime-valid tests (rollout.stats.one_sample) and the absolute sequential gates built on them.

Simulations use fixed seeds and check whole paths *at every request* (the
most frequent monitoring possible), so the validity bounds asserted hold for
any schedule of looks. Caps are set where a correct implementation passes
with overwhelming probability.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.integrate import quad

from rollout.gates.judge import SequentialLimit, StageJudge
from rollout.gates.verdict import Status
from rollout.load.stats import StageStats
from rollout.plan.model import Gate
from rollout.stats.histogram import Histogram
from rollout.stats.one_sample import RateLimitTest, exceedances, log_e_fail, log_e_pass
from rollout.stats.sequential import Decision, ErrorRateRatioTest


def paths(rng: np.random.Generator, p: float, runs: int, n: int) -> np.ndarray:
    """Cumulative bad-request counts, shape (runs, n): column k is after k+1 requests."""
    return np.cumsum(rng.random((runs, n)) < p, axis=1)


def first_crossing(log_e: np.ndarray, alpha: float) -> np.ndarray:
    """Index (requests - 1) of the first crossing of 1/alpha per path, -1 when never."""
    hit = log_e >= math.log(1 / alpha)
    first = hit.argmax(axis=1)
    return np.where(hit.any(axis=1), first, -1)


def test_e_values_are_the_mixture_integrals() -> None:
    for n, x, p0 in [(100, 5, 0.02), (612, 32, 0.02), (500, 0, 0.02), (1000, 30, 0.05), (40, 39, 0.5)]:
        fail = quad(lambda p: (p / p0) ** x * ((1 - p) / (1 - p0)) ** (n - x), p0, 1, limit=400)[0] / (1 - p0)
        pas = quad(lambda p: (p / p0) ** x * ((1 - p) / (1 - p0)) ** (n - x), 0, p0, limit=400)[0] / p0
        assert log_e_fail(n, x, p0) == pytest.approx(math.log(fail), abs=1e-6)
        assert log_e_pass(n, x, p0) == pytest.approx(math.log(pas), abs=1e-6)
    assert log_e_fail(0, 0, 0.02) == 0.0 and log_e_pass(0, 0, 0.02) == 0.0
    # arrays too (the benches evaluate whole paths at once), same values
    arr = log_e_fail(np.array([100, 612]), np.array([5, 32]), 0.02)
    assert arr[1] == pytest.approx(log_e_fail(612, 32, 0.02))


@pytest.mark.parametrize("limit", [0.02, 0.05])
def test_false_fail_at_the_limit_is_below_alpha_checked_at_every_request(limit: float) -> None:
    alpha, runs, n = 0.05, 400, 4000
    x = paths(np.random.default_rng(1), limit, runs, n)
    log_e = log_e_fail(np.arange(1, n + 1)[None, :], x, limit)
    rate = float((first_crossing(log_e, alpha) >= 0).mean())
    assert rate <= alpha, rate  # Ville: ≤ alpha for the whole path; typically far below
    # just below the limit (1.8 % against 2 %), less still
    if limit == 0.02:
        x = paths(np.random.default_rng(2), 0.018, runs, n)
        assert float((first_crossing(log_e_fail(np.arange(1, n + 1)[None, :], x, limit), alpha) >= 0).mean()) <= alpha


def test_false_pass_at_the_limit_is_below_alpha_checked_at_every_request() -> None:
    alpha, runs, n, limit = 0.05, 400, 4000, 0.02
    x = paths(np.random.default_rng(3), limit, runs, n)
    log_e = log_e_pass(np.arange(1, n + 1)[None, :], x, limit)
    assert float((first_crossing(log_e, alpha) >= 0).mean()) <= alpha


def test_five_percent_against_two_fails_and_half_a_percent_passes() -> None:
    alpha, runs, n = 0.01, 200, 5000
    k = np.arange(1, n + 1)[None, :]
    fails = first_crossing(log_e_fail(k, paths(np.random.default_rng(4), 0.05, runs, n), 0.02), alpha)
    assert (fails >= 0).all()
    # reference (monitoring-statistics.md §1): median ~460, p95 ~1,100 requests at alpha = 1 %
    assert np.median(fails + 1) < 700 and np.percentile(fails + 1, 95) < 1600
    passes = first_crossing(log_e_pass(k, paths(np.random.default_rng(5), 0.005, runs, n), 0.02), alpha)
    assert (passes >= 0).all()
    assert np.median(passes + 1) < 800 and np.percentile(passes + 1, 95) < 1800


def test_rate_limit_test_latches_and_reports_its_evidence() -> None:
    t = RateLimitTest(0.02, alpha_fail=0.01)
    assert t.update(100, 1) is Decision.CONTINUE
    assert "fail e=" in t.evidence() and "pass e=" in t.evidence()
    assert t.update(612, 32) is Decision.FAIL
    assert t.fail_crossed_at == 612 and t.evidence().startswith("e=") and "≥ 1/α=100" in t.evidence()
    assert t.update(700, 32) is Decision.FAIL  # latched
    with pytest.raises(ValueError):
        t.update(600, 32)  # counters never go backwards
    p = RateLimitTest(0.02, pass_limit=0.01, alpha_fail=0.01)
    assert p.update(2000, 0) is Decision.PASS
    with pytest.raises(ValueError):
        RateLimitTest(0.02, pass_limit=0.03)


def test_exceedances_bracket_the_exact_count() -> None:
    rng = random.Random(9)
    values = [rng.lognormvariate(math.log(100), 0.6) for _ in range(20000)]
    h = Histogram()
    for v in values:
        h.record(v)
    for limit in (50.0, 100.0, 180.0, 250.0, 333.3, values[17]):
        exact = sum(v > limit for v in values)
        lo, hi = exceedances(h, limit)
        assert lo <= exact <= hi
        near = sum(limit / 1.011 < v <= limit * 1.011 for v in values)  # the straddling bucket is within ~1 %
        assert hi - lo <= near
    assert exceedances(h, 1e9) == (0, 0) and exceedances(h, 1e-9) == (len(values), len(values))
    assert exceedances(Histogram(), 10.0) == (0, 0)


# ----------------------------------------------------------------------------- the gate


def _stats(n: int, failures: int, ms: float = 10.0, role: str = "canary", sigma: float = 0.3, seed: int = 1) -> StageStats:
    rng = random.Random(seed)
    s = StageStats()
    vs = s.role(role)
    for i in range(n):
        vs.add(rng.lognormvariate(math.log(ms), sigma), i < failures)
    return s


def test_error_rate_gate_fails_with_the_numbers() -> None:
    gate = Gate(metric="error_rate", max="2%")
    assert gate.method == "sequential"
    v = SequentialLimit("errors", gate, 0.01).evaluate(_stats(612, 32), final=False)
    assert v.status is Status.FAIL
    assert v.message.startswith("error rate 5.23% > 2% (canary, 612 requests, e=1,903 ≥ 1/α=100)"), v.message
    assert v.observed == pytest.approx(32 / 612) and v.threshold == 0.02 and v.requests == 612


def test_error_rate_gate_passes_credibly_below_and_is_inconclusive_in_between() -> None:
    gate = Gate(metric="error_rate", max="2%")
    v = SequentialLimit("errors", gate, 0.01).evaluate(_stats(2000, 8), final=True)
    assert v.status is Status.PASS and "< 2% credibly" in v.message, v.message
    v = SequentialLimit("errors", gate, 0.01).evaluate(_stats(2000, 36), final=True)  # 1.8 %
    assert v.status is Status.INCONCLUSIVE and "undecided" in v.message, v.message
    v = SequentialLimit("errors", gate, 0.01).evaluate(_stats(2000, 36), final=False)
    assert v.status is Status.PENDING


def test_min_requests_is_a_floor_for_passing_only() -> None:
    gate = Gate(metric="error_rate", max="2%", min_requests=5000)
    ok = SequentialLimit("errors", gate, 0.01).evaluate(_stats(2000, 0), final=True)
    assert ok.status is Status.INCONCLUSIVE and "min_requests" in ok.message, ok.message
    bad = SequentialLimit("errors", gate, 0.01).evaluate(_stats(300, 60), final=False)
    assert bad.status is Status.FAIL  # a failure never waits for the floor


def test_percentile_gate_counts_requests_slower_than_the_limit() -> None:
    slow = SequentialLimit("p95", Gate(metric="p95", max="12ms"), 0.01).evaluate(_stats(3000, 0, ms=10, sigma=0.3), final=True)
    # lognormal(10 ms, 0.3): P(X > 12 ms) ≈ 27 % ≫ 5 %
    assert slow.status is Status.FAIL and slow.message.startswith("p95 ") and "slower than 12.0 ms vs 5% allowed" in slow.message, slow.message
    fast = SequentialLimit("p95", Gate(metric="p95", max="25ms"), 0.01).evaluate(_stats(3000, 0, ms=10, sigma=0.3), final=True)
    # P(X > 25 ms) ≈ 0.1 %
    assert fast.status is Status.PASS and "< 25.0 ms credibly" in fast.message, fast.message
    stable = SequentialLimit("p95", Gate(metric="p95", max="25ms", version="all"), 0.01).evaluate(_stats(3000, 0, role="stable"), final=True)
    assert stable.status is Status.PASS and "(all traffic," in stable.message


def test_threshold_method_keeps_the_old_rule() -> None:
    judge = StageJudge({"errors": Gate(metric="error_rate", max="2%", method="threshold", min_requests=100)})
    (v,) = judge.judge(_stats(150, 4), final=False)  # 2.7 % > 2 % after 150 requests: the naive rule fails
    assert v.status is Status.FAIL and "e=" not in v.message
    (v,) = StageJudge({"errors": Gate(metric="error_rate", max="2%")}).judge(_stats(150, 4), final=False)
    assert v.status is Status.PENDING  # 4 of 150 is no evidence of > 2 %


def test_ratio_gate_passes_when_credibly_below_and_fails_when_above() -> None:
    rng = np.random.default_rng(6)

    def run(p_c: float, p_b: float, seconds: int = 120, rate: int = 200) -> Decision:
        t = ErrorRateRatioTest(max_ratio=2.0, alpha=0.01, pass_ratio=2.0)
        n_c = e_c = n_b = e_b = 0
        for _ in range(seconds):
            n_c += rate
            n_b += rate
            e_c += int(rng.binomial(rate, p_c))
            e_b += int(rng.binomial(rate, p_b))
            r = t.update(n_c, e_c, n_b, e_b)
            if r.decision is not Decision.CONTINUE:
                return r.decision
        return Decision.CONTINUE

    assert run(0.05, 0.05) is Decision.PASS  # the same rate: credibly below double
    assert run(0.2, 0.05) is Decision.FAIL  # four times: credibly above double
    # at exactly double, neither side may fire often (each ≤ alpha)
    outcomes = [run(0.04, 0.02, seconds=60) for _ in range(40)]
    assert sum(o is not Decision.CONTINUE for o in outcomes) <= 3, outcomes

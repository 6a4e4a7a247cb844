"""The latency histogram's stated error, and the threshold gates' verdicts with their numbers (pure)."""

from __future__ import annotations

import math
import random

import pytest

from rollout.gates.threshold import evaluate
from rollout.gates.verdict import Status
from rollout.load.stats import StageStats
from rollout.plan.model import Gate
from rollout.stats.histogram import RELATIVE_ERROR, Histogram


def test_quantiles_are_within_the_stated_relative_error() -> None:
    rng = random.Random(1)
    values = [rng.lognormvariate(3, 1) for _ in range(20000)]
    h = Histogram()
    for v in values:
        h.record(v)
    values.sort()
    for q in (0.5, 0.9, 0.95, 0.99, 0.999):
        exact = values[math.ceil(q * len(values)) - 1]
        assert abs(h.quantile(q) - exact) <= RELATIVE_ERROR * exact * 1.0001, q
    assert h.value_at_rank(1) == values[0] and h.value_at_rank(len(values)) == values[-1]
    assert h.count == 20000 and abs(h.mean - sum(values) / len(values)) < 1e-6 * h.mean


def test_memory_is_bounded_by_buckets_not_requests() -> None:
    h = Histogram()
    rng = random.Random(2)
    for _ in range(100000):
        h.record(rng.uniform(1, 1000))
    assert len(h.buckets) < 800  # log(1000)/log(1.01) ≈ 694 buckets for three decades


def test_merge_and_minus_and_round_trip() -> None:
    a, b = Histogram(), Histogram()
    for i in range(1, 1001):
        (a if i % 2 else b).record(float(i))
    snapshot = a.copy()
    a.merge(b)
    assert a.count == 1000 and a.quantile(0.5) == pytest.approx(500, rel=RELATIVE_ERROR)
    diff = a.minus(snapshot)
    assert diff.count == 500 and diff.quantile(1.0) == pytest.approx(1000, rel=RELATIVE_ERROR)
    back = Histogram.from_dict(a.to_dict())
    assert back.buckets == a.buckets and back.count == a.count and back.quantile(0.99) == a.quantile(0.99)


def _stats(canary: tuple[int, int, float], stable: tuple[int, int, float]) -> StageStats:
    s = StageStats()
    for role, (n, fails, ms) in (("canary", canary), ("stable", stable)):
        for i in range(n):
            s.role(role).add(ms, i < fails)
    return s


def test_error_rate_gate_fails_with_its_numbers() -> None:
    g = Gate(metric="error_rate", max="1%", min_requests=100)
    v = evaluate("errors", g, _stats((4210, 210, 10.0), (4000, 0, 10.0)), final=False)
    assert v.status is Status.FAIL
    assert v.message == "canary error rate 4.99% > 1% (4,210 requests)"
    assert v.observed == pytest.approx(210 / 4210) and v.threshold == 0.01 and v.requests == 4210


def test_latency_gate_pending_then_pass_then_inconclusive() -> None:
    g = Gate(metric="p95", max="500ms", min_requests=100)
    assert evaluate("p95", g, _stats((50, 0, 10.0), (0, 0, 1.0)), final=False).status is Status.PENDING
    v = evaluate("p95", g, _stats((50, 0, 10.0), (0, 0, 1.0)), final=True)
    assert v.status is Status.INCONCLUSIVE and "50 requests < 100 needed" in v.message
    v = evaluate("p95", g, _stats((200, 0, 812.0), (0, 0, 1.0)), final=False)
    assert v.status is Status.FAIL and v.message.startswith("canary p95 81") and "> 500 ms (200 requests)" in v.message
    v = evaluate("p95", g, _stats((200, 0, 100.0), (0, 0, 1.0)), final=True)
    assert v.status is Status.PASS and "≤ 500 ms" in v.message


def test_gate_on_stable_and_on_all_traffic() -> None:
    s = _stats((100, 0, 10.0), (100, 50, 10.0))
    assert evaluate("e", Gate(metric="error_rate", max="10%", version="stable", min_requests=10), s, final=True).status is Status.FAIL
    v = evaluate("e", Gate(metric="error_rate", max="10%", version="all", min_requests=10), s, final=True)
    assert v.status is Status.FAIL and "all traffic error rate 25% > 10% (200 requests)" == v.message


def test_compare_gate_canary_against_stable() -> None:
    g = Gate(metric="p95", compare="stable", max_increase="20%", min_requests=100)
    v = evaluate("cmp", g, _stats((300, 0, 130.0), (300, 0, 100.0)), final=False)
    assert v.status is Status.FAIL and "× 1.2" in v.message and "(300 canary / 300 stable requests)" in v.message
    assert evaluate("cmp", g, _stats((300, 0, 115.0), (300, 0, 100.0)), final=True).status is Status.PASS
    assert evaluate("cmp", g, _stats((300, 0, 115.0), (30, 0, 100.0)), final=True).status is Status.INCONCLUSIVE
    ge = Gate(metric="error_rate", compare="stable", max_increase="1%", min_requests=100)
    v = evaluate("cmpe", ge, _stats((1000, 30, 1.0), (1000, 10, 1.0)), final=False)
    assert v.status is Status.FAIL and "points" in v.message


def test_nearest_rank_is_exact_despite_float_noise_and_bad_values_do_not_crash() -> None:
    h = Histogram()
    for i in range(1, 101):
        h.record(float(i))
    assert h.quantile(0.07) == pytest.approx(7.0, rel=RELATIVE_ERROR)  # 0.07 * 100 = 7.000000000000001
    assert h.values_at_ranks([95, 1, 50, 100]) == [h.value_at_rank(95), h.value_at_rank(1), h.value_at_rank(50), h.value_at_rank(100)]
    h.record(float("inf"))
    h.record(float("nan"))
    h.record(-1.0)
    h.record(5.0, n=0)
    assert h.count == 103 and h.min == 0.0


def test_a_histogram_of_another_resolution_is_refused() -> None:
    d = Histogram().to_dict()
    d["relative_error"] = 0.01
    with pytest.raises(ValueError):
        Histogram.from_dict(d)


def _metric_stats(metric: str, canary: list[float], stable: list[float]) -> StageStats:
    s = StageStats()
    for role, values in (("canary", canary), ("stable", stable)):
        for v in values:
            s.add_metric(metric, role, v)
    return s


def test_declared_metric_gates_mean_share_below_and_compare() -> None:
    low = _metric_stats("confidence", [0.5] * 80 + [0.9] * 20, [0.9] * 100)
    g = Gate(metric="confidence", stat="share_below", below=0.6, max="5%", min_requests=50)
    v = evaluate("conf", g, low, final=False)
    assert v.status is Status.FAIL and v.message == "canary share of confidence ≤ 0.6 80% > 5% (100 values)"
    g = Gate(metric="confidence", min=0.8, min_requests=50)  # mean by default
    v = evaluate("mean", g, low, final=False)
    assert v.status is Status.FAIL and "canary confidence mean 0.58 < 0.8 (100 values)" == v.message
    assert evaluate("mean", g, low.__class__(), final=True).status is Status.INCONCLUSIVE
    g = Gate(metric="confidence", compare="stable", max_decrease="10%", min_requests=50)
    v = evaluate("cmp", g, low, final=False)
    assert v.status is Status.FAIL and "< 0.81 = stable 0.9 × 0.9" in v.message
    ok = _metric_stats("confidence", [0.88] * 100, [0.9] * 100)
    assert evaluate("cmp", g, ok, final=True).status is Status.PASS


def test_polled_metric_uses_the_latest_value() -> None:
    s = StageStats()
    s.add_metric("errs", "canary", 0.01)
    s.add_metric("errs", "canary", 0.3)
    s.gauges["errs"] = {"canary": 0.3}
    g = Gate(metric="errs", stat="last", max=0.05, min_requests=1)
    v = evaluate("prom", g, s, final=False)
    assert v.status is Status.FAIL and "canary errs last 0.3 > 0.05 (2 values)" == v.message

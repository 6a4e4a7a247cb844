"""A stage's judge: sequential canary-vs-stable gates fed the stage's cumulative statistics each second."""

from __future__ import annotations

import random

from rollout.gates.judge import StageJudge
from rollout.gates.verdict import Status
from rollout.load.stats import StageStats
from rollout.plan.model import Gate


def _run(gates: dict[str, Gate], canary_err: float, stable_err: float, canary_ms: float, stable_ms: float,
         seconds: int, rps: int = 200, seed: int = 3) -> tuple[int, list]:
    """Feed `rps` requests per version per second; return (second of the first FAIL or -1, final verdicts)."""
    rng = random.Random(seed)
    judge = StageJudge(gates)
    stats = StageStats()
    for sec in range(1, seconds + 1):
        for role, err, ms in (("canary", canary_err, canary_ms), ("stable", stable_err, stable_ms)):
            vs = stats.role(role)
            for _ in range(rps):
                vs.add(rng.lognormvariate(0, 0.5) * ms, rng.random() < err)
        verdicts = judge.judge(stats, final=False)
        if any(v.status is Status.FAIL for v in verdicts):
            return sec, verdicts
    return -1, judge.judge(stats, final=True)


ERR = Gate(metric="error_rate", compare="stable", max_increase="1%", method="sequential", min_requests=100)
P95 = Gate(metric="p95", compare="stable", max_increase="20%", pass_increase="10%", method="sequential", min_requests=100)


def test_two_percent_errors_against_point_one_fail_within_the_predicted_requests() -> None:
    sec, verdicts = _run({"errors": ERR}, 0.02, 0.001, 10, 10, seconds=60)
    assert sec != -1, verdicts
    # the reference's sequential 95th percentile for 0.1 % → 2 % is ~1,000 requests per version (margin 0);
    # with a 1-point margin it takes longer: allow 6,000 (30 s at 200 req/s)
    assert sec * 200 <= 6000, sec
    v = next(v for v in verdicts if v.gate == "errors")
    assert v.status is Status.FAIL and "sequential" in v.message and f"/{sec * 200:,})" in v.message


def test_thirty_percent_slower_p95_fails() -> None:
    gate = Gate(metric="p95", compare="stable", max_increase="10%", pass_increase="5%", method="sequential", min_requests=100)
    sec, verdicts = _run({"p95": gate}, 0.0, 0.0, 13, 10, seconds=90)
    assert sec != -1, [v.message for v in verdicts]
    assert "p95" in verdicts[0].message and "ms" in verdicts[0].message


def test_identical_versions_are_not_failed_and_end_passed() -> None:
    sec, verdicts = _run({"errors": ERR, "p95": P95}, 0.001, 0.001, 10, 10, seconds=90, seed=11)
    assert sec == -1, [v.message for v in verdicts]
    assert all(v.status is Status.PASS for v in verdicts), [v.message for v in verdicts]


def test_between_the_margins_is_inconclusive_at_the_end() -> None:
    sec, verdicts = _run({"p95": P95}, 0.0, 0.0, 11.5, 10, seconds=20, seed=5)
    assert sec == -1
    assert verdicts[0].status is Status.INCONCLUSIVE, verdicts[0].message


def test_alpha_is_split_over_the_sequential_gates() -> None:
    # an absolute limit is sequential by default and shares the budget; `method: threshold` keeps the old rule
    judge = StageJudge({"a": ERR, "b": P95, "c": Gate(metric="p95", max="1s"), "d": Gate(metric="p95", max="1s", method="threshold")})
    assert set(judge.sequential) == {"a", "b", "c"}
    assert all(abs(s.alpha - 0.01 / 3) < 1e-12 for s in judge.sequential.values())


def test_error_rate_margins_in_points_and_as_a_ratio_are_judged_without_internal_errors() -> None:
    points = Gate(metric="error_rate", compare="stable", max_increase="+1pt", method="sequential")
    ratio = Gate(metric="error_rate", compare="stable", max_ratio=2, method="sequential")
    assert points.max_increase == 0.01 and ratio.max_ratio == 2.0
    sec, verdicts = _run({"ratio": ratio}, 0.08, 0.02, 10, 10, seconds=60, seed=4)  # 4 × stable: credibly above double
    assert sec != -1 and verdicts[0].status is Status.FAIL and "> 2× stable credibly" in verdicts[0].message, verdicts[0].message
    sec, verdicts = _run({"ratio": ratio}, 0.03, 0.03, 10, 10, seconds=60, seed=4)  # the same rate: credibly below double
    assert sec == -1 and verdicts[0].status is Status.PASS and "< 2× stable credibly" in verdicts[0].message, verdicts[0].message
    threshold = Gate(metric="error_rate", compare="stable", max_ratio=2, min_requests=100)
    sec, verdicts = _run({"ratio": threshold}, 0.03, 0.03, 10, 10, seconds=5, seed=4)
    assert verdicts[0].status is Status.PASS and "× 2" in verdicts[0].message, verdicts[0].message

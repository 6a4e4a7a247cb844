"""Sequential (anytime-valid) gates on real traffic: real services on 127.0.0.1, real Locust, the real CLI."""

from __future__ import annotations

from typing import Any

from tests.test_local_e2e import service, rollout_env  # noqa: F401  (fixture)

SEQ_ERRORS = {"metric": "error_rate", "compare": "stable", "max_increase": "0%", "method": "sequential", "alpha": 0.01, "min_requests": 50}
SEQ_P95 = {"metric": "p95", "compare": "stable", "max_increase": "10%", "pass_increase": "5%", "method": "sequential", "alpha": 0.01, "min_requests": 50}


def _fail(ro: Any) -> dict[str, Any]:
    stage = ro.status()["state"]["stages"][0]
    return next(v for v in stage["verdicts"] if v["status"] == "fail")


def test_two_percent_errors_against_point_one_fail_within_the_predicted_requests(rollout_env: Any) -> None:  # noqa: F811
    versions = {"v1": service("v1", latency="5ms", errors="0.1%"), "v2": service("v2", latency="5ms", errors="2%")}
    ro = rollout_env([{"name": "half", "weight": 50, "duration": "90s"}], gates={"errors": SEQ_ERRORS}, versions=versions, users=40)
    r = ro("run", "--version", "v2")
    assert r.returncode == 1, r.stdout + r.stderr
    fail = _fail(ro)
    assert fail["gate"] == "errors" and "sequential" in fail["message"]
    # reference (shared/reference/canary-statistics.md): 95 % of runs decide within ~1,000 requests per version
    assert fail["requests"] <= 4000, fail


def test_thirty_percent_slower_p95_fails(rollout_env: Any) -> None:  # noqa: F811
    versions = {"v1": service("v1", latency="20ms"), "v2": service("v2", latency="26ms")}
    ro = rollout_env([{"name": "half", "weight": 50, "duration": "120s"}], gates={"p95": SEQ_P95}, versions=versions, users=40)
    r = ro("run", "--version", "v2")
    assert r.returncode == 1, r.stdout + r.stderr
    fail = _fail(ro)
    assert fail["gate"] == "p95" and "p95" in fail["message"]


def test_an_identical_canary_is_not_failed(rollout_env: Any) -> None:  # noqa: F811
    versions = {"v1": service("v1", latency="20ms", errors="1%"), "v2": service("v2", latency="20ms", errors="1%")}
    # alpha 0.001 here: a false failure is then a 1-in-1,000 event, so this test cannot flake in practice
    gates = {"errors": dict(SEQ_ERRORS, max_increase="1%", alpha=0.001), "p95": dict(SEQ_P95, alpha=0.001)}
    ro = rollout_env([{"name": "half", "weight": 50, "duration": "10s"}], gates=gates, versions=versions, users=40)
    r = ro("run", "--version", "v2")
    assert r.returncode in (0, 4), r.stdout + r.stderr  # passed, or inconclusive → review; never rolled back
    stage = ro.status()["state"]["stages"][0]
    assert all(v["status"] != "fail" for v in stage["verdicts"]), stage["verdicts"]

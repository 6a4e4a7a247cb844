""""Far fewer requests than expected" (#9 item 5): when a run's load made far fewer requests than its users and
duration imply, an inconclusive verdict says so plainly and names the likely cause (the locustfile's wait_time,
or a slow target) instead of an unexplained "inconclusive". The rule (rollout/gates/health.py `thin_load`):
fewer than 0.2 requests per user-second, reported only when something is inconclusive.

Pure tests of the rule, then real short runs: `rollout gate` with a locustfile whose users wait 60 s, and
against a service answering in 5 s; `rollout run` on the local backend with the waiting locustfile."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout.gates.health import THIN_PER_USER_SECOND, explain_inconclusive, thin_load, user_seconds
from rollout.gates.verdict import Status, Verdict
from rollout.load.stats import StageStats
from tests.conftest import run_cli, stop_all
from tests.test_gate import NO_SUMMARY, start_service

SLOW_USERS = (
    "from locust import HttpUser, constant, task\n\n"
    "class Patient(HttpUser):\n    wait_time = constant(60)\n\n"
    "    @task\n    def ask(self):\n        self.client.get('/api/answer?q=x')\n"
)
BUSY_USERS = (
    "from locust import HttpUser, constant, task\n\n"
    "class Busy(HttpUser):\n    wait_time = constant(0)\n\n"
    "    @task\n    def ask(self):\n        self.client.get('/api/answer?q=x')\n"
)


def stats_with(n: int, latency_ms: float, users: int, elapsed: float, in_flight: int | None = None) -> StageStats:
    s = StageStats(elapsed=elapsed, users=users)
    for i in range(n):
        s.role("stable").add(latency_ms, False)
    s.users_timeline = [[float(t), users] for t in range(1, int(elapsed) + 1)]
    if in_flight is not None:
        s.router = {"stable": {"routed": n + in_flight, "answered": n, "in_flight": in_flight}}
    return s


def test_user_seconds_follow_the_timeline_so_a_ramp_is_not_held_against_the_load() -> None:
    s = StageStats(elapsed=4.0, users=10)
    s.users_timeline = [[1.0, 10], [2.0, 10], [3.0, 10], [4.0, 10]]
    assert user_seconds(s) == pytest.approx(35.0)  # 0 → 10 users over the first second, then 10 for 3 s
    s.users_timeline = []
    assert user_seconds(s) == pytest.approx(40.0)  # no timeline: users × elapsed


def test_a_normal_load_is_not_thin_and_a_decided_run_gets_no_explanation() -> None:
    assert thin_load(stats_with(400, 20.0, 10, 10.0)) is None  # 4 requests per user-second
    thin = stats_with(5, 20.0, 10, 10.0)
    passed = [Verdict("errors", Status.PASS, "ok", "canary")]
    assert explain_inconclusive(passed, thin) == passed  # the gates decided: judged on them, however few the requests


def test_users_that_wait_are_named_as_the_cause() -> None:
    v = thin_load(stats_with(10, 20.0, 5, 20.0))  # 10 requests from 5 users in 20 s: 0.1 per user-second
    assert v is not None and v.status is Status.INCONCLUSIVE and v.gate == "health: load volume"
    assert "far fewer requests than expected: 10 in 20 s from 5 users" in v.message
    assert "wait_time" in v.message and "wait ~9.7 s between requests" in v.message
    assert v.observed is not None and v.observed < THIN_PER_USER_SECOND


def test_a_slow_target_is_named_as_the_cause() -> None:
    v = thin_load(stats_with(6, 8000.0, 4, 20.0))  # each request 8 s; a user completes one every ~12 s
    assert v is not None and "the target is slow: a request took 8.0 s on average" in v.message
    v = thin_load(stats_with(2, 30.0, 4, 20.0, in_flight=4))  # fast answers, but every user waits on one that hangs
    assert v is not None and "the target is slow" in v.message and "4 requests still unanswered" in v.message


def test_no_request_at_all_says_what_to_check() -> None:
    v = thin_load(stats_with(0, 0.0, 3, 8.0))
    assert v is not None and "no request completed" in v.message and "wait_time" in v.message


def test_the_explanation_comes_first_among_inconclusive_verdicts() -> None:
    unsure = [Verdict("errors", Status.INCONCLUSIVE, "not enough evidence yet", "canary")]
    out = explain_inconclusive(unsure, stats_with(10, 20.0, 5, 20.0))
    assert [v.gate for v in out] == ["health: load volume", "errors"]


# -- real short runs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def targets() -> Iterator[dict[str, str]]:
    procs, urls = [], {}
    try:
        for name, latency in (("fast", "2ms"), ("slow", "5s")):
            proc, url = start_service(f"v-{name}", latency=latency)
            procs.append(proc)
            urls[name] = url
        yield urls
    finally:
        stop_all(procs)


def gate_run(tmp_path: Path, url: str, locustfile: str, users: int, duration: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    lf = tmp_path / "load.py"
    lf.write_text(locustfile)
    js = tmp_path / "report.json"
    r = run_cli("gate", "--quiet", "--host", url, "--locustfile", str(lf), "--users", str(users), "--duration", duration,
                "--gate", "errors<1%", "--json", str(js), env=NO_SUMMARY, timeout=120)
    return r, json.loads(js.read_text())


def test_gate_with_users_that_wait_a_minute_says_so_instead_of_a_bare_inconclusive(tmp_path: Path, targets: dict[str, str]) -> None:
    r, doc = gate_run(tmp_path, targets["fast"], SLOW_USERS, users=3, duration="6s")
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "far fewer requests than expected" in out and "wait_time" in out, out
    assert doc["outcome"]["result"] == "inconclusive"
    assert doc["outcome"]["message"].startswith("health: load volume: the load made far fewer requests than expected"), doc["outcome"]
    verdicts = {v["gate"]: v for v in doc["stages"][0]["verdicts"]}
    assert verdicts["health: load volume"]["status"] == "inconclusive" and verdicts["errors<1%"]["status"] == "inconclusive"


def test_gate_against_a_target_answering_in_5_s_names_the_slow_target(tmp_path: Path, targets: dict[str, str]) -> None:
    r, doc = gate_run(tmp_path, targets["slow"], BUSY_USERS, users=3, duration="8s")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "the target is slow" in doc["outcome"]["message"], doc["outcome"]
    assert doc["stages"][0]["verdicts"][0]["gate"] == "health: load volume"


@pytest.mark.slow
def test_a_rollout_stage_with_waiting_users_goes_to_review_with_the_reason_first(tmp_path: Path) -> None:
    from tests.test_local_e2e import Rollout, make_plan

    lf = tmp_path / "load.py"
    lf.write_text(SLOW_USERS)
    ro = Rollout(make_plan(tmp_path, [{"name": "ten", "weight": 10, "duration": "6s"}], gates={"errors": {"metric": "error_rate", "max": "1%"}},
                           users=3, locustfile=str(lf)), tmp_path / "state")
    try:
        r = ro("run", "--version", "v2")
        assert r.returncode == 4, r.stdout + r.stderr  # awaiting review: not the canary's fault, and not a pass
        reason = ro.status()["state"]["stages"][-1]["reason"]
        assert reason.startswith("health: load volume: the load made far fewer requests than expected"), reason
        assert "wait_time" in reason
    finally:
        ro("down")

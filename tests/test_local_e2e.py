"""The whole loop on the embedded local backend: real processes, real HTTP on 127.0.0.1, real Locust.

Each test runs the `rollout` CLI as a user would (a subprocess), against the
sample service of examples/, and checks the outcome through the recorded
state, the router's own counters and real requests through the router.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from tests.conftest import ROOT, run_cli, write_plan

SERVICE = ROOT / "examples" / "service.py"
LOCUSTFILE = ROOT / "locustfiles" / "answer.py"


def service(version: str, latency: str = "5ms", errors: str = "0%", extra: str = "") -> dict[str, Any]:
    return {"command": f"{{python}} {SERVICE} --port {{port}} --version {version} --latency {latency} --error-rate {errors} --seed 7 {extra}".strip()}


def make_plan(tmp_path: Path, stages: list[dict], gates: dict | None = None, versions: dict | None = None, users: int = 10,
              metrics: dict | None = None, locustfile: str | None = None) -> Path:
    plan = {
        "name": "e2e",
        "owner": {"name": "Test team", "contact": "test@example.com"},
        "target": {
            "backend": "local",
            "stable": "v1",
            "versions": versions or {"v1": service("v1"), "v2": service("v2"), "v3": service("v3", errors="30%")},
        },
        "load": {"locustfile": locustfile or str(LOCUSTFILE), "users": users, "spawn_rate": users, "max_requests": 200000, **({"metrics": metrics} if metrics else {})},
        # the engine's mechanics, not the statistics, are tested with this default: the naive rule (threshold)
        # judges after 50 requests; the sequential absolute gates have their own tests (test_sequential_e2e)
        "gates": gates if gates is not None else {"errors": {"metric": "error_rate", "max": "5%", "min_requests": 50, "method": "threshold"}},
        "stages": stages,
    }
    return write_plan(tmp_path, plan)


class Rollout:
    """The CLI bound to one plan and one state directory."""

    def __init__(self, plan: Path, state_dir: Path) -> None:
        self.plan = plan
        self.env = {"ROLLOUT_STATE_DIR": str(state_dir), "ROLLOUT_ACTOR": "pytest"}

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return run_cli(args[0], str(self.plan), *args[1:], env=self.env, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "rollout", args[0], str(self.plan), *args[1:]],
            cwd=ROOT, env={**os.environ, **self.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def status(self) -> dict[str, Any]:
        r = self("status", "-o", "json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def pids(self) -> list[int]:
        state = self.status()["state"] or {}
        backend = state.get("backend", {})
        out = [backend[r]["pid"] for r in ("stable", "canary") if backend.get(r)]
        if backend.get("router"):
            out.append(backend["router"]["proc"]["pid"])
        return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.fixture
def rollout_env(tmp_path: Path) -> Iterator[Any]:
    made: list[Rollout] = []

    def make(stages: list[dict], **kw: Any) -> Rollout:
        r = Rollout(make_plan(tmp_path, stages, **kw), tmp_path / "state")
        made.append(r)
        return r

    yield make
    for r in made:  # no orphan processes, whatever happened in the test
        pids = r.pids()
        r("down")
        deadline = time.monotonic() + 15
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if alive(p)], "processes left running after `rollout down`"


def versions_through_router(entry_port: int, n: int = 100, headers: dict[str, str] | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    with httpx.Client(base_url=f"http://127.0.0.1:{entry_port}", timeout=10) as c:
        for _ in range(n):
            v = c.get("/api/answer", headers=headers or {}).headers.get("x-version", "?")
            counts[v] = counts.get(v, 0) + 1
    return counts


def test_good_canary_is_promoted(rollout_env: Any) -> None:
    # sequential limits (the default) pass as soon as the evidence suffices, after 4 s; the 60 s cap is only
    # reached on a starved machine, where a fixed 4 s stage could end with too few requests to judge
    sequential = {"errors": {"metric": "error_rate", "max": "5%"}}
    ro = rollout_env([{"name": "quarter", "weight": 25, "duration": "60s", "min_duration": "4s"},
                      {"name": "half", "weight": "50%", "duration": "60s", "min_duration": "4s"}], gates=sequential)
    r = ro("run", "--version", "v2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "promoted" in r.stdout
    st = ro.status()
    state, live = st["state"], st["live"]
    assert state["phase"] == "promoted" and state["stable_version"] == "v2" and state["canary_version"] is None
    assert state["split"] == {"weight": 0.0, "cohort": None}
    assert [s["status"] for s in state["stages"]] == ["passed", "passed"]
    assert [r["version"] for r in state["revisions"]] == ["v1", "v2"]
    half = state["stages"][1]["stats"]
    share = half["canary"]["requests"] / half["all"]["requests"]
    assert 0.4 < share < 0.6, half  # the router's split, as measured by the load
    assert live["stable"]["version"] == "v2" and live["stable"]["alive"] and live["canary"] is None
    assert live["router"]["live"]["weight"] == 0
    assert versions_through_router(live["router"]["port"], 50) == {"v2": 50}
    hist = ro("history")
    assert hist.returncode == 0 and "v1 → v2" in hist.stdout and "PROMOTED" in hist.stdout and "2/2" in hist.stdout


def test_bad_canary_is_rolled_back_within_seconds_of_the_gate_failing(rollout_env: Any) -> None:
    ro = rollout_env([{"name": "half", "weight": 50, "duration": "60s"}])
    t0 = time.monotonic()
    r = ro("run", "--version", "v3")
    took = time.monotonic() - t0
    assert r.returncode == 1, r.stdout + r.stderr
    assert "rolled-back" in r.stdout
    st = ro.status()
    state = st["state"]
    assert state["phase"] == "rolled-back" and state["stable_version"] == "v1"
    stage = state["stages"][0]
    assert stage["status"] == "failed"
    fail = next(v for v in stage["verdicts"] if v["status"] == "fail")
    assert fail["gate"] == "errors" and fail["observed"] > 0.05
    assert "canary error rate" in fail["message"] and "> 5%" in fail["message"] and "requests)" in fail["message"]
    assert took < 50, "the stage should end at the failing gate, not at its 60 s duration"
    hist = {h["action"]: h["at"] for h in state["history"]}
    assert hist["stable"] - stage["ended_at"] < 5.0, "all traffic back on stable within seconds of the verdict"
    live = st["live"]
    assert live["canary"] is None and live["router"]["live"]["weight"] == 0
    assert versions_through_router(live["router"]["port"], 50) == {"v1": 50}


def test_cohort_stage_sends_every_cohort_request_and_no_other_to_the_canary(rollout_env: Any) -> None:
    ro = rollout_env([{"name": "payments", "cohort": {"x-team": "payments"}, "weight": 0, "duration": "4s"}, {"name": "hold", "weight": 0, "duration": "30s", "approval": "manual"}])
    r = ro("run", "--version", "v2")
    assert r.returncode == 4, r.stdout + r.stderr  # paused before the manual stage: the cohort split stays
    state = ro.status()["state"]
    routing = state["stages"][0]["stats"]["cohort_routing"]
    assert routing.get("cohort->canary", 0) >= 20 and routing.get("other->stable", 0) >= 50, routing
    assert routing.get("cohort->stable", 0) == 0 and routing.get("other->canary", 0) == 0, routing
    port = ro.status()["live"]["router"]["port"]
    assert versions_through_router(port, 30, {"x-team": "payments"}) == {"v2": 30}
    assert versions_through_router(port, 30, {"x-team": "search"}) == {"v1": 30}


def test_manual_stage_pauses_until_approved(rollout_env: Any) -> None:
    ro = rollout_env([{"name": "ten", "weight": 10, "duration": "2s", "approval": "manual"}], gates={})
    r = ro("run", "--version", "v2")
    assert r.returncode == 4 and "approve" in r.stdout, r.stdout + r.stderr
    assert ro.status()["state"]["phase"] == "paused"
    r = ro("approve")
    assert r.returncode == 0, r.stderr
    r = ro("approve")
    assert r.returncode == 2 and "nothing is waiting for approval" in r.stderr
    r = ro("run")
    assert r.returncode == 0 and "promoted" in r.stdout, r.stdout + r.stderr
    assert any(h["action"] == "approve" and h["who"] == "pytest" for h in ro.status()["state"]["history"])


def test_advance_runs_one_stage_and_abort_puts_traffic_on_stable(rollout_env: Any) -> None:
    ro = rollout_env([{"name": "a", "weight": 20, "duration": "2s"}, {"name": "b", "weight": 50, "duration": "2s"}], gates={})
    r = ro("advance", "--version", "v2")
    assert r.returncode == 0 and "stage-passed" in r.stdout, r.stdout + r.stderr
    st = ro.status()
    assert st["state"]["phase"] == "progressing" and st["state"]["stage_index"] == 1
    assert st["live"]["router"]["live"]["weight"] == pytest.approx(0.2)  # the split stays between commands
    r = ro("advance", "--version", "v3")
    assert r.returncode == 2 and "rollout of v2 is in progress" in r.stderr
    r = ro("abort", "--reason", "testing abort")
    assert r.returncode == 0, r.stderr
    st = ro.status()
    assert st["state"]["phase"] == "aborted" and "testing abort" in st["state"]["reason"]
    assert st["live"]["canary"] is None and st["live"]["router"]["live"]["weight"] == 0


def _wait_for(pred: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


def _stage_running(ro: Rollout, name: str) -> bool:
    st = ro.status()["state"]
    return bool(st and st["stages"] and st["stages"][-1]["name"] == name and st["stages"][-1]["status"] == "running")


def test_sigkill_mid_stage_then_status_tells_the_truth_and_revert_restores_stable(rollout_env: Any) -> None:
    ro = rollout_env([{"name": "half", "weight": 50, "duration": "120s"}], gates={})
    proc = ro.popen("run", "--version", "v2")
    try:
        _wait_for(lambda: _stage_running(ro, "half"))
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    st = ro.status()
    state = st["state"]
    assert state["phase"] == "progressing" and state["split"]["weight"] == 0.5
    assert any(f"`rollout run` (pid {proc.pid} on" in n and "is gone" in n for n in st["notes"]), st["notes"]
    text = ro("status").stdout
    assert "is gone" in text and "rollout revert" in text
    canary_pid = state["backend"]["canary"]["pid"]
    assert alive(canary_pid)  # the local backend outlives the command, like a cluster
    r = ro("revert", "--reason", "3am")
    assert r.returncode == 0, r.stdout + r.stderr
    st = ro.status()
    assert st["state"]["phase"] == "rolled-back" and st["state"]["split"]["weight"] == 0
    assert st["live"]["canary"] is None and not alive(canary_pid)
    assert versions_through_router(st["live"]["router"]["port"], 40) == {"v1": 40}


def test_ctrl_c_leaves_a_recorded_consistent_state(rollout_env: Any) -> None:
    ro = rollout_env([{"name": "half", "weight": 50, "duration": "120s"}], gates={})
    proc = ro.popen("run", "--version", "v2")
    try:
        _wait_for(lambda: _stage_running(ro, "half"))
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    state = ro.status()["state"]
    assert state["stages"][-1]["status"] == "interrupted" and state["split"]["weight"] == 0.5
    assert state["transition"] is None
    assert any("interrupted" in h["detail"] and "rollout advance" in h["detail"] for h in state["history"])
    r = ro("revert")
    assert r.returncode == 0


def test_sigterm_is_handled_like_ctrl_c(rollout_env: Any) -> None:
    ro = rollout_env([{"name": "half", "weight": 50, "duration": "120s"}], gates={})
    proc = ro.popen("run", "--version", "v2")
    try:
        _wait_for(lambda: _stage_running(ro, "half"))
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert ro.status()["state"]["stages"][-1]["status"] == "interrupted"


def test_a_second_command_gets_the_lock_error(rollout_env: Any) -> None:
    ro = rollout_env([{"name": "half", "weight": 50, "duration": "120s"}], gates={})
    proc = ro.popen("run", "--version", "v2")
    try:
        _wait_for(lambda: _stage_running(ro, "half"))
        r = ro("advance")
        assert r.returncode == 3, r.stderr
        assert "another command is acting on this rollout" in r.stderr and "`rollout run`" in r.stderr and f"pid {proc.pid}" in r.stderr
        assert ro("status").returncode == 0  # read-only: no lock needed
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert ro("revert").returncode == 0


def test_a_canary_that_never_gets_healthy_is_an_infrastructure_error(rollout_env: Any) -> None:
    versions = {"v1": service("v1"), "v2": {"command": "{python} -c \"import sys; print('boom: config missing'); sys.exit(3)\""}}
    ro = rollout_env([{"name": "a", "weight": 10, "duration": "2s"}], versions=versions)
    r = ro("run", "--version", "v2")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "version v2 did not become healthy" in r.stderr and "boom: config missing" in r.stderr
    assert "Traceback" not in r.stderr
    r = ro("revert")
    assert r.returncode == 0, r.stderr
    st = ro.status()
    assert st["live"]["stable"]["alive"] and st["state"]["split"]["weight"] == 0


UNDECIDABLE = {"errors": {"metric": "error_rate", "max": "5%", "min_requests": 1000000, "method": "threshold"}}  # never enough evidence


def test_uncertain_stage_awaits_review_then_approve_continues(rollout_env: Any) -> None:
    ro = rollout_env([{"name": "ten", "weight": 10, "duration": "2s"}, {"name": "half", "weight": 50, "duration": "2s", "gates": {"errors": None}}], gates=UNDECIDABLE)
    r = ro("run", "--version", "v2")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "awaiting-review" in r.stdout and "rollout approve" in r.stdout and "rollout reject" in r.stdout
    st = ro.status()["state"]
    assert st["phase"] == "awaiting-review" and st["stages"][0]["status"] == "needs-review"
    assert "requests < 1,000,000 needed" in st["reason"] and st["review_deadline"] > time.time()
    assert st["split"]["weight"] == 0.1  # the canary keeps its share while a person looks
    assert ro("approve").returncode == 0
    r = ro("run")
    assert r.returncode == 0 and "promoted" in r.stdout, r.stdout + r.stderr


def test_uncertain_stage_rejected_rolls_back(rollout_env: Any) -> None:
    ro = rollout_env([{"name": "ten", "weight": 10, "duration": "2s"}], gates=UNDECIDABLE)
    assert ro("run", "--version", "v2").returncode == 4
    r = ro("reject", "--reason", "p95 looks off")
    assert r.returncode == 1, r.stdout + r.stderr
    st = ro.status()
    assert st["state"]["phase"] == "rolled-back" and "rejected by pytest: p95 looks off" in st["state"]["reason"]
    assert st["live"]["canary"] is None and st["live"]["router"]["live"]["weight"] == 0


def test_unanswered_review_takes_the_default_after_the_timeout(rollout_env: Any, tmp_path: Path) -> None:
    ro = rollout_env([{"name": "ten", "weight": 10, "duration": "2s"}], gates=UNDECIDABLE)
    data = yaml.safe_load(ro.plan.read_text())
    data["review"] = {"timeout": "1s", "default": "rollback"}
    ro.plan.write_text(yaml.safe_dump(data))
    assert ro("run", "--version", "v2").returncode == 4
    time.sleep(1.5)
    r = ro("advance")
    assert r.returncode == 1, r.stdout + r.stderr
    st = ro.status()["state"]
    assert st["phase"] == "rolled-back" and "not answered within 1s: default action `rollback`" in st["reason"]


def test_run_wait_applies_the_review_timeout_without_another_command(rollout_env: Any) -> None:
    ro = rollout_env([{"name": "ten", "weight": 10, "duration": "2s"}], gates=UNDECIDABLE)
    data = yaml.safe_load(ro.plan.read_text())
    data["review"] = {"timeout": "2s", "default": "continue"}
    ro.plan.write_text(yaml.safe_dump(data))
    r = ro("run", "--version", "v2", "--wait")
    assert r.returncode == 0 and "promoted" in r.stdout, r.stdout + r.stderr
    st = ro.status()["state"]
    assert st["phase"] == "promoted" and any("review timed out" in h["detail"] for h in st["history"])


def test_run_wait_continues_when_someone_approves(rollout_env: Any) -> None:
    ro = rollout_env([{"name": "ten", "weight": 10, "duration": "2s", "approval": "manual"}], gates={})
    proc = ro.popen("run", "--version", "v2", "--wait")
    try:
        _wait_for(lambda: (ro.status()["state"] or {}).get("phase") == "paused")
        assert ro("approve").returncode == 0  # the waiting command holds no lock
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "promoted" in out, out + err

"""Requests to a live rollout on the local backend, with real processes (issue #8 items 1, 4, 5).

A `rollout run` drives a stage at 10 % while a second process asks it to revert, abort, pause or
promote; a client keeps hitting the entry point and reads the version header, so "all traffic on
stable" is measured where users would see it, not taken from the state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.test_local_e2e import Rollout, _stage_running, _wait_for, alive, rollout_env, versions_through_router  # noqa: F401

LONG = [{"name": "ten", "weight": 10, "duration": "120s"}, {"name": "half", "weight": 50, "duration": "3s"}]


class Watcher:
    """Hits the entry point in a loop; records (monotonic time, version) of every answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5, trust_env=False) as c:
            deadline = time.monotonic() + 300  # bounded
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    v = c.get("/api/answer").headers.get("x-version", "?")
                except httpx.HTTPError:
                    v = "error"
                self.seen.append((time.time(), v))
                time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def canary_after(self, t: float, canary: str) -> list[float]:
        return [at - t for at, v in self.seen if at >= t and v == canary]


def start_driver(ro: Rollout) -> subprocess.Popen[str]:
    proc = ro.popen("run", "--version", "v2")
    _wait_for(lambda: _stage_running(ro, "ten"))
    return proc


def operator(ro: Rollout, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.time()
    r = ro(*args, timeout=60)
    return r, t0


def request_at(ro: Rollout, verb: str) -> float:
    """When the operator's request reached the mailbox (its process started and found the driver)."""
    box = json.loads((Path(ro.env["ROLLOUT_STATE_DIR"]) / "e2e" / "requests.json").read_text())
    return float(next(r["at"] for r in reversed(box["requests"]) if r["verb"] == verb))


def check_stable_in_time(w: Watcher, t0: float, posted: float) -> None:
    """All traffic on stable soon after the request, measured by a user's requests through the entry point.

    The issue asks for 2 s from the command's start; bench/bench_revert_live.py measures exactly that (on an
    idle machine the request→stable part is a load tick plus one router update). Under the shared 2-core
    machine's load (load average ~10) starting Python alone took 1.3-5.7 s and request→stable up to 2.7 s, so
    the bounds asserted here are wide enough not to flake: 5 s from the request, 20 s from the command's start."""
    assert posted >= t0
    late = w.canary_after(posted + 5.0, "v2")
    assert not late, f"the canary still answered {len(late)} requests more than 5 s after the request was made"
    assert not w.canary_after(t0 + 20.0, "v2")
    after = [v for at, v in w.seen if at > posted]
    assert after and after[-1] == "v1", "the entry point kept serving, stable at the end"


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_revert_from_a_second_process_while_run_is_mid_stage(rollout_env: Any) -> None:
    ro = rollout_env(LONG, gates={})
    proc = start_driver(ro)
    port = ro.status()["live"]["router"]["port"]
    w = Watcher(port)
    try:
        _wait_for(lambda: any(v == "v2" for _, v in w.seen))  # the canary really serves its 10 %
        r, t0 = operator(ro, "revert", "--reason", "pager went off")
        out, err = finish(proc)
        time.sleep(0.5)
    finally:
        w.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "asked it to revert" in r.stderr and "reverted by pytest" in r.stdout
    assert proc.returncode == 1, out + err
    assert "reverted by pytest" in out
    check_stable_in_time(w, t0, request_at(ro, "revert"))
    st = ro.status()["state"]
    assert st["phase"] == "rolled-back" and st["split"]["weight"] == 0 and st["driver"] is None and st["live"] is None
    assert st["past"][-1]["stages"][0]["status"] == "interrupted"
    assert "reverted by pytest" in st["past"][-1]["stages"][0]["reason"]
    rev = next(h for h in st["history"] if h["action"] == "revert")
    assert rev["who"] == "pytest" and rev["reason"] == "pager went off"
    assert any(d["action"] == "revert" and d["reason"] == "pager went off" for d in st["past"][-1]["decisions"])
    assert versions_through_router(port, 30) == {"v1": 30}


def test_abort_from_a_second_process_while_run_is_mid_stage(rollout_env: Any) -> None:
    ro = rollout_env(LONG, gates={})
    proc = start_driver(ro)
    port = ro.status()["live"]["router"]["port"]
    w = Watcher(port)
    try:
        _wait_for(lambda: any(v == "v2" for _, v in w.seen))
        r, t0 = operator(ro, "abort", "--reason", "wrong build")
        out, err = finish(proc)
        time.sleep(0.5)
    finally:
        w.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    assert proc.returncode == 1 and "aborted by pytest" in out, out + err
    check_stable_in_time(w, t0, request_at(ro, "abort"))
    st = ro.status()
    assert st["state"]["phase"] == "aborted" and "wrong build" in st["state"]["reason"]
    assert st["live"]["canary"] is None and versions_through_router(port, 20) == {"v1": 20}


def test_pause_then_resume_reruns_the_stage_and_promotes(rollout_env: Any) -> None:
    # a sequential gate passes as soon as the evidence is credible (min_duration 2 s): the resumed stage ends early
    ro = rollout_env([{"name": "ten", "weight": 10, "duration": "120s", "min_duration": "2s"}],
                     gates={"errors": {"metric": "error_rate", "max": "5%"}})
    data = ro.plan.read_text()
    ro.plan.write_text(data)
    proc = ro.popen("run", "--version", "v2")
    _wait_for(lambda: _stage_running(ro, "ten"))
    r = ro("pause", "--reason", "look at the dashboards", timeout=60)
    out, err = finish(proc)
    assert r.returncode == 0, r.stdout + r.stderr
    assert proc.returncode == 4, out + err
    st = ro.status()
    state = st["state"]
    assert state["phase"] == "paused" and state["pause"]["who"] == "pytest" and state["pause"]["reason"] == "look at the dashboards"
    assert state["split"]["weight"] == 0.1 and st["live"]["router"]["live"]["weight"] == 0.1  # the split stays
    assert state["stages"][-1]["status"] == "interrupted" and "paused by pytest" in state["stages"][-1]["reason"]
    # an approval is not a resume
    a = ro("approve")
    assert a.returncode == 2 and "rollout resume" in a.stderr, a.stderr
    text = ro("status").stdout
    assert "paused by pytest" in text
    r = ro("resume", "--reason", "dashboards fine", timeout=180)
    assert r.returncode == 0 and "promoted" in r.stdout, r.stdout + r.stderr
    state = ro.status()["state"]
    assert state["phase"] == "promoted" and state["stable_version"] == "v2"
    ten = [s for s in state["past"][-1]["stages"] if s["name"] == "ten"]
    assert [s["status"] for s in ten] == ["interrupted", "passed"]  # re-run from its start, then passed by its gates
    actions = [(h["action"], h["who"], h["reason"]) for h in state["history"]]
    assert ("pause", "pytest", "look at the dashboards") in actions and ("resume", "pytest", "dashboards fine") in actions


def test_promote_full_from_a_second_process_promotes_now_recorded_as_manual(rollout_env: Any) -> None:
    ro = rollout_env(LONG, gates={})
    proc = start_driver(ro)
    port = ro.status()["live"]["router"]["port"]
    r = ro("promote", "--full", "--reason", "hotfix, verified by hand", timeout=60)
    out, err = finish(proc)
    assert r.returncode == 0, r.stdout + r.stderr
    assert proc.returncode == 0 and "promoted manually by pytest" in out, out + err
    state = ro.status()["state"]
    assert state["phase"] == "promoted" and state["stable_version"] == "v2"
    stages = state["past"][-1]["stages"]
    assert [(s["name"], s["status"]) for s in stages] == [("ten", "accepted"), ("half", "accepted")]
    assert all(s["decided_by"]["who"] == "pytest" and s["decided_by"]["action"] == "promote" for s in stages)
    assert "promoted manually by pytest" in state["past"][-1]["reason"]
    assert state["revisions"][-1]["version"] == "v2" and state["revisions"][-1]["by"] == "pytest"
    assert versions_through_router(port, 20) == {"v2": 20}
    hist = ro("history").stdout
    assert "0/2" in hist  # no stage counted as passed by its gates


def test_requests_refused_while_driving_say_why(rollout_env: Any) -> None:
    ro = rollout_env(LONG, gates={})
    proc = start_driver(ro)
    try:
        r = ro("approve", timeout=60)
        assert r.returncode == 2 and "nothing is waiting for approval" in r.stderr, r.stdout + r.stderr
        r = ro("retry", timeout=60)
        assert r.returncode == 2 and "retry" in r.stderr, r.stdout + r.stderr
        assert _stage_running(ro, "ten")  # refused requests changed nothing
    finally:
        r = ro("revert", timeout=60)
        finish(proc)
    assert r.returncode == 0


def test_sigkilled_driver_then_revert_without_force_acts_at_once(rollout_env: Any) -> None:
    ro = rollout_env(LONG, gates={})
    proc = start_driver(ro)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    st = ro.status()
    assert any(f"`rollout run` (pid {proc.pid} on" in n and "is gone" in n and "without finishing stage 1" in n for n in st["notes"]), st["notes"]
    t0 = time.monotonic()
    r = ro("revert", timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 0 and "asked it" not in r.stderr, r.stdout + r.stderr
    assert took < 20
    st = ro.status()
    assert st["state"]["phase"] == "rolled-back" and st["live"]["canary"] is None
    assert versions_through_router(st["live"]["router"]["port"], 20) == {"v1": 20}


def test_retry_after_a_revert_starts_where_it_stopped(rollout_env: Any) -> None:
    ro = rollout_env([{"name": "a", "weight": 10, "duration": "2s"}, {"name": "b", "weight": 50, "duration": "2s"}], gates={})
    assert ro("advance", "--version", "v2").returncode == 0
    text = ro("status").stdout
    assert "stage 2/2 `b` next, waiting for `rollout advance`" in text and "running" not in text.splitlines()[1], text
    assert "Revisions" in text
    assert ro("revert", "--reason", "try again later").returncode == 0
    text = ro("status").stdout
    assert "Decisions by people" in text and "try again later" in text
    r = ro("retry", "--reason", "fixed config")
    assert r.returncode == 0 and "promoted" in r.stdout, r.stdout + r.stderr
    state = ro.status()["state"]
    assert state["stable_version"] == "v2"
    assert [s["name"] for s in state["past"][-1]["stages"]] == ["b"]  # stage a had passed: not run again
    assert any(h["action"] == "retry" and "from stage 2/2 `b`" in h["detail"] for h in state["history"])

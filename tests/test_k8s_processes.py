"""Several `rollout` processes against one standalone fake API server (`python -m rollout.testing.apiserver`),
as CI runners and laptops share one cluster: the Lease lets exactly one act; a process SIGKILLed between two
writes leaves a state that `rollout status` reads truthfully and `rollout revert --force` repairs.

Faults cross the process boundary through the fake's /_fake/ admin endpoints. Load goes to a small HTTP
server in this process (the plan's entry_url is a 127.0.0.1 URL). Waits poll with generous deadlines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli, write_plan
from test_k8s_backend import NS, plan_data

from tests.helpers import StandaloneFake


@pytest.fixture
def api(tmp_path: Path) -> Iterator[StandaloneFake]:
    fake = StandaloneFake(tmp_path)
    try:
        yield fake
    finally:
        fake.stop()


def plan_for(tmp_path: Path, router: str, entry: str, duration: str) -> Path:
    data = plan_data(tmp_path, "unused", router, entry_url=entry)
    del data["target"]["kubeconfig"]
    data["gates"] = {"errors": {"metric": "error_rate", "version": "all", "max": "50%", "min_requests": 1}}
    data["load"]["users"] = 2
    data["stages"] = [{"name": "ten", "weight": "10%", "duration": duration}]
    return write_plan(tmp_path, data)


def env_for(api: StandaloneFake, actor: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "KUBECONFIG": api.kubeconfig, "ROLLOUT_ACTOR": actor}


def test_two_advances_at_once_exactly_one_acts(tmp_path: Path, api: StandaloneFake, site: str) -> None:
    plan = plan_for(tmp_path, "gateway-api", site, "4s")  # the winner holds the Lease for longer than the other takes to start
    procs = {who: subprocess.Popen([sys.executable, "-m", "rollout", "advance", str(plan), "--version", "v2", "-n", NS],
                                   env=env_for(api, who), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for who in ("alice", "bob")}
    done = {who: (p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for who, p in procs.items()}  # type: ignore[union-attr]
    codes = sorted(code for code, _, _ in done.values())
    assert codes == [0, 3], done
    winner = next(who for who, (code, _, _) in done.items() if code == 0)
    loser = "bob" if winner == "alice" else "alice"
    err = done[loser][2]
    assert err.startswith("Error: another command is acting on this rollout: `rollout advance` by "
                          f"{winner} pid {procs[winner].pid}"), err
    assert "Lease shop/rollout-answer, since" in err and "--force" in err and "Traceback" not in err
    state = api.state()
    assert state["rollout_number"] == 1 and state["phase"] == "promoted" and state["stable_version"] == "v2"
    assert [h["who"] for h in state["history"] if h["action"] == "start"] == [winner]
    lease = api.call("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/rollout-answer")
    assert not lease["spec"].get("holderIdentity")  # released


def test_sigkill_between_two_writes_then_status_tells_the_truth_and_revert_repairs(tmp_path: Path, api: StandaloneFake, site: str) -> None:
    plan = plan_for(tmp_path, "replicas", site, "2s")
    # the replicas router reaches 10% in two writes: canary 0 -> 1 pod, then stable 4 -> 3; hold the second one
    api.call("POST", "/_fake/faults", {"action": "delay", "delay": 120, "verb": "patch", "resource": "deployments", "name": "answer", "times": 1})
    proc = subprocess.Popen([sys.executable, "-m", "rollout", "advance", str(plan), "--version", "v2", "-n", NS],
                            env=env_for(api, "ci-runner"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while True:  # the first write has landed and taken effect: the canary's pod is ready
        canary = api.get("Deployment", "answer-canary")
        if canary["spec"].get("replicas") == 1 and (canary.get("status") or {}).get("availableReplicas") == 1:
            break
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)  # now in the held second write (or just before it)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    api.call("DELETE", "/_fake/faults")

    state = api.state()
    assert state["transition"]["action"] == "shift" and state["transition"]["pid"] == proc.pid
    env = {"KUBECONFIG": api.kubeconfig, "ROLLOUT_ACTOR": "oncall"}
    # first (the dead process's Lease lives 15 s after its last renewal): the lock names the dead holder
    held = run_cli("revert", str(plan), "-n", NS, env=env, timeout=60)
    assert held.returncode == 3 and f"by ci-runner pid {proc.pid}" in held.stderr and "--force" in held.stderr
    assert api.state()["transition"]["pid"] == proc.pid  # refused before touching anything
    status = run_cli("status", str(plan), "-n", NS, env=env, timeout=60)
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert "Traffic:  0% to canary" in out  # what the record last completed...
    assert (f"a `shift` towards 10% to canary was started by pid {proc.pid} (ci-runner) and did not finish; "
            "traffic may be half-changed") in out  # ...what may be half done...
    assert "Live:     stable answer 4/4 ready" in out and "canary answer-canary 1/1 ready" in out  # ...and what really is
    assert "replicas: 20% to canary (read back from the ready pods) — NOT what the state records (0% to canary)" in out

    forced = run_cli("revert", str(plan), "-n", NS, "--force", "--reason", "runner died", env=env, timeout=60)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    stable, canary = api.get("Deployment", "answer"), api.get("Deployment", "answer-canary")
    assert (stable["spec"]["replicas"], stable["status"]["availableReplicas"]) == (4, 4)
    assert (canary["spec"]["replicas"], canary["status"].get("availableReplicas", 0)) == (0, 0)  # all traffic on stable
    state = api.state()
    assert state["transition"] is None and state["phase"] == "rolled-back" and state["split"]["weight"] == 0.0
    assert state["backend"]["canary"] is None and "runner died" in state["reason"]

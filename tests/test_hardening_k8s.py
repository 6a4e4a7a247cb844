"""#12, Kubernetes: a slow or failing cluster cannot outlast a command's deadlines, a command that lost its
lock stops before its next write, and `Retry-After` is honoured within a retry budget.

The official client talks HTTP to the fake API server (in this process, so faults can be armed by a
predicate at a precise step: `inject_fault(when=...)`); whole commands run as `rollout` subprocesses
(with real Locust load to a small HTTP server here), or in this process for the verbs that run no load.
Time bounds are wide (a busy 2-core machine): each asserts that a deadline cut a wait that would
otherwise have lasted much longer, never a precise duration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_plan
from test_k8s_backend import IMAGE, NS, ROOT, QuietReporter, StubLoadEngine, fake, image_of, kube, main_rule, make_backend, plan_data  # noqa: F401  (fixtures)
from test_k8s_cli import _cli

from rollout.backends.kubernetes.client import Kube, RetryPolicy, StepTimeout, connect, retry_after_seconds
from rollout.backends.kubernetes.store import ConfigMapStore, LeaseLock, LockLost
from rollout.engine.state import Phase
from rollout.errors import BackendError
from rollout.load.stats import StageStats
from rollout.errors import PlanInvalid
from rollout.plan.loader import load_plan
from rollout.testing.apiserver import FakeApiServer

V1, V2 = IMAGE.format("1.0"), IMAGE.format("2.0")


def cli_plan(tmp_path: Path, entry: str, duration: str, **target: Any) -> Path:
    """One 10 % stage with a lenient gate (promotes on any answer), kubeconfig from $KUBECONFIG."""
    data = plan_data(tmp_path, "unused", "gateway-api", entry_url=entry, **target)
    del data["target"]["kubeconfig"]
    data["gates"] = {"errors": {"metric": "error_rate", "version": "all", "max": "50%", "min_requests": 1}}
    data["load"]["users"] = 2
    data["stages"] = [{"name": "ten", "weight": "10%", "duration": duration}]
    return write_plan(tmp_path, data)


def start_cli(fake: FakeApiServer, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KUBECONFIG": fake.write_kubeconfig(namespace=NS), "ROLLOUT_ACTOR": "ci-runner"}
    return subprocess.Popen([sys.executable, "-m", "rollout", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stored_state(fake: FakeApiServer) -> dict[str, Any]:
    cm = fake.get("configmaps", NS, "rollout-answer")
    assert cm is not None
    return json.loads(cm["data"]["state.json"])  # type: ignore[no-any-return]


def stage_running(fake: FakeApiServer) -> bool:
    cm = fake.get("configmaps", NS, "rollout-answer")
    if cm is None:
        return False
    stages = json.loads(cm["data"]["state.json"]).get("stages") or []
    return bool(stages) and stages[-1]["status"] == "running"


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"rollout did not end within {timeout}s: {out}{err}")
    return proc.returncode, out, err


# -- every API call has a client-side timeout; Retry-After within a retry budget --------------------


def test_retry_after_is_waited_out_five_times_within_the_budget(fake: FakeApiServer) -> None:
    """The finding: 429 + Retry-After: 1 five times, and the client gave up after 5 tries in 4.6 s."""
    slept: list[float] = []
    k = connect(kubeconfig=fake.write_kubeconfig(namespace=NS), retry=RetryPolicy(sleep=slept.append))  # the defaults
    assert k.retry.max_total == 30.0 and k.request_timeout == 30.0  # the documented defaults
    rule = fake.throttle(times=5, retry_after=1, verb="get", resource="configmaps")
    assert ConfigMapStore(k, "answer").load() is None  # the 6th try is answered
    assert rule.hits == 5 and slept == [1.0] * 5  # each wait is the server's 1 s, not a shorter backoff
    assert fake.count("get", "configmaps") == 6
    k.api.close()


def test_a_spent_retry_budget_is_exit_3_naming_the_call(tmp_path: Path, fake: FakeApiServer) -> None:
    plan = cli_plan(tmp_path, "http://127.0.0.1:9", "2s", retry_budget="2s")
    rule = fake.inject_fault(429, retry_after=1, verb="get", resource="httproutes")  # for ever
    started = time.monotonic()
    code, out, err = _cli("revert", str(plan), "--kubeconfig", fake.write_kubeconfig(namespace=NS))
    took = time.monotonic() - started
    assert code == 3, out + err
    assert 'Error: cannot get httproutes.gateway.networking.k8s.io "answer" in namespace "shop"' in err
    assert "retry budget 2s" in err and "429" in err and "Traceback" not in err
    assert 2 <= rule.hits <= 4  # waited out Retry-After while the budget allowed: 1 s, 1 s, then no more
    assert took < 30, took  # the budget, not the default 30 s


def test_every_request_has_a_client_side_timeout(fake: FakeApiServer) -> None:
    k = connect(kubeconfig=fake.write_kubeconfig(namespace=NS), retry=RetryPolicy(base=0.05, max_total=1.0), request_timeout=0.5)
    slow = fake.inject_fault(action="delay", delay=20, verb="get", resource="configmaps", times=1)
    started = time.monotonic()
    assert ConfigMapStore(k, "answer").load() is None  # the hung request timed out, the retry was answered
    assert slow.hits == 1 and time.monotonic() - started < 10
    fake.inject_fault(action="delay", delay=20, verb="get", resource="configmaps")  # every request hangs
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        ConfigMapStore(k, "answer").load()
    assert time.monotonic() - started < 10
    assert 'cannot get configmaps "rollout-answer"' in err.value.what and "no answer within the request timeout" in err.value.what
    k.api.close()


@pytest.mark.parametrize(("header", "seconds"), [("1", 1.0), ("2.5", 2.5), ("-1", None), ("soon", None), (None, None),
                                                  ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0)])
def test_retry_after_forms(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


# -- every step has a deadline ------------------------------------------------------------------------


def test_a_step_past_its_deadline_stops_with_step_timeout(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    fake.set_deployment_fault("never-ready", name="answer-canary")  # progress_deadline 20 s in the plan
    b = make_backend(tmp_path, fake, kube, "gateway-api")
    b.step_timeout = 1.0
    from test_k8s_backend import rolling

    state = rolling()
    b.ensure(state)
    started = time.monotonic()
    with pytest.raises(StepTimeout) as err:
        b.deploy_canary(state, "v2")
    assert time.monotonic() - started < 8  # not the 20 s progress deadline
    assert err.value.what.startswith("deploying the canary did not finish within its deadline of 1s")
    assert "Deployment shop/answer-canary" in err.value.what
    assert "--step-timeout" in err.value.hint and "rollout revert" in err.value.hint
    assert state.backend["canary"] == {"version": "v2", "deployment": "answer-canary"}  # recorded before it acted


def test_the_default_step_deadline_covers_two_progress_deadlines(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    assert make_backend(tmp_path, fake, kube, "gateway-api").step_timeout == 2 * 20 + 60
    assert make_backend(tmp_path, fake, kube, "gateway-api", step_timeout="90s").step_timeout == 90


@pytest.mark.parametrize(("field", "value"), [("step_timeout", 0), ("step_timeout", ".nan"), ("request_timeout", "0s"),
                                              ("request_timeout", ".inf"), ("retry_budget", ".nan"), ("lease_duration", "500ms")])
def test_time_bounds_in_the_plan_are_checked(tmp_path: Path, field: str, value: Any) -> None:
    data = plan_data(tmp_path, "unused", "gateway-api")
    text = yaml.safe_dump(data, sort_keys=False).replace("  router: gateway-api\n", f"  router: gateway-api\n  {field}: {value}\n")
    (tmp_path / "plan.yaml").write_text(text)
    with pytest.raises(PlanInvalid) as err:
        load_plan(tmp_path / "plan.yaml")
    assert any(i.path == f"target.{field}" for i in err.value.issues), [i.render() for i in err.value.issues]


@pytest.mark.parametrize("value", ["0s", "soon", "-5s", "48h"])
def test_bad_step_timeout_flag_is_exit_2(tmp_path: Path, fake: FakeApiServer, value: str) -> None:
    plan = cli_plan(tmp_path, "http://127.0.0.1:9", "2s")
    code, out, err = _cli("revert", str(plan), "--kubeconfig", fake.write_kubeconfig(namespace=NS), "--step-timeout", value)
    assert code == 2 and f"--step-timeout '{value}' is not a duration" in err, out + err
    assert fake.get("configmaps", NS, "rollout-answer") is None  # refused before touching anything


def test_slow_httproutes_run_exits_3_within_the_step_deadline_and_revert_repairs(tmp_path: Path, fake: FakeApiServer, site: str) -> None:
    """The finding: with 20 s per `GET httproutes`, `run` had no deadline; killed at 150 s, the state said
    `progressing, stable v1` while the stable Deployment had the new image."""
    plan = cli_plan(tmp_path, site, "2s")
    promoting = lambda: image_of(fake.get("deployments", NS, "answer") or {"spec": {"template": {"spec": {"containers": [{}]}}}}) == V2  # noqa: E731
    slow = fake.inject_fault(action="delay", delay=20, verb="get", resource="httproutes", when=promoting)
    proc = start_cli(fake, "run", str(plan), "--version", "v2", "--step-timeout", "5s")
    while not slow.hits and proc.poll() is None:
        time.sleep(0.02)
    armed = time.monotonic()
    code, out, err = finish(proc)
    took = time.monotonic() - armed
    assert code == 3, out + err
    assert took < 5 + 10, took  # the step's 5 s (+ margin), not 20 s per request
    assert "Error: the promotion did not finish within its deadline of 5s" in err, err
    assert 'get httproutes.gateway.networking.k8s.io "answer"' in err and "rollout revert" in err and "Traceback" not in err
    # what may be half done is in the state: the promotion's transition, with stable still recorded as v1
    state = stored_state(fake)
    assert state["transition"]["action"] == "promote" and state["transition"]["pid"] == proc.pid
    assert state["phase"] == "progressing" and state["stable_version"] == "v1"
    assert image_of(fake.get("deployments", NS, "answer")) == V2  # type: ignore[arg-type]  # half done indeed
    lease = fake.get("leases", NS, "rollout-answer")
    assert lease is not None and not lease["spec"].get("holderIdentity")  # released on the way out

    fake.clear_faults()
    code, out, err = _cli("status", str(plan), "--kubeconfig", fake.write_kubeconfig(namespace=NS))
    assert code == 0 and f"a `promote` towards 0% to canary was started by pid {proc.pid}" in out, out + err
    code, out, err = _cli("revert", str(plan), "--kubeconfig", fake.write_kubeconfig(namespace=NS), "--reason", "slow cluster")
    assert code == 0, out + err
    stable, canary = fake.get("deployments", NS, "answer"), fake.get("deployments", NS, "answer-canary")
    assert stable is not None and canary is not None
    assert image_of(stable) == V1 and stable["status"]["availableReplicas"] == 4
    assert canary["spec"]["replicas"] == 0
    assert [(r["name"], r["weight"]) for r in main_rule(fake)["backendRefs"]] == [("answer-stable", 100)]
    state = stored_state(fake)
    assert state["transition"] is None and state["phase"] == "rolled-back" and state["stable_version"] == "v1"


# -- fencing: a command that lost its lock stops before its next write ----------------------------------


def test_lease_renewals_failing_mid_run_stop_the_command_before_promotion(tmp_path: Path, fake: FakeApiServer, site: str) -> None:
    """The finding: lease renewals failing from mid-run did not stop the run: it promoted, then exited 3."""
    plan = cli_plan(tmp_path, site, "5s", lease_duration="2s")
    failing = fake.inject_fault(500, verb="update", resource="leases", when=lambda: stage_running(fake))
    proc = start_cli(fake, "run", str(plan), "--version", "v2")
    code, out, err = finish(proc)
    assert code == 3, out + err
    assert "Error: this command lost its lock on the rollout (Lease shop/rollout-answer)" in err, err
    assert "it stopped before its next change" in err and "Traceback" not in err
    assert failing.hits >= 2, err
    state = stored_state(fake)
    assert state["phase"] == "progressing" and state["stable_version"] == "v1" and state["transition"] is None
    assert [h["action"] for h in state["history"]][-1] == "stage-started"  # nothing recorded after the loss
    assert image_of(fake.get("deployments", NS, "answer")) == V1  # type: ignore[arg-type]  # not promoted
    # fenced in time: no write but the Lease's after the lease could have expired (2 s after the first failed renewal)
    first_failure = min(r.started for r in fake.requests if r.fault and r.resource == "leases")
    late = [f"{r.verb} {r.resource} {r.name}" for r in fake.requests
            if r.verb in ("create", "update", "patch", "delete") and r.resource != "leases" and r.resource != "events"
            and r.started > first_failure + 2.0]
    assert late == [], late

    fake.clear_faults()
    code, out, err = _cli("revert", str(plan), "--kubeconfig", fake.write_kubeconfig(namespace=NS))  # expired: no --force needed
    assert code == 0, out + err
    assert [(r["name"], r["weight"]) for r in main_rule(fake)["backendRefs"]] == [("answer-stable", 100)]
    assert (fake.get("deployments", NS, "answer-canary") or {})["spec"]["replicas"] == 0


def _engine_losing_its_lock(tmp_path: Path, fake: FakeApiServer, kube: Kube, lose: Any) -> tuple[Exception, ConfigMapStore]:
    """The engine over HTTP with a stub load whose stage calls `lose(store)` (the lock goes away mid-stage)."""
    b = make_backend(tmp_path, fake, kube, "gateway-api")
    store = ConfigMapStore(kube, "answer", lease_seconds=1)

    def load(spec: Any, on_tick: Any) -> StageStats:
        lose(store)
        stats = StageStats(elapsed=5.0, users=5)
        for role in ("stable", "canary"):
            for j in range(1000):
                stats.role(role).add(20.0, failed=False)
        on_tick(stats)
        return stats

    with pytest.raises(LockLost) as err:
        with store.lock("run"):
            StubLoadEngine(b.loaded, b, store, QuietReporter(), "tester", load_runner=load).drive("v2", from_cli=True, one_stage=False)
    return err.value, store


def test_a_takeover_mid_stage_stops_the_command_before_its_next_write(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    def take_over(store: ConfigMapStore) -> None:
        LeaseLock(kube, "rollout-answer", "revert", identity="bob pid 2").acquire(force=True)

    def cluster_writes() -> int:  # everything written but the Lease
        return fake.count(("create", "update", "patch", "delete")) - fake.count(("create", "update", "patch", "delete"), "leases")

    at_takeover: list[int] = []
    err, _ = _engine_losing_its_lock(tmp_path, fake, kube, lambda s: (take_over(s), at_takeover.append(cluster_writes())))
    assert "taken over by bob pid 2" in err.what and "lost its lock" in err.what
    assert image_of(fake.get("deployments", NS, "answer")) == V1  # type: ignore[arg-type]
    saved = ConfigMapStore(kube, "answer").load()
    assert saved is not None and saved.phase is Phase.PROGRESSING and saved.stable_version == "v1"
    assert cluster_writes() == at_takeover[0]  # not one write (state, Deployment, route, event) after the takeover


def test_renewals_refused_with_409_mid_stage_fence_the_command(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    def conflicts(store: ConfigMapStore) -> None:
        fake.inject_fault(409, verb="update", resource="leases")
        time.sleep(1.5)  # past 80 % of the 1 s lease without a renewal

    err, store = _engine_losing_its_lock(tmp_path, fake, kube, conflicts)
    assert "lost its lock" in err.what and "last renewal was" in err.what and "409" in err.what
    assert image_of(fake.get("deployments", NS, "answer")) == V1  # type: ignore[arg-type]
    cm = fake.get("configmaps", NS, "rollout-answer")
    assert cm is not None and cm["metadata"]["annotations"]["rollout.dev/lease-holder"].endswith("(transition 0)")


def test_state_writes_carry_the_lease_holder(fake: FakeApiServer, kube: Kube) -> None:
    from rollout.engine.state import new_state

    store = ConfigMapStore(kube, "answer")
    with store.lock("run"):
        store.save(new_state("answer", "v1", now=1000.0))
    cm = fake.get("configmaps", NS, "rollout-answer")
    assert cm is not None
    assert cm["metadata"]["annotations"]["rollout.dev/lease-holder"] == f"{store.writer} (transition 0)"


def test_a_process_too_busy_to_renew_goes_on_only_if_nobody_took_the_lock(fake: FakeApiServer, kube: Kube) -> None:
    """Renewals that were never sent (a starved renewal thread) are not failures: before the next write one
    renewal is tried, a compare-and-swap on the Lease, which lands only while the lock is still ours."""
    lock = LeaseLock(kube, "rollout-answer", "run", duration=1, identity="me pid 1")
    lock.acquire()  # no background renewal at all: as if this process were too busy to send them
    time.sleep(1.5)  # past the whole lease
    before = fake.count("update", "leases")
    lock.check()  # nobody took it: renewed there and then, and the command goes on
    assert fake.count("update", "leases") == before + 1 and lock.lost is None
    time.sleep(1.5)
    LeaseLock(kube, "rollout-answer", "revert", identity="bob pid 2").acquire()  # expired: taken without --force
    with pytest.raises(LockLost) as err:
        lock.check()
    assert "taken over by bob pid 2" in err.value.what

"""The Kubernetes client wrapper, ConfigMap state store and Lease lock, over HTTP against the fake API server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from rollout.backends.kubernetes.client import DEPLOYMENTS, Kube, RetryPolicy, connect
from rollout.backends.kubernetes.store import ConfigMapStore, LeaseLock, micro_time
from rollout.engine.state import new_state
from rollout.errors import BackendError, LockHeld, StateError
from rollout.testing.apiserver import FakeApiServer

FAST = RetryPolicy(tries=5, base=0.01, max_total=0.5)


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer(controller_delay=0) as server:
        yield server


@pytest.fixture
def kube(fake: FakeApiServer) -> Iterator[Kube]:
    k = connect(kubeconfig=fake.write_kubeconfig(namespace="shop"), retry=FAST)
    yield k
    k.api.close()


def test_connect_takes_the_contexts_namespace(kube: Kube) -> None:
    assert kube.namespace == "shop"


def test_store_round_trip_and_cas_survives_a_409_on_every_first_write(fake: FakeApiServer, kube: Kube) -> None:
    fake.conflict_on_first_write("configmaps")
    store = ConfigMapStore(kube, "checkout")
    assert store.load() is None
    state = new_state("checkout", "v1", now=1000.0)
    store.save(state)  # create: not affected by the rule
    state.canary_version = "v2"
    store.save(state)  # update: 409 once, re-read shows our content, retried
    state.stage_index = 1
    store.save(state)
    cm = fake.get("configmaps", "shop", "rollout-checkout")
    assert cm is not None
    stored = json.loads(cm["data"]["state.json"])
    assert stored["canary_version"] == "v2" and stored["stage_index"] == 1
    assert "pid" in cm["metadata"]["annotations"]["rollout.dev/written-by"]
    assert fake.request_counts()["update configmaps"] == 3  # 2 saves + 1 retry
    again = ConfigMapStore(kube, "checkout").load()
    assert again is not None and again.canary_version == "v2" and again.stage_index == 1


def test_store_refuses_to_overwrite_another_writers_change(fake: FakeApiServer, kube: Kube) -> None:
    mine, theirs = ConfigMapStore(kube, "checkout"), ConfigMapStore(kube, "checkout")
    mine.load()
    state = new_state("checkout", "v1", now=1000.0)
    mine.save(state)
    other = theirs.load()
    assert other is not None
    other.canary_version = "v9"
    theirs.writer = "alice@ci pid 42"
    theirs.save(other)
    state.canary_version = "v2"
    with pytest.raises(StateError) as err:
        mine.save(state)
    assert "alice@ci pid 42" in err.value.what


def test_lock_contention_names_the_holder_and_force_takes_over(kube: Kube) -> None:
    first = LeaseLock(kube, "rollout-checkout", "run", duration=30, identity="alice@laptop pid 1")
    with first.hold():
        second = LeaseLock(kube, "rollout-checkout", "abort", duration=30, identity="bob@ci pid 2")
        with pytest.raises(LockHeld) as err:
            second.acquire()
        assert "alice@laptop pid 1" in err.value.what and "`rollout run`" in err.value.what
        assert "since" in err.value.what and "--force" in err.value.hint
        second.acquire(force=True)
    # first's release sees the lease is no longer its own and leaves it alone
    lease = kube.api.sanitize_for_serialization(kube.coord.read_namespaced_lease("rollout-checkout", "shop"))
    assert lease["spec"]["holderIdentity"] == "bob@ci pid 2"
    assert lease["spec"]["leaseTransitions"] == 1


def test_lock_is_released_and_an_expired_lease_is_taken_over(fake: FakeApiServer, kube: Kube) -> None:
    store = ConfigMapStore(kube, "checkout")
    with store.lock("run"):
        pass
    lease = fake.get("leases", "shop", "rollout-checkout")
    assert lease is not None and not lease["spec"].get("holderIdentity")
    # a holder that died 60 s ago with a 15 s lease
    dead = {"spec": {"holderIdentity": "ghost pid 9", "leaseDurationSeconds": 15,
                     "renewTime": micro_time(time.time() - 60), "acquireTime": micro_time(time.time() - 90)}}
    fake.apply({**lease, **dead, "metadata": {"name": "rollout-checkout", "namespace": "shop"}})
    with store.lock("run"):
        held = fake.get("leases", "shop", "rollout-checkout")
        assert held is not None and "pid" in held["spec"]["holderIdentity"] and held["spec"]["holderIdentity"] != "ghost pid 9"


def test_lease_is_renewed_in_the_background(fake: FakeApiServer, kube: Kube) -> None:
    lock = LeaseLock(kube, "rollout-checkout", "run", duration=1, identity="me pid 1")
    with lock.hold():
        deadline = time.monotonic() + 10
        while fake.count("update", "leases") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.count("update", "leases") >= 2
        assert lock.lost is None


def test_403_names_the_missing_rbac_rule(fake: FakeApiServer, kube: Kube) -> None:
    fake.forbid("patch", "deployments")
    with pytest.raises(BackendError) as err:
        kube.call("patch", DEPLOYMENTS, "web", kube.apps.patch_namespaced_deployment, "web", "shop",
                  {"spec": {"replicas": 1}}, _content_type="application/merge-patch+json")
    assert 'patch deployments.apps "web"' in err.value.what and "forbidden" in err.value.what
    assert 'apiGroups: ["apps"], resources: ["deployments"], verbs: ["patch"]' in err.value.hint


def test_transient_errors_are_retried_within_the_bound(fake: FakeApiServer, kube: Kube) -> None:
    fake.inject_fault(503, verb="get", resource="configmaps", times=2)
    assert ConfigMapStore(kube, "checkout").load() is None
    assert fake.count("get", "configmaps") == 3
    fake.inject_fault(500, verb="get", resource="configmaps")  # forever
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        ConfigMapStore(kube, "checkout").load()
    assert "kept failing" in err.value.what and time.monotonic() - started < 5


def test_404_without_missing_ok_is_a_backend_error(kube: Kube) -> None:
    with pytest.raises(BackendError) as err:
        kube.call("get", DEPLOYMENTS, "nope", kube.apps.read_namespaced_deployment, "nope", "shop")
    assert 'get deployments.apps "nope"' in err.value.what and "does not exist" in err.value.what


def test_a_command_whose_lock_was_taken_over_saves_nothing(fake: FakeApiServer, kube: Kube) -> None:
    store = ConfigMapStore(kube, "checkout", lease_seconds=1)
    state = new_state("checkout", "v1", now=1000.0)
    with store.lock("run"):
        store.save(state)
        LeaseLock(kube, "rollout-checkout", "revert", identity="bob pid 2").acquire(force=True)
        deadline = time.monotonic() + 10
        while store._lease is not None and store._lease.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(StateError) as err:
            store.save(state)
        assert "taken over by bob pid 2" in err.value.what


def test_retry_after_is_honoured_within_the_budget(fake: FakeApiServer) -> None:
    slept: list[float] = []
    policy = RetryPolicy(tries=5, base=0.01, max_total=1.5, sleep=slept.append)
    k = connect(kubeconfig=fake.write_kubeconfig(namespace="shop"), retry=policy)
    fake.throttle(times=1, retry_after=1, verb="get", resource="configmaps")
    assert ConfigMapStore(k, "checkout").load() is None
    assert slept == [1.0]  # urllib3 did not retry by itself: we did, after Retry-After
    slept.clear()
    fake.throttle(times=10, retry_after=1, verb="get", resource="configmaps")
    with pytest.raises(BackendError, match="kept failing") as err:
        ConfigMapStore(k, "checkout").load()
    # 1 s fits in the 1.5 s budget; the next 1 s does not: given up at once, not retried early against the server's word
    assert slept == [1.0] and sum(slept) <= policy.max_total
    assert "the server asked to wait 1s more, beyond the" in err.value.what and "left of the budget" in err.value.what
    k.api.close()

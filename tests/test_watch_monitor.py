"""The watch's judgement without I/O (rollout.watch.monitor): batches from counters, breach, resolve, blind, restart."""

from __future__ import annotations

import random

import pytest

from rollout.plan.watch import Watch
from rollout.watch.monitor import Monitor


def watch(**kw: object) -> Watch:
    gate = {"max": "1%", "prometheus": {"url": "http://127.0.0.1:9090", "bad": "b", "total": "t"}}
    return Watch.model_validate({"every": 1, "false_alarm_every": "1h", "blind_after": 5, "gates": {"errors": gate}, **kw})


def feed(m: Monitor, version: str, seconds: int, rate: float, rps: int, rng: random.Random, t0: float, state: list[float]) -> list:
    events = []
    for t in range(seconds):
        state[1] += rps
        state[0] += sum(1 for _ in range(rps) if rng.random() < rate)
        events += m.observe(t0 + t, version, {"errors": (state[0], state[1])})
    return events


def test_batches_are_counter_increases_and_a_breach_carries_its_numbers() -> None:
    m, rng, c = Monitor(watch()), random.Random(1), [0.0, 0.0]
    assert feed(m, "v2", 60, 0.001, 100, rng, 0, c) == []
    ev = feed(m, "v2", 120, 0.05, 100, rng, 60, c)
    assert [e.kind for e in ev][:1] == ["breach"]
    b = ev[0]
    assert b.gate == "errors" and b.details["version"] == "v2" and b.details["limit"] == 0.01
    assert b.details["requests"] > 0 and b.details["rate"] > 0.01 and "over the last" in b.message
    assert m.gates["errors"].detector.total_n == 179 * 100  # the first reading is the base, not a batch


def test_back_to_normal_resolves() -> None:
    m, rng, c = Monitor(watch(on_breach="alert")), random.Random(2), [0.0, 0.0]
    assert [e.kind for e in feed(m, "v2", 60, 0.08, 100, rng, 0, c)][:1] == ["breach"]
    assert "resolved" in [e.kind for e in feed(m, "v2", 900, 0.0, 100, rng, 60, c)]
    assert m.firing == []


def test_missing_data_is_blindness_never_a_breach() -> None:
    m, rng, c = Monitor(watch()), random.Random(3), [0.0, 0.0]
    feed(m, "v2", 10, 0.001, 100, rng, 0, c)
    events = []
    for t in range(10, 30):
        events += m.observe(t, "v2", {"errors": None})
    assert [e.kind for e in events] == ["blind"] and "never reverts" in events[0].message
    assert m.firing == []
    back = m.observe(30, "v2", {"errors": (c[0] + 5, c[1] + 100)})
    assert [e.kind for e in back] == ["seeing"]


def test_counter_reset_is_a_new_base_not_a_negative_batch() -> None:
    m = Monitor(watch())
    m.observe(0, "v1", {"errors": (10, 1000)})
    m.observe(1, "v1", {"errors": (11, 1100)})
    assert m.gates["errors"].last_batch == (100, 1)
    m.observe(2, "v1", {"errors": (0, 50)})  # the process restarted
    assert m.gates["errors"].last_batch is None and m.gates["errors"].detector.total_n == 100
    m.observe(3, "v1", {"errors": (1, 150)})
    assert m.gates["errors"].last_batch == (100, 1)


def test_a_new_live_version_is_judged_from_scratch() -> None:
    m, rng, c = Monitor(watch()), random.Random(4), [0.0, 0.0]
    feed(m, "v2", 30, 0.009, 100, rng, 0, c)
    assert m.gates["errors"].detector.total_n > 0
    m.observe(40, "v1", {"errors": (0, 0)})
    assert m.version == "v1" and m.gates["errors"].detector.total_n == 0


def test_the_record_round_trips_and_goes_on() -> None:
    w = watch()
    m, rng, c = Monitor(w), random.Random(5), [0.0, 0.0]
    feed(m, "v2", 50, 0.008, 100, rng, 0, c)
    again = Monitor.from_dict(w, m.to_dict())
    assert again.to_dict() == m.to_dict()
    c2 = list(c)
    feed(m, "v2", 20, 0.03, 100, random.Random(9), 50, c)
    feed(again, "v2", 20, 0.03, 100, random.Random(9), 50, c2)
    assert again.to_dict() == m.to_dict()
    # a changed limit in the plan: the old evidence no longer applies
    changed = Monitor.from_dict(watch(gates={"errors": {"max": "2%", "prometheus": {"url": "http://x:1", "bad": "b", "total": "t"}}}), m.to_dict())
    assert changed.gates["errors"].detector.total_n == 0
    assert Monitor.from_dict(w, {"schema": 99}).version is None


@pytest.mark.parametrize("bad", [{"max": "0%"}, {"max": "100%"}, {"max": 0.5}])
def test_watch_limits_are_shares_strictly_between_0_and_100(bad: dict) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        watch(gates={"errors": {"prometheus": {"url": "http://x:1", "bad": "b", "total": "t"}, **bad}})


def test_a_bake_needs_the_watch_gates_it_judges_with(base_plan: dict, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rollout.errors import PlanInvalid
    from rollout.plan.loader import load_plan
    from tests.conftest import write_plan

    with pytest.raises(PlanInvalid) as exc:
        load_plan(write_plan(tmp_path, {**base_plan, "bake": {"duration": "10m"}}))
    assert any("watch" in i.expected for i in exc.value.issues)
    ok = {**base_plan, "bake": {"duration": "10m"}, "watch": {"gates": {"errors": {"max": "1%", "prometheus": {"url": "http://127.0.0.1:9090", "bad": "b", "total": "t"}}}}}
    assert load_plan(write_plan(tmp_path, ok)).plan.bake.duration == 600.0


def test_the_watch_record_round_trips_through_a_configmap_on_the_fake_api_server() -> None:
    """On Kubernetes the watch keeps its record in ConfigMap rollout-<plan>-watch (official client, real HTTP)."""
    from rollout.backends.kubernetes.client import RetryPolicy, connect
    from rollout.backends.kubernetes.store import ConfigMapStore
    from rollout.testing.apiserver import FakeApiServer
    from rollout.watch import record

    with FakeApiServer(controller_delay=0) as fake:
        kube = connect(kubeconfig=fake.write_kubeconfig(namespace="shop"), retry=RetryPolicy(tries=3, base=0.01, max_total=0.5))
        try:
            rec = record.for_store(ConfigMapStore(kube, "answer"), "answer")
            assert rec.location() == "ConfigMap shop/rollout-answer-watch" and rec.load() is None
            m, rng, c = Monitor(watch()), random.Random(6), [0.0, 0.0]
            feed(m, "v2", 30, 0.01, 50, rng, 0, c)
            rec.save(m.to_dict())
            rec.save(m.to_dict())  # the second save replaces the first
            again = Monitor.from_dict(watch(), rec.load())
            assert again.to_dict() == m.to_dict() and again.checks == 30
            cm = fake.get("configmaps", "shop", "rollout-answer-watch")
            assert cm is not None and cm["metadata"]["labels"]["rollout.dev/part"] == "watch"
        finally:
            kube.api.close()

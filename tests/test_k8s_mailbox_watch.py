"""The driver watches its request mailbox (ConfigMap rollout-<plan>-requests) during a stage's load, so an
operator's request is picked up at once instead of at the next 1 s load tick (issue #8, "honoured within a
second"). Against the in-process fake API server through the official client; outcomes only, no timing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.backends.kubernetes import client as kclient
from rollout.backends.kubernetes.backend import KubernetesBackend
from rollout.backends.kubernetes.client import Kube, RetryPolicy, connect
from rollout.backends.kubernetes.mailbox import KubeMailbox
from rollout.backends.kubernetes.store import ConfigMapStore
from rollout.engine import requests as rq
from rollout.engine.executor import Engine
from rollout.engine.state import StageRecord
from rollout.load.stats import StageStats
from rollout.plan.loader import load_plan
from rollout.testing.apiserver import FakeApiServer

ROOT = Path(__file__).resolve().parent.parent
NS = "shop"
FAST = RetryPolicy(tries=5, base=0.01, max_total=0.5)


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer(controller_delay=0) as server:
        yield server


@pytest.fixture
def two(fake: FakeApiServer) -> Iterator[tuple[Kube, Kube]]:
    """Two separate clients: the driver's and the operator's."""
    kc = fake.write_kubeconfig(namespace=NS)
    a, b = connect(kubeconfig=kc, retry=FAST), connect(kubeconfig=kc, retry=FAST)
    yield a, b
    a.api.close()
    b.api.close()


def until(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_post_from_another_client_moves_version_with_one_watch_and_no_polling(fake: FakeApiServer, two: tuple[Kube, Kube]) -> None:
    driver, operator = KubeMailbox(two[0], "answer"), KubeMailbox(two[1], "answer")
    assert driver.version() == 0  # not watching: nothing moves it
    with driver.watching():
        watch = driver._watch
        assert watch is not None
        until(lambda: fake.count("watch", "configmaps") == 1, "the watch to open")
        fake.reset_requests()
        for n in range(3):
            before = driver.version()
            rq.post(operator, rq.Request.new("revert", "alice", f"try {n}", 60))
            until(lambda: driver.version() != before, f"post {n} to be seen")
        counts = fake.request_counts()
    # the operator's three posts are the only reads and writes: 3 × (get + create/update); the driver polled nothing
    assert counts.get("get configmaps", 0) == 3, counts
    assert counts.get("create configmaps", 0) + counts.get("update configmaps", 0) == 3, counts
    assert "watch configmaps" not in counts  # the one watch stayed open through all three
    until(lambda: not watch.alive(), "the watch thread to end after the stage")
    assert watch.error is None
    assert driver.version() == 0


def test_the_watch_is_renewed_from_where_it_stopped_and_survives_a_compacted_history(
        fake: FakeApiServer, two: tuple[Kube, Kube], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kclient, "WATCH_SECONDS", 1)  # the server ends each watch after 1 s: renewals happen
    driver, operator = KubeMailbox(two[0], "answer"), KubeMailbox(two[1], "answer")
    with driver.watching():
        until(lambda: fake.count("watch", "configmaps") >= 1, "the watch to open")
        for n in range(3):
            until(lambda: fake.count("watch", "configmaps") >= 2 + n, "a renewal")  # the post lands on a renewed watch
            if n == 1:
                fake.compact()  # a resumption from the old resourceVersion now gets 410: listed afresh
            before = driver.version()
            rq.post(operator, rq.Request.new("abort", "bob", f"try {n}", 60))
            until(lambda: driver.version() != before, f"post {n} to be seen")
        assert driver._watch is not None and driver._watch.error is None


def test_a_watch_the_role_forbids_falls_back_and_says_what_to_add(fake: FakeApiServer, two: tuple[Kube, Kube]) -> None:
    fake.forbid("watch", "configmaps")
    driver, operator = KubeMailbox(two[0], "answer"), KubeMailbox(two[1], "answer")
    said: list[str] = []
    for _ in range(2):  # told once per process, not at every stage
        with driver.watching(said.append):
            watch = driver._watch
            assert watch is not None
            until(lambda: not watch.alive(), "the refused watch to give up")
            rq.post(operator, rq.Request.new("revert", "alice", "", 60))
            assert driver.version() == 0  # nothing moves: the driver's slower path (a read every load tick) stays
    assert len(said) == 1, said
    assert "cannot watch configmaps" in said[0] and "403" in said[0] and "manifests/rbac.yaml" in said[0]
    assert len(driver.read().requests) == 2  # the mailbox itself works


def test_the_role_in_manifests_grants_the_watch() -> None:
    role = next(d for d in yaml.safe_load_all((ROOT / "manifests" / "rbac.yaml").read_text()) if d and d["kind"] == "Role")
    rules = [r for r in role["rules"] if "configmaps" in r["resources"]]
    assert any("watch" in r["verbs"] for r in rules)


# -- the engine: a request posted mid-stage is acted on between load ticks, through the watch ----------------


class Quiet:
    def __init__(self) -> None:
        self.events: list[str] = []

    def event(self, message: str) -> None:
        self.events.append(message)

    def progress(self, *args: Any) -> None:
        pass

    def stage_done(self, record: StageRecord) -> None:
        pass


def write_plan(d: Path, kubeconfig: str) -> Path:
    (d / "load.py").write_text("from locust import HttpUser, task\n\nclass U(HttpUser):\n    @task\n    def t(self):\n        self.client.get('/')\n")
    data = {
        "name": "answer", "owner": {"name": "Answers team", "contact": "answers@example.com"},
        "target": {"backend": "kubernetes", "kubeconfig": kubeconfig, "namespace": NS, "stable": "v1",
                   "versions": {v: {"image": f"registry.example.com/answer:{v[1]}.0"} for v in ("v1", "v2")},
                   "deployments": {"stable": "answer", "canary": "answer-canary"},
                   "services": {"stable": "answer-stable", "canary": "answer-canary"},
                   "router": "gateway-api", "httproute": "answer", "port": 8080,
                   "progress_deadline": "60s", "entry_url": "http://answer.shop.example.com"},
        "load": {"locustfile": "load.py", "users": 5},
        "gates": {},
        "stages": [{"name": "ten", "weight": "10%", "duration": "600s"}],
    }
    path = d / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class StubEngine(Engine):
    def _load_spec(self, i: int) -> Any:  # no Locust: the load below is a stand-in that keeps the runner's contract
        return None


def test_a_revert_posted_mid_stage_is_acted_on_between_ticks_through_the_watch(tmp_path: Path, fake: FakeApiServer,
                                                                               two: tuple[Kube, Kube]) -> None:
    """The load never reaches a tick (as if the tick were minutes long): only `on_tick.interrupt` — asked
    between ticks, every 0.05 s here — can see the request, and it sees it because the watch moved version().
    Without the watch the request would wait for a tick that never comes and expire (the runner gives up)."""
    for f in ("app.yaml", "httproute.yaml"):
        for doc in yaml.safe_load_all((ROOT / "manifests" / f).read_text()):
            fake.create(doc)
    kube, op_kube = two
    loaded = load_plan(write_plan(tmp_path, fake.write_kubeconfig(namespace=NS)))
    operator = KubeMailbox(op_kube, "answer")
    seen: dict[str, Any] = {}

    def load(spec: Any, on_tick: Any) -> StageStats:
        interrupt = on_tick.interrupt
        req = rq.Request.new("revert", "alice@pager", "error budget burning", 60)
        threading.Thread(target=rq.post, args=(operator, req), daemon=True).start()  # the operator, from elsewhere
        seen["request"] = req.id
        deadline = time.monotonic() + 60  # a bound for the test; the stage itself is 600 s
        while time.monotonic() < deadline:
            if interrupt():
                seen["interrupted"] = True
                break
            time.sleep(0.05)
        return StageStats(elapsed=1.0, users=5)

    store = ConfigMapStore(kube, "answer")
    out = Quiet()
    with store.lock("run"):
        engine = StubEngine(loaded, KubernetesBackend(loaded, kube, poll=0.05), store, out, "ci-job", load)
        engine.mailbox = store.mailbox()
        outcome = engine.drive("v2", from_cli=True, one_stage=False)
    assert seen.get("interrupted") is True, out.events
    assert outcome.kind == "reverted", outcome
    ack = operator.read().ack_of(seen["request"])
    assert ack is not None and ack.outcome == rq.DONE and "rollout run" in ack.by
    state = store.load()
    assert state is not None and state.phase.value == "rolled-back" and state.split.all_stable
    assert any(h.action == "revert" and h.who == "alice@pager" for h in state.history)
    route = fake.get("httproutes", NS, "answer")
    assert route is not None
    weights = {ref["name"]: ref.get("weight", 1) for rule in route["spec"]["rules"] for ref in rule["backendRefs"]}
    assert weights.get("answer-canary", 0) == 0 and weights["answer-stable"] > 0, weights
    assert not any("cannot watch" in e for e in out.events), out.events

"""KubernetesBackend over HTTP against the fake API server, seeded from manifests/*.yaml.

Every change is checked on the stored objects field by field. The fake's
Deployment controller reacts at once (controller_delay=0); waits poll, with
generous deadlines, so a busy machine makes tests slower, never red.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_cli, write_plan
from rollout.backends import factory
from rollout.backends.kubernetes.backend import KubernetesBackend
from rollout.backends.kubernetes.client import Kube, RetryPolicy, connect
from rollout.backends.kubernetes.routers import COHORT_RULE, NGINX
from rollout.backends.kubernetes.store import ConfigMapStore
from rollout.engine.executor import Engine
from rollout.engine.state import Phase, Split, StageRecord, State, new_state
from rollout.errors import EXIT_GATE_FAILED, EXIT_OK, BackendError
from rollout.load.stats import StageStats
from rollout.plan.loader import LoadedPlan, load_plan
from rollout.testing.apiserver import FakeApiServer

ROOT = Path(__file__).resolve().parent.parent
NS = "shop"
IMAGE = "registry.example.com/answer:{}"


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer(controller_delay=0) as server:
        for f in ("app.yaml", "httproute.yaml", "ingress-nginx.yaml"):
            for doc in yaml.safe_load_all((ROOT / "manifests" / f).read_text()):
                server.create(doc)
        yield server


@pytest.fixture
def kube(fake: FakeApiServer) -> Iterator[Kube]:
    k = connect(kubeconfig=fake.write_kubeconfig(namespace=NS), retry=RetryPolicy(tries=4, base=0.01, max_total=0.5))
    yield k
    k.api.close()


def plan_data(tmp_path: Path, kubeconfig: str, router: str, **target: Any) -> dict[str, Any]:
    (tmp_path / "load.py").write_text("from locust import HttpUser, task\n\nclass U(HttpUser):\n    @task\n    def t(self):\n        self.client.get('/')\n")
    stages: list[dict[str, Any]] = [{"name": "ten", "weight": "10%", "duration": "5s"},
                                    {"name": "half", "weight": "50%", "duration": "5s"}]
    if router != "replicas":
        stages.insert(0, {"name": "payments", "cohort": {"x-team": "payments"}, "weight": 0, "duration": "5s"})
    return {
        "name": "answer",
        "owner": {"name": "Answers team", "contact": "answers@example.com"},
        "target": {
            "backend": "kubernetes", "kubeconfig": kubeconfig, "namespace": NS, "stable": "v1",
            "versions": {v: {"image": IMAGE.format(f"{v[1]}.0")} for v in ("v1", "v2", "v3")},
            "deployments": {"stable": "answer", "canary": "answer-canary"},
            "services": {"stable": "answer-stable", "canary": "answer-canary"},
            "router": router, "httproute": "answer", "ingress": "answer-canary", "port": 8080,
            "progress_deadline": "20s", "entry_url": "http://answer.shop.example.com", **target,
        },
        "load": {"locustfile": "load.py", "users": 5},
        "gates": {"errors": {"metric": "error_rate", "max": "2%", "min_requests": 100}},
        "stages": stages,
    }


def make_backend(tmp_path: Path, fake: FakeApiServer, kube: Kube, router: str, **target: Any) -> KubernetesBackend:
    loaded = load_plan(write_plan(tmp_path, plan_data(tmp_path, fake.write_kubeconfig(namespace=NS), router, **target)))
    return KubernetesBackend(loaded, kube, poll=0.02)


def rolling(version: str = "v2") -> State:
    state = new_state("answer", "v1", now=1000.0)
    state.phase, state.canary_version = Phase.PROGRESSING, version
    return state


def dep(fake: FakeApiServer, name: str) -> dict[str, Any]:
    d = fake.get("deployments", NS, name)
    assert d is not None
    return d


def image_of(d: dict[str, Any]) -> str:
    return d["spec"]["template"]["spec"]["containers"][0]["image"]


def main_rule(fake: FakeApiServer) -> dict[str, Any]:
    route = fake.get("httproutes", NS, "answer")
    assert route is not None
    return next(r for r in route["spec"]["rules"] if r.get("name") != COHORT_RULE)


def test_gateway_api_split_cohort_and_stop(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    conflict = fake.conflict_on_first_write("httproutes", verbs=("patch",))  # the CAS loop re-reads and retries
    b = make_backend(tmp_path, fake, kube, "gateway-api")
    state = rolling()
    saves: list[int] = []
    b.checkpoint = lambda: saves.append(1)
    b.ensure(state)
    b.deploy_canary(state, "v2")
    canary = dep(fake, "answer-canary")
    assert image_of(canary) == IMAGE.format("2.0") and canary["spec"]["replicas"] == 1
    assert canary["metadata"]["annotations"]["rollout.dev/version"] == "v2"
    assert state.backend["canary"] == {"version": "v2", "deployment": "answer-canary"}

    b.apply_split(state, Split(weight=0.1, cohort=("x-team", "payments")))
    route = fake.get("httproutes", NS, "answer")
    assert route is not None
    rules = route["spec"]["rules"]
    assert [r.get("name") for r in rules] == [COHORT_RULE, None]
    assert rules[0]["matches"][0]["headers"] == [{"type": "Exact", "name": "x-team", "value": "payments"}]
    assert rules[0]["matches"][0]["path"] == {"type": "PathPrefix", "value": "/"}
    assert [(r["name"], r["port"]) for r in rules[0]["backendRefs"]] == [("answer-canary", 8080)]
    refs = rules[1]["backendRefs"]
    assert [(r["name"], r["port"], r["weight"]) for r in refs] == [("answer-stable", 8080, 90), ("answer-canary", 8080, 10)]
    assert [r["filters"] for r in refs] == [
        [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "X-Version", "value": v}]}}]
        for v in ("v1", "v2")]
    live = b.inspect(state)
    assert live["traffic"] == {"router": "gateway-api", "note": None, "weight": 0.1, "cohort": ["x-team", "payments"]}
    assert live["deployments"]["canary"] == {"deployment": "answer-canary", "images": {"app": IMAGE.format("2.0")},
                                             "replicas": 1, "available": 1, "ready": 1}
    assert conflict.hits == 1 and fake.count("patch", "httproutes") >= 2
    assert saves, "changes in the cluster are checkpointed"

    b.apply_split(state, Split(weight=0.5))
    assert [r.get("name") for r in fake.get("httproutes", NS, "answer")["spec"]["rules"]] == [None]  # type: ignore[index]
    assert [r["weight"] for r in main_rule(fake)["backendRefs"]] == [50, 50]

    b.stop_canary(state)
    assert [(r["name"], r["weight"]) for r in main_rule(fake)["backendRefs"]] == [("answer-stable", 100)]
    assert dep(fake, "answer-canary")["spec"]["replicas"] == 0 and state.backend["canary"] is None
    reasons = [e["reason"] for e in fake.list("events", NS) if e["involvedObject"]["name"] == "answer-canary"
               and (e.get("source") or {}).get("component") == "rollout"]
    assert {"CanaryDeploying", "CanaryReady", "TrafficShifted", "CanaryStopped"} <= set(reasons)


def test_nginx_split_sets_the_canary_ingress_annotations(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    b = make_backend(tmp_path, fake, kube, "nginx")
    state = rolling()
    b.ensure(state)
    b.deploy_canary(state, "v2")
    b.apply_split(state, Split(weight=0.25, cohort=("x-team", "payments")))
    ing = fake.get("ingresses", NS, "answer-canary")
    assert ing is not None
    ann = ing["metadata"]["annotations"]
    assert ann[NGINX + "canary"] == "true"
    assert ann[NGINX + "canary-weight"] == "25" and ann[NGINX + "canary-weight-total"] == "100"
    assert ann[NGINX + "canary-by-header"] == "x-team" and ann[NGINX + "canary-by-header-value"] == "payments"
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "answer-canary"
    b.apply_split(state, Split(weight=0.5))
    ann = fake.get("ingresses", NS, "answer-canary")["metadata"]["annotations"]  # type: ignore[index]
    assert ann[NGINX + "canary-weight"] == "50"
    assert NGINX + "canary-by-header" not in ann and NGINX + "canary-by-header-value" not in ann
    main = fake.get("ingresses", NS, "answer")
    assert main is not None and not (main["metadata"].get("annotations") or {})  # the main Ingress is not touched


def test_replicas_router_splits_by_pod_counts(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    b = make_backend(tmp_path, fake, kube, "replicas")
    state = rolling()
    b.ensure(state)
    assert state.backend["total"] == 4
    b.deploy_canary(state, "v2")
    assert dep(fake, "answer-canary")["spec"]["replicas"] == 0  # no pod of it may serve users before the first shift
    b.apply_split(state, Split(weight=0.1))
    stable, canary = dep(fake, "answer"), dep(fake, "answer-canary")
    assert (stable["spec"]["replicas"], canary["spec"]["replicas"]) == (3, 1)
    assert canary["status"]["availableReplicas"] == 1 and image_of(canary) == IMAGE.format("2.0")
    assert "10% is not possible" in state.backend["note"] and "25%" in state.backend["note"]
    b.apply_split(state, Split(weight=0.5))
    assert (dep(fake, "answer")["spec"]["replicas"], dep(fake, "answer-canary")["spec"]["replicas"]) == (2, 2)
    assert state.backend["note"] is None and b.inspect(state)["traffic"]["weight"] == 0.5
    with pytest.raises(BackendError, match="cohort"):
        b.apply_split(state, Split(weight=0.5, cohort=("x-team", "payments")))
    b.stop_canary(state)
    assert (dep(fake, "answer")["spec"]["replicas"], dep(fake, "answer-canary")["spec"]["replicas"]) == (4, 0)
    b.deploy_canary(state, "v2")
    b.apply_split(state, Split(weight=1.0))
    assert (dep(fake, "answer")["spec"]["replicas"], dep(fake, "answer-canary")["spec"]["replicas"]) == (0, 4)
    b.promote(state)
    stable = dep(fake, "answer")
    assert (stable["spec"]["replicas"], stable["status"]["availableReplicas"], image_of(stable)) == (4, 4, IMAGE.format("2.0"))
    assert dep(fake, "answer-canary")["spec"]["replicas"] == 0


def test_never_ready_canary_names_the_deployment_and_its_conditions(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    fake.set_deployment_fault("never-ready", name="answer-canary", progress_deadline=0.3)
    b = make_backend(tmp_path, fake, kube, "gateway-api")
    state = rolling()
    b.ensure(state)
    with pytest.raises(BackendError) as err:
        b.deploy_canary(state, "v2")
    assert "Deployment shop/answer-canary did not become ready" in err.value.what
    assert "ProgressDeadlineExceeded" in err.value.what and "0/1 available" in err.value.what
    assert "rollout revert" in err.value.hint
    warnings = [e for e in fake.list("events", NS) if e.get("reason") == "CanaryNotReady"]
    assert warnings and warnings[0]["type"] == "Warning"


def test_forbidden_patch_names_the_missing_rbac_rule(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    fake.forbid("patch", "httproutes")
    b = make_backend(tmp_path, fake, kube, "gateway-api")
    state = rolling()
    with pytest.raises(BackendError) as err:
        b.ensure(state)
    assert 'patch httproutes.gateway.networking.k8s.io "answer"' in err.value.what
    assert 'apiGroups: ["gateway.networking.k8s.io"], resources: ["httproutes"], verbs: ["patch"]' in err.value.hint
    rules = yaml.safe_load_all((ROOT / "manifests" / "rbac.yaml").read_text())
    role = next(d for d in rules if d["kind"] == "Role")
    assert {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"], "verbs": ["get", "patch"]} in role["rules"]


def test_promote_moves_the_canary_template_to_stable(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    b = make_backend(tmp_path, fake, kube, "gateway-api")
    state = rolling()
    b.ensure(state)
    b.deploy_canary(state, "v2")
    b.apply_split(state, Split(weight=0.5))
    b.promote(state)
    stable, canary = dep(fake, "answer"), dep(fake, "answer-canary")
    assert image_of(stable) == IMAGE.format("2.0")
    assert stable["spec"]["template"]["metadata"]["labels"] == {"app": "answer", "track": "stable"}  # selector still matches
    assert stable["spec"]["template"]["spec"] == canary["spec"]["template"]["spec"]
    assert stable["status"]["availableReplicas"] == 4 and stable["metadata"]["annotations"]["rollout.dev/version"] == "v2"
    assert canary["spec"]["replicas"] == 0 and state.backend["canary"] is None
    assert [(r["name"], r["weight"]) for r in main_rule(fake)["backendRefs"]] == [("answer-stable", 100)]
    b.promote(state)  # a killed command finishing: nothing left to do
    assert dep(fake, "answer")["metadata"]["generation"] == stable["metadata"]["generation"]


def test_ensure_puts_the_known_good_version_back_on_stable(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    b = make_backend(tmp_path, fake, kube, "gateway-api")
    fake.apply({**dep(fake, "answer"), "spec": {**dep(fake, "answer")["spec"], "template": {
        **dep(fake, "answer")["spec"]["template"],
        "spec": {"containers": [{"name": "app", "image": IMAGE.format("3.0")}]}}}})
    b.ensure(rolling(), canary=False)
    assert image_of(dep(fake, "answer")) == IMAGE.format("1.0")


# -- the engine end to end, with a stub load runner ------------------------------



class QuietReporter:
    def __init__(self) -> None:
        self.events: list[str] = []

    def event(self, message: str) -> None:
        self.events.append(message)

    def progress(self, *args: Any) -> None:
        pass

    def stage_done(self, record: StageRecord) -> None:
        pass


class StubLoadEngine(Engine):
    """The engine with the load generator replaced: no Locust (and no gevent patching) in the test process."""

    def _load_spec(self, i: int) -> Any:
        stage = self.plan.stages[i]
        return self.backend.canary_url(self.state) if stage.load_to == "canary" else self.backend.entry_url(self.state)


def fixed_load(canary_error_every: int) -> Any:
    """A load runner returning fixed numbers: 1000 requests per version, every n-th canary request failed."""
    def run(spec: Any, on_tick: Any) -> StageStats:
        stats = StageStats(elapsed=5.0, users=5)
        for role, every in (("stable", 0), ("canary", canary_error_every)):
            for j in range(1000):
                stats.role(role).add(20.0 + j % 7, failed=bool(every) and j % every == 0)
        on_tick(stats)
        return stats
    return run


def test_engine_promotes_a_good_canary_and_rolls_back_a_bad_one(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    b = make_backend(tmp_path, fake, kube, "gateway-api")
    store = ConfigMapStore(kube, "answer")
    with store.lock("run"):
        engine = StubLoadEngine(b.loaded, b, store, QuietReporter(), "tester", load_runner=fixed_load(0))
        out = engine.drive("v2", from_cli=True, one_stage=False)
    assert (out.kind, out.exit_code) == ("promoted", EXIT_OK)
    stable, canary = dep(fake, "answer"), dep(fake, "answer-canary")
    assert image_of(stable) == IMAGE.format("2.0") and stable["status"]["availableReplicas"] == 4
    assert canary["spec"]["replicas"] == 0
    assert [(r["name"], r["weight"]) for r in main_rule(fake)["backendRefs"]] == [("answer-stable", 100)]
    saved = store.load()
    assert saved is not None and saved.phase is Phase.PROMOTED and saved.stable_version == "v2" and saved.transition is None
    assert [s.name for s in saved.stages] == ["payments", "ten", "half"]

    with store.lock("run"):
        engine = StubLoadEngine(b.loaded, b, ConfigMapStore(kube, "answer"), QuietReporter(), "tester", load_runner=fixed_load(5))
        out = engine.drive("v3", from_cli=True, one_stage=False)
    assert (out.kind, out.exit_code) == ("rolled-back", EXIT_GATE_FAILED)
    stable, canary = dep(fake, "answer"), dep(fake, "answer-canary")
    assert image_of(stable) == IMAGE.format("2.0")  # the known-good version still serves
    assert image_of(canary) == IMAGE.format("3.0") and canary["spec"]["replicas"] == 0
    route = fake.get("httproutes", NS, "answer")
    assert route is not None and [r.get("name") for r in route["spec"]["rules"]] == [None]  # the cohort rule is gone
    assert [(r["name"], r["weight"]) for r in main_rule(fake)["backendRefs"]] == [("answer-stable", 100)]
    saved = ConfigMapStore(kube, "answer").load()
    assert saved is not None and saved.phase is Phase.ROLLED_BACK and saved.stable_version == "v2"
    assert saved.past[-1].outcome == "rolled-back" and "errors" in saved.past[-1].reason
    lease = fake.get("leases", NS, "rollout-answer")
    assert lease is not None and not lease["spec"].get("holderIdentity")  # released


def test_factory_builds_the_kubernetes_backend_and_store(tmp_path: Path, fake: FakeApiServer) -> None:
    loaded: LoadedPlan = load_plan(write_plan(tmp_path, plan_data(tmp_path, fake.write_kubeconfig(namespace="other"), "nginx")))
    backend, store = factory.make(loaded)
    assert isinstance(backend, KubernetesBackend) and isinstance(store, ConfigMapStore)
    assert backend.ns == NS and store.location() == "ConfigMap shop/rollout-answer"  # the plan's namespace wins
    assert factory.make_store(loaded).load() is None
    backend.kube.api.close()


def test_cli_revert_and_status_against_the_fake_via_kubeconfig_env(tmp_path: Path, fake: FakeApiServer) -> None:
    data = plan_data(tmp_path, "unused", "gateway-api")
    del data["target"]["kubeconfig"]  # from $KUBECONFIG, as users run it
    plan = write_plan(tmp_path, data)
    env = {"KUBECONFIG": fake.write_kubeconfig(namespace="elsewhere"), "ROLLOUT_ACTOR": "ci-bot"}
    done = run_cli("revert", str(plan), "--reason", "drill", env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(r["name"], r["weight"]) for r in main_rule(fake)["backendRefs"]] == [("answer-stable", 100)]
    cm = fake.get("configmaps", NS, "rollout-answer")
    assert cm is not None and "ci-bot" in cm["metadata"]["annotations"]["rollout.dev/written-by"]
    status = run_cli("status", str(plan), env=env, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "drill" in status.stdout and "Phase:" in status.stdout


def test_a_new_canary_is_not_judged_by_the_last_ones_timed_out_condition(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    fake.set_deployment_fault("never-ready", image="*:3.0", progress_deadline=0.2)
    b = make_backend(tmp_path, fake, kube, "nginx")
    state = rolling("v3")
    b.ensure(state)
    with pytest.raises(BackendError, match="ProgressDeadlineExceeded"):
        b.deploy_canary(state, "v3")
    b.stop_canary(state)
    b.deploy_canary(state, "v2")  # the old condition still says ProgressDeadlineExceeded until the controller looks
    canary = dep(fake, "answer-canary")
    assert image_of(canary) == IMAGE.format("2.0") and canary["status"]["availableReplicas"] == 1


@pytest.mark.parametrize("router", ["nginx", "replicas"])
def test_engine_promotes_and_rolls_back_on_the_other_routers(tmp_path: Path, fake: FakeApiServer, kube: Kube, router: str) -> None:
    """The same two rollouts as above on nginx and replicas; the final objects checked field by field."""
    b = make_backend(tmp_path, fake, kube, router)
    with ConfigMapStore(kube, "answer").lock("run"):
        out = StubLoadEngine(b.loaded, b, ConfigMapStore(kube, "answer"), QuietReporter(), "tester", load_runner=fixed_load(0)).drive("v2", from_cli=True, one_stage=False)
    assert (out.kind, out.exit_code) == ("promoted", EXIT_OK)
    stable, canary = dep(fake, "answer"), dep(fake, "answer-canary")
    assert image_of(stable) == IMAGE.format("2.0") and stable["spec"]["replicas"] == 4 and stable["status"]["availableReplicas"] == 4
    assert canary["spec"]["replicas"] == 0
    if router == "nginx":
        ann = (fake.get("ingresses", NS, "answer-canary") or {})["metadata"]["annotations"]
        assert ann["nginx.ingress.kubernetes.io/canary"] == "true" and ann["nginx.ingress.kubernetes.io/canary-weight"] == "0"
        assert "nginx.ingress.kubernetes.io/canary-by-header" not in ann
    with ConfigMapStore(kube, "answer").lock("run"):
        out = StubLoadEngine(b.loaded, b, ConfigMapStore(kube, "answer"), QuietReporter(), "tester", load_runner=fixed_load(5)).drive("v3", from_cli=True, one_stage=False)
    assert (out.kind, out.exit_code) == ("rolled-back", EXIT_GATE_FAILED)
    stable, canary = dep(fake, "answer"), dep(fake, "answer-canary")
    assert image_of(stable) == IMAGE.format("2.0") and stable["spec"]["replicas"] == 4
    assert image_of(canary) == IMAGE.format("3.0") and canary["spec"]["replicas"] == 0
    if router == "nginx":
        ann = (fake.get("ingresses", NS, "answer-canary") or {})["metadata"]["annotations"]
        assert ann["nginx.ingress.kubernetes.io/canary-weight"] == "0" and "nginx.ingress.kubernetes.io/canary-by-header" not in ann
    saved = ConfigMapStore(kube, "answer").load()
    assert saved is not None and saved.phase is Phase.ROLLED_BACK and saved.stable_version == "v2" and saved.transition is None


def test_a_canary_deployment_that_loses_its_ready_pods_is_rolled_back_at_once(tmp_path: Path, fake: FakeApiServer, kube: Kube) -> None:
    """Fail closed (#10): readyReplicas 0 on the canary Deployment fails the stage in the tick, whatever the gates' minimums."""
    b = make_backend(tmp_path, fake, kube, "gateway-api")
    ticks: list[bool] = []

    def run(spec: Any, on_tick: Any) -> StageStats:
        stats = StageStats(elapsed=1.0, users=5)
        for role in ("stable", "canary"):
            for _ in range(20):  # far below the gate's min_requests: the gate alone could not judge
                stats.role(role).add(20.0, failed=False)
        ticks.append(on_tick(stats))
        canary = dep(fake, "answer-canary")
        fake.update_status("deployments", NS, "answer-canary", {**canary["status"], "readyReplicas": 0, "availableReplicas": 0})
        stats.elapsed = 2.0
        ticks.append(on_tick(stats))
        return stats

    store = ConfigMapStore(kube, "answer")
    with store.lock("run"):
        engine = StubLoadEngine(b.loaded, b, store, QuietReporter(), "tester", load_runner=run)
        out = engine.drive("v2", from_cli=True, one_stage=False)
    assert (out.kind, out.exit_code) == ("rolled-back", EXIT_GATE_FAILED)
    assert ticks == [False, True]  # judged in the tick the pods were gone
    assert "canary v2 is down: Deployment shop/answer-canary has 0 of 1 pods ready" in out.message
    assert [(r["name"], r["weight"]) for r in main_rule(fake)["backendRefs"]] == [("answer-stable", 100)]
    assert dep(fake, "answer-canary")["spec"]["replicas"] == 0

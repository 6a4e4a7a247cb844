"""End to end without a cluster: the `rollout` CLI patches objects on a standalone fake API server, and
real HTTP follows them through `rollout.testing.gateway.ClusterGateway` (the local weighted router, driven
by a watch on the HTTPRoute / the Deployments) to real local processes of examples/service.py.

So each test runs plan → Kubernetes patches → real traffic → Locust → gates → rollback or promotion,
and checks the outcome three ways: the objects field by field, the recorded state, and requests counted
through the gateway (its router's counters per applied config, and our own requests' X-Version).

Everything is torn down by fixtures, also on failure: the fake, the gateway's router, the services.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import stop_all
from tests.helpers import StandaloneFake
import yaml

from rollout.testing.gateway import ClusterGateway

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "examples" / "service.py"
NS = "shop"
IMAGE = "registry.example.com/answer:{}"
IMAGES = {v: IMAGE.format(f"{v[1]}.0") for v in ("v1", "v2", "v3")}
FILTER = "ResponseHeaderModifier"


# -- the pieces: a standalone fake, service processes, the gateway ------------------------------------------


Fake = StandaloneFake  # the name test_k8s_requests_e2e imports


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Fake]:
    server = Fake(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def services() -> Iterator[Callable[..., dict[str, int]]]:
    """services(v1="0%", v3="30%") starts examples/service.py per version (that error rate) -> {version: port}."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(version: str, errors: str) -> tuple[subprocess.Popen[bytes], int]:
        port = _free_port()
        proc = subprocess.Popen([sys.executable, str(SERVICE), "--port", str(port), "--version", version, "--latency", "3ms",
                                 "--jitter", "0", "--error-rate", errors, "--seed", "7"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        procs.append(proc)
        return proc, port

    def up(proc: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
        while proc.poll() is None:  # exits at once when another process took the port meanwhile
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1, trust_env=False).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the service on port {port} did not become healthy"
            time.sleep(0.05)
        return False

    def start(**versions: str) -> dict[str, int]:
        started = {v: spawn(v, e) for v, e in versions.items()}
        deadline = time.monotonic() + 30
        ports = {}
        for version, (proc, port) in started.items():
            for _ in range(3):
                if up(proc, port, deadline):
                    break
                proc, port = spawn(version, versions[version])
            else:
                raise AssertionError(f"service {version} did not start")
            ports[version] = port
        return ports

    try:
        yield start
    finally:
        stop_all(procs)


@pytest.fixture
def gateway(fake: Fake) -> Iterator[Callable[..., ClusterGateway]]:
    made: list[ClusterGateway] = []

    def make(**kw: Any) -> ClusterGateway:
        gw = ClusterGateway(fake.kubeconfig, NS, **kw)
        made.append(gw)
        return gw.start()

    try:
        yield make
    finally:
        for gw in made:
            gw.stop()


# -- plans, the CLI, requests through the gateway ------------------------------------------------------------


def write_plan(tmp: Path, router: str, entry: str, stages: list[dict[str, Any]]) -> Path:
    (tmp / "load.py").write_text(
        "from locust import FastHttpUser, constant, task\n\n"
        "class U(FastHttpUser):\n    wait_time = constant(0.02)\n\n"
        "    @task\n    def t(self):\n        self.client.get('/api/answer?q=canary')\n")
    plan = {
        "name": "answer",
        "owner": {"name": "Answers team", "contact": "answers@example.com"},
        "target": {
            "backend": "kubernetes", "namespace": NS, "stable": "v1",
            "versions": {v: {"image": image} for v, image in IMAGES.items()},
            "deployments": {"stable": "answer", "canary": "answer-canary"},
            "services": {"stable": "answer-stable", "canary": "answer-canary"},
            "router": router, "httproute": "answer", "port": 8080, "progress_deadline": "20s", "entry_url": entry,
        },
        "load": {"locustfile": "load.py", "users": 4, "spawn_rate": 4, "cohort_share": "50%"},
        # traffic mechanics, seconds-long stages: the naive rule (a sequential PASS needs ~120+ canary requests)
        "gates": {"errors": {"metric": "error_rate", "max": "5%", "min_requests": 20, "method": "threshold"}},
        "stages": stages,
    }
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def cli(fake: Fake, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KUBECONFIG": fake.kubeconfig, "ROLLOUT_ACTOR": "pytest"}
    return subprocess.run([sys.executable, "-m", "rollout", *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def through(gw: ClusterGateway, n: int, headers: dict[str, str] | None = None) -> dict[str, int]:
    """n requests through the gateway: {version that answered (header and body agree): count}."""
    counts: dict[str, int] = {}
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        for _ in range(n):
            r = c.get("/api/answer", params={"q": "x"}, headers=headers or {})
            assert r.status_code in (200, 500), r.text
            version = r.headers["x-version"]
            assert r.json()["version"] == version
            counts[version] = counts.get(version, 0) + 1
    return counts


def mark(version: str) -> list[dict[str, Any]]:
    return [{"type": FILTER, "responseHeaderModifier": {"set": [{"name": "X-Version", "value": version}]}}]


def main_rule(refs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": refs}


def check_route_untouched_parts(route: dict[str, Any]) -> None:
    assert route["spec"]["parentRefs"] == [{"name": "shop-gateway"}]
    assert route["spec"]["hostnames"] == ["answer.shop.example.com"]


def splits(periods: list[dict[str, Any]]) -> list[tuple[str, float, str | None]]:
    """(stable version, canary share, canary version) of each config the gateway applied, repeats collapsed."""
    out: list[tuple[str, float, str | None]] = []
    for p in periods:
        c = p["config"]
        key = (c["stable"]["version"], round(c["weight"], 4), (c["canary"] or {}).get("version"))
        if not out or out[-1] != key:
            out.append(key)
    return out


def stage_stats(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in state["stages"] if s["name"] == name)["stats"]


# -- the tests ----------------------------------------------------------------------------------------------


def test_gateway_api_bad_canary_is_rolled_back_and_all_traffic_returns_to_stable(
        tmp_path: Path, fake: Fake, services: Any, gateway: Any) -> None:
    ports = services(v1="0%", v3="30%")
    gw = gateway(route_name="answer", backends={"answer-stable": ports["v1"], "answer-canary": ports["v3"]})
    assert gw.config()["canary"] is None and through(gw, 10) == {"v1": 10}  # before: the route has stable only
    plan = write_plan(tmp_path, "gateway-api", gw.url, [{"name": "quarter", "weight": "25%", "duration": "3s"},
                                                        {"name": "half", "weight": "50%", "duration": "3s"}])

    dry = cli(fake, "plan", str(plan), "--version", "v3", "-o", "json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    steps = {s["step"]: s for s in json.loads(dry.stdout)["steps"]}
    assert steps["stage 1 `quarter`"]["split"] == {"weight": 0.25, "cohort": None}
    quarter = [p for p in steps["stage 1 `quarter`"]["patches"] if p["kind"] == "HTTPRoute"]
    assert len(quarter) == 1 and quarter[0]["name"] == "answer" and quarter[0]["type"] == "merge"
    assert [(r["name"], r["weight"]) for r in quarter[0]["body"]["spec"]["rules"][0]["backendRefs"]] == \
        [("answer-stable", 75), ("answer-canary", 25)]
    assert fake.route()["metadata"]["generation"] == 1  # the dry run applied nothing
    assert gw.config()["canary"] is None

    run = cli(fake, "run", str(plan), "--version", "v3")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "rolled-back" in run.stdout

    # the recorded state: the first stage's gate failed on traffic that really reached v3 through the gateway
    state = fake.state()
    assert state["phase"] == "rolled-back" and state["stable_version"] == "v1" and state["split"] == {"weight": 0.0, "cohort": None}
    stage = state["stages"][0]
    assert stage["name"] == "quarter" and stage["status"] == "failed" and len(state["stages"]) == 1
    fail = next(v for v in stage["verdicts"] if v["status"] == "fail")
    assert fail["gate"] == "errors" and fail["observed"] > 0.05
    assert stage["stats"]["canary"]["requests"] >= 20 and stage["stats"]["canary"]["failures"] > 0
    assert stage["stats"]["stable"]["failures"] == 0

    # the gateway followed the HTTPRoute: 25 % to v3, counted at its router, then all on stable again
    periods = gw.periods()
    seen = splits(periods)  # before: all on stable (labelled v1 once the rollout's filters are on the route)
    assert all(w == 0.0 and c is None for _, w, c in seen[:-2]) and seen[-3:] == [("v1", 0.0, None), ("v1", 0.25, "v3"), ("v1", 0.0, None)], seen
    routed = next(p for p in periods if p["config"]["weight"] == 0.25)["requests"]
    assert routed["canary"] >= 20 and abs(routed["canary"] - 0.25 * (routed["stable"] + routed["canary"])) <= 1, routed
    assert gw.settle() == {"stable": {"version": "v1", "port": ports["v1"]}, "canary": None, "weight": 0.0, "cohort": None,
                           "version_header": "X-Version"}
    assert through(gw, 50) == {"v1": 50}

    # the HTTPRoute, field by field: stable alone, marked v1; the rest of the user's route untouched
    route = fake.route()
    check_route_untouched_parts(route)
    assert route["spec"]["rules"] == [main_rule([{"name": "answer-stable", "port": 8080, "weight": 100, "filters": mark("v1")}])]
    canary = fake.deployment("answer-canary")
    assert canary["spec"]["replicas"] == 0 and canary["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES["v3"]
    assert fake.deployment("answer")["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES["v1"]
    assert gw.errors == []


def test_gateway_api_cohort_stage_then_good_canary_promoted(tmp_path: Path, fake: Fake, services: Any, gateway: Any) -> None:
    ports = services(v1="0%", v2="0%")
    # images mode: the process behind a Service is the one running its Deployment's image, so promotion moves users
    gw = gateway(route_name="answer", services=("answer-stable", "answer-canary"),
                 images={IMAGES["v1"]: ports["v1"], IMAGES["v2"]: ports["v2"]})
    plan = write_plan(tmp_path, "gateway-api", gw.url, [
        {"name": "payments", "cohort": {"x-team": "payments"}, "weight": 0, "duration": "3s"},
        {"name": "half", "weight": "50%", "duration": "3s"}])

    first = cli(fake, "advance", str(plan), "--version", "v2")  # exactly the cohort stage, then stop there
    assert first.returncode == 0, first.stdout + first.stderr
    route = fake.route()
    check_route_untouched_parts(route)
    assert route["spec"]["rules"] == [
        {"name": "rollout-cohort",
         "matches": [{"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"type": "Exact", "name": "x-team", "value": "payments"}]}],
         "backendRefs": [{"name": "answer-canary", "port": 8080, "weight": 1, "filters": mark("v2")}]},
        main_rule([{"name": "answer-stable", "port": 8080, "weight": 100, "filters": mark("v1")},
                   {"name": "answer-canary", "port": 8080, "weight": 0, "filters": mark("v2")}]),
    ]
    live = gw.settle()
    assert live["cohort"] == {"header": "x-team", "value": "payments"} and live["weight"] == 0.0
    assert live["canary"] == {"version": "v2", "port": ports["v2"]} and live["stable"] == {"version": "v1", "port": ports["v1"]}

    # every cohort request and no other reaches the canary: our own requests through the gateway...
    assert through(gw, 30, {"x-team": "payments"}) == {"v2": 30}
    assert through(gw, 30) == {"v1": 30}
    assert through(gw, 10, {"x-team": "search"}) == {"v1": 10}
    # ...the gateway's router counted the same while the cohort rule was live (Locust's users included)...
    cohort_periods = [p for p in gw.periods() if p["config"]["cohort"]]
    assert cohort_periods and all(p["requests"]["canary"] == p["cohort_requests"] for p in cohort_periods), cohort_periods
    assert sum(p["cohort_requests"] for p in cohort_periods) >= 50  # Locust's cohort users and our 30
    assert sum(p["requests"]["stable"] for p in cohort_periods) >= 40
    # ...and Locust, attributing by the version header: its cohort users reached v2, nobody else did
    routing = stage_stats(fake.state(), "payments")["cohort_routing"]
    assert routing.get("cohort->canary", 0) >= 20 and routing.get("other->canary", 0) == 0, routing
    assert routing.get("other->stable", 0) >= 20, routing

    rest = cli(fake, "run", str(plan))  # the half stage, then promotion
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert "promoted" in rest.stdout
    state = fake.state()
    assert state["phase"] == "promoted" and state["stable_version"] == "v2" and state["canary_version"] is None
    assert [s["status"] for s in state["stages"]] == ["passed", "passed"]
    half = stage_stats(state, "half")
    assert 0.35 < half["canary"]["requests"] / half["all"]["requests"] < 0.65, half
    periods = gw.periods()
    halves = [p for p in periods if p["config"]["weight"] == 0.5 and p["config"]["stable"]["port"] == ports["v1"]]
    assert len(halves) == 1 and halves[0]["config"]["cohort"] is None
    n = halves[0]["requests"]
    assert abs(n["canary"] - n["stable"]) <= 1 and n["canary"] >= 20, n  # smooth weighted round-robin: exactly half


    route = fake.route()
    check_route_untouched_parts(route)
    # KNOWN BUG (backend.promote and dryrun promote route with the *old* state.stable_version): the stable
    # backendRef's ResponseHeaderModifier still says v1 although its pods run v2 — a real gateway's `set`
    # would label every response v1 until the next rollout. Accepted here so the fix does not break this test.
    marked = route["spec"]["rules"][0]["backendRefs"][0]["filters"][0]["responseHeaderModifier"]["set"][0]["value"]
    assert marked == "v2"  # the stable backend now runs v2, and its responses say so
    assert route["spec"]["rules"] == [main_rule([{"name": "answer-stable", "port": 8080, "weight": 100, "filters": mark(marked)}])]
    stable, canary = fake.deployment("answer"), fake.deployment("answer-canary")
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES["v2"]
    assert stable["spec"]["template"]["metadata"]["labels"] == {"app": "answer", "track": "stable"}
    assert canary["spec"]["replicas"] == 0
    # the stable Service's pods now run v2: all users on v2, none through the canary (labelled as the route says)
    assert gw.settle() == {"stable": {"version": marked, "port": ports["v2"]}, "canary": None, "weight": 0.0, "cohort": None,
                           "version_header": "X-Version"}
    before = gw.config()["requests"]
    assert through(gw, 50) == {"v2": 50}
    after = gw.config()["requests"]
    assert after["canary"] == before["canary"] and after["stable"] - before["stable"] == 50
    assert gw.errors == []


def test_replicas_router_split_follows_the_ready_pods(tmp_path: Path, fake: Fake, services: Any, gateway: Any) -> None:
    ports = services(v1="0%", v2="0%")
    gw = gateway(router="replicas", deployments=("answer", "answer-canary"),
                 images={IMAGES["v1"]: ports["v1"], IMAGES["v2"]: ports["v2"]})
    plan = write_plan(tmp_path, "replicas", gw.url, [{"name": "quarter", "weight": "25%", "duration": "2s"},
                                                     {"name": "half", "weight": "50%", "duration": "3s"}])
    run = cli(fake, "run", str(plan), "--version", "v2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "promoted" in run.stdout

    # every state of the ready pods the watch delivered, in order: the canary grows before stable shrinks
    weights = [round(p["config"]["weight"], 4) for p in gw.periods()]
    assert weights[:5] == [0.0, 0.2, 0.25, 0.4, 0.5], weights  # 4+0, 4+1, 3+1, 3+2, 2+2 ready pods
    assert weights[-1] == 0.0
    for p in gw.periods():  # while 1 of 4 and 2 of 4 pods were canary, the router sent exactly that share
        w, n = p["config"]["weight"], p["requests"]
        if w in (0.25, 0.5):
            assert abs(n["canary"] - w * (n["stable"] + n["canary"])) <= 1, p
    quarter = next(p for p in gw.periods() if p["config"]["weight"] == 0.25)["requests"]
    assert quarter["canary"] >= 10, quarter

    # Locust measured the same split through the gateway, by the version header
    state = fake.state()
    assert state["phase"] == "promoted" and state["stable_version"] == "v2"
    assert [s["status"] for s in state["stages"]] == ["passed", "passed"]
    q, h = stage_stats(state, "quarter"), stage_stats(state, "half")
    assert 0.1 < q["canary"]["requests"] / q["all"]["requests"] < 0.4, q
    assert 0.35 < h["canary"]["requests"] / h["all"]["requests"] < 0.65, h

    stable, canary = fake.deployment("answer"), fake.deployment("answer-canary")
    assert (stable["spec"]["replicas"], stable["status"]["readyReplicas"]) == (4, 4)
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES["v2"]
    assert canary["spec"]["replicas"] == 0 and not canary["status"].get("readyReplicas")
    assert gw.settle() == {"stable": {"version": "v2", "port": ports["v2"]}, "canary": None, "weight": 0.0, "cohort": None,
                           "version_header": "X-Version"}
    assert through(gw, 50) == {"v2": 50}
    assert gw.errors == []


def until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_gateway_watch_resumes_after_a_dropped_connection_and_relists_after_410(tmp_path: Path) -> None:
    """The watch machinery on its own (in-process fake, no service processes: the router is never asked to route)."""
    from rollout.testing.apiserver import FakeApiServer

    def weights(stable: int, canary: int) -> None:
        route = api.get("httproutes", NS, "answer")
        assert route is not None
        route["spec"]["rules"][0]["backendRefs"] = [{"name": "answer-stable", "port": 8080, "weight": stable},
                                                    {"name": "answer-canary", "port": 8080, "weight": canary}]
        api.apply(route)

    with FakeApiServer(controller_delay=0) as api:
        for doc in yaml.safe_load_all((ROOT / "manifests" / "httproute.yaml").read_text()):
            api.create(doc)
        with ClusterGateway(api.url, NS, route_name="answer", backends={"answer-stable": 9, "answer-canary": 10},
                            workdir=tmp_path) as gw:
            until(lambda: api.count("watch", "httproutes") >= 1)
            weights(90, 10)
            assert gw.settle()["weight"] == 0.1
            api._httpd.close_connections()  # type: ignore[union-attr]  # the server drops the watch...
            until(lambda: api.count("watch", "httproutes") >= 2)  # ...the gateway watches again from its resourceVersion
            weights(50, 50)
            assert gw.settle()["weight"] == 0.5
            assert api.count("list", "httproutes") == 1  # resumed, not listed again

            api.inject_fault(410, verb="watch", resource="httproutes", times=1)  # the history is gone: list, then watch
            api._httpd.close_connections()  # type: ignore[union-attr]
            until(lambda: api.count("list", "httproutes") == 2 and api.count("watch", "httproutes") >= 4)
            weights(75, 25)
            assert gw.settle()["weight"] == 0.25
            assert [round(p["config"]["weight"], 2) for p in gw.periods()] == [0.0, 0.1, 0.5, 0.25]
            assert gw.errors == []

"""`rollout run` with `load.runner: kubernetes`: staged rollouts judged canary against stable from the in-cluster master.

Real processes throughout: the fake API server with its kubelet (rollout.testing.kubelet) runs the load
pods as local processes from the templates' own command lines (`rollout load-master`, 2 x `rollout
load-worker --master <svc>:5557`), the CLI reads the master's per-version statistics through the API server's
service proxy, and the target is the local backend (its router and version processes on 127.0.0.1). Each
version process counts what it served (tests/counting_service.py, one byte per request, written before the
answer): the gates' per-version counts must equal those, up to the requests in flight when a stage's users
stopped (counted by the service, never seen by Locust: at most `users` per stage).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.testing.apiserver import FakeApiServer
from tests.conftest import ROOT, run_cli

NS = "load"
LABEL = "rollout.dev/load-run"
USERS = 6
SERVICE = ROOT / "tests" / "counting_service.py"
LOCUSTFILE = """
from locust import HttpUser, constant, task

class Asker(HttpUser):
    wait_time = constant(0.05)

    @task
    def ask(self):
        self.client.get("/api/answer")
"""


def version(name: str, count_dir: Path, error_every: int = 0) -> dict[str, Any]:
    return {"command": f"{{python}} {SERVICE} --port {{port}} --version {name} --count-dir {count_dir} --error-every {error_every}"}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[FakeApiServer, Any]]:
    count_dir = tmp_path / "counts"
    count_dir.mkdir()
    with FakeApiServer(controller_delay=0, kubelet=tmp_path / "pods") as fake:
        (tmp_path / "load.py").write_text(LOCUSTFILE)

        def make(stages: list[dict[str, Any]], workers: int = 2, gates: dict[str, Any] | None = None) -> Rollout:
            doc = {
                "name": "answer",
                "owner": {"name": "Answers team", "contact": "answers@example.com"},
                "target": {"backend": "local", "stable": "v1",
                           "versions": {"v1": version("v1", count_dir), "v2": version("v2", count_dir),
                                        "v3": version("v3", count_dir, error_every=3)}},  # v3: a third of its answers are 500s
                "load": {"locustfile": "load.py", "users": USERS, "runner": "kubernetes",
                         "cluster": {"kubeconfig": fake.write_kubeconfig(namespace=NS), "namespace": NS, "workers": workers,
                                     "ready_timeout": "60s"}},
                # canary against stable, judged on the per-version numbers the in-cluster master serves (the naive
                # rule after 30 requests: the mechanics, deterministic; the statistics have their own tests)
                "gates": gates or {"errors-vs-stable": {"metric": "error_rate", "compare": "stable", "max_increase": "5%",
                                                        "min_requests": 30, "method": "threshold"},
                                   "p95": {"metric": "p95", "max": "2s", "min_requests": 30, "method": "threshold"}},
                "stages": stages,
            }
            (tmp_path / "plan.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            return Rollout(tmp_path / "plan.yaml", tmp_path / "state", count_dir)

        made: list[Rollout] = []

        def factory(*a: Any, **kw: Any) -> Rollout:
            made.append(make(*a, **kw))
            return made[-1]

        try:
            yield fake, factory
        finally:
            for ro in made:
                ro("down", "--force")


class Rollout:
    def __init__(self, plan: Path, state: Path, counts: Path) -> None:
        self.plan, self.counts = plan, counts
        self.env = {"ROLLOUT_STATE_DIR": str(state), "ROLLOUT_ACTOR": "pytest", "GITHUB_STEP_SUMMARY": ""}

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_cli(args[0], str(self.plan), *args[1:], env=self.env, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "rollout", args[0], str(self.plan), *args[1:]], cwd=ROOT,
                                env={**os.environ, **self.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def served(self) -> dict[str, tuple[int, int]]:
        """version -> (requests, errors) the version processes counted."""
        out = {}
        for f in self.counts.glob("*.count"):
            data = f.read_bytes()
            out[f.stem] = (len(data), data.count(b"x"))
        return out

    def state(self) -> dict[str, Any]:
        r = self("status", "-o", "json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["state"]


def leftovers(fake: FakeApiServer) -> list[str]:
    return [f"{kind}/{o['metadata']['name']}" for kind in ("deployments", "services", "configmaps") for o in fake.list(kind, NS)
            if LABEL in o["metadata"].get("labels", {})]


def no_pods_left(fake: FakeApiServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while fake.kubelet.running_pods() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.kubelet.running_pods() == []


def per_role(report: Path) -> list[dict[str, tuple[int, int]]]:
    """Each stage's (requests, failures) per role, as the gates saw them."""
    out = []
    for stage in json.loads(report.read_text())["stages"]:
        st = stage["stats"]
        out.append({r: (st[r]["requests"], st[r]["failures"]) for r in ("stable", "canary", "unknown") if r in st})
    return out


STAGES = [{"name": "quarter", "weight": 25, "duration": "4s", "workers": 2}, {"name": "half", "weight": 50, "duration": "4s", "workers": 2}]


def served_equals_counted(ro: Rollout, stages: list[dict[str, tuple[int, int]]], canary: str) -> None:
    """Per version, what the gates counted is what the version processes served (± the requests in flight at each
    stage's stop: counted by the service, never answered to a stopped user), failures too; none unattributed."""
    served = ro.served()
    counted = {"v1": sum(s["stable"][0] for s in stages), canary: sum(s["canary"][0] for s in stages)}
    failed = {"v1": sum(s["stable"][1] for s in stages), canary: sum(s["canary"][1] for s in stages)}
    print(f"gates counted {counted} (failures {failed}); the services served (requests, errors) {served}; {len(stages)} stage(s)")
    assert set(served) == set(counted), served
    for v in counted:
        assert counted[v] <= served[v][0] <= counted[v] + USERS * len(stages), (v, counted, served)
        assert failed[v] <= served[v][1] <= failed[v] + USERS * len(stages), (v, failed, served)
    assert all(s.get("unknown", (0, 0))[0] == 0 for s in stages), stages


def everything_deleted(fake: FakeApiServer, ro: Rollout) -> None:
    """Every load object gone, every pod stopped, no load run left recorded in the state. The pods were kept
    across the stages of the run (the same worker count): one master and one worker Deployment."""
    assert leftovers(fake) == []
    assert fake.count("create", "deployments", namespace=NS) == 2 and fake.count("delete", "deployments", namespace=NS) == 2
    assert fake.count("create", "services", namespace=NS) == 1 and fake.count("delete", "services", namespace=NS) == 1
    no_pods_left(fake)
    assert ro.state()["load_runs"] == []
    assert len([p for p in fake.kubelet.started if p.endswith("-worker")]) == 2  # stages[].workers: 2 worker pods


@pytest.mark.slow
def test_a_bad_canary_is_rolled_back_on_a_canary_vs_stable_gate_from_the_clusters_numbers(setup: Any, tmp_path: Path) -> None:
    fake, make = setup
    # the anytime-valid sequential test (`method: sequential`), on the per-version counts the master serves: it
    # rolls the canary back as soon as the evidence is there, long before the stage's 20 s
    ro = make([{**STAGES[0], "duration": "20s"}, STAGES[1]],
              gates={"errors-vs-stable": {"metric": "error_rate", "compare": "stable", "max_increase": "2%", "method": "sequential",
                                          "min_requests": 30}})
    bad = ro("run", "--version", "v3", "--json", str(tmp_path / "bad.json"))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "rolled-back" in bad.stdout and "errors-vs-stable: canary errors" in bad.stdout and "[sequential" in bad.stdout, bad.stdout + bad.stderr
    verdicts = json.loads((tmp_path / "bad.json").read_text())["stages"][0]["verdicts"]
    assert [(v["gate"], v["status"]) for v in verdicts] == [("errors-vs-stable", "fail")] and "credibly" in verdicts[0]["message"], verdicts
    stages = per_role(tmp_path / "bad.json")
    assert len(stages) == 1 and stages[0]["canary"][1] > 0 and stages[0]["stable"][1] == 0, stages  # the canary's errors only
    assert "Warning" not in bad.stderr, bad.stderr
    everything_deleted(fake, ro)
    served_equals_counted(ro, stages, "v3")


@pytest.mark.slow
def test_a_good_canary_is_promoted_through_two_stages_of_in_cluster_load(setup: Any, tmp_path: Path) -> None:
    fake, make = setup
    ro = make(STAGES)
    good = ro("run", "--version", "v2", "--json", str(tmp_path / "good.json"))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "promoted" in good.stdout and "Warning" not in good.stderr, good.stdout + good.stderr
    stages = per_role(tmp_path / "good.json")
    assert len(stages) == 2 and all(s["canary"][0] > 30 and s["stable"][0] > 30 for s in stages), stages
    everything_deleted(fake, ro)
    served_equals_counted(ro, stages, "v2")


@pytest.mark.slow
def test_the_load_of_a_killed_driver_is_deleted_by_the_next_command(setup: Any, tmp_path: Path) -> None:
    fake, make = setup
    ro = make([{"name": "long", "weight": 25, "duration": "60s", "workers": 2}])
    driver = ro.popen("run", "--version", "v2")
    try:
        deadline = time.monotonic() + 60
        while fake.count("create", "services/proxy", namespace=NS) < 1 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.1)  # until the stage was started in the cluster
        assert fake.count("create", "services/proxy", namespace=NS) == 1, driver.stderr.read() if driver.poll() is not None else ""
        time.sleep(1.0)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    left = leftovers(fake)
    assert len(left) == 4, left  # what the killed driver left: master and worker Deployments, the Service, the ConfigMap
    runs = ro.state()["load_runs"]
    assert len(runs) == 1 and all(runs[0]["run"] in name for name in left), (runs, left)  # recorded before they were created
    st = ro("status")
    assert f"in-cluster load may still run: {LABEL}={runs[0]['run']}" in st.stdout, st.stdout  # status says so

    r = ro("revert", "--reason", "the driver was killed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{LABEL}={runs[0]['run']}" in r.stderr  # said what it deleted
    assert leftovers(fake) == [] and ro.state()["load_runs"] == []
    no_pods_left(fake)


@pytest.mark.slow
def test_advance_runs_a_stage_in_the_cluster_and_ctrl_c_deletes_its_load(setup: Any, tmp_path: Path) -> None:
    fake, make = setup
    ro = make([{"name": "one", "weight": 25, "duration": "3s", "workers": 1},
               {"name": "two", "weight": 50, "duration": "60s", "workers": 2}])
    r = ro("advance", "--version", "v2", "--json", str(tmp_path / "one.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    (one,) = per_role(tmp_path / "one.json")
    assert one["canary"][0] > 10 and one["stable"][0] > 10, one
    assert leftovers(fake) == [] and ro.state()["load_runs"] == []
    assert len([p for p in fake.kubelet.started if p.endswith("-worker")]) == 1  # stages[0].workers: 1

    driver = ro.popen("advance")
    try:
        deadline = time.monotonic() + 60
        while fake.count("create", "services/proxy", namespace=NS) < 2 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.1)  # until stage two was started in the cluster
        assert fake.count("create", "services/proxy", namespace=NS) == 2
        time.sleep(1.0)
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 130, out + err
    assert leftovers(fake) == [] and ro.state()["load_runs"] == [], (leftovers(fake), ro.state()["load_runs"])
    assert len([p for p in fake.kubelet.started if p.endswith("-worker")]) == 3  # stages[1].workers: 2 more
    assert fake.count("delete", "deployments", namespace=NS) == 4
    no_pods_left(fake)


@pytest.mark.slow
def test_a_stage_with_another_worker_count_replaces_the_pods_and_close_deletes_them(tmp_path: Path) -> None:
    """ClusterLoad in this process (no Locust here: a stage's spec is plain data): the pods are kept while the
    worker count stays, replaced when it changes; each run recorded before its objects exist, forgotten after."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from types import SimpleNamespace

    from rollout.load.cluster import ClusterLoad
    from rollout.plan.model import Load

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("X-Version", "v1")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    (tmp_path / "load.py").write_text(LOCUSTFILE)
    events: list[tuple[str, str]] = []
    try:
        with FakeApiServer(controller_delay=0, kubelet=tmp_path / "pods") as fake:
            settings = Load.Cluster(kubeconfig=fake.write_kubeconfig(namespace=NS), namespace=NS, workers=1, ready_timeout=60)
            runner = ClusterLoad(settings, on_create=lambda rec: events.append(("create", rec["run"])),
                                 on_delete=lambda run: events.append(("delete", run)))

            def spec(workers: int | None) -> Any:
                return SimpleNamespace(locustfile=tmp_path / "load.py", host=f"http://127.0.0.1:{srv.server_address[1]}", users=2,
                                       spawn_rate=2, duration=2.0, version_header="X-Version", roles={"v1": "stable"}, cohort=None,
                                       cohort_share=0.2, max_requests=None, only_role=None, shape=None, tags=None, exclude_tags=None,
                                       options=(), endpoint_stats=True, no_request_timeout=10.0, workers=workers)

            ticks: list[int] = []
            try:
                for workers in (None, 1, 2):  # None: load.cluster.workers (1)
                    stats = runner(spec(workers), lambda st: ticks.append(st.requests) is not None)
                    assert stats.role("stable").requests > 5 and stats.role("unknown").requests == 0
                    assert [e for e, _ in events].count("create") == (1 if workers != 2 else 2), events
            finally:
                runner.close()
            assert [e for e, _ in events] == ["create", "delete", "create", "delete"], events
            assert events[0][1] == events[1][1] != events[2][1] == events[3][1]
            assert leftovers(fake) == [] and fake.count("create", "deployments", namespace=NS) == 4
            assert sorted(p.rsplit("-", 1)[-1] for p in fake.kubelet.started) == ["master", "master", "worker", "worker", "worker"]
            assert len(ticks) >= 3  # the gates were asked during the stages (about once a second)
    finally:
        srv.shutdown()
        srv.server_close()

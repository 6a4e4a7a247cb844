"""`load.runner: kubernetes`: rollout's Locust master and workers in the namespace, read through the service proxy.

Against the fake API server with its opt-in kubelet (rollout.testing.kubelet): each "pod" of the runner's
Deployments runs as a local process from the container's own command line (`rollout load-master ...`,
`rollout load-worker --master <svc>:5557 ...`; image rollout -> `python -m rollout`, the ConfigMap volume ->
files, ports and Service names -> 127.0.0.1 ports), and the API server's service proxy reaches the master.
When the runner deletes a Deployment, its processes are stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.testing.apiserver import FakeApiServer
from rollout.testing.kubelet import Kubelet
from tests.conftest import ROOT, run_cli, stop_all
from tests.test_gate import LOCUSTFILE, start_service

NS = "loadtest"
LABEL = "rollout.dev/load-run"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[FakeApiServer, Kubelet]]:
    with FakeApiServer(controller_delay=0, kubelet=tmp_path / "pods") as fake:
        yield fake, fake.kubelet


@pytest.fixture(scope="module")
def targets() -> Iterator[dict[str, str]]:
    procs, urls = [], {}
    try:
        for name, kw in (("healthy", {}), ("erroring", {"errors": "40%"})):
            proc, url = start_service(f"v-{name}", **kw)
            procs.append(proc)
            urls[name] = url
        yield urls
    finally:
        stop_all(procs)


def plan(tmp: Path, fake: FakeApiServer, host: str, *, workers: int = 2, ready: str = "60s", duration: str = "3s") -> list[str]:
    kc = fake.write_kubeconfig(namespace=NS)
    doc = {
        "name": "answer",
        "owner": {"name": "Answers team", "contact": "answers@example.com"},
        "target": {"backend": "local", "stable": "v-healthy", "versions": {"v-healthy": {"command": "x"}, "v-erroring": {"command": "x"}}},
        "load": {"locustfile": str(LOCUSTFILE), "users": 4, "runner": "kubernetes",  # --host gives the target
                 "cluster": {"kubeconfig": kc, "namespace": NS, "workers": workers, "ready_timeout": ready}},
        # the runner's mechanics in 3 s stages: the naive rule judges after 20 requests
        "gates": {"errors": {"metric": "error_rate", "version": "all", "max": "5%", "min_requests": 20, "method": "threshold"},
                  "p95": {"metric": "p95", "version": "all", "max": "2s", "min_requests": 20, "method": "threshold"}},
        "stages": [{"name": "preflight", "weight": 0, "load_to": "canary", "duration": duration}],
    }
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return [str(path), "--host", host]


def created_and_deleted(fake: FakeApiServer, runs: int = 1) -> None:
    for verb in ("create", "delete"):
        assert fake.count(verb, "configmaps", namespace=NS) == runs
        assert fake.count(verb, "services", namespace=NS) == runs
        assert fake.count(verb, "deployments", namespace=NS) == 2 * runs
    assert leftovers(fake) == []


def leftovers(fake: FakeApiServer) -> list[str]:
    return [o["metadata"]["name"] for kind in ("deployments", "services", "configmaps") for o in fake.list(kind, NS)
            if LABEL in o["metadata"].get("labels", {})]


def wait_stopped(kubelet: Kubelet, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout  # the kubelet notices deletions within its 0.1 s poll, then stops the processes
    while time.monotonic() < deadline and (len(kubelet.stopped) < n or kubelet.running_pods()):
        time.sleep(0.05)
    assert kubelet.running_pods() == [] and len(kubelet.stopped) >= n, (kubelet.stopped, kubelet.running_pods())


def test_in_cluster_gate_reads_exact_per_version_statistics_and_deletes_its_objects(cluster: Any, targets: dict[str, str], tmp_path: Path) -> None:
    fake, kubelet = cluster
    out = tmp_path / "report.json"
    r = run_cli("gate", "--quiet", *plan(tmp_path, fake, targets["healthy"]), "--json", str(out),
                env={"GITHUB_STEP_SUMMARY": ""}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    created_and_deleted(fake)
    assert fake.count("get", "services/proxy", namespace=NS) >= 3  # readiness + a read a second
    assert fake.count("create", "services/proxy", namespace=NS) == 1  # POST rollout/start (the master ends the stage itself)
    wait_stopped(kubelet, 2)
    # the pods ran the commands the templates give the containers: rollout's own master and workers
    pods = sorted(kubelet.started)
    assert len(pods) == 3 and sum(p.endswith("-master") for p in pods) == 1 and sum(p.endswith("-worker") for p in pods) == 2, pods
    stats = json.loads(out.read_text())["stages"][0]["stats"]
    # attributed by the version header, as in-process (not one all-traffic series)
    assert stats["v-healthy"]["requests"] > 20 and stats["v-healthy"]["failures"] == 0, stats
    assert "unknown" not in stats and stats["all"]["requests"] == stats["v-healthy"]["requests"]
    assert {v["status"] for v in json.loads(out.read_text())["stages"][0]["verdicts"]} == {"pass"}


def test_the_pods_run_the_commands_the_templates_give_their_containers(cluster: Any, targets: dict[str, str], tmp_path: Path) -> None:
    """The kubelet maps only what a cluster would resolve: image rollout -> `python -m rollout`, the mount path,
    the bind addresses and the master's Service name; every other argument is the template's."""
    from rollout.backends.kubernetes.load_runner import render

    fake, kubelet = cluster
    objs = render("rollout-load-t", NS, "t", "registry.example.com/rollout:0.1", 2, "from locust import HttpUser\n")
    for o in objs:
        fake.create(o, NS)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(kubelet.running_pods(NS)) < 3:
        time.sleep(0.05)
    pods = {p.name.rsplit("-", 1)[0]: p for p in kubelet.running_pods(NS)}
    master, worker = pods["rollout-load-t-master"], pods["rollout-load-t-worker"]
    assert master.cmd[:3] == [sys.executable, "-m", "rollout"] and master.cmd[3] == "load-master"
    web, port = master.ports[8089], master.ports[5557]
    assert master.cmd[4:] == ["--locustfile", str(master.cwd / "locustfile" / "locustfile.py"), "--master-bind", f"127.0.0.1:{port}",
                              "--web-bind", f"127.0.0.1:{web}"]
    assert (master.cwd / "locustfile" / "locustfile.py").read_text() == "from locust import HttpUser\n"
    assert worker.cmd[3:6] == ["load-worker", "--master", f"127.0.0.1:{port}"]
    assert kubelet.service_port(NS, "rollout-load-t-master", "8089") == web
    assert worker.proc is not None
    worker.proc.kill()  # a crashed container comes back (the Deployment's restartPolicy: Always)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (worker.restarts == 1 and worker.running):
        time.sleep(0.05)
    assert worker.restarts == 1 and worker.running
    for o in objs:
        fake.delete(o["kind"].lower() + "s", NS, o["metadata"]["name"])
    wait_stopped(kubelet, 2)


def test_a_gate_fails_against_an_erroring_target_and_everything_is_deleted(cluster: Any, targets: dict[str, str], tmp_path: Path) -> None:
    fake, kubelet = cluster
    r = run_cli("gate", "--quiet", *plan(tmp_path, fake, targets["erroring"], workers=1, duration="30s"),
                env={"GITHUB_STEP_SUMMARY": ""}, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "gate `errors` failed" in r.stderr, r.stderr
    created_and_deleted(fake)
    wait_stopped(kubelet, 2)


def test_pods_that_never_come_up_are_exit_3_and_deleted(tmp_path: Path) -> None:
    with FakeApiServer(controller_delay=0) as fake:  # no kubelet: nothing runs the pods, the proxy path is 404
        r = run_cli("gate", "--quiet", *plan(tmp_path, fake, "http://127.0.0.1:9", ready="2s"),
                    env={"GITHUB_STEP_SUMMARY": ""}, timeout=60)
        assert r.returncode == 3, r.stdout + r.stderr
        assert "the in-cluster Locust master did not answer within 2s" in r.stderr and "Traceback" not in r.stderr
        created_and_deleted(fake)


def test_the_manifest_templates_render_to_the_objects_the_runner_creates() -> None:
    from rollout.backends.kubernetes.load_runner import TEMPLATES, render

    # the templates ship as package data, and only there: manifests/ holds objects `kubectl apply -f` accepts
    for name in ("locust-configmap.yaml", "locust-master.yaml", "locust-workers.yaml"):
        assert (TEMPLATES / name).is_file() and not (ROOT / "manifests" / name).exists()
    objs = render("rollout-load-x", NS, "x", "registry.example.com/rollout:0.1", 3, "print('hi')\n")
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("ConfigMap", "rollout-load-x-locustfile"), ("Deployment", "rollout-load-x-master"),
        ("Service", "rollout-load-x-master"), ("Deployment", "rollout-load-x-worker")]
    assert objs[0]["data"] == {"locustfile.py": "print('hi')\n"} and objs[3]["spec"]["replicas"] == 3
    assert all(o["metadata"]["labels"][LABEL] == "x" for o in objs)
    master, worker = (o["spec"]["template"]["spec"]["containers"][0] for o in (objs[1], objs[3]))
    assert master["image"] == worker["image"] == "registry.example.com/rollout:0.1" and "command" not in master  # the image's entrypoint: rollout
    assert master["args"][0] == "load-master" and worker["args"][:3] == ["load-worker", "--master", "rollout-load-x-master:5557"]


def test_ctrl_c_during_the_load_deletes_everything(cluster: Any, targets: dict[str, str], tmp_path: Path) -> None:
    import os
    import signal

    fake, kubelet = cluster
    cmd = [sys.executable, "-m", "rollout", "gate", "--quiet", *plan(tmp_path, fake, targets["healthy"], workers=1, duration="60s")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "GITHUB_STEP_SUMMARY": ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while fake.count("create", "services/proxy", namespace=NS) < 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)  # until the stage was started
        assert fake.count("create", "services/proxy", namespace=NS) == 1
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    created_and_deleted(fake)
    wait_stopped(kubelet, 2)


def test_the_masters_statistics_round_trip_exactly() -> None:
    """What `rollout load-master` serves is what the gates read: counts and histograms unchanged, the timeline
    sent from where the CLI left off."""
    from rollout.load.wire import stats_from_json, stats_to_json
    from rollout.load.stats import StageStats

    st = StageStats()
    for i in range(1000):
        st.role("stable").add(5.0 + i % 50, i % 100 == 0)
        st.role("canary").add(7.5 + i % 70, i % 10 == 0)
    st.cohort_routing = {"other->stable": 1000}
    st.timeline = [{"t": 1.0}, {"t": 2.0}, {"t": 3.0}]
    st.elapsed, st.users = 3.0, 4
    back = stats_from_json(json.loads(json.dumps(stats_to_json(st))))
    for role in ("stable", "canary"):
        a, b = st.role(role), back.role(role)
        assert (a.requests, a.failures) == (b.requests, b.failures)
        assert [a.percentile(p) for p in (50, 90, 95, 99)] == [b.percentile(p) for p in (50, 90, 95, 99)]
    assert back.cohort_routing == st.cohort_routing and (back.elapsed, back.users) == (3.0, 4)
    part = stats_to_json(st, since=2)  # the CLI has entries 0..1 already
    assert part["timeline"] == [{"t": 3.0}] and stats_from_json(part, back).timeline == st.timeline


def test_stage_workers_without_the_in_cluster_runner_is_a_plan_error_with_file_line_and_field(tmp_path: Path) -> None:
    doc = {
        "name": "svc", "owner": {"name": "t", "contact": "t@example.com"},
        "target": {"backend": "local", "stable": "v1", "versions": {"v1": {"command": "x"}, "v2": {"command": "x"}}},
        "load": {"locustfile": str(ROOT / "locustfiles" / "answer.py"), "users": 2},
        "stages": [{"name": "a", "weight": 10, "duration": "1s"}, {"name": "b", "weight": 50, "duration": "1s", "workers": 2}],
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = run_cli("validate", str(path))
    assert r.returncode == 2 and "stages[1].workers" in r.stderr and "load.runner: kubernetes" in r.stderr, r.stderr
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "workers: 2" in t)
    assert f"{path}:{line}" in r.stderr or f"plan.yaml:{line}" in r.stderr, r.stderr
    doc["load"]["runner"] = "kubernetes"
    doc["stages"][1]["workers"] = 0
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = run_cli("validate", str(path))
    assert r.returncode == 2 and "stages[1].workers" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
def test_a_newcomer_runs_in_cluster_load_against_the_fake_api_server_started_from_the_command_line(targets: dict[str, str], tmp_path: Path) -> None:
    """`python -m rollout.testing.apiserver --run-pods --kubeconfig kc` (README): `rollout gate` with
    `load.runner: kubernetes` works against it as against a cluster."""
    import os

    kc = tmp_path / "kc"
    api = subprocess.Popen([sys.executable, "-m", "rollout.testing.apiserver", "--port", "0", "--kubeconfig", str(kc), "--run-pods",
                            "--pods-dir", str(tmp_path / "pods")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert api.stdout is not None
        line = api.stdout.readline()
        assert "fake kube-apiserver listening on http://127.0.0.1:" in line, line
        doc = yaml.safe_load(Path(plan(tmp_path, _Kubeconfig(str(kc)), targets["healthy"])[0]).read_text())
        assert doc["load"]["cluster"]["kubeconfig"] == str(kc)
        r = run_cli("gate", "--quiet", str(tmp_path / "plan.yaml"), "--host", targets["healthy"], "--json", str(tmp_path / "r.json"),
                    env={"GITHUB_STEP_SUMMARY": ""}, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        stats = json.loads((tmp_path / "r.json").read_text())["stages"][0]["stats"]
        assert stats["v-healthy"]["requests"] > 20, stats
        logs = sorted(p.name for p in (tmp_path / "pods" / NS).glob("*.log"))
        assert len(logs) == 3, logs  # the master and two workers ran (their output kept under --pods-dir)
    finally:
        api.terminate()
        api.wait(timeout=30)
    assert api.returncode == 0


class _Kubeconfig:
    """`plan()` asks its fake for a kubeconfig; here the server is another process that wrote one."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write_kubeconfig(self, namespace: str) -> str:
        import yaml as _yaml

        doc = _yaml.safe_load(Path(self.path).read_text())
        for ctx in doc.get("contexts") or []:
            ctx["context"]["namespace"] = namespace
        Path(self.path).write_text(_yaml.safe_dump(doc))
        return self.path

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
        "target": {"backend": "local", "stable": "v1", "versions": {"v1": {"command": "x"}}},
        "load": {"locustfile": str(LOCUSTFILE), "users": 4, "runner": "kubernetes",  # --host gives the target
                 "cluster": {"kubeconfig": kc, "namespace": NS, "workers": workers, "ready_timeout": ready}},
        # the in-cluster runner's mechanics in 3 s stages: the naive rule (Locust's aggregated latencies are
        # percentiles, not per-request counts, so a sequential percentile gate has no exact count to test here)
        "gates": {"errors": {"metric": "error_rate", "version": "all", "max": "5%", "min_requests": 20, "method": "threshold"},
                  "p95": {"metric": "p95", "version": "all", "max": "2s", "min_requests": 20, "method": "threshold"}},
        "stages": [{"name": "preflight", "weight": 0, "load_to": "canary", "duration": duration}],
    }
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return [str(path), "--host", host]


def created_and_deleted(fake: FakeApiServer) -> None:
    for verb in ("create", "delete"):
        assert fake.count(verb, "configmaps", namespace=NS) == 1
        assert fake.count(verb, "services", namespace=NS) == 1
        assert fake.count(verb, "deployments", namespace=NS) == 2
    left = [o["metadata"]["name"] for kind in ("deployments", "services", "configmaps") for o in fake.list(kind, NS)
            if LABEL in o["metadata"].get("labels", {})]
    assert left == []


def test_in_cluster_load_creates_reads_and_deletes_its_objects(cluster: Any, targets: dict[str, str], tmp_path: Path) -> None:
    fake, pods = cluster
    out = tmp_path / "report.json"
    r = run_cli("gate", "--quiet", *plan(tmp_path, fake, targets["healthy"]), "--json", str(out),
                env={"GITHUB_STEP_SUMMARY": ""}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    created_and_deleted(fake)
    assert fake.count("get", "services/proxy", namespace=NS) >= 3  # readiness + a read a second
    assert fake.count("create", "services/proxy", namespace=NS) >= 2  # POST swarm, POST stop
    deadline = time.monotonic() + 20  # the harness notices deletions within its 0.1 s poll, then stops the processes
    while time.monotonic() < deadline and len(pods.stopped) < 2:
        time.sleep(0.05)
    assert sorted(pods.started) == sorted(pods.stopped) and len(pods.started) == 2  # master and workers: gone
    import json

    doc = json.loads(out.read_text())
    stats = doc["stages"][0]["stats"]
    assert stats["in-cluster"]["requests"] > 20 and stats["in-cluster"]["failures"] == 0
    assert {v["status"] for v in doc["stages"][0]["verdicts"]} == {"pass"}


def test_a_gate_fails_against_an_erroring_target_and_everything_is_deleted(cluster: Any, targets: dict[str, str], tmp_path: Path) -> None:
    fake, _pods = cluster
    r = run_cli("gate", "--quiet", *plan(tmp_path, fake, targets["erroring"], workers=1, duration="30s"),
                env={"GITHUB_STEP_SUMMARY": ""}, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "gate `errors` failed" in r.stderr and "all traffic error rate" in r.stderr
    created_and_deleted(fake)


def test_pods_that_never_come_up_are_exit_3_and_deleted(tmp_path: Path) -> None:
    with FakeApiServer(controller_delay=0) as fake:  # no harness: nothing runs the pods, the proxy path is 404
        r = run_cli("gate", "--quiet", *plan(tmp_path, fake, "http://127.0.0.1:9", ready="2s"),
                    env={"GITHUB_STEP_SUMMARY": ""}, timeout=60)
        assert r.returncode == 3, r.stdout + r.stderr
        assert "the in-cluster Locust did not come up within 2s" in r.stderr
        created_and_deleted(fake)


def test_the_manifest_templates_render_to_the_objects_the_runner_creates() -> None:
    from rollout.backends.kubernetes.load_runner import TEMPLATES, render

    # the templates ship as package data, and only there: manifests/ holds objects `kubectl apply -f` accepts
    for name in ("locust-configmap.yaml", "locust-master.yaml", "locust-workers.yaml"):
        assert (TEMPLATES / name).is_file() and not (ROOT / "manifests" / name).exists()
    objs = render("rollout-load-x", NS, "x", "locustio/locust:2.47.0", 3, "print('hi')\n")
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("ConfigMap", "rollout-load-x-locustfile"), ("Deployment", "rollout-load-x-master"),
        ("Service", "rollout-load-x-master"), ("Deployment", "rollout-load-x-worker")]
    assert objs[0]["data"] == {"locustfile.py": "print('hi')\n"} and objs[3]["spec"]["replicas"] == 3
    assert all(o["metadata"]["labels"][LABEL] == "x" for o in objs)


def test_ctrl_c_during_the_load_deletes_everything(cluster: Any, targets: dict[str, str], tmp_path: Path) -> None:
    import os
    import signal

    fake, _pods = cluster
    cmd = [sys.executable, "-m", "rollout", "gate", "--quiet", *plan(tmp_path, fake, targets["healthy"], workers=1, duration="60s")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "GITHUB_STEP_SUMMARY": ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while fake.count("create", "services/proxy", namespace=NS) < 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)  # until the swarm was started
        assert fake.count("create", "services/proxy", namespace=NS) == 1
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    assert fake.count("create", "configmaps", namespace=NS) == 1
    created_and_deleted(fake)


def test_the_masters_numbers_become_stage_statistics() -> None:
    from rollout.load.cluster import ROLE, apply
    from rollout.load.stats import StageStats

    doc = {"user_count": 4, "current_response_time_percentiles": {"response_time_percentile_0.5": 21, "response_time_percentile_0.95": 40},
           "stats": [{"name": "/api/answer", "num_requests": 1}, {
               "name": "Aggregated", "num_requests": 1000, "num_failures": 30, "min_response_time": 5, "max_response_time": 400,
               "median_response_time": 20, "response_time_percentile_0.95": 45, "response_time_percentile_0.99": 90, "avg_response_time": 23.5}]}
    stats, prev = StageStats(), [0, 0]
    apply(stats, doc, 3.0, prev)
    vs = stats.role("all")
    assert (vs.requests, vs.failures, stats.users) == (1000, 30, 4) and vs.latency.count == 1000
    for p, want in ((50, 20), (90, 45), (95, 45), (99, 90), (100, 400)):  # p90 reads the p95: never lower
        assert abs(vs.percentile(p) - want) <= want * 0.006, (p, vs.percentile(p))
    assert vs.latency.min == 5 and abs(vs.latency.mean - 23.5) < 1e-9
    assert stats.timeline[-1][ROLE] == {"requests": 1000, "failures": 30, "p50_ms": 21, "p95_ms": 40, "p99_ms": None}
    apply(stats, doc, 4.0, prev)  # nothing new: an empty second
    assert stats.timeline[-1] == {"t": 4.0}


def test_run_refuses_the_in_cluster_runner_with_a_reason(tmp_path) -> None:
    import yaml

    from tests.conftest import ROOT, run_cli

    plan = {
        "name": "svc", "owner": {"name": "t", "contact": "t@example.com"},
        "target": {"backend": "local", "stable": "v1", "versions": {"v1": {"command": "x"}, "v2": {"command": "x"}}},
        "load": {"locustfile": str(ROOT / "locustfiles" / "answer.py"), "users": 2, "runner": "kubernetes", "cluster": {"workers": 1}},
        "stages": [{"name": "a", "weight": 10, "duration": "1s"}],
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    r = run_cli("run", str(path), "--version", "v2", env={"ROLLOUT_STATE_DIR": str(tmp_path / "s")})
    assert r.returncode == 2 and "cannot judge a canary against stable" in r.stderr and "rollout gate" in r.stderr

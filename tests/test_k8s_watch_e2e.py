"""`rollout watch` on Kubernetes end to end, without a cluster: the fake API server, the test gateway carrying
real traffic to real service processes (images mode: the process behind the stable Service is the one running
its Deployment's image, so a revert really moves users back), a real Prometheus scraping those processes, and
the watch started with exactly the command line manifests/watch.yaml gives its container.

A promoted v2 that starts failing is reverted through the Kubernetes backend: the stable Deployment's template
back to v1's image, the HTTPRoute marking v1, the revert recorded in the state ConfigMap (who = the watch,
why = the numbers), the watch's record in ConfigMap rollout-answer-watch; then `rollout watch --stop` through
the mailbox ConfigMap ends it with exit 0.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import require_tool, stop_all
from tests.prom import _free_port, prometheus
from tests.test_k8s_traffic_e2e import IMAGES, NS, ROOT, SERVICE, Fake, cli, fake, gateway, write_plan  # noqa: F401
from tests.test_watch_e2e import Traffic, wait_until

pytestmark = pytest.mark.slow

ERRORS = {"bad": 'sum(http_requests_total{version="{version}",status="500"})', "total": 'sum(http_requests_total{version="{version}"})'}


def manifest_command(plan: Path, metrics_port: int) -> tuple[list[str], dict[str, str]]:
    """The watch container's args and env from manifests/watch.yaml, mapped onto this machine: the plan path
    it mounts from the ConfigMap → the test's plan file; its metrics port → a free one; $(POD_NAME) expanded."""
    (deploy,) = [d for d in yaml.safe_load_all((ROOT / "manifests" / "watch.yaml").read_text()) if d]
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = list(container["args"])
    assert args[0] == "watch", args
    # the plan argument is a file the ConfigMap volume really puts there
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == "plan")
    mounted = {posixpath.join(mounts["plan"], item["path"]) for item in volume["configMap"]["items"]}
    assert args[1] in mounted, (args[1], mounted)
    args[1] = str(plan)
    i = args.index("--metrics-port")
    host, port = args[i + 1].rsplit(":", 1)
    assert host == "0.0.0.0" and int(port) == next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    args[i + 1] = f"127.0.0.1:{metrics_port}"  # all interfaces in a pod (Prometheus scrapes it); loopback here
    env: dict[str, str] = {"POD_NAME": "rollout-watch-answer-7c9f-x2x4q"}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"].replace("$(POD_NAME)", env["POD_NAME"])
    return args, env


def role_allows() -> set[str]:
    """'verb resource[.group]' for every verb manifests/rbac.yaml's Role grants (the fake's request-count keys)."""
    role = next(d for d in yaml.safe_load_all((ROOT / "manifests" / "rbac.yaml").read_text()) if d and d["kind"] == "Role")
    return {f"{verb} {res}{'.' + group if group else ''}" for rule in role["rules"] for group in rule["apiGroups"]
            for res in rule["resources"] for verb in rule["verbs"]}


@pytest.fixture
def degradable(tmp_path: Path) -> Iterator[Any]:
    """examples/service.py for v1 and v2, each degradable through its --control-file."""
    procs: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    controls = {v: tmp_path / f"{v}.control.json" for v in ("v1", "v2")}
    for v in ("v1", "v2"):
        port = _free_port()
        procs.append(subprocess.Popen([sys.executable, str(SERVICE), "--port", str(port), "--version", v, "--latency", "2ms",
                                       "--jitter", "0", "--error-rate", "0%", "--seed", "5", "--control-file", str(controls[v])],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True))
        ports[v] = port
    try:
        for v, port in ports.items():
            def up(port: int = port) -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1, trust_env=False).status_code == 200
                except httpx.TransportError:
                    return False
            assert wait_until(up, 30, 0.05), f"service {v} did not start"
        yield ports, controls
    finally:
        stop_all(procs)


def test_a_watch_in_the_cluster_reverts_a_degrading_version_through_the_kubernetes_backend(
        tmp_path: Path, fake: Fake, gateway: Any, degradable: Any) -> None:
    require_tool("prometheus", "prometheus")
    ports, controls = degradable
    gw = gateway(route_name="answer", services=("answer-stable", "answer-canary"),
                 images={IMAGES["v1"]: ports["v1"], IMAGES["v2"]: ports["v2"]})
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    with prometheus(prom_dir) as prom:
        prom.set_targets([(f"127.0.0.1:{ports[v]}", {"namespace": NS}) for v in ("v1", "v2")])
        plan = write_plan(tmp_path, "gateway-api", gw.url, [{"name": "half", "weight": "50%", "duration": "3s"}])
        doc = yaml.safe_load(plan.read_text())
        doc["watch"] = {"every": "1s", "false_alarm_every": "1h", "blind_after": "5s", "on_breach": "revert",
                        "gates": {"errors": {"what": "error rate", "max": "0.5%", "prometheus": {"url": prom.url, **ERRORS}}}}
        plan.write_text(yaml.safe_dump(doc, sort_keys=False))
        run = cli(fake, "run", str(plan), "--version", "v2")
        assert run.returncode == 0, run.stdout + run.stderr
        assert fake.state()["stable_version"] == "v2"

        args, manifest_env = manifest_command(plan, _free_port())
        fake.call("DELETE", "/_fake/requests")  # from here on: the watch's API calls (and the gateway's list/watch)
        kubeconfig = tmp_path / "watch-kubeconfig"  # in the pod: the ServiceAccount; here: the fake's credentials
        shutil.copy(fake.kubeconfig, kubeconfig)
        watch = subprocess.Popen([sys.executable, "-m", "rollout", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env={**os.environ, **manifest_env, "KUBECONFIG": str(kubeconfig)})
        traffic = Traffic(gw.url, seconds=60)
        try:
            def record() -> dict[str, Any]:
                try:
                    cm = fake.call("GET", f"/api/v1/namespaces/{NS}/configmaps/rollout-answer-watch")
                except Exception:  # not created yet
                    return {}
                return json.loads(cm["data"]["watch.json"])  # type: ignore[no-any-return]

            assert wait_until(lambda: record().get("checks", 0) >= 2 and record()["gates"]["errors"]["detector"]["total_n"] > 0, 30), \
                "the watch wrote no record"
            assert record()["version"] == "v2"
            controls["v2"].write_text(json.dumps({"error_rate": 0.2}))
            assert wait_until(lambda: fake.state()["stable_version"] == "v1", 30), "not reverted"
            reverted_at = time.time()
            assert wait_until(lambda: record().get("version") == "v1", 15)  # the reverted version, judged from scratch
            time.sleep(1.0)

            stop = cli(fake, "watch", str(plan), "--stop", "--reason", "handing over to the night shift")
            assert stop.returncode == 0 and "watch stopping" in stop.stdout, stop.stdout + stop.stderr
            out, _ = watch.communicate(timeout=20)
        finally:
            traffic.close()
            if watch.poll() is None:
                watch.send_signal(signal.SIGTERM)
                watch.communicate(timeout=30)
    assert watch.returncode == 0, out
    assert "BREACH" in out and out.count("reverted to revision") == 1 and "watch stopped by pytest" in out, out

    # the state ConfigMap: one revert, by the watch (its identity from the manifest's env), with the numbers
    st = fake.state()
    assert st["phase"] == "rolled-back" and st["stable_version"] == "v1"
    (rev,) = [h for h in st["history"] if h["action"] == "revert"]
    assert rev["who"].startswith("rollout watch (system:serviceaccount:shop:rollout (rollout-watch-answer-"), rev
    assert "error rate" in rev["detail"] and "requests" in rev["detail"] and "v2" in rev["detail"], rev
    # the objects: the stable Deployment runs v1's image again, the route marks v1, the canary holds nothing
    stable = fake.deployment("answer")
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES["v1"]
    assert fake.deployment("answer-canary")["spec"]["replicas"] == 0
    refs = fake.route()["spec"]["rules"][-1]["backendRefs"]
    assert refs[0]["name"] == "answer-stable" and refs[0]["weight"] == 100
    assert refs[0]["filters"][0]["responseHeaderModifier"]["set"][0]["value"] == "v1"
    # and users: everything after the revert was answered by v1
    after = [v for t, v in traffic.versions if t > reverted_at + 0.5]
    assert after and set(after) == {"v1"}, set(after)
    assert gw.errors == []
    # every API call made meanwhile (the watch's, the stop's, this test's reads) is allowed by manifests/rbac.yaml's Role
    used = {k for k in fake.call("GET", "/_fake/requests")["counts"] if k.split()[0] not in ("list", "watch")}
    assert used and not used - role_allows(), used - role_allows()
    # the record and the stop, in ConfigMap rollout-answer-watch
    cm = fake.call("GET", f"/api/v1/namespaces/{NS}/configmaps/rollout-answer-watch")
    saved = json.loads(cm["data"]["watch.json"])
    assert cm["metadata"]["labels"]["rollout.dev/plan"] == "answer"
    assert saved["version"] == "v1" and saved["stopped"]["reason"] == "handing over to the night shift" and saved["watcher"]["ended"]
    box = json.loads(fake.call("GET", f"/api/v1/namespaces/{NS}/configmaps/rollout-answer-requests")["data"]["requests.json"])
    req = next(r for r in box["requests"] if r["verb"] == "stop")
    ack = next(a for a in box["acks"] if a["id"] == req["id"])
    print(f"stop acknowledged by the watch {ack['at'] - req['at']:.3f}s after it was posted (ConfigMap mailbox)")
    assert req["to"] == "watch" and ack["outcome"] == "done" and ack["at"] - req["at"] < 5.0

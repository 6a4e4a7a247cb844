"""The tool's own metrics (rollout.exporter) and what is built on them: the Grafana dashboard and the
in-cluster watch Deployment."""

from __future__ import annotations

import json
import posixpath
import re
import socket
from pathlib import Path

import httpx
import pytest
import yaml

from rollout.exporter import Exporter, parse_address
from rollout.plan.loader import load_plan

ROOT = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_addresses() -> None:
    assert parse_address("9464") == ("127.0.0.1", 9464)
    assert parse_address("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    for bad in ("x", "70000", "host:"):
        with pytest.raises(ValueError):
            parse_address(bad)


def exported_names() -> set[str]:
    exp = Exporter("svc", str(_port()))
    try:
        # touch every labelled metric once so it appears in the exposition
        from rollout.engine.state import new_state
        from rollout.load.stats import StageStats
        from rollout.gates.verdict import Status, Verdict
        from rollout.plan.watch import Watch
        from rollout.watch.monitor import Monitor

        exp.rollout(new_state("svc", "v1"))
        stats = StageStats()
        stats.role("stable").add(12.0, False)
        stats.role("canary").add(30.0, True)
        exp.stage_numbers(stats, [Verdict("errors", Status.PASS, "ok", "canary", 0.01, 0.02, 10)], {"stable": "v1", "canary": "v2"})
        w = Watch.model_validate({"gates": {"e": {"max": "1%", "prometheus": {"url": "http://x:1", "bad": "b", "total": "t"}}}})
        m = Monitor(w)
        m.observe(0, "v1", {"e": (0, 0)})
        exp.watch(m)
        exp.watch_reverts.labels("svc").inc()
        exp.alerts.labels("svc", "ok").set(1)
        text = httpx.get(f"http://127.0.0.1:{exp.port}/metrics", timeout=5).text
    finally:
        exp.close()
    assert 'rollout_phase{phase="idle",plan="svc"} 1.0' in text
    assert 'rollout_stage_requests{plan="svc",role="canary",version="v2"} 1.0' in text
    assert 'rollout_gate_verdict{gate="errors",plan="svc",status="pass"} 1.0' in text
    assert 'rollout_watch_threshold{gate="e",plan="svc"}' in text
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("rollout_")}


def test_the_grafana_dashboard_charts_only_metrics_the_tool_exports() -> None:
    (cm,) = [d for d in yaml.safe_load_all((ROOT / "manifests" / "grafana-dashboard.yaml").read_text()) if d]
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["rollout.json"])
    used = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"\b(rollout_[a-z_]+)", t["expr"])}
    names = exported_names()
    assert used and used <= names, used - names
    assert {"rollout_phase", "rollout_watch_cusum", "rollout_watch_reverts_total"} <= used


def test_the_watch_deployment_runs_rollout_watch_on_the_mounted_example_plan() -> None:
    (dep,) = [d for d in yaml.safe_load_all((ROOT / "manifests" / "watch.yaml").read_text()) if d]
    assert dep["kind"] == "Deployment" and dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"][0] == "watch" and "--metrics-port" in c["args"]
    assert c["args"][c["args"].index("--metrics-port") + 1].endswith(":9464") and c["ports"][0]["containerPort"] == 9464
    mount = next(m for m in c["volumeMounts"] if m["name"] == "plan")["mountPath"]
    items = {i["path"]: i["key"] for v in pod["volumes"] if v["name"] == "plan" for i in v["configMap"]["items"]}
    rel = posixpath.relpath(c["args"][1], mount)
    assert rel in items
    plan = load_plan(ROOT / items[rel].replace("k8s-plan.yaml", "examples/k8s-plan.yaml"))
    assert plan.plan.watch is not None and set(plan.plan.watch.gates) == {"errors", "slow", "low-confidence"}
    assert pod["serviceAccountName"] == "rollout" and c["securityContext"]["readOnlyRootFilesystem"] is True

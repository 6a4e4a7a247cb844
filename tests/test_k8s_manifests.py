"""manifests/job.yaml runs `rollout run` in the cluster as the ServiceAccount of manifests/rbac.yaml, with the plan
from a ConfigMap: its shape is checked structurally (jsonschema; no kube schema here) and against the files it mounts;
`rollout plan` runs on the example plan against the manifests."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from test_k8s_cli import _cli

from rollout.errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_INFRA, EXIT_PAUSED
from rollout.plan.loader import load_plan
from rollout.testing.apiserver import FakeApiServer
from rollout.testing.apiserver.faults import WRITE_VERBS

ROOT = Path(__file__).resolve().parent.parent
STR = {"type": "string", "minLength": 1}

JOB_SCHEMA: dict[str, Any] = {  # the fields the Job relies on, with the types the API wants
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "batch/v1"}, "kind": {"const": "Job"},
        "metadata": {"type": "object", "required": ["name", "namespace"], "properties": {"name": STR, "namespace": STR}},
        "spec": {"type": "object", "required": ["template", "backoffLimit", "podFailurePolicy"], "properties": {
            "backoffLimit": {"type": "integer", "minimum": 0},
            "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
            "podFailurePolicy": {"type": "object", "required": ["rules"], "properties": {"rules": {"type": "array", "items": {
                "type": "object", "required": ["action"], "properties": {
                    "action": {"enum": ["FailJob", "Ignore", "Count", "FailIndex"]},
                    "onExitCodes": {"type": "object", "required": ["operator", "values"], "properties": {
                        "containerName": STR, "operator": {"enum": ["In", "NotIn"]},
                        "values": {"type": "array", "items": {"type": "integer"}, "minItems": 1}}}}}}}},
            "template": {"type": "object", "required": ["spec"], "properties": {"spec": {
                "type": "object", "required": ["serviceAccountName", "restartPolicy", "containers", "volumes"], "properties": {
                    "serviceAccountName": STR, "restartPolicy": {"const": "Never"},
                    "containers": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["name", "image", "args"], "properties": {
                            "name": STR, "image": STR, "args": {"type": "array", "items": {"type": "string"}},
                            "env": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                            "volumeMounts": {"type": "array", "items": {"type": "object", "required": ["name", "mountPath"]}}}}},
                    "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}}}}}}}},
    },
}


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "manifests" / name).read_text()) if d]


def test_the_job_runs_rollout_as_the_rbac_service_account_with_the_plan_from_a_configmap() -> None:
    (job,) = docs("job.yaml")
    jsonschema.validate(job, JOB_SCHEMA)
    rbac = {d["kind"]: d for d in docs("rbac.yaml")}
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == rbac["ServiceAccount"]["metadata"]["name"]
    assert job["metadata"]["namespace"] == rbac["ServiceAccount"]["metadata"]["namespace"] == rbac["Role"]["metadata"]["namespace"]
    assert rbac["RoleBinding"]["subjects"][0]["name"] == pod["serviceAccountName"]

    (container,) = pod["containers"]
    env = {e["name"]: e for e in container.get("env") or []}
    assert "KUBECONFIG" not in env  # in-cluster service account
    assert list(env).index("POD_NAME") < list(env).index("ROLLOUT_ACTOR")  # $(POD_NAME) expands only from earlier vars

    # the exit codes the Job fails on are the CLI's final answers; infrastructure errors (3) are retried
    rule = next(r for r in job["spec"]["podFailurePolicy"]["rules"] if "onExitCodes" in r)
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["containerName"] == container["name"]
    assert set(rule["onExitCodes"]["values"]) == {EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_PAUSED} and EXIT_INFRA not in rule["onExitCodes"]["values"]

    # the plan path and the plan's locustfile both land inside the ConfigMap volume
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (vol_name,) = [n for n, v in volumes.items() if "configMap" in v]
    mount = mounts[vol_name]["mountPath"]
    files = {posixpath.join(mount, i["path"]): i["key"] for i in volumes[vol_name]["configMap"]["items"]}
    args = container["args"]
    assert args[0] == "run" and args[1] in files
    plan = load_plan(ROOT / "examples" / "k8s-plan.yaml")
    locustfile = posixpath.normpath(posixpath.join(posixpath.dirname(args[1]), plan.plan.load.locustfile))
    assert locustfile in files
    assert "kubectl -n shop create configmap " + volumes[vol_name]["configMap"]["name"] in (ROOT / "manifests" / "job.yaml").read_text()
    # the CLI accepts exactly these arguments
    import typer

    from rollout.cli import app

    ctx = typer.main.get_command(app).commands["run"].make_context("run", list(args[1:]))  # type: ignore[attr-defined]
    assert ctx.params["version"] in plan.plan.target.versions  # type: ignore[operator]


@pytest.fixture
def fake() -> Any:
    with FakeApiServer(controller_delay=0) as server:
        for f in ("app.yaml", "httproute.yaml"):
            for doc in docs(f):
                server.create(doc)
        yield server


def test_rollout_plan_runs_on_the_example_plan_against_the_manifests(fake: FakeApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", fake.write_kubeconfig(namespace="default"))
    code, out, err = _cli("plan", str(ROOT / "examples" / "k8s-plan.yaml"), "--version", "v2", "-o", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["namespace"] == "shop" and len(doc["steps"]) == 2 + len(load_plan(ROOT / "examples" / "k8s-plan.yaml").plan.stages)
    assert fake.count(WRITE_VERBS) == 0

"""#13 (4), in part: every manifest under manifests/ is a valid object for a real cluster, and the fake API
server serves every kind they hold, so the whole directory applies to it.

* Built-in kinds are validated against the official Kubernetes OpenAPI schemas, offline, with the
  `kubernetes-validate` package in strict mode (an unknown field — a typo — is an error); the HTTPRoute
  against the Gateway API CRD's own openAPIV3Schema from the shared k8s-schemas folder.
* The in-cluster load templates (package data, rollout/backends/kubernetes/templates) are validated too,
  as rollout renders them (`load_runner.render`, sample values): they are objects rollout creates.
* Against the fake: the whole directory is applied through HTTP by `kubectl apply --validate=false -f
  manifests/` (client dry run first, then for real, then again: "unchanged"), every object is read back
  by `kubectl get`, and discovery lists each kind. kubectl is a package .ci/run installs (conftest.require_tool: skipped locally without it,
  failed under CI).
"""

from __future__ import annotations

import string
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import require_tool

from rollout.testing.apiserver import FakeApiServer

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
KUBERNETES_VERSION = "1.33"  # what the fake reports; the schemas of the oldest supported minor would do as well
SAMPLE = {"name": "rollout-load-answer", "namespace": "shop", "run": "r1", "image": "registry.example.com/rollout:0.1", "workers": "2"}


def schema_dir() -> Path:
    """The shared Gateway API CRDs: beside the checkout in CI (a copy of shared/), else the workplace's."""
    for base in (ROOT.parent / "shared", Path("/work/shared")):
        if (base / "k8s-schemas").is_dir():
            return base / "k8s-schemas"
    pytest.fail("the Gateway API CRDs (shared/k8s-schemas) are missing")


def manifest_docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                out.append((f"{path.name}:{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}", doc))
    return out


def template_docs() -> list[tuple[str, dict[str, Any]]]:
    from rollout.backends.kubernetes.load_runner import render

    objs = render(SAMPLE["name"], SAMPLE["namespace"], SAMPLE["run"], SAMPLE["image"], 2, "from locust import HttpUser\n")
    return [(f"template:{o['kind']}/{o['metadata']['name']}", o) for o in objs]


DOCS = manifest_docs()
RENDERED = template_docs()


def crd_schema(group: str, kind: str, version: str) -> dict[str, Any]:
    for path in sorted(schema_dir().glob("*.crd.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            for v in crd["spec"]["versions"]:
                if v["name"] == version:
                    return v["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]
    raise AssertionError(f"no CRD in {schema_dir()} defines {group}/{version} {kind}")


def test_the_manifests_hold_the_kinds_a_rollout_needs() -> None:
    kinds = {doc["kind"] for _, doc in DOCS}
    assert {"Deployment", "Service", "HTTPRoute", "Ingress", "Job", "ServiceAccount", "Role", "RoleBinding", "ConfigMap"} <= kinds


@pytest.mark.parametrize(("where", "doc"), DOCS + RENDERED, ids=[w for w, _ in DOCS + RENDERED])
def test_every_manifest_validates_against_the_official_schemas(where: str, doc: dict[str, Any]) -> None:
    group, _, version = doc["apiVersion"].rpartition("/")
    if group.endswith(".x-k8s.io") or group == "gateway.networking.k8s.io":
        jsonschema.validate(doc, crd_schema(group, doc["kind"], version), cls=jsonschema.Draft202012Validator)
    else:
        import kubernetes_validate

        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(str(p) for p in exc.path)}: {exc.message}")


def test_the_validation_catches_a_typo_and_a_wrong_type() -> None:
    """The schemas are strict: the checks above would fail on a misspelt field or a string for a number."""
    import kubernetes_validate

    dep = next(doc for _, doc in DOCS if doc["kind"] == "Deployment")
    typo = {**dep, "spec": {**dep["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    wrong = {**dep, "spec": {**dep["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)
    route = next(doc for _, doc in DOCS if doc["kind"] == "HTTPRoute")
    bad = {**route, "spec": {**route["spec"], "rules": [{"backendRefs": [{"name": "answer-stable", "port": "http"}]}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schema("gateway.networking.k8s.io", "HTTPRoute", "v1"), cls=jsonschema.Draft202012Validator)


# -- the fake serves them all --------------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer(controller_delay=0) as server:
        yield server


def test_the_fake_stores_lists_and_discovers_every_kind_in_manifests(fake: FakeApiServer) -> None:
    for _, doc in DOCS:
        fake.create(doc)
    for where, doc in DOCS:
        meta = doc["metadata"]
        rt = fake.resource(f"{doc['kind']}")
        got = fake.get(rt.qualified, meta.get("namespace"), meta["name"])
        assert got is not None, where
        assert any(i["metadata"]["name"] == meta["name"] for i in fake.list(rt.qualified, meta.get("namespace"))), where
        group, _, version = doc["apiVersion"].rpartition("/")
        listed = fake.types.api_resource_list(group, version)
        assert listed is not None and any(r["name"] == rt.plural and r["kind"] == doc["kind"] for r in listed["resources"]), where
    job = fake.get("jobs.batch", "shop", "rollout-answer")
    assert job is not None and (job["spec"]["completions"], job["spec"]["parallelism"], job["spec"]["completionMode"]) == (1, 1, "NonIndexed")
    assert job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"] == job["metadata"]["uid"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # stated, not defaulted


def test_the_fake_refuses_what_a_real_server_refuses_for_the_new_kinds(fake: FakeApiServer) -> None:
    from rollout.testing.apiserver.errors import ApiError

    job = next(doc for _, doc in DOCS if doc["kind"] == "Job")
    always = {**job, "metadata": {**job["metadata"], "name": "always"}, "spec": {**job["spec"], "template": {
        **job["spec"]["template"], "spec": {**job["spec"]["template"]["spec"], "restartPolicy": "Always"}}}}
    with pytest.raises(ApiError) as err:
        fake.create(always)
    assert err.value.code == 422 and "spec.template.spec.restartPolicy" in str(err.value.status())
    role = next(doc for _, doc in DOCS if doc["kind"] == "Role")
    no_verbs = {**role, "metadata": {**role["metadata"], "name": "no-verbs"}, "rules": [{"apiGroups": [""], "resources": ["pods"]}]}
    with pytest.raises(ApiError) as err:
        fake.create(no_verbs)
    assert err.value.code == 422 and "rules[0].verbs" in str(err.value.status())
    binding = next(doc for _, doc in DOCS if doc["kind"] == "RoleBinding")
    fake.create(binding)
    moved = {**binding, "roleRef": {**binding["roleRef"], "name": "other"}}
    with pytest.raises(ApiError) as err:
        fake.apply(moved)
    assert err.value.code == 422 and "cannot change roleRef" in str(err.value.status())


def test_kubectl_applies_the_manifests_directory_to_the_fake(fake: FakeApiServer, tmp_path: Path) -> None:
    binary = require_tool("kubectl", "kubectl")
    kubeconfig = fake.write_kubeconfig()
    args = ["-f", str(MANIFESTS)]  # the whole directory, as the README says

    def kubectl(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, "--kubeconfig", kubeconfig, *cmd], capture_output=True, text=True, timeout=120)

    expected = [(doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace", "default")) for _, doc in DOCS]
    dry = kubectl("apply", "--dry-run=client", "--validate=false", *args)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("created (dry run)") == len(expected)
    done = kubectl("apply", "--validate=false", *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" created") == len(expected), done.stdout
    again = kubectl("apply", "--validate=false", *args)
    assert again.returncode == 0 and again.stdout.count(" unchanged") == len(expected), again.stdout + again.stderr
    for kind, name, ns in expected:
        got = kubectl("get", kind, name, "-n", ns, "-o", "name")
        assert got.returncode == 0 and got.stdout.strip().endswith(f"/{name}"), (kind, name, got.stderr)

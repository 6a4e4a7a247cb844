"""Contract tests: the fake API server, driven by the official `kubernetes`
client over real HTTP, behaves like kube-apiserver.

Every test's docstring states the real API server behaviour it reproduces.
Tests that make sense against a real cluster are parameterised over a
`target`: "fake" always runs; "cluster" (marked `cluster`) runs only when
ROLLOUT_TEST_KUBECONFIG points at a kubeconfig, each test in a fresh
namespace that is deleted afterwards. Fake-only tests cover what a cluster
cannot be made to do on demand: injected faults, controller faults, request
counting, the standalone process.

No test asserts an upper bound on how long something takes except with
generous margins; state changes are awaited by polling (`wait_for`) or by
reading watch events, so a busy 2-core machine cannot make them flaky.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from rollout.testing.apiserver import (DEADLINE_ANNOTATION, FAULT_ANNOTATION,
                                       READY_AFTER_ANNOTATION, FakeApiServer)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_KUBECONFIG = os.environ.get("ROLLOUT_TEST_KUBECONFIG")
GW = ("gateway.networking.k8s.io", "v1")

TARGETS = [
    "fake",
    pytest.param("cluster", marks=[
        pytest.mark.cluster,
        pytest.mark.skipif(not CLUSTER_KUBECONFIG, reason="ROLLOUT_TEST_KUBECONFIG is not set"),
    ]),
]


# ============================================================== fixtures

@dataclass
class Target:
    """One API server as the code under test sees it: a client and a namespace."""

    name: str
    api_client: client.ApiClient
    namespace: str
    fake: FakeApiServer | None

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api_client)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def coord(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self.api_client)

    @property
    def net(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self.api_client)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    def has_gateway_api(self) -> bool:
        groups = client.ApisApi(self.api_client).get_api_versions().groups
        return any(g.name == GW[0] for g in groups)


def _client_for(kubeconfig: str) -> client.ApiClient:
    return config.new_client_from_config(config_file=kubeconfig)


@pytest.fixture
def fake():
    """A fresh fake per test: its controller reacts at once (delay 0)."""
    with FakeApiServer(controller_delay=0.0, bookmark_interval=0.2) as server:
        yield server


def _fake_target(server: FakeApiServer, **kw: Any) -> Target:
    return Target("fake", _client_for(server.write_kubeconfig(**kw)), "default", server)


@pytest.fixture
def k(fake):
    """The fake, through the official client (fake-only tests)."""
    t = _fake_target(fake)
    yield t
    t.api_client.close()


@pytest.fixture(params=TARGETS)
def target(request):
    """The fake, or a real cluster (ROLLOUT_TEST_KUBECONFIG) in a scratch namespace."""
    if request.param == "fake":
        with FakeApiServer(controller_delay=0.0) as server:
            t = _fake_target(server)
            yield t
            t.api_client.close()
        return
    api_client = _client_for(CLUSTER_KUBECONFIG)  # type: ignore[arg-type]
    core = client.CoreV1Api(api_client)
    ns = core.create_namespace({"metadata": {"generateName": "rollout-test-"}}).metadata.name
    try:
        yield Target("cluster", api_client, ns, None)
    finally:
        try:
            core.delete_namespace(ns)
        finally:
            api_client.close()


# ============================================================== helpers

def wait_for(fn: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll `fn` until it returns something truthy; generous by default."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or fn}; last value: {last!r}")


def status_of(exc: ApiException) -> dict:
    """The Status object of an error response."""
    return json.loads(exc.body)


def deployment(name: str, image: str = "registry.local/web:1.0", replicas: int = 2,
               annotations: dict | None = None, containers: list | None = None) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels), "annotations": annotations or {}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": containers or [{
                    "name": "app", "image": image,
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "env": [{"name": "MODE", "value": "prod"}],
                }]},
            },
        },
    }


def httproute(name: str) -> dict:
    return {
        "apiVersion": f"{GW[0]}/{GW[1]}", "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {"parentRefs": [{"name": "gw"}],
                 "rules": [{"backendRefs": [{"name": "web", "port": 80, "weight": 100}]}]},
    }


def configmap(name: str, labels: dict | None = None, data: dict | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}}, "data": data or {"k": "v"}}


def raw_request(t: Target, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
    """Send a request the typed API would refuse to build (the v37 client
    validates bodies against its models before sending)."""
    m, url, headers, b, post = t.api_client.param_serialize(
        method, path, header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body, auth_settings=["BearerToken"])
    resp = t.api_client.call_api(m, url, headers, b, post)
    data = resp.read()
    return resp.status, (json.loads(data) if data else None)


def dep_status(t: Target, name: str) -> dict:
    raw = t.apps.read_namespaced_deployment(name, t.namespace, _preload_content=False)
    return json.loads(raw.data)


def is_ready(obj: dict) -> bool:
    st, spec = obj.get("status") or {}, obj["spec"]
    return (st.get("observedGeneration") == obj["metadata"]["generation"]
            and st.get("updatedReplicas", 0) == spec["replicas"]
            and st.get("readyReplicas", 0) == spec["replicas"]
            and st.get("availableReplicas", 0) == spec["replicas"])


def condition(obj: dict, ctype: str) -> dict:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return c
    return {}


# ============================================================== create / get / delete

@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_create_returns_201_with_system_metadata(target):
    """POST answers 201 Created with server-set uid, creationTimestamp and a
    numeric string resourceVersion; GET returns the same object."""
    obj, code, _ = target.core.create_namespaced_config_map_with_http_info(
        target.namespace, configmap("cfg"))
    assert code == 201
    assert obj.metadata.uid and obj.metadata.creation_timestamp is not None
    assert obj.metadata.resource_version.isdigit()
    got = target.core.read_namespaced_config_map("cfg", target.namespace)
    assert got.metadata.uid == obj.metadata.uid and got.data == {"k": "v"}


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_create_existing_is_409_already_exists(target):
    """Creating an existing name is 409 with a Status of reason AlreadyExists."""
    target.apps.create_namespaced_deployment(target.namespace, deployment("web"))
    with pytest.raises(ApiException) as ei:
        target.apps.create_namespaced_deployment(target.namespace, deployment("web"))
    st = status_of(ei.value)
    assert ei.value.status == 409
    assert st["kind"] == "Status" and st["apiVersion"] == "v1" and st["status"] == "Failure"
    assert st["reason"] == "AlreadyExists" and st["code"] == 409
    assert st["message"] == 'deployments.apps "web" already exists'
    assert st["details"] == {"name": "web", "group": "apps", "kind": "deployments"}


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_get_missing_is_404_not_found(target):
    """A missing object is 404 with reason NotFound and `<resource> "<name>" not found`."""
    with pytest.raises(ApiException) as ei:
        target.core.read_namespaced_config_map("nope", target.namespace)
    st = status_of(ei.value)
    assert ei.value.status == 404 and st["reason"] == "NotFound"
    assert st["message"] == 'configmaps "nope" not found'
    assert st["details"] == {"name": "nope", "kind": "configmaps"}


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_delete_builtin_returns_success_status(target):
    """DELETE of a built-in resource answers a Status of status Success with
    details naming the object; the object is gone afterwards."""
    created = target.core.create_namespaced_config_map(target.namespace, configmap("gone"))
    res = target.core.delete_namespaced_config_map("gone", target.namespace)  # v37: a dict
    assert (res["kind"], res["status"]) == ("Status", "Success")
    assert res["details"]["name"] == "gone" and res["details"]["uid"] == created.metadata.uid
    with pytest.raises(ApiException) as ei:
        target.core.read_namespaced_config_map("gone", target.namespace)
    assert ei.value.status == 404


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_delete_with_stale_precondition_is_409(target):
    """DeleteOptions.preconditions.resourceVersion that does not match is 409 Conflict."""
    cm = target.core.create_namespaced_config_map(target.namespace, configmap("pre"))
    target.core.patch_namespaced_config_map("pre", target.namespace, {"data": {"k": "v2"}})
    with pytest.raises(ApiException) as ei:
        target.core.delete_namespaced_config_map(
            "pre", target.namespace,
            body={"preconditions": {"resourceVersion": cm.metadata.resource_version}})
    assert ei.value.status == 409 and status_of(ei.value)["reason"] == "Conflict"


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_list_has_real_shape_and_all_namespace_list(target):
    """LIST answers `<Kind>List` with apiVersion, metadata.resourceVersion and
    items (items of built-in types carry no kind/apiVersion); the
    all-namespaces path lists across namespaces."""
    target.apps.create_namespaced_deployment(target.namespace, deployment("web"))
    raw = json.loads(target.apps.list_namespaced_deployment(target.namespace, _preload_content=False).data)
    assert raw["kind"] == "DeploymentList" and raw["apiVersion"] == "apps/v1"
    assert raw["metadata"]["resourceVersion"].isdigit()
    assert [i["metadata"]["name"] for i in raw["items"]] == ["web"]
    assert "kind" not in raw["items"][0]
    every = target.apps.list_deployment_for_all_namespaces(label_selector="app=web")
    assert (target.namespace, "web") in {(d.metadata.namespace, d.metadata.name) for d in every.items}


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_list_pagination_with_limit_and_continue(target):
    """`limit` cuts the list and `metadata.continue` fetches the rest."""
    for i in range(5):
        target.core.create_namespaced_config_map(target.namespace, configmap(f"p{i}", {"page": "yes"}))
    first = target.core.list_namespaced_config_map(target.namespace, label_selector="page", limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    names = [c.metadata.name for c in first.items]
    token = first.metadata._continue
    while token:
        page = target.core.list_namespaced_config_map(target.namespace, label_selector="page",
                                                      limit=2, _continue=token)
        names += [c.metadata.name for c in page.items]
        token = page.metadata._continue
    assert names == [f"p{i}" for i in range(5)]


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_generate_name_dry_run_and_deletecollection(target):
    """generateName gets a random suffix; dryRun=All validates and answers
    without persisting; deletecollection deletes what the selector matches."""
    cm = target.core.create_namespaced_config_map(
        target.namespace, {"metadata": {"generateName": "gen-", "labels": {"batch": "1"}}})
    assert cm.metadata.name.startswith("gen-") and len(cm.metadata.name) == len("gen-") + 5
    target.core.create_namespaced_config_map(target.namespace, configmap("dry"), dry_run="All")
    with pytest.raises(ApiException) as ei:
        target.core.read_namespaced_config_map("dry", target.namespace)
    assert ei.value.status == 404
    target.core.create_namespaced_config_map(target.namespace, configmap("other", {"batch": "1"}))
    target.core.create_namespaced_config_map(target.namespace, configmap("keep", {"batch": "2"}))
    target.core.delete_collection_namespaced_config_map(target.namespace, label_selector="batch=1")
    left = target.core.list_namespaced_config_map(target.namespace, label_selector="batch")
    assert [c.metadata.name for c in left.items] == ["keep"]


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_finalizers_delay_deletion(target):
    """DELETE of an object with finalizers only sets deletionTimestamp; the
    object disappears when the last finalizer is removed."""
    target.core.create_namespaced_config_map(target.namespace, {
        "metadata": {"name": "fin", "finalizers": ["example.com/hold"]}, "data": {"k": "v"}})
    target.core.delete_namespaced_config_map("fin", target.namespace)
    cm = target.core.read_namespaced_config_map("fin", target.namespace)
    assert cm.metadata.deletion_timestamp is not None
    target.core.patch_namespaced_config_map("fin", target.namespace, {"metadata": {"finalizers": None}},
                                            _content_type="application/merge-patch+json")
    with pytest.raises(ApiException) as ei:
        target.core.read_namespaced_config_map("fin", target.namespace)
    assert ei.value.status == 404


def test_server_side_apply_and_initial_events(k, fake):
    """(Simplified) server-side apply creates then merges and requires a
    fieldManager; sendInitialEvents streams current objects then a BOOKMARK
    annotated k8s.io/initial-events-end."""
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1"}}
    cm = k.core.patch_namespaced_config_map("ssa", "default", body, field_manager="rollout",
                                            _content_type="application/apply-patch+yaml")
    assert cm.data == {"a": "1"}
    body["data"] = {"b": "2"}
    cm = k.core.patch_namespaced_config_map("ssa", "default", body, field_manager="rollout",
                                            _content_type="application/apply-patch+yaml")
    assert cm.data == {"a": "1", "b": "2"}, "simplified: no field ownership, fields are not pruned"
    code, st = raw_request(k, "PATCH", "/api/v1/namespaces/default/configmaps/ssa", body,
                           content_type="application/apply-patch+yaml")
    assert code == 422 and "fieldManager" in st["message"]
    w = watch.Watch()
    seen = []
    for ev in w.stream(k.core.list_namespaced_config_map, "default", send_initial_events=True,
                       resource_version_match="NotOlderThan", allow_watch_bookmarks=True, timeout_seconds=10):
        seen.append(ev["type"])
        if ev["type"] == "BOOKMARK":
            assert ev["raw_object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
            w.stop()
    assert seen == ["ADDED", "BOOKMARK"]


# ============================================================== optimistic concurrency

@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_every_write_gets_a_new_increasing_resource_version(target):
    """resourceVersion changes on every write; etcd revisions only grow."""
    a = target.core.create_namespaced_config_map(target.namespace, configmap("rv"))
    b = target.core.patch_namespaced_config_map("rv", target.namespace, {"data": {"k": "2"}})
    c = target.core.patch_namespaced_config_map("rv", target.namespace, {"data": {"k": "3"}})
    rvs = [int(x.metadata.resource_version) for x in (a, b, c)]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_noop_patch_does_not_write(target):
    """A patch that changes nothing is not written: resourceVersion stays."""
    a = target.core.create_namespaced_config_map(target.namespace, configmap("noop"))
    b = target.core.patch_namespaced_config_map("noop", target.namespace, {"data": {"k": "v"}})
    assert b.metadata.resource_version == a.metadata.resource_version


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_put_with_stale_resource_version_is_409_conflict(target):
    """PUT carrying an outdated metadata.resourceVersion is refused with 409
    reason Conflict ("the object has been modified...") and details{name,kind}."""
    cm = target.core.create_namespaced_config_map(target.namespace, configmap("race"))
    cm.data = {"k": "first"}
    target.core.replace_namespaced_config_map("race", target.namespace, cm)  # rv now newer
    cm.data = {"k": "second"}
    with pytest.raises(ApiException) as ei:
        target.core.replace_namespaced_config_map("race", target.namespace, cm)
    st = status_of(ei.value)
    assert ei.value.status == 409
    assert (st["kind"], st["apiVersion"], st["status"], st["reason"], st["code"]) == \
        ("Status", "v1", "Failure", "Conflict", 409)
    assert st["message"] == ('Operation cannot be fulfilled on configmaps "race": the object has been '
                             'modified; please apply your changes to the latest version and try again')
    assert st["details"] == {"name": "race", "kind": "configmaps"}
    assert target.core.read_namespaced_config_map("race", target.namespace).data == {"k": "first"}


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_patch_with_stale_resource_version_is_409_conflict(target):
    """A patch whose body sets metadata.resourceVersion uses it as a
    precondition: stale -> 409 Conflict (group in details for apps)."""
    d = target.apps.create_namespaced_deployment(target.namespace, deployment("web"))
    target.apps.patch_namespaced_deployment("web", target.namespace, {"metadata": {"labels": {"x": "1"}}})
    with pytest.raises(ApiException) as ei:
        target.apps.patch_namespaced_deployment(
            "web", target.namespace,
            {"metadata": {"resourceVersion": d.metadata.resource_version}, "spec": {"replicas": 5}})
    st = status_of(ei.value)
    assert ei.value.status == 409 and st["reason"] == "Conflict"
    assert st["details"] == {"name": "web", "group": "apps", "kind": "deployments"}


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_put_of_custom_resource_requires_resource_version(target):
    """Custom resources do not allow unconditional update: PUT without
    metadata.resourceVersion is 422 Invalid."""
    if not target.has_gateway_api():
        pytest.skip("Gateway API CRDs are not installed")
    target.custom.create_namespaced_custom_object(*GW, target.namespace, "httproutes", httproute("r"))
    with pytest.raises(ApiException) as ei:
        target.custom.replace_namespaced_custom_object(*GW, target.namespace, "httproutes", "r",
                                                       httproute("r"))
    assert ei.value.status == 422 and status_of(ei.value)["reason"] == "Invalid"
    assert "metadata.resourceVersion" in status_of(ei.value)["message"]


# ============================================================== generation

@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_generation_bumps_only_on_spec_change(target):
    """metadata.generation starts at 1 and increments only when the spec
    changes: metadata (labels/annotations) and status writes leave it."""
    d = target.apps.create_namespaced_deployment(target.namespace, deployment("web"))
    assert d.metadata.generation == 1
    d = target.apps.patch_namespaced_deployment(
        "web", target.namespace, {"metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}}})
    assert d.metadata.generation == 1
    d = target.apps.patch_namespaced_deployment_status(
        "web", target.namespace, {"status": {"conditions": [
            {"type": "Custom", "status": "True", "reason": "Test", "message": "status write"}]}})
    assert d.metadata.generation == 1
    d = target.apps.patch_namespaced_deployment("web", target.namespace, {"spec": {"replicas": 3}})
    assert d.metadata.generation == 2
    d = target.apps.patch_namespaced_deployment("web", target.namespace, {"spec": {"replicas": 3}})
    assert d.metadata.generation == 2, "same spec again is not a change"


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_defaults_are_applied_on_create(target):
    """The server defaults omitted fields: replicas 1, RollingUpdate 25%/25%,
    revisionHistoryLimit 10, progressDeadlineSeconds 600, imagePullPolicy,
    port protocol TCP."""
    body = deployment("web")
    del body["spec"]["replicas"]
    d = target.apps.create_namespaced_deployment(target.namespace, body)
    assert d.spec.replicas == 1
    assert d.spec.strategy.type == "RollingUpdate"
    assert (d.spec.strategy.rolling_update.max_surge, d.spec.strategy.rolling_update.max_unavailable) \
        == ("25%", "25%")
    assert d.spec.revision_history_limit == 10 and d.spec.progress_deadline_seconds == 600
    c = d.spec.template.spec.containers[0]
    assert c.image_pull_policy == "IfNotPresent" and c.ports[0].protocol == "TCP"


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_invalid_deployment_is_422_with_field_causes(target):
    """Validation failures are 422 Invalid naming the Kind, with one cause
    per field (here: selector does not match template labels)."""
    body = deployment("web")
    body["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    with pytest.raises(ApiException) as ei:
        target.apps.create_namespaced_deployment(target.namespace, body)
    st = status_of(ei.value)
    assert ei.value.status == 422 and st["reason"] == "Invalid"
    assert st["message"].startswith('Deployment.apps "web" is invalid: ')
    assert st["details"]["kind"] == "Deployment" and st["details"]["group"] == "apps"
    assert any(c["field"] == "spec.template.metadata.labels" for c in st["details"]["causes"])


# ============================================================== patch flavours

@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_strategic_merge_patch_merges_containers_by_name(target):
    """For built-in types a dict body is a strategic merge patch: containers,
    env and ports merge by their keys instead of replacing the list."""
    two = [{"name": "app", "image": "registry.local/web:1.0", "ports": [{"containerPort": 8080}],
            "env": [{"name": "MODE", "value": "prod"}]},
           {"name": "proxy", "image": "registry.local/proxy:1.0"}]
    target.apps.create_namespaced_deployment(target.namespace, deployment("web", containers=two))
    d = target.apps.patch_namespaced_deployment("web", target.namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "app", "image": "registry.local/web:2.0",
                        "env": [{"name": "DEBUG", "value": "1"}],
                        "ports": [{"containerPort": 9090}]}]}}}})
    app, proxy = d.spec.template.spec.containers
    assert (app.name, app.image) == ("app", "registry.local/web:2.0")
    assert [(e.name, e.value) for e in app.env] == [("MODE", "prod"), ("DEBUG", "1")]
    assert [p.container_port for p in app.ports] == [8080, 9090]
    assert (proxy.name, proxy.image) == ("proxy", "registry.local/proxy:1.0")
    # $patch: delete removes one element by key.
    d = target.apps.patch_namespaced_deployment("web", target.namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "proxy", "$patch": "delete"}]}}}})
    assert [c.name for c in d.spec.template.spec.containers] == ["app"]


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_strategic_merge_patch_volumes_and_replace_directive(target):
    """Volumes merge by name; `$patch: replace` replaces a list wholesale."""
    body = deployment("web")
    body["spec"]["template"]["spec"]["volumes"] = [{"name": "a", "emptyDir": {}}]
    target.apps.create_namespaced_deployment(target.namespace, body)
    d = target.apps.patch_namespaced_deployment("web", target.namespace, {"spec": {"template": {"spec": {
        "volumes": [{"name": "b", "emptyDir": {}}]}}}})
    assert [v.name for v in d.spec.template.spec.volumes] == ["a", "b"]
    d = target.apps.patch_namespaced_deployment("web", target.namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "app", "env": [{"name": "ONLY", "value": "1"}, {"$patch": "replace"}]}]}}}})
    assert [(e.name, e.value) for e in d.spec.template.spec.containers[0].env] == [("ONLY", "1")]


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_json_merge_patch_replaces_lists(target):
    """application/merge-patch+json (RFC 7386): maps merge, null deletes,
    lists are replaced wholesale (the container loses its ports and env)."""
    target.apps.create_namespaced_deployment(target.namespace, deployment("web"))
    d = target.apps.patch_namespaced_deployment(
        "web", target.namespace,
        {"metadata": {"labels": {"app": None, "tier": "web"}},
         "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "registry.local/web:3.0"}]}}}},
        _content_type="application/merge-patch+json")
    assert d.metadata.labels == {"tier": "web"}
    (c,) = d.spec.template.spec.containers
    assert c.image == "registry.local/web:3.0" and not c.ports and not c.env


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_json_patch_operations(target):
    """A list body is an RFC 6902 JSON patch: add/replace/remove/test."""
    target.apps.create_namespaced_deployment(target.namespace, deployment("web"))
    d = target.apps.patch_namespaced_deployment("web", target.namespace, [
        {"op": "test", "path": "/spec/replicas", "value": 2},
        {"op": "replace", "path": "/spec/replicas", "value": 4},
        {"op": "add", "path": "/metadata/labels/stage", "value": "canary"},
        {"op": "remove", "path": "/spec/template/spec/containers/0/env"},
    ])
    assert d.spec.replicas == 4 and d.metadata.labels["stage"] == "canary"
    assert not d.spec.template.spec.containers[0].env


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_json_patch_failed_test_is_422_invalid(target):
    """A JSON patch whose `test` op fails is rejected as a whole with 422,
    reason Invalid; nothing is written."""
    d = target.apps.create_namespaced_deployment(target.namespace, deployment("web"))
    with pytest.raises(ApiException) as ei:
        target.apps.patch_namespaced_deployment("web", target.namespace, [
            {"op": "test", "path": "/spec/replicas", "value": 99},
            {"op": "replace", "path": "/spec/replicas", "value": 5},
        ])
    st = status_of(ei.value)
    assert ei.value.status == 422 and st["kind"] == "Status" and st["reason"] == "Invalid"
    after = target.apps.read_namespaced_deployment("web", target.namespace)
    assert after.spec.replicas == 2 and after.metadata.generation == d.metadata.generation


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_strategic_merge_patch_on_custom_resource_is_415(target):
    """Custom resources have no Go struct to derive strategies from, so the
    server refuses strategic merge patch with 415 UnsupportedMediaType; the
    CustomObjectsApi default (merge patch) works and bumps generation."""
    if not target.has_gateway_api():
        pytest.skip("Gateway API CRDs are not installed")
    target.custom.create_namespaced_custom_object(*GW, target.namespace, "httproutes", httproute("r"))
    with pytest.raises(ApiException) as ei:
        target.custom.patch_namespaced_custom_object(
            *GW, target.namespace, "httproutes", "r", {"spec": {"hostnames": ["a.example"]}},
            _content_type="application/strategic-merge-patch+json")
    st = status_of(ei.value)
    assert ei.value.status == 415 and st["reason"] == "UnsupportedMediaType"
    assert "application/merge-patch+json" in st["message"]
    r = target.custom.patch_namespaced_custom_object(
        *GW, target.namespace, "httproutes", "r", {"spec": {"hostnames": ["a.example"]}})
    assert r["spec"]["hostnames"] == ["a.example"] and r["metadata"]["generation"] == 2
    assert r["kind"] == "HTTPRoute" and r["apiVersion"] == f"{GW[0]}/{GW[1]}"


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_custom_resource_crud_and_delete_returns_object(target):
    """CustomObjectsApi CRUD on HTTPRoutes: list kind HTTPRouteList with
    items that keep kind/apiVersion; DELETE answers the deleted object."""
    if not target.has_gateway_api():
        pytest.skip("Gateway API CRDs are not installed")
    target.custom.create_namespaced_custom_object(*GW, target.namespace, "httproutes", httproute("r"))
    lst = target.custom.list_namespaced_custom_object(*GW, target.namespace, "httproutes")
    assert lst["kind"] == "HTTPRouteList" and lst["items"][0]["kind"] == "HTTPRoute"
    gone = target.custom.delete_namespaced_custom_object(*GW, target.namespace, "httproutes", "r")
    assert gone["kind"] == "HTTPRoute" and gone["metadata"]["name"] == "r"
    with pytest.raises(ApiException) as ei:
        target.custom.get_namespaced_custom_object(*GW, target.namespace, "httproutes", "r")
    assert ei.value.status == 404


# ============================================================== subresources

@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_scale_subresource(target):
    """/scale reads and writes an autoscaling/v1 Scale; writing it changes
    spec.replicas and bumps generation; a stale Scale rv is 409."""
    target.apps.create_namespaced_deployment(target.namespace, deployment("web", replicas=2))
    sc = target.apps.read_namespaced_deployment_scale("web", target.namespace)
    assert (sc.kind, sc.api_version, sc.spec.replicas) == ("Scale", "autoscaling/v1", 2)
    assert sc.status.selector == "app=web"
    stale = sc.metadata.resource_version
    while True:  # the Deployment controller may write status in between: retry on conflict
        sc.spec.replicas = 3
        try:
            sc = target.apps.replace_namespaced_deployment_scale("web", target.namespace, sc)
            break
        except ApiException as e:
            assert e.status == 409
            sc = target.apps.read_namespaced_deployment_scale("web", target.namespace)
    assert sc.spec.replicas == 3
    d = target.apps.read_namespaced_deployment("web", target.namespace)
    assert d.spec.replicas == 3 and d.metadata.generation == 2
    sc = target.apps.patch_namespaced_deployment_scale("web", target.namespace, {"spec": {"replicas": 5}})
    assert sc.spec.replicas == 5
    assert target.apps.read_namespaced_deployment("web", target.namespace).metadata.generation == 3
    with pytest.raises(ApiException) as ei:
        target.apps.replace_namespaced_deployment_scale("web", target.namespace, {
            "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": "web", "namespace": target.namespace, "resourceVersion": stale},
            "spec": {"replicas": 1}})
    assert ei.value.status == 409 and status_of(ei.value)["reason"] == "Conflict"


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_status_subresource_separates_status_from_spec(target):
    """/status writes change only status; writes to the main resource ignore
    status. Shown on a Service, which no controller rewrites."""
    svc = target.core.create_namespaced_service(target.namespace, {
        "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
    assert svc.spec.cluster_ip and svc.spec.ports[0].target_port == 80
    s = target.core.patch_namespaced_service_status("web", target.namespace, {
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}},
        "spec": {"selector": {"app": "ignored"}}})
    assert s.status.load_balancer.ingress[0].ip == "192.0.2.10"
    assert s.spec.selector == {"app": "web"}
    s = target.core.patch_namespaced_service("web", target.namespace, {
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.99"}]}},
        "spec": {"selector": {"app": "web2"}}})
    assert s.status.load_balancer.ingress[0].ip == "192.0.2.10"
    assert s.spec.selector == {"app": "web2"}


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_service_put_keeps_allocated_values(target):
    """Allocated spec.clusterIP and nodePorts survive a PUT that omits them;
    changing clusterIP is 422 (immutable)."""
    svc = target.core.create_namespaced_service(target.namespace, {
        "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80}]}})
    ip, node_port = svc.spec.cluster_ip, svc.spec.ports[0].node_port
    assert ip and 30000 <= node_port <= 32767
    body = {"metadata": {"name": "np", "resourceVersion": svc.metadata.resource_version},
            "spec": {"type": "NodePort", "selector": {"app": "web2"}, "ports": [{"port": 80}]}}
    svc = target.core.replace_namespaced_service("np", target.namespace, body)
    assert (svc.spec.cluster_ip, svc.spec.ports[0].node_port, svc.spec.selector) == (ip, node_port, {"app": "web2"})
    with pytest.raises(ApiException) as ei:
        target.core.patch_namespaced_service("np", target.namespace, {"spec": {"clusterIP": "10.96.99.99"}})
    assert ei.value.status == 422


def test_deployment_status_subresource(fake):
    """Deployment /status PUT/PATCH writes status only and leaves generation."""
    fake.controller.stop()
    t = _fake_target(fake)
    t.apps.create_namespaced_deployment("default", deployment("web"))
    d = t.apps.patch_namespaced_deployment_status("web", "default", {
        "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2}, "spec": {"replicas": 9}})
    assert (d.status.ready_replicas, d.spec.replicas, d.metadata.generation) == (2, 2, 1)
    d.status.ready_replicas = 1
    d = t.apps.replace_namespaced_deployment_status("web", "default", d)
    assert d.status.ready_replicas == 1 and d.metadata.generation == 1
    t.api_client.close()


# ============================================================== selectors

SELECTOR_CASES = [
    ("app=web", {"a"}),
    ("app==web", {"a"}),
    ("app!=web", {"b", "c", "d"}),
    ("app in (web,api)", {"a", "b"}),
    ("app notin (web)", {"b", "c", "d"}),
    ("tier", {"a", "b"}),
    ("!tier", {"c", "d"}),
    ("app in (web,api),tier!=back", {"a"}),
]


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_label_selectors(target):
    """labelSelector supports =, ==, !=, in, notin, exists, !exists and
    comma-AND; != and notin also match objects without the key."""
    labels = {"a": {"app": "web", "tier": "front"}, "b": {"app": "api", "tier": "back"},
              "c": {"app": "db"}, "d": {"other": "x"}}
    for name, lab in labels.items():
        target.core.create_namespaced_config_map(target.namespace, configmap(name, {**lab, "sel": "t"}))
    for selector, expected in SELECTOR_CASES:
        got = target.core.list_namespaced_config_map(target.namespace, label_selector=f"sel=t,{selector}")
        assert {c.metadata.name for c in got.items} == expected, selector
    with pytest.raises(ApiException) as ei:
        target.core.list_namespaced_config_map(target.namespace, label_selector="app in (web")
    assert ei.value.status == 400 and status_of(ei.value)["reason"] == "BadRequest"


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_field_selectors(target):
    """fieldSelector supports metadata.name / metadata.namespace on every
    type and involvedObject.* on Events; unknown fields are 400."""
    for n in ("one", "two"):
        target.core.create_namespaced_config_map(target.namespace, configmap(n))
    got = target.core.list_namespaced_config_map(target.namespace, field_selector="metadata.name=two")
    assert [c.metadata.name for c in got.items] == ["two"]
    got = target.core.list_namespaced_config_map(target.namespace, field_selector="metadata.name!=two")
    assert "two" not in {c.metadata.name for c in got.items} and "one" in {c.metadata.name for c in got.items}
    got = target.core.list_config_map_for_all_namespaces(
        field_selector=f"metadata.namespace={target.namespace},metadata.name=one")
    assert [(c.metadata.namespace, c.metadata.name) for c in got.items] == [(target.namespace, "one")]
    for i, (kind, obj) in enumerate([("Deployment", "web"), ("Pod", "web-abc"), ("Deployment", "api")]):
        target.core.create_namespaced_event(target.namespace, {
            "metadata": {"name": f"ev{i}"}, "reason": "Test", "message": f"m{i}", "type": "Normal",
            "involvedObject": {"kind": kind, "name": obj, "namespace": target.namespace}})
    got = target.core.list_namespaced_event(
        target.namespace, field_selector="involvedObject.kind=Deployment,involvedObject.name=web")
    assert [e.metadata.name for e in got.items] == ["ev0"]
    with pytest.raises(ApiException) as ei:
        target.core.list_namespaced_config_map(target.namespace, field_selector="data.k=v")
    assert ei.value.status == 400 and status_of(ei.value)["reason"] == "BadRequest"


# ============================================================== watch

@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_watch_resumes_from_resource_version(target):
    """A watch from a list's resourceVersion replays exactly the later
    changes, in order: ADDED, MODIFIED, DELETED (the delete carries the
    object's final state)."""
    target.core.create_namespaced_config_map(target.namespace, configmap("before"))
    rv = target.core.list_namespaced_config_map(target.namespace).metadata.resource_version
    target.core.create_namespaced_config_map(target.namespace, configmap("w"))
    target.core.patch_namespaced_config_map("w", target.namespace, {"data": {"k": "2"}})
    target.core.delete_namespaced_config_map("w", target.namespace)
    w = watch.Watch()
    seen = []
    for ev in w.stream(target.core.list_namespaced_config_map, target.namespace,
                       resource_version=rv, timeout_seconds=10):
        seen.append((ev["type"], ev["object"].metadata.name, (ev["object"].data or {}).get("k")))
        if len(seen) == 3:
            w.stop()
    assert seen == [("ADDED", "w", "v"), ("MODIFIED", "w", "2"), ("DELETED", "w", "2")]


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_watch_streams_live_events(target):
    """Without a resourceVersion a watch first sends the current objects as
    ADDED, then streams changes as they happen (chunked, one JSON per line)."""
    target.core.create_namespaced_config_map(target.namespace, configmap("existing"))
    got: list[tuple[str, str]] = []
    started = threading.Event()
    w = watch.Watch()

    def consume() -> None:
        for ev in w.stream(target.core.list_namespaced_config_map, target.namespace, timeout_seconds=15):
            got.append((ev["type"], ev["object"].metadata.name))
            started.set()
            if ("ADDED", "live") in got:
                w.stop()

    th = threading.Thread(target=consume, daemon=True)
    th.start()
    assert started.wait(15), "initial ADDED event not received"
    target.core.create_namespaced_config_map(target.namespace, configmap("live"))
    th.join(20)
    assert got[0] == ("ADDED", "existing") and ("ADDED", "live") in got


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_watch_label_selector_transitions(target):
    """With a labelSelector, an update that makes an object stop matching is
    delivered as DELETED and one that makes it match as ADDED."""
    target.core.create_namespaced_config_map(target.namespace, configmap("x", {"track": "yes"}))
    rv = target.core.list_namespaced_config_map(target.namespace).metadata.resource_version
    target.core.patch_namespaced_config_map("x", target.namespace, {"metadata": {"labels": {"track": "no"}}})
    target.core.patch_namespaced_config_map("x", target.namespace, {"metadata": {"labels": {"track": "yes"}}})
    w = watch.Watch()
    seen = []
    for ev in w.stream(target.core.list_namespaced_config_map, target.namespace, label_selector="track=yes",
                       resource_version=rv, timeout_seconds=10):
        seen.append(ev["type"])
        if len(seen) == 2:
            w.stop()
    assert seen == ["DELETED", "ADDED"]


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_watch_too_old_resource_version_is_410_expired(target):
    """Resuming from a compacted resourceVersion answers an ERROR event whose
    object is a Status 410 reason Expired; the client raises ApiException 410."""
    if target.fake is not None:
        target.core.create_namespaced_config_map(target.namespace, configmap("c"))
        target.fake.compact()
    raw = target.core.list_namespaced_config_map(target.namespace, watch=True, resource_version="1",
                                                 timeout_seconds=5, _preload_content=False)
    lines = raw.data.decode().splitlines()
    assert lines, "expected an ERROR event: resourceVersion 1 should be compacted away"
    first = json.loads(lines[0])
    assert first["type"] == "ERROR"
    assert (first["object"]["kind"], first["object"]["code"], first["object"]["reason"]) == \
        ("Status", 410, "Expired")
    with pytest.raises(ApiException) as ei:
        for _ in watch.Watch().stream(target.core.list_namespaced_config_map, target.namespace,
                                      resource_version="1", timeout_seconds=5):
            pass
    assert ei.value.status == 410


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_watch_honours_timeout_seconds(target):
    """timeoutSeconds ends the watch stream cleanly from the server side."""
    t0 = time.monotonic()
    events = list(watch.Watch().stream(target.core.list_namespaced_config_map, target.namespace,
                                       resource_version=target.core.list_namespaced_config_map(
                                           target.namespace).metadata.resource_version,
                                       timeout_seconds=1))
    assert events == []
    assert 0.9 <= time.monotonic() - t0 < 30


def test_watch_bookmarks(k):
    """allowWatchBookmarks gets periodic BOOKMARK events carrying only a
    resourceVersion (the client records it for resuming)."""
    rv = k.core.list_namespaced_config_map("default").metadata.resource_version
    w = watch.Watch()
    for ev in w.stream(k.core.list_namespaced_config_map, "default", resource_version=rv,
                       allow_watch_bookmarks=True, timeout_seconds=10):
        assert ev["type"] == "BOOKMARK"
        assert ev["raw_object"]["metadata"]["resourceVersion"].isdigit()
        w.stop()
    assert w.resource_version is not None


def test_watch_custom_objects_and_deployments(k):
    """Watches work for custom resources (dict objects) and apps/v1."""
    rv = k.custom.list_namespaced_custom_object(*GW, "default", "httproutes")["metadata"]["resourceVersion"]
    k.custom.create_namespaced_custom_object(*GW, "default", "httproutes", httproute("r"))
    w = watch.Watch()
    for ev in w.stream(k.custom.list_namespaced_custom_object, *GW, "default", "httproutes",
                       resource_version=rv, timeout_seconds=10):
        assert ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == "r"
        w.stop()
    rv = k.apps.list_namespaced_deployment("default").metadata.resource_version
    k.apps.create_namespaced_deployment("default", deployment("web"))
    w = watch.Watch()
    for ev in w.stream(k.apps.list_namespaced_deployment, "default", resource_version=rv, timeout_seconds=10):
        assert ev["object"].metadata.name == "web"
        w.stop()


def test_watch_query_forms_and_chunked_stream(fake):
    """`watch=1` (and the legacy /watch/ path prefix) stream newline-delimited
    JSON events with chunked transfer encoding."""
    fake.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}})
    for path in ("/api/v1/namespaces/default/configmaps?watch=1",
                 "/api/v1/watch/namespaces/default/configmaps"):
        with urllib.request.urlopen(fake.url + path, timeout=20) as resp:
            assert resp.headers["Transfer-Encoding"] == "chunked"
            event = json.loads(resp.readline())
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "c")
        assert event["object"]["kind"] == "ConfigMap"


def test_concurrent_read_modify_write_is_serialised(k, fake):
    """Concurrent writers using resourceVersion preconditions never lose an
    update: every increment lands exactly once (409 -> re-read -> retry)."""
    k.core.create_namespaced_config_map("default", configmap("counter", data={"n": "0"}))
    workers, per_worker = 4, 15

    def bump() -> None:
        core = client.CoreV1Api(k.api_client)
        for _ in range(per_worker):
            while True:
                cm = core.read_namespaced_config_map("counter", "default")
                cm.data["n"] = str(int(cm.data["n"]) + 1)
                try:
                    core.replace_namespaced_config_map("counter", "default", cm)
                    break
                except ApiException as e:
                    assert e.status == 409

    threads = [threading.Thread(target=bump) for _ in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert fake.get("configmaps", "default", "counter")["data"]["n"] == str(workers * per_worker)
    assert fake.count("update", "configmaps", status=200) == workers * per_worker


def test_gateways_and_registered_custom_resources(k, fake):
    """Gateways (and GatewayClasses, cluster-scoped) are served like HTTPRoutes;
    v1beta1 reads the same objects; further CRDs can be registered."""
    k.custom.create_cluster_custom_object(*GW, "gatewayclasses", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "fake"}, "spec": {"controllerName": "example.com/gw"}})
    k.custom.create_namespaced_custom_object(*GW, "default", "gateways", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw"},
        "spec": {"gatewayClassName": "fake", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}})
    beta = k.custom.get_namespaced_custom_object(GW[0], "v1beta1", "default", "gateways", "gw")
    assert beta["apiVersion"] == "gateway.networking.k8s.io/v1beta1" and beta["spec"]["gatewayClassName"] == "fake"
    st = k.custom.patch_namespaced_custom_object_status(*GW, "default", "gateways", "gw", {
        "status": {"conditions": [{"type": "Programmed", "status": "True"}]}})
    assert st["status"]["conditions"][0]["type"] == "Programmed" and st["metadata"]["generation"] == 1
    fake.register_custom_resource("split.example.com", "v1alpha1", "trafficsplits", "TrafficSplit")
    k.custom.create_namespaced_custom_object("split.example.com", "v1alpha1", "default", "trafficsplits", {
        "apiVersion": "split.example.com/v1alpha1", "kind": "TrafficSplit", "metadata": {"name": "ts"},
        "spec": {"weights": {"stable": 90, "canary": 10}}})
    assert fake.get("trafficsplits", "default", "ts")["spec"]["weights"]["canary"] == 10


# ============================================================== other resources

@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_lease_optimistic_locking(target):
    """Leases (leader election) use rv-guarded PUTs: the loser of a race gets 409."""
    lease = target.coord.create_namespaced_lease(target.namespace, {
        "metadata": {"name": "rollout-lock"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})
    mine = target.coord.read_namespaced_lease("rollout-lock", target.namespace)
    mine.spec.holder_identity = "b"
    target.coord.replace_namespaced_lease("rollout-lock", target.namespace, mine)
    lease.spec.holder_identity = "c"
    with pytest.raises(ApiException) as ei:
        target.coord.replace_namespaced_lease("rollout-lock", target.namespace, lease)
    assert ei.value.status == 409
    assert target.coord.read_namespaced_lease("rollout-lock", target.namespace).spec.holder_identity == "b"


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_ingress_generation_and_validation(target):
    """Ingress spec changes bump generation; a path without pathType is 422."""
    ing = {"metadata": {"name": "web"}, "spec": {"rules": [{"host": "a.example", "http": {"paths": [
        {"path": "/", "pathType": "Prefix",
         "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}
    created = target.net.create_namespaced_ingress(target.namespace, ing)
    assert created.metadata.generation == 1
    patched = target.net.patch_namespaced_ingress("web", target.namespace, {"spec": {"rules": [
        {"host": "b.example", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                                                   "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})
    assert patched.metadata.generation == 2 and patched.spec.rules[0].host == "b.example"
    bad = json.loads(json.dumps(ing))
    bad["metadata"]["name"] = "bad"
    del bad["spec"]["rules"][0]["http"]["paths"][0]["pathType"]
    code, st = raw_request(target, "POST", f"/apis/networking.k8s.io/v1/namespaces/{target.namespace}/ingresses", bad)
    assert code == 422 and st["reason"] == "Invalid"
    assert st["details"]["causes"][0]["field"] == "spec.rules[0].http.paths[0].pathType"


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_events_v1_and_events_k8s_io_share_storage(target):
    """core/v1 Events are also served as events.k8s.io/v1 (note <-> message,
    regarding <-> involvedObject). An event written without eventTime reads
    back with eventTime null there, which the v37 model refuses — so
    writers should set it, as this one does."""
    target.core.create_namespaced_event(target.namespace, {
        "metadata": {"name": "e1"}, "reason": "Test", "message": "hello", "type": "Normal",
        "eventTime": "2025-01-01T00:00:00.000000Z", "reportingComponent": "rollout",
        "reportingInstance": "rollout-1", "action": "Rollout",
        "involvedObject": {"kind": "Deployment", "name": "web", "namespace": target.namespace}})
    ev = client.EventsV1Api(target.api_client).read_namespaced_event("e1", target.namespace)
    assert ev.note == "hello" and ev.regarding.name == "web" and ev.reason == "Test"
    assert ev.reporting_controller == "rollout"


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_discovery_and_version(target):
    """/api, /apis and /version answer enough for clients to discover the
    served groups (apps, coordination, networking, events)."""
    assert "v1" in client.CoreApi(target.api_client).get_api_versions().versions
    groups = {g.name for g in client.ApisApi(target.api_client).get_api_versions().groups}
    assert {"apps", "coordination.k8s.io", "networking.k8s.io", "events.k8s.io"} <= groups
    v = client.VersionApi(target.api_client).get_code()
    assert v.major == "1" and v.git_version.startswith("v1.")
    res = client.AppsV1Api(target.api_client).get_api_resources()
    names = {r.name for r in res.resources}
    assert {"deployments", "deployments/status", "deployments/scale"} <= names


def test_implicit_namespaces_are_auto_provisioned(k, fake):
    """By default a namespace springs into existence when something is
    created in it (NamespaceAutoProvision), so reads of it agree."""
    k.core.create_namespaced_config_map("team-b", configmap("c"))
    assert k.core.read_namespace("team-b").status.phase == "Active"
    assert "team-b" in {n.metadata.name for n in k.core.list_namespace().items}


def test_strict_namespaces_option():
    """With implicit_namespaces=False, creating into a missing namespace is
    404 `namespaces "x" not found`, as on a real cluster; after creating the
    Namespace it works."""
    with FakeApiServer(implicit_namespaces=False) as server:
        t = _fake_target(server)
        with pytest.raises(ApiException) as ei:
            t.core.create_namespaced_config_map("team-a", configmap("c"))
        assert ei.value.status == 404 and status_of(ei.value)["message"] == 'namespaces "team-a" not found'
        t.core.create_namespace({"metadata": {"name": "team-a"}})
        t.core.create_namespaced_config_map("team-a", configmap("c"))
        t.core.delete_namespace("team-a")
        assert server.get("configmaps", "team-a", "c") is None, "namespace deletion removes its content"
        t.api_client.close()


# ============================================================== simulated controller

def test_controller_makes_deployment_ready_with_delay_zero(k):
    """After a spec change the controller reports observedGeneration,
    replica counts and conditions Available=True/MinimumReplicasAvailable
    and Progressing=True/NewReplicaSetAvailable; the revision annotation
    increments on template changes only."""
    k.apps.create_namespaced_deployment("default", deployment("web", replicas=3))
    d = wait_for(lambda: (lambda o: is_ready(o) and o)(dep_status(k, "web")), what="ready")
    assert condition(d, "Available")["status"] == "True"
    assert condition(d, "Available")["reason"] == "MinimumReplicasAvailable"
    prog = condition(d, "Progressing")
    assert (prog["status"], prog["reason"]) == ("True", "NewReplicaSetAvailable")
    assert prog["message"].startswith('ReplicaSet "web-') and prog["message"].endswith('has successfully progressed.')
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    k.apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 4}})
    d = wait_for(lambda: (lambda o: is_ready(o) and o)(dep_status(k, "web")), what="scaled")
    assert d["status"]["readyReplicas"] == 4
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    k.apps.patch_namespaced_deployment("web", "default", {"spec": {"template": {"spec": {
        "containers": [{"name": "app", "image": "registry.local/web:2.0"}]}}}})
    d = wait_for(lambda: (lambda o: is_ready(o) and o["metadata"]["generation"] == 3 and o)(dep_status(k, "web")))
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"


def test_controller_reports_progress_before_ready_with_a_delay():
    """With a delay, the first status the controller writes has
    observedGeneration set but no ready replicas (zero counts omitted) and
    Progressing reason ReplicaSetUpdated; then the Deployment becomes ready.
    Observed through a watch, so the order is certain."""
    with FakeApiServer(controller_delay=0.1) as server:
        t = _fake_target(server)
        rv = t.apps.list_namespaced_deployment("default").metadata.resource_version
        t.apps.create_namespaced_deployment("default", deployment("web"))
        statuses = []
        w = watch.Watch()
        for ev in w.stream(t.apps.list_namespaced_deployment, "default", resource_version=rv, timeout_seconds=20):
            statuses.append(ev["raw_object"])
            if is_ready(ev["raw_object"]):
                w.stop()
        first_seen = next(o for o in statuses if (o.get("status") or {}).get("observedGeneration"))
        assert "readyReplicas" not in first_seen["status"]
        assert condition(first_seen, "Progressing")["reason"] == "ReplicaSetUpdated"
        assert is_ready(statuses[-1])
        t.api_client.close()


def test_controller_fault_never_ready_via_annotation():
    """never-ready: observedGeneration catches up but nothing becomes
    available; after the progress deadline Progressing=False with reason
    ProgressDeadlineExceeded and Available=False."""
    with FakeApiServer(controller_delay=0.0) as server:
        t = _fake_target(server)
        t.apps.create_namespaced_deployment("default", deployment(
            "web", annotations={FAULT_ANNOTATION: "never-ready", DEADLINE_ANNOTATION: "0.3"}))
        d = wait_for(lambda: (lambda o: condition(o, "Progressing").get("reason") == "ProgressDeadlineExceeded"
                              and o)(dep_status(t, "web")), what="deadline exceeded")
        assert d["status"]["observedGeneration"] == d["metadata"]["generation"]
        assert "availableReplicas" not in d["status"] and "readyReplicas" not in d["status"]
        assert d["status"]["updatedReplicas"] == 2 and d["status"]["unavailableReplicas"] == 2
        assert condition(d, "Progressing")["status"] == "False"
        assert condition(d, "Available")["status"] == "False"
        assert condition(d, "Available")["reason"] == "MinimumReplicasUnavailable"
        t.api_client.close()


def test_controller_fault_slow_becomes_ready_later():
    """slow: the Deployment is observed but not ready, then ready after
    `ready-after` seconds (watched, so no timing assumption)."""
    with FakeApiServer(controller_delay=0.0) as server:
        t = _fake_target(server)
        rv = t.apps.list_namespaced_deployment("default").metadata.resource_version
        t.apps.create_namespaced_deployment("default", deployment(
            "web", annotations={FAULT_ANNOTATION: "slow", READY_AFTER_ANNOTATION: "0.3"}))
        seen = []
        w = watch.Watch()
        for ev in w.stream(t.apps.list_namespaced_deployment, "default", resource_version=rv, timeout_seconds=20):
            seen.append(ev["raw_object"])
            if is_ready(ev["raw_object"]):
                w.stop()
        observed = [o for o in seen if (o.get("status") or {}).get("observedGeneration") == 1]
        assert not is_ready(observed[0]) and is_ready(observed[-1])
        t.api_client.close()


def test_controller_fault_crash_loop():
    """crash-loop: ready replicas stay 0, the Progressing message mentions
    CrashLoopBackOff and kubelet-style Warning BackOff events appear for a
    pod of the new ReplicaSet."""
    with FakeApiServer(controller_delay=0.0, crash_backoff=0.05) as server:
        t = _fake_target(server)
        t.apps.create_namespaced_deployment("default", deployment(
            "web", annotations={FAULT_ANNOTATION: "crash-loop"}))
        d = wait_for(lambda: (lambda o: (o.get("status") or {}).get("observedGeneration") and o)(dep_status(t, "web")))
        assert "readyReplicas" not in d["status"]
        assert "CrashLoopBackOff" in condition(d, "Progressing")["message"]
        evs = wait_for(lambda: t.core.list_namespaced_event(
            "default", field_selector="reason=BackOff,involvedObject.kind=Pod").items, what="BackOff events")
        assert evs[0].type == "Warning" and evs[0].involved_object.name.startswith("web-")
        assert "Back-off restarting failed container" in evs[0].message
        time.sleep(0.3)
        assert "readyReplicas" not in dep_status(t, "web")["status"], "never becomes ready"
        t.api_client.close()


def test_controller_fault_by_image_keeps_old_pods_during_broken_rollout(k, fake):
    """A broken new version (matched by image) stalls a RollingUpdate the way
    the real controller leaves it: old pods stay up to maxUnavailable
    (4 replicas, 25%: 3 ready), maxSurge new pods exist (2 updated), and
    Progressing ends ProgressDeadlineExceeded. Rolling back the image
    recovers."""
    fake.set_deployment_fault("never-ready", image="*:2.0", progress_deadline=0.3)
    k.apps.create_namespaced_deployment("default", deployment("web", replicas=4))
    wait_for(lambda: is_ready(dep_status(k, "web")), what="v1 ready")
    k.apps.patch_namespaced_deployment("web", "default", {"spec": {"template": {"spec": {
        "containers": [{"name": "app", "image": "registry.local/web:2.0"}]}}}})
    d = wait_for(lambda: (lambda o: condition(o, "Progressing").get("reason") == "ProgressDeadlineExceeded"
                          and o)(dep_status(k, "web")), what="stalled rollout")
    st = d["status"]
    assert (st["readyReplicas"], st["availableReplicas"], st["updatedReplicas"], st["replicas"]) == (3, 3, 2, 5)
    assert condition(d, "Available")["status"] == "True", "3 of 4 is within maxUnavailable"
    k.apps.patch_namespaced_deployment("web", "default", {"spec": {"template": {"spec": {
        "containers": [{"name": "app", "image": "registry.local/web:1.0"}]}}}})
    wait_for(lambda: is_ready(dep_status(k, "web")), what="rolled back")


# ============================================================== API fault injection

def test_fault_conflict_on_first_write_to_each_object(k, fake):
    """Injected 409: the first write to each object conflicts (a realistic
    Conflict Status); the retry succeeds, and each object conflicts once."""
    rule = fake.conflict_on_first_write("deployments")
    for name in ("a", "b"):
        k.apps.create_namespaced_deployment("default", deployment(name))
        with pytest.raises(ApiException) as ei:
            k.apps.patch_namespaced_deployment(name, "default", {"spec": {"replicas": 3}})
        st = status_of(ei.value)
        assert ei.value.status == 409 and st["reason"] == "Conflict"
        assert st["message"].startswith(f'Operation cannot be fulfilled on deployments.apps "{name}"')
        assert k.apps.patch_namespaced_deployment(name, "default", {"spec": {"replicas": 3}}).spec.replicas == 3
    assert rule.hits == 2


def test_fault_429_n_times_with_retry_after(k, fake):
    """Injected 429 behaves like API Priority & Fairness: plain-text body and
    a Retry-After header, for exactly N matching requests. (urllib3 under the
    client honours Retry-After by retrying idempotent GETs itself, as it
    does against a real server; PATCH is not retried.)"""
    k.core.create_namespaced_config_map("default", configmap("c"))
    fake.throttle(times=2, verb="patch", resource="configmaps", retry_after=2)
    for _ in range(2):
        with pytest.raises(ApiException) as ei:
            k.core.patch_namespaced_config_map("c", "default", {"data": {"k": "2"}})
        assert ei.value.status == 429 and ei.value.headers["Retry-After"] == "2"
        assert ei.value.body.strip() == "Too many requests, please try again later."
    assert k.core.patch_namespaced_config_map("c", "default", {"data": {"k": "2"}}).data == {"k": "2"}
    rule = fake.throttle(times=1, verb="get", resource="configmaps", retry_after=1)
    assert k.core.read_namespaced_config_map("c", "default").metadata.name == "c"
    assert rule.hits == 1 and fake.count("get", "configmaps") == 2


@pytest.mark.parametrize("code,reason", [(500, "InternalError"), (503, "ServiceUnavailable"), (504, "Timeout")])
def test_fault_server_errors_n_times(k, fake, code, reason):
    """Injected 5xx answers carry a Status with the matching reason, fire
    only for matching requests and only N times."""
    k.apps.create_namespaced_deployment("default", deployment("web"))
    fake.inject_fault(code, verb="patch", resource="deployments", name="web", times=1)
    k.core.create_namespaced_config_map("default", configmap("untouched"))  # not matched
    with pytest.raises(ApiException) as ei:
        k.apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 3}})
    assert ei.value.status == code and status_of(ei.value)["reason"] == reason
    assert k.apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 3}}).spec.replicas == 3


def test_fault_403_forbidden_has_rbac_message():
    """Injected 403 names the user the bearer token maps to, the verb, the
    resource, the API group and the namespace, word for word like RBAC;
    other verbs still work."""
    with FakeApiServer(users={"sa-token": "system:serviceaccount:ns:sa"}) as server:
        t = _fake_target(server, token="sa-token", namespace="ns")
        t.apps.create_namespaced_deployment("ns", deployment("web"))
        server.forbid("patch", "deployments.apps", namespace="ns")
        with pytest.raises(ApiException) as ei:
            t.apps.patch_namespaced_deployment("web", "ns", {"spec": {"replicas": 1}})
        st = status_of(ei.value)
        assert ei.value.status == 403 and st["reason"] == "Forbidden"
        assert st["message"] == ('deployments.apps "web" is forbidden: User "system:serviceaccount:ns:sa" '
                                 'cannot patch resource "deployments" in API group "apps" in the namespace "ns"')
        assert st["details"] == {"name": "web", "group": "apps", "kind": "deployments"}
        assert t.apps.read_namespaced_deployment("web", "ns").metadata.name == "web"
        assert {r.user for r in server.requests} == {"system:serviceaccount:ns:sa"}
        t.api_client.close()


def test_fault_401_and_require_auth():
    """401 Unauthorized: injected (expired token), and for requests without
    a bearer token when require_auth is set."""
    with FakeApiServer(require_auth=True) as server:
        t = _fake_target(server)
        assert t.core.list_namespaced_config_map("default").items == []
        server.unauthorized(times=1)
        with pytest.raises(ApiException) as ei:
            t.core.list_namespaced_config_map("default")
        assert ei.value.status == 401 and status_of(ei.value)["reason"] == "Unauthorized"
        with pytest.raises(urllib.error.HTTPError) as he:
            urllib.request.urlopen(server.url + "/api/v1/namespaces/default/configmaps")
        assert he.value.code == 401
        t.api_client.close()


def test_fault_delay_and_drop(k, fake):
    """Latency injection delays matching requests; `drop` closes the
    connection without an answer (the client sees a transport error)."""
    k.core.create_namespaced_config_map("default", configmap("c"))
    fake.inject_fault(action="delay", delay=0.3, verb="get", resource="configmaps", times=1)
    t0 = time.monotonic()
    k.core.read_namespaced_config_map("c", "default")
    assert time.monotonic() - t0 >= 0.3
    rule = fake.inject_fault(action="drop", verb="patch", resource="configmaps", times=1)
    with pytest.raises(Exception):
        k.core.patch_namespaced_config_map("c", "default", {"data": {"k": "x"}})
    assert rule.hits == 1
    assert k.core.patch_namespaced_config_map("c", "default", {"data": {"k": "x"}}).data == {"k": "x"}


# ============================================================== request counting and Python API

def test_request_counting_per_verb_and_resource(k, fake):
    """Every API request is counted at the server by Kubernetes verb and
    resource (with group and subresource), and counts can be reset."""
    fake.reset_requests()
    k.apps.create_namespaced_deployment("default", deployment("web"))
    k.apps.read_namespaced_deployment("web", "default")
    k.apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 3}})
    k.apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 4}})
    k.apps.list_namespaced_deployment("default")
    k.apps.list_namespaced_deployment("default", watch=True, _preload_content=False).close()
    assert fake.count("patch", "deployments") == 1
    assert fake.count("patch", "deployments/scale") == 1
    assert fake.count(resource="deployments.apps/*") == 6
    assert fake.request_counts() == {
        "create deployments.apps": 1, "get deployments.apps": 1, "list deployments.apps": 1,
        "patch deployments.apps": 1, "patch deployments.apps/scale": 1, "watch deployments.apps": 1}
    fake.reset_requests()
    assert fake.count() == 0


def test_python_api_seeding_and_assertions(k, fake):
    """Objects can be seeded and inspected in-process; they are the same
    objects the HTTP API serves (same rv, same uid)."""
    created = fake.create(deployment("seeded"))
    via_http = k.apps.read_namespaced_deployment("seeded", "default")
    assert via_http.metadata.uid == created["metadata"]["uid"]
    k.apps.patch_namespaced_deployment("seeded", "default", {"metadata": {"labels": {"x": "y"}}})
    stored = fake.get("deployments", "default", "seeded")
    assert stored["metadata"]["labels"]["x"] == "y" and stored["kind"] == "Deployment"
    fake.apply({**deployment("seeded", replicas=7)})
    assert k.apps.read_namespaced_deployment("seeded", "default").spec.replicas == 7
    assert [d["metadata"]["name"] for d in fake.list("deployments")] == ["seeded"]
    assert int(fake.get("deployments", "default", "seeded")["metadata"]["resourceVersion"]) <= fake.resource_version
    assert fake.count() == 3, "in-process calls are not API requests"


def test_stop_ends_open_watches_promptly():
    """Stopping the server ends open watch streams (the client's stream
    finishes instead of hanging) and stop() returns promptly."""
    server = FakeApiServer().start()
    t = _fake_target(server)
    ended = threading.Event()
    opened = threading.Event()

    def consume() -> None:
        try:
            for ev in watch.Watch().stream(t.core.list_namespaced_config_map, "default", timeout_seconds=60):
                opened.set()
        except Exception:
            pass
        ended.set()

    server.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    th = threading.Thread(target=consume, daemon=True)
    th.start()
    assert opened.wait(15)
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 10
    assert ended.wait(15), "watch stream did not end"
    t.api_client.close()


def test_kubeconfig_loads_into_a_configuration(fake):
    """write_kubeconfig() is a normal kubeconfig: load_kube_config fills a
    Configuration with the server URL and bearer token."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=fake.write_kubeconfig(token="t0k"), client_configuration=cfg)
    assert cfg.host == fake.url
    assert "t0k" in json.dumps(cfg.api_key)
    with client.ApiClient(cfg) as ac:
        assert client.VersionApi(ac).get_code().major == "1"


# ============================================================== standalone process

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_module_runs_standalone_and_stops_on_sigterm(tmp_path):
    """`python -m rollout.testing.apiserver --port PORT` serves on
    127.0.0.1:PORT, writes a usable kubeconfig, exposes request counts under
    /_fake/, and exits 0 promptly on SIGTERM."""
    port = _free_port()
    kubeconfig = tmp_path / "kubeconfig"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollout.testing.apiserver", "--port", str(port),
         "--kubeconfig", str(kubeconfig)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"http://127.0.0.1:{port}" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        ac = _client_for(str(kubeconfig))
        core = client.CoreV1Api(ac)
        core.create_namespaced_config_map("default", configmap("from-subprocess"))
        assert core.read_namespaced_config_map("from-subprocess", "default").data == {"k": "v"}
        counts = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/requests").read())
        assert counts["counts"]["create configmaps"] == 1
        ac.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

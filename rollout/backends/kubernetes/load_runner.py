"""The Kubernetes I/O of the in-cluster load runner (`load.runner: kubernetes`, see rollout.load.cluster).

Creates, per run, from the templates (package data) templates/locust-{configmap,master,workers}.yaml:
  * ConfigMap `<name>-locustfile` (the plan's locustfile),
  * Deployment + Service `<name>-master` (`rollout load-master`; web port 8089, worker port 5557),
  * Deployment `<name>-worker` (N `rollout load-worker --master <name>-master:5557`),
all labelled `rollout.dev/load-run=<run>`, all running rollout's image; and talks to the master only
through the API server's service proxy: `/api/v1/namespaces/{ns}/services/{name}:8089/proxy/<path>`
(GET rollout/stats, POST rollout/start, POST rollout/stop). `delete()` removes every object, tolerating
ones already gone; `delete_by_label` removes a run's objects found by its label (a killed driver's).

RBAC (beyond manifests/rbac.yaml's rules for a rollout): create/delete on configmaps, services and
deployments.apps, and get/create on services/proxy in the namespace.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException

from rollout.backends.kubernetes.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    REQUEST_TIMEOUT,
    Kube,
    Res,
)
from rollout.errors import BackendError

SERVICES = Res("", "services")
SERVICE_PROXY = Res("", "services/proxy")
WEB_PORT = 8089
TEMPLATES = Path(__file__).resolve().parent / "templates"  # package data (not under manifests/: they are templates, not objects)
TEMPLATE_FILES = ("locust-configmap.yaml", "locust-master.yaml", "locust-workers.yaml")


def _unread(fn: Any) -> Any:
    """A delete whose answer is not read into a model: what a DELETE returns differs (a Status, or the deleted
    object, whose `status` then is not a ServiceStatus), and nothing of it is needed; errors still raise."""

    def call(*args: Any, **kw: Any) -> None:
        resp = fn(*args, _preload_content=False, **kw)
        try:
            resp.read()
        finally:
            resp.release_conn()

    return call


def render(name: str, namespace: str, run: str, image: str, workers: int, locustfile: str, templates: Path = TEMPLATES) -> list[dict[str, Any]]:
    """The run's objects, in creation order (ConfigMap, master Deployment, Service, worker Deployment)."""
    values = {"name": name, "namespace": namespace, "run": run, "image": image, "workers": str(int(workers))}
    out: list[dict[str, Any]] = []
    for fname in TEMPLATE_FILES:
        path = templates / fname
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BackendError(f"the in-cluster load template {path} cannot be read: {exc}",
                               "reinstall rollout: the templates are package data (rollout/backends/kubernetes/templates)") from None
        try:
            docs = list(yaml.safe_load_all(string.Template(text).substitute(values)))
        except (ValueError, KeyError, yaml.YAMLError) as exc:
            raise BackendError(f"the in-cluster load template {path} is broken: {exc}", "restore it from the rollout checkout") from None
        out.extend(d for d in docs if d)
    for obj in out:
        if obj["kind"] == "ConfigMap":
            obj["data"] = {"locustfile.py": locustfile}
    return out


class LocustInCluster:
    """One run's objects in one namespace, and the master's HTTP API through the service proxy."""

    def __init__(self, kube: Kube, name: str, run: str, image: str, workers: int, locustfile: str) -> None:
        self.kube, self.name, self.ns, self.run = kube, name, kube.namespace, run
        self.objects = render(name, self.ns, run, image, workers, locustfile)
        self.created: list[dict[str, Any]] = []

    def _op(self, verb: str, obj: dict[str, Any]) -> Any:
        kind, name = obj["kind"], obj["metadata"]["name"]
        k = self.kube
        if kind == "ConfigMap":
            res, create, delete = CONFIGMAPS, k.core.create_namespaced_config_map, k.core.delete_namespaced_config_map
        elif kind == "Service":
            res, create, delete = SERVICES, k.core.create_namespaced_service, k.core.delete_namespaced_service
        else:
            res, create, delete = DEPLOYMENTS, k.apps.create_namespaced_deployment, k.apps.delete_namespaced_deployment
        if verb == "create":
            return k.call("create", res, name, create, self.ns, obj)
        return k.call("delete", res, name, _unread(delete), name, self.ns, missing_ok=True, propagation_policy="Background")

    def create(self) -> None:
        for obj in self.objects:
            self.created.append(obj)  # before the call: a create that timed out may still have happened
            self._op("create", obj)

    def delete(self) -> list[str]:
        """Delete everything created (newest first); returns the problems, never raises for one object."""
        problems = []
        for obj in reversed(self.created):
            try:
                self._op("delete", obj)
            except Exception as exc:  # noqa: BLE001  (keep deleting the others)
                problems.append(f"{obj['kind']} {obj['metadata']['name']}: {exc}")
        self.created.clear()
        return problems

    # ------------------------------------------------------------------ the master, through the service proxy
    def proxy_path(self, path: str) -> str:
        return f"/api/v1/namespaces/{self.ns}/services/{self.name}-master:{WEB_PORT}/proxy/{path.lstrip('/')}"

    def _raw(self, method: str, path: str, form: dict[str, Any] | None = None, json_body: Any = None,
             _request_timeout: Any = REQUEST_TIMEOUT) -> dict[str, Any]:
        api = self.kube.api
        headers = {"Accept": "application/json"}
        post = None
        body = None
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            post = [(k, str(v)) for k, v in form.items()]
        elif json_body is not None:
            headers["Content-Type"] = "application/json"
            body = json_body
        elif method == "POST":
            headers["Content-Type"] = "application/json"
            body = {}
        path, _, query = path.partition("?")
        m, url, hdrs, ser_body, _post = api.param_serialize(method=method, resource_path=self.proxy_path(path), header_params=headers,
                                                            body=body, auth_settings=["BearerToken"],
                                                            query_params=[tuple(kv.split("=", 1)) for kv in query.split("&") if "=" in kv])
        resp = api.call_api(m, url, header_params=hdrs, body=ser_body, post_params=post, _request_timeout=_request_timeout)
        resp.read()
        data = resp.data or b""
        if resp.status >= 400:
            exc = ApiException(status=resp.status, reason=resp.reason)
            exc.body = data.decode("utf-8", "replace")
            exc.headers = dict(resp.getheaders() or {})
            raise exc
        try:
            doc = json.loads(data or b"{}")
        except ValueError:
            doc = {"raw": data.decode("utf-8", "replace")[:200]}
        return doc if isinstance(doc, dict) else {"value": doc}

    def master(self, method: str, path: str, form: dict[str, Any] | None = None, *, json_body: Any = None,
               retry: bool = True) -> dict[str, Any]:
        """One call to the master's web API. With retry, the client's policy (bounded retries, BackendError);
        without, one attempt whose failure is raised as is (for polling while the pods start)."""
        verb = "get" if method == "GET" else "create"
        if not retry:
            return self._raw(method, path, form, json_body)
        return self.kube.call(verb, SERVICE_PROXY, f"{self.name}-master:{WEB_PORT}", self._raw, method, path, form, json_body)

    def describe(self) -> str:
        """The Deployments' readiness, for a message when the pods do not come up."""
        parts = []
        for obj in self.objects:
            if obj["kind"] != "Deployment":
                continue
            name = obj["metadata"]["name"]
            try:
                d = self.kube.call("get", DEPLOYMENTS, name, self.kube.apps.read_namespaced_deployment, name, self.ns, missing_ok=True)
            except BackendError as exc:
                parts.append(f"{name}: {exc}")
                continue
            st = (d or {}).get("status") or {}
            parts.append(f"{name} {st.get('readyReplicas', 0) or 0}/{obj['spec']['replicas']} ready")
        return ", ".join(parts)


def delete_by_label(kube: Kube, namespace: str, selector: str) -> int:
    """Delete every Deployment, Service and ConfigMap matching the label selector in the namespace (a killed
    driver's load run); returns how many were deleted. Objects already gone are fine; BackendError otherwise."""
    n = 0
    kinds = ((DEPLOYMENTS, kube.apps.list_namespaced_deployment, kube.apps.delete_namespaced_deployment),
             (SERVICES, kube.core.list_namespaced_service, kube.core.delete_namespaced_service),
             (CONFIGMAPS, kube.core.list_namespaced_config_map, kube.core.delete_namespaced_config_map))
    for res, lister, deleter in kinds:
        found = kube.call("list", res, selector, lister, namespace, label_selector=selector) or {}
        for obj in found.get("items") or []:
            name = obj["metadata"]["name"]
            kube.call("delete", res, name, _unread(deleter), name, namespace, missing_ok=True, propagation_policy="Background")
            n += 1
    return n

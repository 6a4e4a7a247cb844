"""`FakeApiServer`: the one object tests and benchmarks hold.

It owns the store, the REST registry, the simulated Deployment controller,
the fault rules and the request log, serves them over HTTP on 127.0.0.1, and
hands out a kubeconfig so the code under test connects exactly as it would
to a cluster (`kubernetes.config.load_kube_config`). It also offers direct,
in-process access to objects for seeding and assertions.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
from typing import Any, Callable, Iterable

from . import errors as E
from .controller import DeploymentController, DeploymentFault
from .faults import FaultRule, Faults, RequestLog, RequestRecord, WRITE_VERBS, _as_set
from .handler import _HTTPServer
from .registry import Registry
from .resources import ResourceRegistry, ResourceType
from .store import Store

DEFAULT_USER = "system:serviceaccount:default:rollout"
DEFAULT_TOKEN = "fake-token"


class FakeApiServer:
    """A fake kube-apiserver on 127.0.0.1.

    Namespaces are implicit by default: creating an object in a namespace
    that does not exist creates the Namespace first (what the real
    NamespaceAutoProvision admission plugin does), so tests need no setup
    and `GET /api/v1/namespaces/x` agrees with what is stored. Pass
    `implicit_namespaces=False` to require a Namespace object (404
    `namespaces "x" not found` otherwise), as a default cluster does.
    Deleting a Namespace deletes its content at once (no Terminating phase).

    Main knobs: `controller_delay` (seconds before the simulated Deployment
    controller reacts; 0 allowed), `progress_deadline` / `slow_ready_after`
    / `crash_backoff` for controller faults, `users` (token -> user name;
    any other bearer token is `default_user`), `require_auth` (401 without
    a token), `history_size` (watch window), `bookmark_interval`.
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        controller: bool = True,
        controller_delay: float = 0.05,
        slow_ready_after: float = 2.0,
        progress_deadline: float | None = None,
        crash_backoff: float = 0.5,
        controller_events: bool = True,
        history_size: int = 10000,
        implicit_namespaces: bool = True,
        users: dict[str, str] | None = None,
        default_user: str = DEFAULT_USER,
        token: str = DEFAULT_TOKEN,
        require_auth: bool = False,
        bookmark_interval: float = 1.0,
        default_watch_timeout: float = 1800.0,
        kubernetes_version: tuple[int, int] = (1, 33),
        verbose: bool = False,
        kubelet: bool | str | os.PathLike = False,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = port
        self.types = ResourceRegistry()
        self.store = Store(history_size=history_size)
        self.registry = Registry(self.store, self.types, implicit_namespaces=implicit_namespaces)
        self.faults = Faults()
        self.log = RequestLog()
        self.users: dict[str, str] = dict(users or {})
        self.default_user = default_user
        self.token = token
        self.require_auth = require_auth
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.kubernetes_version = kubernetes_version
        self.verbose = verbose
        self.controller = DeploymentController(
            self.store, self.registry, delay=controller_delay, slow_ready_after=slow_ready_after,
            progress_deadline=progress_deadline, crash_backoff=crash_backoff,
            emit_events=controller_events)
        self._controller_enabled = controller
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._kubeconfigs: list[str] = []
        # opt-in (rollout.testing.kubelet): Deployments of rollout's/Locust's image run as local processes,
        # and the service proxy reaches them; True: in a temporary directory, a path: there
        self.kubelet: Any = None
        if kubelet:
            from ..kubelet import Kubelet

            self.kubelet = Kubelet(self, None if kubelet is True else kubelet)
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.registry.create(self.types.resolve("namespaces"), None, {"metadata": {"name": ns}})

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "FakeApiServer":
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self.store.closed = False
        self._httpd = _HTTPServer((self.host, self._requested_port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_until_stopped, args=(self._stopping,),
                                        name=f"fake-apiserver-{self.port}", daemon=True)
        self._thread.start()
        if self._controller_enabled:
            self.controller.start()
        if self.kubelet is not None:
            self.kubelet.start()
        return self

    def stop(self) -> None:
        """Stop serving: ends watches, closes connections, joins threads."""
        if self._httpd is None:
            return
        if self.kubelet is not None:
            self.kubelet.stop()
        self._stopping.set()
        self.store.close()
        self.controller.stop()
        self._httpd.wake()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._httpd.close_connections()
        self._httpd.join_threads(timeout=5.0)
        self._httpd.server_close()
        self._httpd = None
        self._thread = None
        for p in self._kubeconfigs:
            try:
                os.unlink(p)
            except OSError:
                pass
        self._kubeconfigs.clear()

    def __enter__(self) -> "FakeApiServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def version_info(self) -> dict:
        major, minor = self.kubernetes_version
        return {"major": str(major), "minor": str(minor),
                "gitVersion": f"v{major}.{minor}.0-fake", "gitCommit": "0" * 40,
                "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64"}

    # ------------------------------------------------------------ client config
    def kubeconfig(self, *, token: str | None = None, namespace: str = "default",
                   context: str = "fake") -> dict:
        """A kubeconfig (as a dict) with one context pointing here."""
        return {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {"token": token or self.token}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context,
                                                      "namespace": namespace}}],
            "current-context": context,
        }

    def write_kubeconfig(self, path: str | os.PathLike | None = None, **kw: Any) -> str:
        """Write `kubeconfig()` (JSON, which is valid YAML); returns the path.

        Without `path` a temp file is used and removed by `stop()`."""
        if path is None:
            fd, p = tempfile.mkstemp(prefix="fake-kubeconfig-", suffix=".yaml")
            os.close(fd)
            self._kubeconfigs.append(p)
            path = p
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.kubeconfig(**kw), fh, indent=2)
        return os.fspath(path)

    # ------------------------------------------------------------ objects
    def resource(self, spec: str) -> ResourceType:
        return self.types.resolve(spec)

    def register_custom_resource(self, group: str, version: str, plural: str, kind: str, *,
                                 namespaced: bool = True, status_subresource: bool = True,
                                 extra_versions: tuple[str, ...] = ()) -> ResourceType:
        """Serve another CRD-backed resource (CustomObjectsApi semantics)."""
        return self.types.add(ResourceType(group, version, plural, kind, namespaced=namespaced,
                                           singular=kind.lower(), custom=True, generation=True,
                                           status_subresource=status_subresource,
                                           extra_versions=extra_versions))

    def _rt_for(self, obj: dict) -> ResourceType:
        av, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        group, _, version = av.rpartition("/")
        for t in self.types.types:
            if t.kind == kind and t.group == group and version in t.versions:
                return t
        raise KeyError(f"no resource serves {av} {kind}")

    def get(self, resource: str, namespace: str | None, name: str) -> dict | None:
        """The stored object (a copy), or None."""
        rt = self.resource(resource)
        try:
            return self.registry.get(rt, namespace, name)
        except E.ApiError:
            return None

    def list(self, resource: str, namespace: str | None = None) -> list[dict]:
        rt = self.resource(resource)
        items = self.registry.list(rt, namespace)["items"]
        for i in items:
            i.setdefault("apiVersion", rt.api_version())
            i.setdefault("kind", rt.kind)
        return items

    def create(self, obj: dict, namespace: str | None = None) -> dict:
        """Create from a manifest dict (apiVersion/kind pick the resource)."""
        rt = self._rt_for(obj)
        ns = namespace or (obj.get("metadata") or {}).get("namespace") or "default"
        return self.registry.create(rt, ns, copy.deepcopy(obj))

    def apply(self, obj: dict, namespace: str | None = None) -> dict:
        """Create, or replace the existing object's spec/data (seeding helper)."""
        rt = self._rt_for(obj)
        meta = obj.get("metadata") or {}
        ns = namespace or meta.get("namespace") or "default"
        with self.store.cond:
            cur = self.store.get(rt.storage_key, ns if rt.namespaced else "", meta.get("name", ""))
            if cur is None:
                return self.registry.create(rt, ns, copy.deepcopy(obj))
            body = copy.deepcopy(obj)
            body.setdefault("metadata", {})["resourceVersion"] = cur["metadata"]["resourceVersion"]
            return self.registry.update(rt, ns, meta["name"], body)[0]

    def update_status(self, resource: str, namespace: str | None, name: str, status: dict) -> dict:
        rt = self.resource(resource)
        with self.store.cond:
            cur = self.registry.get(rt, namespace, name)
            cur["status"] = status
            return self.registry.update(rt, namespace, name, cur,
                                        subresource="status" if rt.status_subresource else None)[0]

    def delete(self, resource: str, namespace: str | None, name: str) -> None:
        rt = self.resource(resource)
        self.registry.delete(rt, namespace, name)

    def objects(self) -> dict[str, list[dict]]:
        """Everything stored, by storage key ("deployments.apps", "configmaps"...)."""
        return self.store.snapshot()

    @property
    def resource_version(self) -> int:
        return self.store.resource_version

    def compact(self) -> int:
        """Drop the watch history: resuming from any older rv now gets 410."""
        return self.store.compact()

    # ------------------------------------------------------------ requests
    @property
    def requests(self) -> list[RequestRecord]:
        return self.log.records()

    def count(self, verb: str | Iterable[str] | None = None, resource: str | None = None, **kw: Any) -> int:
        """API requests seen, e.g. count("patch", "deployments")."""
        return self.log.count(verb, resource, **kw)

    def request_counts(self) -> dict[str, int]:
        """{"<verb> <resource>[/<sub>]": n}, e.g. {"patch deployments.apps": 2}."""
        return self.log.counts()

    def reset_requests(self) -> None:
        self.log.reset()

    # ------------------------------------------------------------ API faults
    def inject_fault(self, status: int = 500, *, verb: str | Iterable[str] | None = None,
                     resource: str | None = None, namespace: str | None = None,
                     name: str | None = None, user: str | None = None, times: int | None = None,
                     per_object: bool = False, message: str | None = None,
                     retry_after: int | None = None, action: str = "error", delay: float = 0.0,
                     as_status: bool = False, when: Callable[[], bool] | None = None) -> FaultRule:
        """Make matching requests fail. Returns the rule (see `rule.hits`).

        e.g. inject_fault(503, verb="patch", resource="deployments", times=2);
        `when` (a predicate, in-process only) arms the rule only while it is true.
        """
        if action not in ("error", "delay", "drop"):
            raise ValueError("action must be 'error', 'delay' or 'drop'")
        return self.faults.add(FaultRule(
            status=status, verb=_as_set(verb), resource=resource, namespace=namespace, name=name,
            user=user, times=times, per_object=per_object, message=message, retry_after=retry_after,
            action=action, delay=delay, as_status=as_status, when=when))

    def conflict_on_first_write(self, resource: str | None = None, *,
                                verbs: Iterable[str] = ("update", "patch"), times: int = 1,
                                namespace: str | None = None) -> FaultRule:
        """409 Conflict on the first `times` writes to each object."""
        return self.inject_fault(409, verb=verbs, resource=resource, namespace=namespace,
                                 times=times, per_object=True)

    def forbid(self, verb: str | Iterable[str], resource: str, *, namespace: str | None = None,
               name: str | None = None, times: int | None = None) -> FaultRule:
        """403 Forbidden with the RBAC message naming the request's user."""
        return self.inject_fault(403, verb=verb, resource=resource, namespace=namespace, name=name,
                                 times=times)

    def unauthorized(self, *, times: int | None = None, **match: Any) -> FaultRule:
        """401 Unauthorized (e.g. an expired token)."""
        return self.inject_fault(401, times=times, **match)

    def throttle(self, times: int = 1, *, retry_after: int = 1, **match: Any) -> FaultRule:
        """429 from API Priority & Fairness (plain-text body, Retry-After)."""
        return self.inject_fault(429, times=times, retry_after=retry_after, **match)

    def clear_faults(self) -> None:
        self.faults.clear()

    # ------------------------------------------------------------ controller
    @property
    def controller_delay(self) -> float:
        return self.controller.delay

    @controller_delay.setter
    def controller_delay(self, value: float) -> None:
        self.controller.delay = float(value)

    def set_deployment_fault(self, fault: str, *, namespace: str | None = None,
                             name: str | None = None, image: str | None = None,
                             ready_after: float | None = None,
                             progress_deadline: float | None = None) -> DeploymentFault:
        """never-ready | slow | crash-loop | none, for matching Deployments
        (fnmatch patterns on namespace, name, and container image)."""
        return self.controller.set_fault(fault, namespace=namespace, name=name, image=image,
                                         ready_after=ready_after, progress_deadline=progress_deadline)

    def clear_deployment_faults(self) -> None:
        self.controller.clear_faults()


__all__ = ["FakeApiServer", "WRITE_VERBS", "DEFAULT_USER", "DEFAULT_TOKEN"]

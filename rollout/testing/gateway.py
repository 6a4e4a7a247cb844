"""A test-only gateway: real HTTP traffic that follows what the (fake) cluster says.

`rollout` on Kubernetes only writes objects: HTTPRoute weights, Deployment
replicas. In a cluster a gateway (or kube-proxy) turns them into traffic; on a
machine without one, `ClusterGateway` does: it watches the objects on an API
server (the fake of `rollout.testing.apiserver`, or anything speaking the same
REST over plain HTTP) and drives the local backend's weighted router
(`python -m rollout.backends.local.router`, a separate process) so that real
requests reach real local processes in the proportions the objects state::

    with ClusterGateway(kubeconfig, "shop", route_name="answer",
                        backends={"answer-stable": 8001, "answer-canary": 8002}) as gw:
        plan.target.entry_url = gw.url        # Locust and users send their traffic here
        ...                                   # rollout patches the HTTPRoute; the split follows
        gw.settle()                           # the router now does what the objects say
        gw.config()                           # the router's config and counters
        gw.periods()                          # requests per applied config (counted at the router)

Routers (`router=`):

* ``gateway-api`` — the HTTPRoute `route_name`: the first rule without header
  matches that has a backendRef to a known Service gives the weights
  (`weight` defaults to 1, as in the API); a rule whose matches carry one
  `Exact` header match and whose backendRefs all go to the canary Service is
  the cohort (the router sends requests with that header to the canary, as
  the more specific rule wins in Gateway API). Each backendRef's
  `ResponseHeaderModifier` filter setting `version_header` names the version
  (the router adds the header to responses that lack it). The first
  Service in `backends` (or `services=`) is stable, the other the canary.
* ``replicas`` — one Service over two Deployments: kube-proxy spreads over
  ready endpoints, so the canary's share is canary ready / all ready
  (`status.readyReplicas`); `backends` names the two Deployments (stable
  first), a version is the Deployment's `rollout.dev/version` annotation.

Which process serves a backend: `backends={name: port}` pins one local
process per Service (gateway-api) or Deployment (replicas). With
`images={image: port}` instead, the process is the one running the image of
the Deployment behind it now (for a Service: the Deployment whose pod
template labels match its selector), so a promotion — the stable Deployment
given the canary's pod template — really moves users to the new version.

Changes arrive by watch (list, then watch from its resourceVersion with
bookmarks; 410 Gone → list again; a dropped connection → watch again), one
thread per resource. Every state of the objects the watch delivers is
applied in order (e.g. the replicas router's intermediate 4+1 pods), and
`history` keeps each applied config with the router's counters at the
switch. Problems (an object the gateway cannot interpret, a router that
refuses a config) go to `errors`; tests assert it stays empty.

Like a real data plane, it lags the API server (here by milliseconds: the
watch event, then the router's PUT /config), and nothing makes `rollout` wait
for it, so the first requests of a stage may still follow the previous split.

Limits, on purpose: plain HTTP and a bearer token only; paths, methods and
other matches of the HTTPRoute are not interpreted (everything goes through
the main rule); one cohort header; the router can only add a missing version
header, not overwrite the application's own.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Self

import yaml

from rollout.backends.local import router_client

GATEWAY_API = "gateway-api"
REPLICAS = "replicas"
VERSION_ANNOTATION = "rollout.dev/version"
_PATHS = {
    "httproutes": "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes",
    "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
    "services": "/api/v1/namespaces/{ns}/services",
}


class GatewayError(RuntimeError):
    """The objects cannot be turned into a router config, or the gateway could not start."""


def _server_and_token(api_url_or_kubeconfig: str, token: str | None) -> tuple[str, str | None]:
    if api_url_or_kubeconfig.startswith(("http://", "https://")):
        return api_url_or_kubeconfig.rstrip("/"), token
    kc = yaml.safe_load(Path(api_url_or_kubeconfig).read_text())
    ctx_name = kc.get("current-context")
    ctx = next(c["context"] for c in kc["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in kc["clusters"] if c["name"] == ctx["cluster"])
    user = next((u["user"] for u in kc.get("users") or [] if u["name"] == ctx.get("user")), {})
    return cluster["server"].rstrip("/"), token or user.get("token")


class _Api:
    """Plain-HTTP GETs to the API server (one connection per request: watches hold theirs)."""

    def __init__(self, server: str, token: str | None) -> None:
        u = urllib.parse.urlsplit(server)
        if u.scheme != "http":
            raise GatewayError(f"the test gateway speaks plain HTTP only, not {server}")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.headers = {"Accept": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get(self, path: str, timeout: float = 10.0) -> dict[str, Any]:
        conn = self.connect(timeout)
        try:
            conn.request("GET", path, headers=self.headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise GatewayError(f"GET {path}: HTTP {resp.status} {body[:200]!r}")
            return json.loads(body)  # type: ignore[no-any-return]
        finally:
            conn.close()


class _Watch(threading.Thread):
    """List + watch of one resource in a namespace; keeps `objects` (name -> object) current."""

    def __init__(self, api: _Api, path: str, names: set[str] | None, on_change: Any, errors: list[str]) -> None:
        super().__init__(name=f"gateway-watch{path}", daemon=True)
        self.api, self.path, self.names, self.on_change, self.errors = api, path, names, on_change, errors
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = ""
        self.lock = threading.Lock()
        self._halt = threading.Event()
        self._conn: http.client.HTTPConnection | None = None

    def relist(self) -> None:
        data = self.api.get(self.path)
        with self.lock:
            self.objects = {o["metadata"]["name"]: o for o in data.get("items") or [] if self._wanted(o)}
            self.rv = data["metadata"]["resourceVersion"]
        self.on_change()

    def _wanted(self, obj: dict[str, Any]) -> bool:
        return self.names is None or obj["metadata"]["name"] in self.names

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(self.objects)

    def run(self) -> None:
        need_list = False
        while not self._halt.is_set():
            try:
                if need_list:
                    self.relist()
                    need_list = False
                need_list = self._watch_once()
            except GatewayError as exc:  # the server refused the watch or the list: say so, list again
                if self._halt.is_set():
                    return
                self.errors.append(f"{exc} (retrying)")
                need_list = True
                self._halt.wait(0.2)
            except (OSError, http.client.HTTPException):  # a dropped connection: watch again from rv
                if self._halt.is_set():
                    return
                self._halt.wait(0.1)
            except Exception as exc:  # noqa: BLE001 — e.g. an event that is not JSON: say so, list again
                if self._halt.is_set():
                    return
                self.errors.append(f"watch {self.path}: {type(exc).__name__}: {exc} (listing again)")
                need_list = True
                self._halt.wait(0.2)

    def _watch_once(self) -> bool:
        """One watch request from self.rv; True when the history is gone (410) and a new list is needed."""
        query = urllib.parse.urlencode({"watch": "true", "resourceVersion": self.rv, "allowWatchBookmarks": "true",
                                        "timeoutSeconds": "60"})
        conn = self._conn = self.api.connect(timeout=10.0)  # bookmarks every second: 10 s of silence is a dead server
        try:
            conn.request("GET", f"{self.path}?{query}", headers=self.api.headers)
            resp = conn.getresponse()
            if resp.status == 410:
                return True
            if resp.status != 200:
                raise GatewayError(f"watch {self.path}: HTTP {resp.status} {resp.read()[:200]!r}")
            while not self._halt.is_set():
                line = resp.readline()
                if not line:
                    return False  # the server ended the watch (timeoutSeconds): watch again from rv
                if not line.strip():
                    continue
                ev = json.loads(line)
                obj = ev.get("object") or {}
                if ev.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        return True
                    raise GatewayError(f"watch {self.path}: {obj.get('message', obj)}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                changed = False
                with self.lock:
                    if ev["type"] in ("ADDED", "MODIFIED") and self._wanted(obj):
                        self.objects[obj["metadata"]["name"]] = obj
                        changed = True
                    elif ev["type"] == "DELETED" and obj["metadata"]["name"] in self.objects:
                        del self.objects[obj["metadata"]["name"]]
                        changed = True
                    if rv:
                        self.rv = rv
                if changed:
                    self.on_change()
            return False
        finally:
            self._conn = None
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked readline
            except OSError:
                pass


class ClusterGateway:
    """Watches the objects of one router on an API server and drives a local weighted router accordingly.

    `api_url_or_kubeconfig`: the server's URL (http://127.0.0.1:PORT) or a kubeconfig file (its current
    context's server and token). `backends` maps the stable then the canary Service (gateway-api) or
    Deployment (replicas) to a local port; or give `images` (image -> local port, see the module doc) and
    name the pair with `services=(stable, canary)` or `deployments=(stable, canary)`. `port`: the gateway's
    own port (0: a free one; read `url` after `start()`).
    """

    def __init__(self, api_url_or_kubeconfig: str, namespace: str, *, router: str = GATEWAY_API,
                 route_name: str | None = None, backends: dict[str, int] | None = None,
                 images: dict[str, int] | None = None,
                 services: tuple[str, str] | None = None, deployments: tuple[str, str] | None = None,
                 version_header: str = "X-Version", token: str | None = None, port: int = 0,
                 workdir: str | os.PathLike[str] | None = None) -> None:
        if router not in (GATEWAY_API, REPLICAS):
            raise GatewayError(f"router must be {GATEWAY_API!r} or {REPLICAS!r}, not {router!r}")
        if router == GATEWAY_API and not route_name:
            raise GatewayError("route_name is required with the gateway-api router")
        if (backends is None) == (images is None):
            raise GatewayError("give either backends={name: port} or images={image: port}")
        names = list(backends or {})
        pair = services if router == GATEWAY_API else deployments
        if pair is not None:
            names = list(pair)
        if len(names) != 2:
            kind = ("Service", "services") if router == GATEWAY_API else ("Deployment", "deployments")
            raise GatewayError(f"name the stable and the canary {kind[0]}: backends in that order, or {kind[1]}=(stable, canary)")
        self.router, self.namespace, self.route_name = router, namespace, route_name
        self.stable_name, self.canary_name = names
        self.backends = dict(backends or {})
        self.images = dict(images or {})
        self.version_header = version_header
        self.api = _Api(*_server_and_token(api_url_or_kubeconfig, token))
        self.errors: list[str] = []
        self.history: list[dict[str, Any]] = []  # {"at", "config", "counters"} per applied config
        self._port = port
        self._own_dir = workdir is None
        self._dir = Path(workdir or tempfile.mkdtemp(prefix="rollout-gateway-"))
        self._lock = threading.RLock()
        self._applied: dict[str, Any] | None = None
        self._generation = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self.admin_port = 0
        self.port = 0
        self._services: dict[str, dict[str, Any]] = {}
        self._started = False
        ns = namespace
        self._routes = _Watch(self.api, _PATHS["httproutes"].format(ns=ns), {route_name or ""}, self._changed, self.errors) \
            if router == GATEWAY_API else None
        want_deps = None if images is not None else {self.stable_name, self.canary_name}
        self._deps = _Watch(self.api, _PATHS["deployments"].format(ns=ns), want_deps, self._changed, self.errors) \
            if (router == REPLICAS or images is not None) else None
        self._watches = [w for w in (self._routes, self._deps) if w is not None]

    # -- lifecycle -----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        try:
            if self.images:
                self._services = {s["metadata"]["name"]: s for s in
                                  self.api.get(_PATHS["services"].format(ns=self.namespace)).get("items") or []}
            for w in self._watches:
                w.relist()  # the router starts with what the objects say now
            config = self.desired()
            self._start_router(config)
            self._started = True
            for w in self._watches:
                w.start()
            self._changed()  # anything that changed between the lists and the router's start
        except BaseException:
            self.stop()
            raise
        return self

    def _start_router(self, config: dict[str, Any]) -> None:
        cfg, ready, log = self._dir / "router.json", self._dir / "router.ready.json", self._dir / "router.log"
        self._generation += 1
        cfg.write_text(json.dumps({**config, "generation": self._generation}))
        ready.unlink(missing_ok=True)
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "rollout.backends.local.router", "--port", str(self._port), "--admin-port", "0",
                 "--config", str(cfg), "--ready-file", str(ready), "--upstream-timeout", "10"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise GatewayError(f"the router did not start (exit {self._proc.poll()}): {log.read_text()[-500:]}")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        self.port, self.admin_port = int(info["port"]), int(info["admin_port"])
        self._admin = router_client.AdminEndpoint(self.admin_port, Path(info["token_file"]).read_text().strip())
        applied = router_client.get_config(self._admin)
        self._applied = config
        self.history.append({"at": time.time(), "config": config, "counters": _counters(applied)})

    def stop(self) -> None:
        """Stop the watches and the router process (idempotent; the router is stopped whatever else fails)."""
        self._started = False
        try:
            for w in self._watches:
                w.stop()
            for w in self._watches:
                if w.is_alive():
                    w.join(timeout=5)
        finally:
            self._stop_router()

    def _stop_router(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        elif proc is not None:
            proc.wait()
        if self._own_dir:
            for f in self._dir.glob("*"):
                f.unlink(missing_ok=True)
            try:
                self._dir.rmdir()
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- objects -> router config -------------------------------------------------

    def desired(self, route: dict[str, Any] | None = None, deployments: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The router config the objects ask for (the watched ones unless given)."""
        if deployments is None and self._deps is not None:
            deployments = self._deps.snapshot()
        deployments = deployments or {}
        if self.router == REPLICAS:
            return self._from_replicas(deployments)
        if route is None:
            assert self._routes is not None
            route = self._routes.snapshot().get(self.route_name or "")
        if route is None:
            raise GatewayError(f"HTTPRoute {self.namespace}/{self.route_name} does not exist")
        return self._from_route(route, deployments)

    def _entry(self, name: str, version: str, deployments: dict[str, dict[str, Any]], *, deployment: bool) -> dict[str, Any]:
        if not self.images:
            if name not in self.backends:
                raise GatewayError(f"no local process for {name} (backends: {', '.join(self.backends)})")
            return {"version": version, "port": self.backends[name]}
        dep = deployments.get(name) if deployment else self._deployment_behind(name, deployments)
        if dep is None:
            raise GatewayError(f"Deployment {name} not found")
        containers = dep["spec"]["template"]["spec"].get("containers") or []
        image = containers[0].get("image") if containers else None
        if image not in self.images:
            raise GatewayError(f"Deployment {dep['metadata']['name']} runs {image}, which no local process serves "
                               f"(images: {', '.join(self.images)})")
        return {"version": version, "port": self.images[image]}

    def _deployment_behind(self, service: str, deployments: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        svc = self._services.get(service)
        if svc is None:
            raise GatewayError(f"Service {self.namespace}/{service} does not exist")
        selector = (svc.get("spec") or {}).get("selector") or {}
        found = [d for d in deployments.values()
                 if selector and all((((d["spec"]["template"].get("metadata") or {}).get("labels")) or {}).get(k) == v
                                     for k, v in selector.items())]
        if len(found) > 1:
            raise GatewayError(f"Service {service} selects the pods of several Deployments "
                               f"({', '.join(d['metadata']['name'] for d in found)}): give backends= instead of images=")
        return found[0] if found else None

    def _version_of(self, ref: dict[str, Any]) -> str:
        for f in ref.get("filters") or []:
            if f.get("type") == "ResponseHeaderModifier":
                mod = f.get("responseHeaderModifier") or {}
                for h in [*(mod.get("set") or []), *(mod.get("add") or [])]:
                    if str(h.get("name", "")).lower() == self.version_header.lower():
                        return str(h["value"])
        return str(ref.get("name"))

    def _from_route(self, route: dict[str, Any], deployments: dict[str, dict[str, Any]]) -> dict[str, Any]:
        ours = {self.stable_name, self.canary_name}
        rules = (route.get("spec") or {}).get("rules") or []

        def has_headers(rule: dict[str, Any]) -> bool:
            return any(m.get("headers") for m in rule.get("matches") or [])

        main = next((r for r in rules if not has_headers(r) and any(b.get("name") in ours for b in r.get("backendRefs") or [])), None)
        if main is None:
            raise GatewayError(f"HTTPRoute {self.route_name}: no rule without header matches routes to {' or '.join(sorted(ours))}")
        refs = {b.get("name"): b for b in main.get("backendRefs") or []}
        others = sorted(set(refs) - ours)
        if others:
            raise GatewayError(f"HTTPRoute {self.route_name}: the main rule also routes to {', '.join(others)}")
        weight = {n: int(refs[n].get("weight", 1)) if n in refs else 0 for n in ours}
        total = weight[self.stable_name] + weight[self.canary_name]
        share = weight[self.canary_name] / total if total else 0.0
        cohort = None
        canary_ref = refs.get(self.canary_name)
        for rule in rules:
            brefs = rule.get("backendRefs") or []
            if not has_headers(rule) or not brefs or any(b.get("name") != self.canary_name for b in brefs):
                continue
            headers = [(h.get("type", "Exact"), h["name"], h["value"]) for m in rule.get("matches") or [] for h in m.get("headers") or []]
            pairs = {(n, v) for t, n, v in headers if t == "Exact"}
            if len(pairs) != 1 or len(headers) != len(rule.get("matches") or []):
                raise GatewayError(f"HTTPRoute {self.route_name}: the router can send one exact header match to the canary, "
                                   f"not {headers}")
            if cohort is not None:
                raise GatewayError(f"HTTPRoute {self.route_name}: more than one cohort rule")
            name, value = pairs.pop()
            cohort = {"header": name, "value": value}
            canary_ref = canary_ref or brefs[0]
        stable_ref = refs.get(self.stable_name) or {"name": self.stable_name}
        config: dict[str, Any] = {"stable": self._entry(self.stable_name, self._version_of(stable_ref), deployments, deployment=False),
                                  "canary": None, "weight": 0.0, "cohort": None, "version_header": self.version_header}
        if share > 0 or cohort is not None:
            assert canary_ref is not None
            config.update(canary=self._entry(self.canary_name, self._version_of(canary_ref), deployments, deployment=False),
                          weight=share, cohort=cohort)
        return config

    def _from_replicas(self, deployments: dict[str, dict[str, Any]]) -> dict[str, Any]:
        def ready(name: str) -> int:
            dep = deployments.get(name)
            if dep is None:
                raise GatewayError(f"Deployment {self.namespace}/{name} does not exist")
            return int((dep.get("status") or {}).get("readyReplicas") or 0)

        def version(name: str) -> str:
            return str(((deployments[name]["metadata"].get("annotations")) or {}).get(VERSION_ANNOTATION) or name)

        s, c = ready(self.stable_name), ready(self.canary_name)
        config: dict[str, Any] = {"stable": self._entry(self.stable_name, version(self.stable_name), deployments, deployment=True),
                                  "canary": None, "weight": 0.0, "cohort": None, "version_header": self.version_header}
        if c > 0:
            config.update(canary=self._entry(self.canary_name, version(self.canary_name), deployments, deployment=True),
                          weight=c / (s + c))
        return config

    # -- applying ----------------------------------------------------------------

    def _changed(self) -> None:
        if not self._started:
            return
        with self._lock:
            try:
                config = self.desired()
            except (GatewayError, KeyError, TypeError, ValueError, IndexError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            if config == self._applied:
                return
            self._generation += 1
            try:
                applied = router_client.put_config(self._admin, {**config, "generation": self._generation})
            except router_client.RouterError as exc:
                self.errors.append(f"router: {exc}")
                return
            self._applied = config
            self.history.append({"at": time.time(), "config": config, "counters": _counters(applied)})

    def settle(self, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the router does what the objects on the server say now (read afresh); returns that config."""
        route = None
        if self._routes is not None:
            route = self.api.get(_PATHS["httproutes"].format(ns=self.namespace) + f"/{self.route_name}")
        deps = None
        if self._deps is not None:
            items = self.api.get(_PATHS["deployments"].format(ns=self.namespace)).get("items") or []
            deps = {d["metadata"]["name"]: d for d in items}
        want = self.desired(route, deps)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._applied == want:
                    return want
            if time.monotonic() > deadline:
                raise GatewayError(f"the router did not reach {want} within {timeout:g}s (applied: {self._applied}; "
                                   f"errors: {self.errors})")
            time.sleep(0.02)

    def config(self) -> dict[str, Any]:
        """The router's live config and counters (GET /config of its admin API)."""
        return router_client.get_config(self._admin)

    def periods(self) -> list[dict[str, Any]]:
        """Per applied config: {"config", "requests": {"stable", "canary"}, "cohort_requests"} routed while it was live."""
        with self._lock:
            hist = list(self.history)
        marks = [h["counters"] for h in hist] + [_counters(self.config())]
        out = []
        for h, a, b in zip(hist, marks, marks[1:]):
            out.append({"config": h["config"],
                        "requests": {k: b["requests"][k] - a["requests"][k] for k in ("stable", "canary")},
                        "cohort_requests": b["cohort_requests"] - a["cohort_requests"]})
        return out


def _counters(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"requests": dict(cfg["requests"]), "cohort_requests": int(cfg["cohort_requests"])}


def _pairs(values: list[str] | None, flag: str) -> dict[str, int]:
    """`NAME=PORT` flags -> {name: port} (an image reference may hold ':' and '@', so split at the last '=')."""
    out: dict[str, int] = {}
    for v in values or ():
        name, sep, port = v.rpartition("=")
        if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise GatewayError(f"{flag} {v!r}: expected NAME=PORT with a port from 1 to 65535")
        out[name] = int(port)
    return out


def _pair(value: str | None, flag: str) -> tuple[str, str] | None:
    if value is None:
        return None
    parts = [x.strip() for x in value.split(",")]
    if len(parts) != 2 or not all(parts):
        raise GatewayError(f"{flag} {value!r}: expected STABLE,CANARY")
    return parts[0], parts[1]


def main(argv: list[str] | None = None) -> int:
    """`python -m rollout.testing.gateway`: the gateway from a shell, for the README's walkthrough on the fake
    API server (a cluster's data plane, without a cluster); runs until SIGINT/SIGTERM."""
    import argparse
    import signal

    p = argparse.ArgumentParser(prog="python -m rollout.testing.gateway",
                                description="Carry real HTTP traffic to local processes the way the (fake) cluster's objects say.")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="the API server's kubeconfig (default: $KUBECONFIG)")
    p.add_argument("-n", "--namespace", required=True)
    p.add_argument("--router", choices=[GATEWAY_API, REPLICAS], default=GATEWAY_API)
    p.add_argument("--httproute", help="the HTTPRoute to follow (gateway-api)")
    p.add_argument("--services", help="STABLE,CANARY Services (gateway-api, with --image)")
    p.add_argument("--deployments", help="STABLE,CANARY Deployments (replicas, with --image)")
    p.add_argument("--backend", action="append", metavar="NAME=PORT", help="a Service (gateway-api) or Deployment (replicas) "
                   "served by the local process on PORT; stable first (repeat once)")
    p.add_argument("--image", action="append", metavar="IMAGE=PORT", help="the local process on PORT serves whichever "
                   "Deployment runs IMAGE now, so a promotion moves users (repeat per image)")
    p.add_argument("--port", type=int, default=0, help="the gateway's port on 127.0.0.1 (0: a free one)")
    p.add_argument("--version-header", default="X-Version")
    a = p.parse_args(argv)
    try:
        if not a.kubeconfig:
            raise GatewayError("no kubeconfig: give --kubeconfig or set $KUBECONFIG")
        gw = ClusterGateway(a.kubeconfig, a.namespace, router=a.router, route_name=a.httproute,
                            backends=_pairs(a.backend, "--backend") or None, images=_pairs(a.image, "--image") or None,
                            services=_pair(a.services, "--services"), deployments=_pair(a.deployments, "--deployments"),
                            version_header=a.version_header, port=a.port)
    except (GatewayError, OSError, KeyError, StopIteration, yaml.YAMLError) as exc:
        why = str(exc) or type(exc).__name__
        print(f"Error: {why} — give the API server's kubeconfig and STABLE,CANARY names", file=sys.stderr)
        return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        gw.start()
    except (GatewayError, OSError) as exc:
        print(f"Error: the gateway did not start: {exc} — is the API server up and does the kubeconfig point at it?", file=sys.stderr)
        return 3
    print(f"gateway listening on {gw.url} (namespace {a.namespace}, router {a.router})", flush=True)
    reported = 0
    try:
        while not done.wait(0.5):
            for e in gw.errors[reported:]:
                print(f"gateway: {e}", file=sys.stderr, flush=True)
            reported = len(gw.errors)
    finally:
        gw.stop()
    print("gateway stopped", flush=True)
    return 0


__all__ = ["ClusterGateway", "GatewayError"]

if __name__ == "__main__":
    sys.exit(main())

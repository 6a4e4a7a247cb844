"""A kubelet for the fake API server: Deployments run as local processes, Services reached through the proxy.

Opt-in (`FakeApiServer(kubelet=True)`, `python -m rollout.testing.apiserver --run-pods`): the fake's own
behaviour is unchanged without it. With it, every Deployment whose containers run an image this machine can
stand in for gets one local process per replica, started from the same command line the manifest gives the
container, so a test (or a newcomer without a cluster) runs the very commands a real cluster would:

  * images: a name containing `rollout` (rollout's image, entrypoint `rollout`) runs
    `sys.executable -m rollout ARGS` (a `command: [rollout, ...]` too); a name containing `locust` runs
    `sys.executable -m locust ARGS`. Any other image is not run (listed in `Kubelet.skipped` with why): the
    kubernetes backend's application Deployments stay the fake controller's business.
  * volumes: a ConfigMap volume becomes a directory of files (its keys, or its `items` paths) under the
    kubelet's work directory; an emptyDir an empty directory. Every argument that starts with a mount path
    is rewritten to the local directory (`/mnt/locust/locustfile.py` -> `<workdir>/<ns>/<pod>/locustfile/locustfile.py`).
  * ports: each containerPort gets a free port on 127.0.0.1; an argument `HOST:PORT` whose PORT is a
    containerPort of this container (a bind address: `0.0.0.0:8089`) becomes `127.0.0.1:<free port>`.
  * services: an argument `NAME:PORT` (or `NAME.NS[.svc[.cluster.local]]:PORT`) naming a Service of the
    namespace becomes `127.0.0.1:<the local port of its targetPort on a running pod it selects>`; the pod
    waits (is started a later round) until such a pod runs. This is the cluster DNS, for arguments only
    (environment values are passed as they are).
  * env: the container's literal `env` values, over this process's environment (PYTHONPATH included, so a
    checkout runs its own code).
  * lifecycle: replicas are followed (scale up/down), a process that exits is restarted after 1 s (the
    Deployment's restartPolicy: Always); a deleted Deployment's processes get SIGTERM, then SIGKILL after 10 s.
    Output goes to `<workdir>/<ns>/<pod>.log`.
  * the service proxy: `/api/v1/namespaces/{ns}/services/{name}:{port}/proxy/{path}` is forwarded to the
    local port behind the Service (503 `no endpoints available` while no pod listens, as the real proxy
    answers), recorded in the request log as verb get/create on `services/proxy`.

Not a kubelet: no probes (a pod counts as running once its process exists), no resources, no security
contexts, no init containers, one container per pod (the first).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:  # pragma: no cover
    from .apiserver.handler import Handler
    from .apiserver.server import FakeApiServer

PROXY = re.compile(r"^/api/v1/namespaces/([^/]+)/services/([^/:]+)(?::([^/]+))?/proxy(/.*)?$")
ADDRESS = re.compile(r"^([A-Za-z0-9.\-]*):(\d{1,5})$")
RESTART_BACKOFF = 1.0
STOP_GRACE = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@dataclass
class Pod:
    """One replica: its process, its local ports (containerPort -> 127.0.0.1 port) and labels."""

    name: str
    namespace: str
    labels: dict[str, str]
    ports: dict[int, int]
    port_names: dict[str, int]
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    exited_at: float | None = None

    def run(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.exited_at = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Workload:
    """A Deployment's pods, and the template they were made from (a changed template replaces them)."""

    template_hash: str
    pods: list[Pod] = field(default_factory=list)


class Kubelet:
    """Runs the fake's Deployments as local processes (see the module docstring); a thread polls the store."""

    def __init__(self, fake: FakeApiServer, workdir: str | os.PathLike[str] | None = None, poll: float = 0.1) -> None:
        self.fake = fake
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="rollout-kubelet-"))
        self.poll = poll
        self.workloads: dict[tuple[str, str], Workload] = {}
        self.skipped: dict[tuple[str, str], str] = {}  # (ns, deployment) -> why it is not run
        self.started: list[str] = []  # deployment names, one entry per pod started (restarts included)
        self.stopped: list[str] = []  # deployment names whose pods were stopped (deleted or replaced)
        self.problems: list[str] = []
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> Kubelet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self.lock:
            for key in list(self.workloads):
                self._stop_workload(key)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001  (keep running pods; the round is retried)
                self.problems.append(f"{type(exc).__name__}: {exc}")
                del self.problems[:-50]

    # -- what runs -----------------------------------------------------------------------
    def running_pods(self, namespace: str | None = None) -> list[Pod]:
        with self.lock:
            return [p for (ns, _), w in self.workloads.items() for p in w.pods if p.running and (namespace is None or ns == namespace)]

    def sync(self) -> None:
        """One round: start what is missing, stop what was deleted, restart what exited, follow replicas."""
        deps = {(d["metadata"].get("namespace", "default"), d["metadata"]["name"]): d for d in self.fake.list("deployments")}
        with self.lock:
            for key in [k for k in self.workloads if k not in deps]:
                self._stop_workload(key)
            for key, dep in deps.items():
                self._sync_one(key, dep)

    def _sync_one(self, key: tuple[str, str], dep: dict[str, Any]) -> None:
        template = dep["spec"].get("template") or {}
        containers = (template.get("spec") or {}).get("containers") or []
        if not containers:
            return
        why = self._why_not(containers[0])
        if why:
            self.skipped[key] = why
            return
        thash = hashlib.sha1(json.dumps(template, sort_keys=True).encode()).hexdigest()
        w = self.workloads.get(key)
        if w is not None and w.template_hash != thash:
            self._stop_workload(key)
            w = None
        if w is None:
            w = self.workloads[key] = Workload(thash)
        want = int(dep["spec"].get("replicas", 1) if dep["spec"].get("replicas") is not None else 1)
        while len(w.pods) > want:
            self._stop_pods([w.pods.pop()])
            self.stopped.append(key[1])
        now = time.monotonic()
        for pod in w.pods:  # restartPolicy: Always
            if pod.proc is not None and pod.proc.poll() is not None:
                if pod.exited_at is None:
                    pod.exited_at = now
                elif now - pod.exited_at >= RESTART_BACKOFF:
                    pod.restarts += 1
                    pod.run()
        while len(w.pods) < want:
            pod = self._make_pod(key, template, containers[0])
            if pod is None:
                return  # a Service it needs has no running pod yet, or its ConfigMap is missing: next round
            pod.run()
            w.pods.append(pod)
            self.started.append(key[1])

    @staticmethod
    def _why_not(container: dict[str, Any]) -> str:
        image = str(container.get("image", ""))
        name = image.rsplit("/", 1)[-1].split(":")[0].split("@")[0]
        if "rollout" in name or "locust" in name:
            return ""
        return f"image {image}: only rollout's and Locust's images run here"

    # -- a pod from the template -------------------------------------------------------------
    def _make_pod(self, key: tuple[str, str], template: dict[str, Any], c: dict[str, Any]) -> Pod | None:
        ns, dep = key
        self._seq += 1
        name = f"{dep}-{self._seq}"
        pod_dir = self.workdir / ns / name
        mounts = self._volumes(ns, template.get("spec") or {}, c, pod_dir)
        if mounts is None:
            return None
        ports = {int(p["containerPort"]): free_port() for p in c.get("ports") or [] if "containerPort" in p}
        port_names = {str(p["name"]): int(p["containerPort"]) for p in c.get("ports") or [] if p.get("name")}
        args: list[str] = []
        for raw in [*(c.get("command") or []), *(c.get("args") or [])]:
            mapped = self._map_arg(str(raw), ns, ports, mounts)
            if mapped is None:
                return None
            args.append(mapped)
        image_name = str(c.get("image", "")).rsplit("/", 1)[-1]
        module = "rollout" if "rollout" in image_name else "locust"
        if c.get("command"):
            first = Path(args[0]).name
            if first in ("rollout", "locust"):
                module, args = first, args[1:]
        cmd = [sys.executable, "-m", module, *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOSTNAME": name}
        env.update({str(e["name"]): str(e["value"]) for e in c.get("env") or [] if "value" in e})
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        pod_dir.mkdir(parents=True, exist_ok=True)
        return Pod(name, ns, labels, ports, port_names, cmd, env, pod_dir, self.workdir / ns / f"{name}.log")

    def _volumes(self, ns: str, spec: dict[str, Any], c: dict[str, Any], pod_dir: Path) -> dict[str, Path] | None:
        """mountPath -> local directory, with ConfigMap contents written; None while a ConfigMap is missing."""
        vols = {v["name"]: v for v in spec.get("volumes") or []}
        out: dict[str, Path] = {}
        for m in c.get("volumeMounts") or []:
            vol = vols.get(m.get("name"))
            local = pod_dir / str(m.get("name"))
            if vol is None:
                continue
            if "configMap" in vol:
                cm = self.fake.get("configmaps", ns, vol["configMap"]["name"])
                if cm is None:
                    if vol["configMap"].get("optional"):
                        local.mkdir(parents=True, exist_ok=True)
                        out[m["mountPath"]] = local
                        continue
                    return None
                data = dict(cm.get("data") or {})
                items = vol["configMap"].get("items")
                files = {i["path"]: data.get(i["key"], "") for i in items} if items else data
                for rel, text in files.items():
                    dest = local / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_text(text, encoding="utf-8")
            local.mkdir(parents=True, exist_ok=True)
            out[str(m["mountPath"]).rstrip("/")] = local
        return out

    def _map_arg(self, arg: str, ns: str, ports: dict[int, int], mounts: dict[str, Path]) -> str | None:
        for mount, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if arg == mount or arg.startswith(mount + "/"):
                return str(local) + arg[len(mount):]
        m = ADDRESS.match(arg)
        if not m:
            return arg
        host, port = m.group(1), int(m.group(2))
        if host in ("", "0.0.0.0", "127.0.0.1", "localhost", "::") and port in ports:
            return f"127.0.0.1:{ports[port]}"
        svc_name = host.split(".")[0]
        parts = host.split(".")
        if len(parts) > 1 and parts[1] != ns:
            ns_of = parts[1]
        else:
            ns_of = ns
        if host and self.fake.get("services", ns_of, svc_name) is not None:
            local = self.service_port(ns_of, svc_name, str(port))
            return f"127.0.0.1:{local}" if local is not None else None
        return arg

    # -- services -------------------------------------------------------------------------
    def service_port(self, namespace: str, service: str, port: str | None) -> int | None:
        """The 127.0.0.1 port behind `service:port` (number or name; none: the first), or None (no such port,
        or no running pod selected by the Service)."""
        svc = self.fake.get("services", namespace, service)
        if svc is None:
            return None
        sports = (svc.get("spec") or {}).get("ports") or []
        sp = next((p for p in sports if port is None or str(p.get("port")) == port or p.get("name") == port), None)
        if sp is None:
            return None
        target = sp.get("targetPort", sp.get("port"))
        selector = (svc.get("spec") or {}).get("selector") or {}
        for pod in self.running_pods(namespace):
            if not _matches(selector, pod.labels):
                continue
            cport = pod.port_names.get(target) if isinstance(target, str) and not str(target).isdigit() else int(target)
            if cport is not None and cport in pod.ports:
                return pod.ports[cport]
        return None

    # -- stopping --------------------------------------------------------------------------
    def _stop_workload(self, key: tuple[str, str]) -> None:
        w = self.workloads.pop(key, None)
        if w is not None:
            self._stop_pods(w.pods)
            self.stopped.append(key[1])

    @staticmethod
    def _stop_pods(pods: list[Pod]) -> None:
        for p in pods:
            if p.running:
                assert p.proc is not None
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for p in pods:
            if p.proc is None:
                continue
            try:
                p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()

    # -- the service proxy -------------------------------------------------------------------
    def proxy(self, handler: Handler, body: bytes) -> bool:
        """Answer the service-proxy path on `handler` (True), or leave the request to the fake (False)."""
        from .apiserver.faults import RequestInfo

        url = urlsplit(handler.path)
        m = PROXY.match(unquote(url.path))
        if not m:
            return False
        started = time.monotonic()
        ns, svc, port, rest = m.group(1), m.group(2), m.group(3), m.group(4) or "/"
        verb = {"GET": "get", "HEAD": "get"}.get(handler.command, "create")
        handler._pending = (RequestInfo(handler.command, url.path, verb, "", "v1", "services", "proxy", ns,
                                        f"{svc}:{port}" if port else svc), started, False)
        if self.fake.get("services", ns, svc) is None:
            handler._send_json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound",
                                     "message": f'services "{svc}" not found'})
            return True
        local = self.service_port(ns, svc, port)
        conn = http.client.HTTPConnection("127.0.0.1", local or 1, timeout=30)
        try:
            if local is None:
                raise ConnectionRefusedError("no running pod")
            headers = {k: v for k, v in handler.headers.items() if k.lower() in ("content-type", "accept")}
            conn.request(handler.command, rest + (f"?{url.query}" if url.query else ""), body=body or None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            handler._send(resp.status, payload, resp.getheader("Content-Type") or "application/json")
        except OSError as exc:  # what the real proxy says while the pod does not listen yet
            handler._send_json(503, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503, "reason": "ServiceUnavailable",
                                     "message": f'no endpoints available for service "{svc}" ({exc})'})
        finally:
            conn.close()
        return True

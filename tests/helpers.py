"""Helpers shared by several test modules (plain code, no fixtures: those live in conftest.py).

They were written out once per module before; one copy keeps the fakes the tests drive identical,
so a fix to one (a closed pipe, a kill after a stuck terminate) reaches every test that uses it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
NS = "shop"
PATHS = {"Deployment": "/apis/apps/v1/namespaces/{ns}/deployments", "Service": "/api/v1/namespaces/{ns}/services",
         "HTTPRoute": "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes",
         "Ingress": "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses"}


class StandaloneFake:
    """`python -m rollout.testing.apiserver` in its own process (controller delay 0), driven over HTTP only,
    seeded from manifests/ (`seed`: which files). Faults cross the process boundary through /_fake/."""

    def __init__(self, tmp: Path, seed: tuple[str, ...] = ("app.yaml", "httproute.yaml")) -> None:
        self.kubeconfig = str(tmp / "kubeconfig")
        self.proc = subprocess.Popen([sys.executable, "-m", "rollout.testing.apiserver", "--port", "0", "--controller-delay", "0",
                                      "--kubeconfig", self.kubeconfig], stdout=subprocess.PIPE, text=True)
        try:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()  # printed once it accepts connections
            assert "listening on" in line, line
            self.url = line.split()[-1]
            for f in seed:
                for doc in yaml.safe_load_all((ROOT / "manifests" / f).read_text()):
                    self.create(doc)
        except BaseException:
            self.stop()
            raise

    def call(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(self.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": "Bearer fake-token"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def create(self, obj: dict[str, Any]) -> None:
        self.call("POST", PATHS[obj["kind"]].format(ns=obj["metadata"]["namespace"]), obj)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.call("GET", PATHS[kind].format(ns=NS) + "/" + name)  # type: ignore[no-any-return]

    def route(self) -> dict[str, Any]:
        return self.get("HTTPRoute", "answer")

    def deployment(self, name: str) -> dict[str, Any]:
        return self.get("Deployment", name)

    def state(self) -> dict[str, Any]:
        """The recorded state of the plan `answer` (its ConfigMap)."""
        cm = self.call("GET", f"/api/v1/namespaces/{NS}/configmaps/rollout-answer")
        return json.loads(cm["data"]["state.json"])  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class AnswerOk(BaseHTTPRequestHandler):
    """200 "ok" to every GET, quietly: a load target where the service behind it is not what is tested."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def wait_until_up(ready: Callable[[], bool], proc: subprocess.Popen, log: Path, what: str, timeout: float) -> None:  # type: ignore[type-arg]
    """Poll `ready()` until it is true; fail at once (with the log's tail) when `proc` exits, or after `timeout`."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, f"{what} did not become ready in {timeout:.0f} s"
        time.sleep(0.1)

"""`rollout load-master`: the Locust master of in-cluster load, with rollout's per-version recorder, over HTTP.

Why a master of our own and not `locust --master`: Locust's master knows only Locust's statistics (rounded
response times, per request name, blind to which version answered). This process is the master side of
`rollout.load.distributed` with external workers — the very code `rollout gate/run --expect-workers N` runs —
so the workers (`rollout load-worker --master <svc>:5557`, the same plugin as local workers) send it exact
per-version histograms, and it serves them, cumulative for the running stage, as compact JSON to the CLI
outside the cluster (through the API server's service proxy, see rollout.load.cluster):

  GET  /                 "ok" (the readiness probe)
  GET  /rollout/stats    {"phase", "stage", "workers", "error", "stats"}; `?since=K` sends the per-second
                         timeline from entry K on (the CLI keeps the earlier ones)
  POST /rollout/start    JSON {"stage": id, "spec": {...LoadSpec fields}, "workers": N, "ready_timeout": s}:
                         runs one stage (waits, bounded, for N workers; then users, ticks, bounds, final flush)
  POST /rollout/stop     the running stage ends at its next tick (what a failing gate or Ctrl-C does outside)

phase: idle (no stage yet) -> waiting (for workers) -> running -> done | failed (error: {what, fix, code}).
The statistics are read live (the deltas the workers sent so far, merged as they arrive): what the gates
see is at most a worker's flush interval (1 s) plus the CLI's poll (1 s) old.

One stage at a time; the workers stay connected between stages (the session lives as long as the process),
so a rollout's stages reuse the pods. SIGTERM (pod deletion) quits the session — the workers are told to
quit — and the process exits 0.
"""

from __future__ import annotations

import rollout.load.runner  # noqa: F401,I001  (first: locust must patch before ssl is imported)

import json
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import gevent
import gevent.event
from gevent.pywsgi import WSGIServer

from rollout.errors import RolloutError
from rollout.load.runner import LoadSpec
from rollout.load.stats import StageStats
from rollout.load.wire import spec_from_json, stats_to_json

class Master:
    """One stage at a time, run by `run_load_distributed` with external workers; its numbers over HTTP."""

    def __init__(self, locustfile: Path, bind: tuple[str, int]) -> None:
        self.locustfile, self.bind = locustfile, bind
        self.phase = "idle"
        self.stage: str | None = None
        self.error: dict[str, Any] | None = None
        self.stop_requested = False
        self.final: StageStats | None = None
        self.greenlet: Any = None

    # -- the stage -------------------------------------------------------------------
    def start(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.stage is not None and str(body.get("stage", "")) == self.stage:
            return 202, {"stage": self.stage, "phase": self.phase}  # a retried request (the client retries transient errors)
        if self.phase in ("waiting", "running"):
            return 409, {"error": f"stage {self.stage} is {self.phase}"}
        try:
            spec = spec_from_json(body["spec"], self.locustfile)
            workers = int(body["workers"])
            ready = float(body.get("ready_timeout", 120.0))
        except (KeyError, TypeError, ValueError) as exc:
            return 400, {"error": f"bad start request: {type(exc).__name__}: {exc}"}
        self.stage, self.phase, self.error, self.stop_requested, self.final = str(body.get("stage", "")), "waiting", None, False, None
        self.greenlet = gevent.spawn(self._run, spec, workers, ready)
        return 202, {"stage": self.stage, "phase": self.phase}

    def _run(self, spec: LoadSpec, workers: int, ready: float) -> None:
        from rollout.load.distributed import External, run_load_distributed

        def on_tick(stats: StageStats) -> bool:
            self.phase = "running"
            return self.stop_requested

        on_tick.interrupt = lambda: self.stop_requested  # type: ignore[attr-defined]
        try:
            self.final = run_load_distributed(spec, on_tick, workers, External(self.bind[0], self.bind[1], ready))
            self.phase = "done"
        except RolloutError as exc:
            self.error = {"what": exc.what, "fix": getattr(exc, "hint", ""), "code": exc.exit_code}
            self.phase = "failed"
        except Exception as exc:  # noqa: BLE001  (reported to the CLI, which fails the stage closed)
            self.error = {"what": f"the master failed: {type(exc).__name__}: {exc}", "fix": "see the master pod's log", "code": 70}
            self.phase = "failed"
            print(f"load-master: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    def live(self) -> StageStats | None:
        if self.final is not None:
            return self.final
        from rollout.load import session as sessions

        for s in sessions._SESSIONS.values():
            return getattr(s, "stats", None)
        return None

    def workers(self) -> int:
        from rollout.load import session as sessions

        for s in sessions._SESSIONS.values():
            if s.runner is not None:
                return len(s.runner.clients.ready) + len(getattr(s.runner.clients, "running", [])) + len(getattr(s.runner.clients, "spawning", []))
        return 0

    def snapshot(self, since: int = 0) -> dict[str, Any]:
        stats = self.live() if self.phase in ("running", "done", "failed") else None
        return {"phase": self.phase, "stage": self.stage, "workers": self.workers(), "error": self.error,
                "stats": stats_to_json(stats, since) if stats is not None else None}

    # -- HTTP ------------------------------------------------------------------------
    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        code, doc = 404, {"error": f"no route {method} {path}"}
        try:
            if path in ("/", "/healthz") and method == "GET":
                code, doc = 200, {"ok": True}
            elif path == "/rollout/stats" and method == "GET":
                q = parse_qs(environ.get("QUERY_STRING", ""))
                code, doc = 200, self.snapshot(int((q.get("since") or ["0"])[0]))
            elif path == "/rollout/start" and method == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = json.loads(environ["wsgi.input"].read(length) or b"{}")
                code, doc = self.start(body)
            elif path == "/rollout/stop" and method == "POST":
                self.stop_requested = True
                code, doc = 200, {"phase": self.phase}
        except ValueError as exc:
            code, doc = 400, {"error": str(exc)}
        payload = json.dumps(doc, separators=(",", ":")).encode()
        reason = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 409: "Conflict"}[code]
        start_response(f"{code} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]


def serve(locustfile: Path, master_bind: tuple[str, int], web_bind: tuple[str, int]) -> int:
    """Run until SIGTERM/SIGINT; then quit the session (the workers are told to quit) and exit 0."""
    from rollout.load import session as sessions

    master = Master(locustfile, master_bind)
    server = WSGIServer(web_bind, master.app, log=None, error_log=None)
    done = gevent.event.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, done.set)
    server.start()
    print(f"rollout load-master: web on {web_bind[0]}:{server.server_port}, workers join {master_bind[0]}:{master_bind[1]}",
          file=sys.stderr, flush=True)
    try:
        done.wait()
    finally:
        master.stop_requested = True
        server.stop(timeout=1)
        sessions.close_all(0)
    return 0


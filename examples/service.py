"""The sample "answer" service of the demo: its versions differ by configuration only.

    python examples/service.py --port 8001 --version v1 --latency 20ms --error-rate 0.1% --seed 1
    python examples/service.py --port 8002 --version v3 --latency 45ms --error-rate 5% --seed 3

Endpoints:
    GET /healthz          200 "ok" (no simulated latency or errors)
    GET /metrics          Prometheus metrics (prometheus_client): http_requests_total{version,status},
                          http_request_duration_seconds{version} (histogram), answer_confidence{version}
                          (histogram) -- for Prometheus gates and `rollout watch` against a real Prometheus
    GET /api/answer?q=..  200 {"version": "v2", "answer": "...", "confidence": 0.93}
                          with `X-Version: v2`; an `--error-rate` share of requests
                          get 500 {"version": ..., "error": ...}, also with X-Version.
    anything else         404 (with X-Version)

Behaviour per request on /api/answer:
    latency    lognormal: median `--latency`, shape (sigma of the log) `--jitter`;
               slept cooperatively, so one process serves many requests at once
    errors     each request fails with probability `--error-rate` (after its latency)
    confidence normal around `--confidence` (sd 0.05), clipped to [0, 1]

A running version can be degraded from outside (tests, demos of `rollout watch`): with `--control-file F`,
a JSON file {"error_rate": 0.02, "confidence": 0.6} (either key) overrides those flags while it exists;
it is re-read at most every 0.2 s.

Units: --latency 20ms / 0.02s / 20 (bare number: ms); --error-rate 4% / 0.04
(bare number: a fraction). `--seed` makes the sequence of draws reproducible.

Served by gevent's WSGI server with HTTP/1.1 keep-alive (every response has a
Content-Length), TCP_NODELAY and no access log. SIGTERM or SIGINT: stop accepting, give
requests in flight up to 1 s (idle keep-alive connections do not wait), exit 0.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import socket
import sys
import time
from urllib.parse import parse_qs

from gevent import sleep as gsleep
from gevent import signal_handler
from gevent.event import Event
from gevent.pywsgi import WSGIServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

_ANSWERS = (
    "42",
    "it depends",
    "yes, with a canary first",
    "roll back and look at the p95",
    "ship it behind a flag",
    "measure before you guess",
)


def parse_latency_ms(text: str) -> float:
    t = text.strip().lower()
    for suffix, factor in (("ms", 1.0), ("us", 0.001), ("s", 1000.0)):
        if t.endswith(suffix):
            return float(t[: -len(suffix)]) * factor
    return float(t)


def parse_rate(text: str) -> float:
    t = text.strip()
    value = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"error rate {text!r} is not between 0% and 100%")
    return value


class Service:
    def __init__(self, version: str, latency_ms: float, jitter: float, error_rate: float, confidence: float, seed):
        self.version = version
        self.version_header = ("X-Version", version)
        self.mu = math.log(latency_ms / 1000.0) if latency_ms > 0 else None
        self.jitter = jitter
        self.error_rate = error_rate
        self.confidence = confidence
        self.rng = random.Random(seed)
        self.in_flight = 0
        self.base = (error_rate, confidence)
        self.control_file: str | None = None
        self._control_read = 0.0
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests_total", "Requests to /api/answer by version and status.",
                                ["version", "status"], registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "Latency of /api/answer.", ["version"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.5))
        self.confidence_hist = Histogram("answer_confidence", "Confidence score of answers.", ["version"], registry=self.registry,
                                    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95))

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/api/answer":
            self.in_flight += 1
            try:
                return self.answer(environ, start_response)
            finally:
                self.in_flight -= 1
        if path == "/healthz":
            return self.reply(start_response, "200 OK", b"ok\n", "text/plain")
        if path == "/metrics":
            return self.reply(start_response, "200 OK", generate_latest(self.registry), CONTENT_TYPE_LATEST)
        body = json.dumps({"version": self.version, "error": f"no such path {path}"}).encode()
        return self.reply(start_response, "404 Not Found", body)

    def apply_control(self) -> None:
        """--control-file: overrides of error_rate / confidence while the file exists (re-read every 0.2 s)."""
        now = time.monotonic()
        if self.control_file is None or now - self._control_read < 0.2:
            return
        self._control_read = now
        try:
            with open(self.control_file, encoding="utf-8") as f:
                over = json.load(f)
        except (OSError, ValueError):
            over = {}
        self.error_rate = float(over.get("error_rate", self.base[0]))
        self.confidence = float(over.get("confidence", self.base[1]))

    def answer(self, environ, start_response):
        rng = self.rng
        self.apply_control()
        started = time.perf_counter()
        if self.mu is not None:
            delay = rng.lognormvariate(self.mu, self.jitter) if self.jitter > 0 else math.exp(self.mu)
            gsleep(delay)
        if self.error_rate and rng.random() < self.error_rate:
            body = json.dumps({"version": self.version, "error": "simulated failure"}).encode()
            self.observe("500", started)
            return self.reply(start_response, "500 Internal Server Error", body)
        q = parse_qs(environ.get("QUERY_STRING", "")).get("q", [""])[0]
        confidence = min(1.0, max(0.0, rng.gauss(self.confidence, 0.05)))
        self.observe("200", started)
        self.confidence_hist.labels(self.version).observe(confidence)
        answer = _ANSWERS[sum(q.encode()) % len(_ANSWERS)]
        body = json.dumps({"version": self.version, "answer": answer, "confidence": round(confidence, 4)}).encode()
        return self.reply(start_response, "200 OK", body)

    def observe(self, status: str, started: float) -> None:
        self.requests.labels(self.version, status).inc()
        self.latency.labels(self.version).observe(time.perf_counter() - started)

    def reply(self, start_response, status: str, body: bytes, content_type: str = "application/json"):
        start_response(
            status,
            [("Content-Type", content_type), ("Content-Length", str(len(body))), self.version_header],
        )
        return [body]


class Server(WSGIServer):
    """pywsgi sends a response head and its body in two writes: without TCP_NODELAY
    the body waits for the client's delayed ACK (~40 ms on Linux) on keep-alive
    connections."""

    def handle(self, sock, address):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return super().handle(sock, address)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The sample answer service (versions differ by flags only).")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--version", required=True, help="version name, returned in the body and X-Version")
    p.add_argument("--latency", default="20ms", help="median latency of /api/answer (20ms, 0.02s)")
    p.add_argument("--jitter", type=float, default=0.3, help="lognormal sigma of the latency (0: constant)")
    p.add_argument("--error-rate", default="0%", help="share of /api/answer answered 500 (4%% or 0.04)")
    p.add_argument("--confidence", type=float, default=0.9, help="mean confidence score in answers (0..1)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible latency/error/confidence draws")
    p.add_argument("--control-file", default=None, help="JSON {error_rate, confidence} overriding the flags while it exists")
    args = p.parse_args(argv)
    try:
        latency_ms = parse_latency_ms(args.latency)
        error_rate = parse_rate(args.error_rate)
    except ValueError as e:
        p.error(str(e))
    if latency_ms < 0 or args.jitter < 0 or not 0.0 <= args.confidence <= 1.0:
        p.error("--latency and --jitter must be >= 0 and --confidence within 0..1")

    app = Service(args.version, latency_ms, args.jitter, error_rate, args.confidence, args.seed)
    app.control_file = args.control_file
    server = Server((args.host, args.port), app, log=None, error_log=sys.stderr, backlog=1024)

    stopping = Event()
    signal_handler(signal.SIGTERM, stopping.set)
    signal_handler(signal.SIGINT, stopping.set)
    try:
        server.start()
    except OSError as e:
        print(f"service: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 3
    stopping.wait()
    server.close()  # stop accepting; requests in flight get up to 1 s, idle keep-alive connections none
    deadline = time.monotonic() + 1.0
    while app.in_flight and time.monotonic() < deadline:
        gsleep(0.01)
    return 0


if __name__ == "__main__":
    sys.exit(main())

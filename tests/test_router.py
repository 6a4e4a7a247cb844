"""The local backend's router, against real processes on 127.0.0.1.

Upstreams are the demo's sample service (examples/service.py, gevent) and a tiny
stdlib server (below) that does what the service never does: no version
header, chunked and close-delimited responses, echoing request bodies, slow
answers. Every process is started by a fixture that kills it on teardown,
even when the test fails. No test asserts on timing beyond generous
upper bounds. Locust is never imported here (it monkey-patches the process).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from rollout.backends.local import router_client
from rollout.backends.local.router import ConfigError, SmoothWeighted, validate_config

REPO = Path(__file__).resolve().parents[1]
SERVICE = REPO / "examples" / "service.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
ENV.pop("http_proxy", None)
ENV.pop("HTTP_PROXY", None)
START_TIMEOUT = 20.0

# A stdlib upstream: prints its port, then serves until killed.
UPSTREAM = r'''
import hashlib, json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a): pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""): pass
                    return out, "chunked"
                out += self.rfile.read(size); self.rfile.read(2)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n), "length"

    def send(self, code, data, headers=()):
        self.send_response(code)
        for k, v in headers: self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and code not in (204, 304): self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path); q = {k: v[0] for k, v in parse_qs(url.query).items()}
        p = url.path
        if p == "/plain": return self.send(200, b"plain", [("Content-Type", "text/plain")])
        if p == "/versioned": return self.send(200, b"v", [("X-Version", "custom")])
        if p == "/nocontent":
            self.send_response(204); self.end_headers(); return
        if p == "/notmodified":
            self.send_response(304); self.send_header("ETag", '"x"'); self.end_headers(); return
        if p == "/chunked":
            self.send_response(200); self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Trailer"); self.end_headers()
            for part in (b"alpha-", b"beta-", b"gamma"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part)); self.wfile.flush()
            self.wfile.write(b"0\r\nX-Trailer: done\r\n\r\n"); return
        if p == "/eof":  # close-delimited body, no Content-Length
            self.send_response(200); self.send_header("Connection", "close"); self.end_headers()
            self.wfile.write(b"until-close " * 100); self.close_connection = True; return
        if p == "/slow":
            if "mark" in q: open(q["mark"], "w").close()
            time.sleep(float(q.get("s", "1")))
            return self.send(200, b"slow done")
        return self.echo()
    do_HEAD = do_GET

    def echo(self):
        data, framing = self.body()
        info = {"method": self.command, "path": self.path, "framing": framing, "length": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "client_port": self.client_address[1],
                "headers": {k.lower(): v for k, v in self.headers.items()}}
        self.send(200, json.dumps(info).encode(), [("Content-Type", "application/json")])
    do_POST = do_PUT = echo

srv = ThreadingHTTPServer(("127.0.0.1", 0), H); srv.daemon_threads = True
print(srv.server_address[1], flush=True)
srv.serve_forever()
'''


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def wait_http(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {START_TIMEOUT}s")


FAULTY = Path(__file__).resolve().parent / "faulty_service.py"


def serving(names: tuple[str, ...], command: Callable[[str, int], list[str]]) -> Iterator[dict[str, int]]:
    """Start `command(name, port)` once per name on a free port, wait until each answers /healthz,
    yield {name: port}; stop them all whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    try:
        for name in names:
            port = free_port()
            started.append(subprocess.Popen(command(name, port), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            ports[name] = port
        for proc, port in zip(started, ports.values()):
            wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        yield ports
    finally:
        for proc in started:
            stop(proc)


def faulty_canaries(modes: tuple[str, ...], version: str | None = None) -> Iterator[dict[str, int]]:
    """tests/faulty_service.py once per fault mode (reporting `version`, or the mode itself as its version): {mode: port}."""
    yield from serving(modes, lambda mode, port: [sys.executable, str(FAULTY), "--port", str(port), "--version", version or mode,
                                                  "--fault", mode, "--latency", "0"])


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def cfg(stable_port: int, canary_port: int | None = None, weight: float = 0.0, **extra) -> dict:
    config = {
        "stable": {"version": "v1", "port": stable_port},
        "canary": {"version": "v2", "port": canary_port} if canary_port else None,
        "weight": weight,
        "cohort": None,
        "version_header": "X-Version",
        "generation": 1,
    }
    config.update(extra)
    return config


class RouterProc:
    def __init__(self, proc: subprocess.Popen, ready: dict, config_path: Path) -> None:
        self.proc = proc
        self.port = ready["port"]
        self.admin_port = ready["admin_port"]
        self.ready = ready
        self.config_path = config_path
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = Path(ready["token_file"]).read_text().strip()
        self.admin = router_client.AdminEndpoint(self.admin_port, self.token)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0, trust_env=False)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def services():
    """The sample service as v1 and v2, no latency, no errors."""
    yield from serving(("v1", "v2"), lambda version, port: [sys.executable, str(SERVICE), "--port", str(port), "--version", version,
                                                              "--latency", "0ms", "--error-rate", "0%", "--seed", "1"])


@pytest.fixture(scope="module")
def upstream():
    """The stdlib upstream (never sets X-Version); yields its port."""
    proc = subprocess.Popen([sys.executable, "-c", UPSTREAM], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        wait_http(f"http://127.0.0.1:{port}/plain", proc)
        yield port
    finally:
        stop(proc)


@pytest.fixture
def start_router(tmp_path):
    """start_router(config, *extra_args) -> RouterProc; every router is stopped on teardown."""
    started: list[subprocess.Popen] = []

    def start(config: dict, *extra: str) -> RouterProc:
        n = len(started)
        config_path = tmp_path / f"router{n}.json"
        ready_path = tmp_path / f"router{n}.ready.json"
        config_path.write_text(json.dumps(config))
        cmd = [sys.executable, "-m", "rollout.backends.local.router", "--port", "0", "--admin-port", "0"]
        cmd += ["--config", str(config_path), "--ready-file", str(ready_path), *extra]
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(proc)
        deadline = time.monotonic() + START_TIMEOUT
        while not ready_path.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"router exited with {proc.returncode}: {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise RuntimeError("router did not write its ready file")
            time.sleep(0.02)
        return RouterProc(proc, json.loads(ready_path.read_text()), config_path)

    try:
        yield start
    finally:
        for proc in started:
            stop(proc)


# --------------------------------------------------------------------------- pure units


@pytest.mark.parametrize("weight", [0.0, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.7, 0.9, 1.0])
def test_smooth_weighted_is_exact_over_every_window(weight):
    picker = SmoothWeighted(weight)
    picks = [picker.pick() for _ in range(400)]
    for n in (1, 3, 10, 100):
        for start in range(0, len(picks) - n + 1):
            got = sum(picks[start : start + n])
            assert abs(got - n * weight) < 1 + 1e-9, (weight, n, start, got)


def test_validate_config_lists_every_problem():
    with pytest.raises(ConfigError) as e:
        validate_config({"stable": {"version": "", "port": 0}, "weight": 1.5, "wieght": 1, "cohort": {"header": "a b"}})
    text = str(e.value)
    for needle in ("wieght", "stable.version", "stable.port", "weight", "cohort"):
        assert needle in text
    ok = validate_config({"stable": {"version": "v1", "port": 1}, "requests": {"stable": 3}})
    assert ok == {
        "stable": {"version": "v1", "port": 1},
        "canary": None,
        "weight": 0.0,
        "cohort": None,
        "version_header": "X-Version",
        "generation": 0,
    }


def test_router_module_imports_only_the_standard_library():
    code = (
        "import sys, rollout.backends.local.router\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'locust', 'kubernetes', 'gevent', 'httpx'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, check=True, timeout=30)


# --------------------------------------------------------------------------- routing


def test_ready_file_and_health(start_router, services):
    r = start_router(cfg(services["v1"]))
    assert set(r.ready) >= {"pid", "port", "admin_port"}
    assert r.ready["pid"] == r.proc.pid
    assert router_client.healthz(r.admin)["ok"] is True
    with r.client() as c:
        resp = c.get("/healthz")
    assert resp.status_code == 200 and resp.headers["x-version"] == "v1"


def test_weighted_split_is_exact(start_router, services):
    r = start_router(cfg(services["v1"], services["v2"], weight=0.25))
    before = router_client.get_config(r.admin)["requests"]
    seen = {"v1": 0, "v2": 0}
    with r.client() as c:
        for i in range(1000):
            resp = c.get("/api/answer", params={"q": str(i)})
            assert resp.status_code == 200
            version = resp.headers["x-version"]
            assert resp.json()["version"] == version
            seen[version] += 1
    assert abs(seen["v2"] - 250) <= 1 and seen["v1"] + seen["v2"] == 1000
    after = router_client.get_config(r.admin)["requests"]
    assert after["canary"] - before["canary"] == seen["v2"]
    assert after["stable"] - before["stable"] == seen["v1"]

    # 10 %: exactly one in every ten, not "about" one in ten
    router_client.put_config(r.admin, cfg(services["v1"], services["v2"], weight=0.1, generation=2))
    with r.client() as c:
        versions = [c.get("/api/answer").headers["x-version"] for _ in range(100)]
    for start in range(0, 100, 10):
        assert versions[start : start + 10].count("v2") == 1


def test_cohort_goes_to_canary_and_is_outside_the_split(start_router, services):
    cohort = {"header": "x-team", "value": "payments"}
    r = start_router(cfg(services["v1"], services["v2"], weight=0.0, cohort=cohort))
    with r.client() as c:
        for _ in range(30):
            assert c.get("/api/answer", headers={"X-TEAM": "payments"}).headers["x-version"] == "v2"
            assert c.get("/api/answer", headers={"x-team": "Payments"}).headers["x-version"] == "v1"
            assert c.get("/api/answer", headers={"x-team": "billing"}).headers["x-version"] == "v1"
            assert c.get("/api/answer").headers["x-version"] == "v1"
    counters = router_client.get_config(r.admin)
    assert counters["cohort_requests"] == 30
    assert counters["requests"] == {"stable": 90, "canary": 30}

    # at 50 % the others alternate exactly, however many cohort requests come in between
    router_client.put_config(r.admin, cfg(services["v1"], services["v2"], weight=0.5, cohort=cohort))
    with r.client() as c:
        others = []
        for i in range(40):
            for _ in range(i % 3):
                assert c.get("/api/answer", headers={"x-team": "payments"}).headers["x-version"] == "v2"
            others.append(c.get("/api/answer").headers["x-version"])
    assert others == ["v1", "v2"] * 20

    # no canary: the cohort goes to stable too
    router_client.put_config(r.admin, cfg(services["v1"], None, weight=0.5, cohort=cohort))
    with r.client() as c:
        assert c.get("/api/answer", headers={"x-team": "payments"}).headers["x-version"] == "v1"


def test_version_header_added_only_when_missing(start_router, upstream):
    r = start_router(cfg(upstream))
    with r.client() as c:
        resp = c.get("/plain")
        assert resp.status_code == 200 and resp.text == "plain"
        assert resp.headers.get_list("x-version") == ["v1"]
        assert c.get("/versioned").headers.get_list("x-version") == ["custom"]
    router_client.put_config(r.admin, cfg(upstream, version_header="X-Served-By", generation=2))
    with r.client() as c:
        resp = c.get("/versioned")
    assert resp.headers["x-served-by"] == "v1" and resp.headers["x-version"] == "custom"


def test_unreachable_canary_gives_502_attributed_to_it(start_router, services):
    closed = free_port()
    r = start_router(cfg(services["v1"], closed, weight=1.0))
    with r.client() as c:
        for _ in range(3):
            resp = c.get("/api/answer")
            assert resp.status_code == 502
            assert resp.headers["x-version"] == "v2"
            assert "v2" in resp.text and "unreachable" in resp.text
    errors = router_client.get_config(r.admin)["errors"]
    assert errors["canary"] == 3 and errors["stable"] == 0
    router_client.put_config(r.admin, cfg(services["v1"], closed, weight=0.0))
    with r.client() as c:
        assert c.get("/api/answer").headers["x-version"] == "v1"


def test_upstream_timeout_gives_504(start_router, upstream):
    r = start_router(cfg(upstream), "--upstream-timeout", "0.5")
    with r.client() as c:
        resp = c.get("/slow", params={"s": "5"})
    assert resp.status_code == 504 and resp.headers["x-version"] == "v1"
    assert router_client.get_config(r.admin)["errors"]["stable"] == 1


def test_config_change_applies_to_next_request_and_is_persisted(start_router, services):
    r = start_router(cfg(services["v1"], services["v2"], weight=0.0))
    with r.client() as c:
        assert c.get("/api/answer").headers["x-version"] == "v1"
        new = cfg(services["v1"], services["v2"], weight=1.0, generation=2)
        applied = router_client.put_config(r.admin, new)
        assert applied["weight"] == 1.0 and applied["generation"] == 2
        assert json.loads(r.config_path.read_text()) == new  # on disk before the acknowledgement
        assert c.get("/api/answer").headers["x-version"] == "v2"

        # a GET result can be edited and PUT back
        current = router_client.get_config(r.admin)
        current.update(weight=0.0, generation=3)
        router_client.put_config(r.admin, current)
        assert c.get("/api/answer").headers["x-version"] == "v1"

        # a bad config is refused, changes nothing and is not persisted
        on_disk = r.config_path.read_text()
        with pytest.raises(router_client.ConfigRejected, match="weight"):
            router_client.put_config(r.admin, {**new, "weight": 7})
        assert r.config_path.read_text() == on_disk
        assert router_client.get_config(r.admin)["generation"] == 3
        assert c.get("/api/answer").headers["x-version"] == "v1"
    assert not [p for p in r.config_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_router_client_unreachable():
    with pytest.raises(router_client.RouterUnreachable, match="unreachable"):
        router_client.get_config(router_client.AdminEndpoint(free_port(), "t" * 32), timeout=2.0)
    with pytest.raises(router_client.RouterUnreachable):
        router_client.put_config(router_client.AdminEndpoint(free_port(), "t" * 32), {"stable": {"version": "v1", "port": 1}}, timeout=2.0)


# --------------------------------------------------------------------------- HTTP


def test_chunked_and_close_delimited_responses(start_router, upstream):
    r = start_router(cfg(upstream))
    with r.client() as c:
        resp = c.get("/chunked")
        assert resp.status_code == 200 and resp.text == "alpha-beta-gamma"
        assert resp.headers["transfer-encoding"] == "chunked"
        resp = c.get("/eof")  # re-chunked for the HTTP/1.1 client, which keeps its connection
        assert resp.text == "until-close " * 100 and resp.headers["transfer-encoding"] == "chunked"
        assert c.get("/plain").text == "plain"
    # an HTTP/1.0 client gets the chunked body de-chunked, delimited by close
    out = raw(r.port, b"GET /chunked HTTP/1.0\r\nHost: x\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower() and body == b"alpha-beta-gamma"


def test_request_bodies_pass_through(start_router, upstream):
    r = start_router(cfg(upstream))
    small = b"hello router"
    big = os.urandom(3 * 1024 * 1024 + 7)  # above the buffering limit: streamed

    def chunks():
        for i in range(0, len(big), 100_000):
            yield big[i : i + 100_000]

    with r.client() as c:
        for content, framing in ((small, "length"), (big, "length"), (chunks(), "chunked")):
            resp = c.post("/echo", content=content)
            info = resp.json()
            expected = small if content is small else big
            assert resp.status_code == 200 and info["framing"] == framing
            assert info["length"] == len(expected)
            assert info["sha256"] == hashlib.sha256(expected).hexdigest()
        info = c.put("/echo", content=b"", headers={"X-Forwarded-For": "10.0.0.1"}).json()
        assert info["method"] == "PUT" and info["length"] == 0
        assert info["headers"]["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"


def test_keep_alive_reuses_upstream_connections(start_router, upstream):
    r = start_router(cfg(upstream))
    with r.client() as c:
        ports = {c.get("/echo").json()["client_port"] for _ in range(20)}
    assert len(ports) == 1


def test_hop_by_hop_headers_and_connection_close(start_router, upstream):
    r = start_router(cfg(upstream))
    out = raw(
        r.port,
        b"GET /echo HTTP/1.1\r\nHost: example\r\nConnection: close, X-Secret\r\n"
        b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Kept: yes\r\n\r\n",
    )
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
    seen = json.loads(body)["headers"]
    assert seen["x-kept"] == "yes" and seen["host"] == "example" and seen["x-forwarded-for"] == "127.0.0.1"
    assert not {"x-secret", "keep-alive", "te"} & set(seen)
    assert seen.get("connection", "keep-alive").lower() != "close"  # the upstream connection stays pooled


def test_no_body_for_head_204_304(start_router, upstream):
    r = start_router(cfg(upstream))
    # three requests on one connection, the last one closes: any stray body byte would corrupt the framing
    out = raw(
        r.port,
        b"HEAD /plain HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nocontent HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /notmodified HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    parts = out.split(b"\r\n\r\n")
    assert [p.split(b"\r\n")[0] for p in parts[:3]] == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 204 No Content",
        b"HTTP/1.1 304 Not Modified",
    ]
    assert parts[3] == b""
    assert b"content-length: 5" in parts[0].lower()  # HEAD keeps the length of the GET
    for p in parts[:3]:
        assert b"x-version: v1" in p.lower()


def test_malformed_requests_get_400_and_the_router_survives(start_router, upstream):
    r = start_router(cfg(upstream))
    for bad in (
        b"NONSENSE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\nContent-Length: 5\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ):
        assert raw(r.port, bad).startswith(b"HTTP/1.1 400"), bad
    assert raw(r.port, b"GET / HTTP/2.0\r\n\r\n").startswith(b"HTTP/1.1 505")
    assert raw(r.port, b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
    with r.client() as c:
        assert c.get("/plain").status_code == 200
    assert router_client.get_config(r.admin)["errors"]["bad_request"] == 7


# --------------------------------------------------------------------------- lifecycle


def test_sigterm_finishes_in_flight_requests_then_frees_the_port(start_router, upstream, tmp_path):
    r = start_router(cfg(upstream))
    mark = tmp_path / "in-flight"
    result: dict = {}

    def slow_request() -> None:
        try:
            result["response"] = httpx.get(f"{r.url}/slow", params={"s": "0.3", "mark": str(mark)}, timeout=10)
        except Exception as e:  # reported by the assertion below
            result["error"] = e

    t = threading.Thread(target=slow_request)
    t.start()
    deadline = time.monotonic() + 10
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mark.exists(), "the request never reached the upstream"
    r.proc.send_signal(signal.SIGTERM)
    t.join(15)
    assert r.proc.wait(10) == 0
    assert "error" not in result, result
    assert result["response"].status_code == 200 and result["response"].text == "slow done"
    for port in (r.port, r.admin_port):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        with socket.socket() as s:  # free for the next router (as servers bind: SO_REUSEADDR)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))


def test_admin_shutdown(start_router, upstream):
    r = start_router(cfg(upstream))
    with r.client() as c:
        assert c.get("/plain").status_code == 200  # an idle keep-alive connection does not hold it up
        assert router_client.shutdown(r.admin)["shutting_down"] is True
        assert r.proc.wait(10) == 0

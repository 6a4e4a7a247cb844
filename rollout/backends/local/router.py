"""The local backend's weighted router: a small HTTP/1.1 reverse proxy on 127.0.0.1.

It sits in front of two local processes, the *stable* and the *canary* version
of a service, and splits traffic the way a Kubernetes gateway would. It runs as
its own long-lived process, so it outlives the CLI command that started it:

    python -m rollout.backends.local.router --port 0 --admin-port 0 \\
        --config router.json --ready-file router.ready.json

Once both ports listen it writes ``{"pid", "port", "admin_port"}`` to
``--ready-file`` (temp file + rename, so a reader never sees half of it).

Config (JSON; read from ``--config`` at start, replaced through the admin API)::

    {"stable": {"version": "v1", "port": 8001},
     "canary": {"version": "v2", "port": 8002},      # or null
     "weight": 0.1,                                   # canary share 0..1
     "cohort": {"header": "x-team", "value": "payments"},   # or null
     "version_header": "X-Version",
     "generation": 7}

A version entry may also carry ``"host"`` (default ``127.0.0.1``).

Routing, per request:

1. A cohort is set, a canary exists and the request carries the cohort header
   (name case-insensitive, value exact) → canary. Cohort requests do not
   advance the weighted split.
2. Otherwise a smooth weighted round-robin (nginx's algorithm) on integer
   weights: the canary gets exactly ``weight`` of the requests, spread as
   evenly as possible, so 10 % is 1 in 10 over any window of 10, not "about
   10 % on average". The sequence restarts with every config change.

Per-version attribution: a response without ``version_header`` gets it with
the version's name; an unreachable upstream gives 502, an upstream that does
not answer within ``--upstream-timeout`` (default 30 s) 504, both carrying the
header of the version that failed.

With ``--canary-port`` (0: a free one, written to the ready file as
``canary_port``) the router also listens for load meant for the canary alone
(a ``load_to: canary`` stage): every request there goes to the canary (503
when none is deployed), counted per version like the rest, so a canary that
refuses, resets or hangs is seen by the engine there too.

Admin API on 127.0.0.1:ADMIN_PORT (JSON, one request per connection).
Only the tool may use it: every request must carry
``Authorization: Bearer <token>``, the token being the content of
``--token-file`` (an owner-only file in the state directory; created with a
random token, mode 0600, when it does not exist; compared in constant time),
else 401. A request with an ``Origin`` header (a browser's) is refused with
403, and PUT/POST bodies must be ``Content-Type: application/json`` (else
415), so no CORS "simple request" from a web page gets through either.
Upstreams (``host``) must be loopback addresses unless the router is started
with ``--allow-remote-upstreams`` (the local backend never does: its versions
are local processes), so nobody can point users, and their credentials, at
another host.

    GET  /healthz   {"ok": true, "pid": ..., "generation": ...}
    GET  /config    the config plus live counters:
                    "requests": {"stable": n, "canary": n}  (cohort ones included)
                    "cohort_requests": n,
                    "errors": {"stable": n, "canary": n, "bad_request": n, "aborted": n}
                    ("stable"/"canary" are the 502/504 the router answered itself;
                    "aborted" are responses cut mid-body)
                    "versions": {name: {"routed", "answered", "refused", "reset",
                                 "timeout", "malformed", "aborted", "cancelled",
                                 "in_flight", "no_header", "due", "stuck",
                                 "stuck_now", "oldest_wait_ms"}}
                    (per version *name*, whatever the client saw: see
                    VersionCounters; the engine reads them every tick;
                    "stuck_now" and "oldest_wait_ms" are gauges: requests
                    waiting for an answer longer than --stuck-after right now,
                    and how long the oldest one has waited)
                    "pinned_requests": n (the canary-only listener's)
                    "router": {"pid", "uptime_s", "config_file", "upstream_timeout_s",
                               "stuck_after_s", "canary_port"}
    PUT  /config    a full config: validated (400 with every problem otherwise),
                    written to the --config file (temp + fsync + rename) and only
                    then applied and acknowledged with the new config. Requests
                    already in flight finish on the old one. Counter keys as
                    returned by GET are accepted and ignored, so a GET result
                    can be edited and PUT back.
    POST /shutdown  graceful exit (as SIGTERM): stop accepting, let in-flight
                    requests finish for up to 2 s, close, exit 0.

HTTP: keep-alive on both sides (a LIFO pool of idle upstream connections per
upstream, a stale one is retried once on a fresh connection when the request
can be replayed); Content-Length and chunked bodies both ways (chunked passes
through as is; a close-delimited response is re-chunked for HTTP/1.1 clients);
no body for HEAD/1xx/204/304; ``Connection: close`` honoured both ways;
hop-by-hop headers (and those named in ``Connection``) removed;
``X-Forwarded-For`` appended; ``Expect: 100-continue`` answered by the router.
Request bodies up to 1 MiB with a Content-Length are buffered (so they can be
replayed), larger and chunked ones streamed. Malformed requests get 400 (or
431/501/505) and the connection is closed; a line of the request head that
ends in a bare LF is answered 400 as soon as that line arrives (heads are read
line by line, so a bare-LF client is never left waiting for an idle timeout).

Performance: asyncio streams (uvloop when importable; it is not a
dependency), no per-request logging, no regex, header names lowered once,
response head and small bodies written in one call. Only the standard
library is imported: never locust, never kubernetes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hmac
import ipaddress
import json
import os
import signal
import sys
import tempfile
import time
from collections import deque
from math import gcd
from typing import Any

DEFAULT_VERSION_HEADER = "X-Version"
DEFAULT_UPSTREAM_TIMEOUT = 30.0
DEFAULT_STUCK_AFTER = 2.0  # a request with no answer after this long counts as stuck (VersionCounters.stuck)
DEFAULT_IDLE_TIMEOUT = 75.0  # idle client keep-alive connections are closed after this
SHUTDOWN_GRACE = 2.0  # in-flight requests get this long on SIGTERM / POST /shutdown

HEAD_LIMIT = 64 * 1024  # request/response head (and chunk-size line) size limit
BUFFER_REQUEST_MAX = 1 << 20  # Content-Length request bodies up to this are buffered
BUFFER_RESPONSE_MAX = 256 * 1024  # Content-Length responses up to this: one write
COPY_CHUNK = 64 * 1024
POOL_MAX_IDLE = 1024  # idle upstream connections kept per upstream
POOL_IDLE_TTL = 30.0  # idle upstream connections older than this are closed
ADMIN_BODY_MAX = 1 << 20
WEIGHT_SCALE = 1_000_000  # weights are integers in millionths: exact arithmetic

_COUNTER_KEYS = frozenset({"requests", "cohort_requests", "pinned_requests", "errors", "versions", "router"})
_CONFIG_KEYS = ("stable", "canary", "weight", "cohort", "version_header", "generation")
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEX = b"0123456789abcdefABCDEF"

# Request headers the router handles itself (hop-by-hop ones are dropped).
_REQ_SPECIAL = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"host",
    }
)
# Response headers the router handles itself (hop-by-hop ones are dropped).
_RESP_SPECIAL = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"content-length",
    }
)
_STANDARD_CONNECTION_TOKENS = frozenset({b"close", b"keep-alive", b""})

# Response body framings.
_NONE, _LENGTH, _CHUNKED, _EOF = 0, 1, 2, 3

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    502: "Bad Gateway",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


# --------------------------------------------------------------------------- config


class ConfigError(ValueError):
    """A router config that cannot be applied; the message lists every problem."""


def _is_token(s: object) -> bool:
    return isinstance(s, str) and bool(s) and all(c in _TOKEN_CHARS for c in s)


def _is_header_value(s: object) -> bool:
    return isinstance(s, str) and s == s.strip() and all(" " <= c <= "~" for c in s)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`: the only upstream hosts a router takes by default."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _version_entry(
    raw: object, key: str, problems: list[str], *, required: bool, allow_remote: bool = False
) -> dict[str, Any] | None:
    if raw is None:
        if required:
            problems.append(f"{key}: required, an object {{\"version\": ..., \"port\": ...}}")
        return None
    if not isinstance(raw, dict):
        problems.append(f"{key}: expected an object {{\"version\": ..., \"port\": ...}} or null, found {raw!r}")
        return None
    unknown = sorted(set(raw) - {"version", "port", "host"})
    if unknown:
        problems.append(f"{key}: unknown key(s) {', '.join(unknown)} (allowed: version, port, host)")
    version = raw.get("version")
    if not (_is_header_value(version) and version):
        problems.append(f"{key}.version: expected a non-empty printable string, found {version!r}")
    port = raw.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(f"{key}.port: expected an integer 1..65535, found {port!r}")
    entry: dict[str, Any] = {"version": version, "port": port}
    if "host" in raw:
        host = raw["host"]
        if not (isinstance(host, str) and host and host == host.strip()):
            problems.append(f"{key}.host: expected a host name or address, found {host!r}")
        elif not allow_remote and not is_loopback(host):
            problems.append(
                f"{key}.host: {host!r} is not a loopback address (127.0.0.0/8, ::1, localhost); "
                "this router only forwards to local processes"
            )
        entry["host"] = host
    return entry


def validate_config(raw: object, *, default_generation: int = 0, allow_remote: bool = False) -> dict[str, Any]:
    """Check a config and return it normalized; raise ConfigError listing every problem.

    Optional keys default to: canary null, weight 0, cohort null,
    version_header "X-Version", generation `default_generation`. The counter
    keys GET /config adds are ignored; any other unknown key is an error.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a JSON object, found {type(raw).__name__}")
    problems: list[str] = []
    unknown = sorted(set(raw) - set(_CONFIG_KEYS) - _COUNTER_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(_CONFIG_KEYS)})")
    stable = _version_entry(raw.get("stable"), "stable", problems, required=True, allow_remote=allow_remote)
    canary = _version_entry(raw.get("canary"), "canary", problems, required=False, allow_remote=allow_remote)
    weight = raw.get("weight", 0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1:
        problems.append(f"weight: expected a number 0..1 (the canary's share), found {weight!r}")
        weight = 0
    cohort = raw.get("cohort")
    if cohort is not None:
        if not isinstance(cohort, dict) or set(cohort) != {"header", "value"}:
            problems.append(f"cohort: expected null or {{\"header\": ..., \"value\": ...}}, found {cohort!r}")
            cohort = None
        else:
            if not _is_token(cohort["header"]):
                problems.append(f"cohort.header: expected a header name, found {cohort['header']!r}")
            if not _is_header_value(cohort["value"]):
                problems.append(
                    f"cohort.value: expected a printable string without surrounding spaces, found {cohort['value']!r}"
                )
            cohort = {"header": cohort["header"], "value": cohort["value"]}
    version_header = raw.get("version_header", DEFAULT_VERSION_HEADER)
    if not _is_token(version_header):
        problems.append(f"version_header: expected a header name, found {version_header!r}")
    generation = raw.get("generation", default_generation)
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        problems.append(f"generation: expected an integer >= 0, found {generation!r}")
    if problems:
        raise ConfigError("; ".join(problems))
    return {
        "stable": stable,
        "canary": canary,
        "weight": float(weight),
        "cohort": cohort,
        "version_header": version_header,
        "generation": generation,
    }


def write_json_atomic(path: str, data: object) -> None:
    """Write JSON to `path` via a temp file in the same directory, fsync, rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# --------------------------------------------------------------------------- routing


class SmoothWeighted:
    """Smooth weighted round-robin between stable and canary (nginx's algorithm).

    Weights are integers (millionths, reduced by their gcd), so the split is
    exact: with weight w the canary gets floor or ceil of n*w of any n
    consecutive picks. `pick()` returns True for the canary.
    """

    __slots__ = ("wc", "ws", "total", "cur_c", "cur_s")

    def __init__(self, weight: float) -> None:
        wc = round(weight * WEIGHT_SCALE)
        ws = WEIGHT_SCALE - wc
        g = gcd(wc, ws) or 1
        self.wc, self.ws = wc // g, ws // g
        self.total = self.wc + self.ws
        self.cur_c = 0
        self.cur_s = 0

    def pick(self) -> bool:
        c = self.cur_c + self.wc
        s = self.cur_s + self.ws
        if c > s:
            self.cur_c = c - self.total
            self.cur_s = s
            return True
        self.cur_c = c
        self.cur_s = s - self.total
        return False


class _Pool:
    """Idle keep-alive connections to one upstream, most recently used last."""

    __slots__ = ("idle", "retired")

    def __init__(self) -> None:
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.retired = False

    def acquire(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        idle = self.idle
        while idle:
            r, w, _ = idle.pop()
            if r.at_eof() or w.is_closing():
                w.close()
                continue
            return r, w
        return None

    def release(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, now: float) -> None:
        if self.retired or len(self.idle) >= POOL_MAX_IDLE or w.is_closing():
            w.close()
        else:
            self.idle.append((r, w, now))

    def close_all(self) -> None:
        for _, w, _ in self.idle:
            w.close()
        self.idle.clear()

    def expire(self, older_than: float) -> None:
        idle = self.idle
        n = 0
        while n < len(idle) and idle[n][2] < older_than:
            idle[n][1].close()
            n += 1
        if n:
            del idle[:n]


class VersionCounters:
    """What happened to the requests sent to one version (by name), whatever the client saw.

    The router is the one place that knows which version a request went to even
    when no answer came back, so it counts for the engine (fail closed): every
    request `routed` to a version ends as `answered` (a complete response
    relayed) or as one failure kind: `refused` (connect failed), `reset`
    (closed/reset without a complete response), `timeout`, `malformed` (not
    HTTP, bad framing), `aborted` (cut mid-body after the head was relayed) —
    or `cancelled` (the client left, or the router shut down); `in_flight` are
    still waiting. `no_header`: answers that lacked the version header (the
    router added it).

    Requests that hang (some of them, not all): `due` counts the requests
    routed at least `stuck_after` seconds ago (the router's --stuck-after, 2 s
    by default) and `stuck` those of them that had no answer (nothing relayed
    to the client) when they reached that age, both cumulative and cut at the
    same instant by the sweeper, so the deltas over a window compare like with
    like: "of the N requests whose answer was due in the window, X were stuck".
    Kept off the request path: a request only stores its start time on its
    connection; the sweeper (4 times a second) does the counting.
    """

    __slots__ = ("routed", "answered", "refused", "reset", "timeout", "malformed", "aborted", "cancelled", "in_flight",
                 "no_header", "due", "stuck")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class _Upstream:
    """One version behind the router, as the hot path needs it (bytes, precomputed)."""

    __slots__ = ("role", "version", "host", "port", "pool", "version_line", "host_line", "counters")

    def __init__(self, role: str, entry: dict[str, Any], pool: _Pool, version_header: str,
                 counters: VersionCounters) -> None:
        self.counters = counters
        self.role = role
        self.version = entry["version"]
        self.host = entry.get("host", "127.0.0.1")
        self.port = entry["port"]
        self.pool = pool
        self.version_line = f"{version_header}: {self.version}".encode("latin-1")
        self.host_line = f"Host: {self.host}:{self.port}".encode("latin-1")


class _Route:
    """An applied config: immutable; a request keeps the one it started with."""

    __slots__ = ("raw", "stable", "canary", "picker", "cohort_name", "cohort_value", "vh_lower")

    def __init__(self, raw: dict[str, Any], pools: dict[tuple[str, int, str], _Pool],
                 counters: dict[str, VersionCounters]) -> None:
        self.raw = raw
        vh = raw["version_header"]
        self.vh_lower = vh.lower().encode("latin-1")

        def upstream(role: str) -> _Upstream | None:
            entry = raw[role]
            if entry is None:
                return None
            key = (entry.get("host", "127.0.0.1"), entry["port"], entry["version"])
            pool = pools.get(key)
            if pool is None:
                pool = pools[key] = _Pool()
            vc = counters.get(entry["version"])
            if vc is None:
                vc = counters[entry["version"]] = VersionCounters()
            return _Upstream(role, entry, pool, vh, vc)

        self.stable = upstream("stable")
        self.canary = upstream("canary")
        weight = raw["weight"] if self.canary is not None else 0.0
        self.picker = SmoothWeighted(weight)
        cohort = raw["cohort"]
        if cohort is not None and self.canary is not None:
            self.cohort_name: bytes | None = cohort["header"].lower().encode("latin-1")
            self.cohort_value = cohort["value"].encode("latin-1")
        else:
            self.cohort_name = None
            self.cohort_value = b""


class _BadUpstream(Exception):
    """The upstream answered something that is not HTTP/1.x."""


class _ClientGone(Exception):
    """The client went away while its request body was being read."""


class _BadClientBody(Exception):
    """The client's chunked request body is malformed."""


class _Conn:
    """A client connection, as the sweeper and the shutdown see it."""

    __slots__ = ("writer", "idle_since", "up", "deadline", "timed_out", "linger", "since", "vc", "stuck")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.idle_since = 0.0  # > 0 while waiting for the next request head
        self.up: asyncio.StreamWriter | None = None  # the upstream connection in use
        # The upstream timeout, without a timer per request: the sweeper closes
        # `up` once `deadline` (> 0 while waiting on the upstream) has passed
        # and sets `timed_out`, so the request unwinds and answers 504.
        self.deadline = 0.0
        self.timed_out = False
        self.linger = False  # closing after an error answer: let the client read it first
        # The request waiting for its answer: when it was routed (> 0 until the client gets the
        # response head), to which version, and whether the sweeper already counted it as stuck.
        self.since = 0.0
        self.vc: VersionCounters | None = None
        self.stuck = False


class _BadHead(Exception):
    """A request head that cannot be a request: a line ending in a bare LF, or only empty lines."""


def _head_buffered(reader: asyncio.StreamReader) -> bool:
    """Is a whole request head already buffered? Then one readuntil reads it (nearly always the case);
    `_proxy` still refuses a bare CR or LF inside it. `_buffer` is StreamReader's (private, stable since
    3.4) bytearray; without it every head takes the line-by-line path of `_read_head`."""
    buffered = getattr(reader, "_buffer", None)
    return buffered is not None and buffered.find(b"\r\n\r\n", 0, HEAD_LIMIT) >= 0


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """Read a request head line by line, up to and including the empty line.

    Line by line so a head with bare-LF line endings is refused (`_BadHead`)
    as soon as its first such line arrives, instead of waiting for a CRLF CRLF
    that never comes. Empty lines before the request line are skipped (RFC
    9112 2.2), a few of them. Raises IncompleteReadError (with what was read)
    at EOF and LimitOverrunError past HEAD_LIMIT bytes, as readuntil does.
    """
    parts: list[bytes] = []
    size = 0
    skipped = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            raise asyncio.IncompleteReadError(b"".join(parts) + e.partial, None) from None
        if line[-2:-1] != b"\r":
            raise _BadHead("request head lines must end in CRLF (bare LF)")
        if line == b"\r\n":
            if parts:
                parts.append(line)
                return b"".join(parts)
            skipped += 1
            if skipped > 8:
                raise _BadHead("empty lines instead of a request line")
            continue
        size += len(line)
        if size > HEAD_LIMIT:
            raise asyncio.LimitOverrunError("request head too large", size)
        parts.append(line)


def _simple_response(status: int, body: str, *, close: bool = True, extra: bytes = b"") -> bytes:
    data = body.encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(data)}\r\n"
    ).encode("latin-1")
    if extra:
        head += extra + b"\r\n"
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + data


def _drop_named(lines: list[bytes], start: int, names: set[bytes]) -> list[bytes]:
    """Remove header lines (from index `start`) whose name is in `names` (rare path)."""
    kept = lines[:start]
    for line in lines[start:]:
        if line[: line.find(b":")].strip().lower() not in names:
            kept.append(line)
    return kept


# --------------------------------------------------------------------------- the router


class Router:
    def __init__(
        self,
        config: dict[str, Any],
        *,
        config_path: str,
        upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        token: str,
        allow_remote: bool = False,
        stuck_after: float = DEFAULT_STUCK_AFTER,
    ) -> None:
        self.config_path = config_path
        self.stuck_after = stuck_after
        # (sweep time, [(counters, routed then)]) for the last `stuck_after` seconds of sweeps:
        # the oldest one at least `stuck_after` old is the cut for `due` and `stuck`
        self._routed_ring: deque[tuple[float, list[tuple[VersionCounters, int]]]] = deque()
        self._token = token.encode("utf-8")
        self.token_file = ""  # where the token came from (for the ready file)
        self.allow_remote = allow_remote
        self.upstream_timeout = upstream_timeout
        self.idle_timeout = idle_timeout
        self._pools: dict[tuple[str, int, str], _Pool] = {}
        self._by_version: dict[str, VersionCounters] = {}  # kept for the router's life: counters only grow
        self._route = _Route(config, self._pools, self._by_version)
        self._clients: set[_Conn] = set()
        self._closing = False
        self._forced = False  # the shutdown grace is over: in-flight requests get 503
        self._done: asyncio.Event | None = None
        self._config_lock: asyncio.Lock | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = time.time()
        self.port = 0
        self.admin_port = 0
        self.canary_port = 0  # the canary-only listener (0: none)
        self.n_pinned = 0
        self.err_no_canary = 0
        # counters
        self.n_stable = 0
        self.n_canary = 0
        self.n_cohort = 0
        self.err_stable = 0
        self.err_canary = 0
        self.err_bad_request = 0
        self.err_aborted = 0

    # ----------------------------------------------------------------- lifecycle

    async def start(self, host: str, port: int, admin_port: int, canary_port: int | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        self._config_lock = asyncio.Lock()
        proxy = await asyncio.start_server(
            self._serve_client, host, port, limit=HEAD_LIMIT, backlog=1024, reuse_address=True
        )
        admin = await asyncio.start_server(
            self._serve_admin, "127.0.0.1", admin_port, limit=HEAD_LIMIT, reuse_address=True
        )
        self._servers = [proxy, admin]
        self.port = proxy.sockets[0].getsockname()[1]
        self.admin_port = admin.sockets[0].getsockname()[1]
        if canary_port is not None:  # load for the canary alone, counted like the rest (fail closed)
            pinned = await asyncio.start_server(
                self._serve_pinned, host, canary_port, limit=HEAD_LIMIT, backlog=1024, reuse_address=True
            )
            self._servers.append(pinned)
            self.canary_port = pinned.sockets[0].getsockname()[1]
        self._spawn(self._sweeper())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def request_shutdown(self) -> None:
        if not self._closing:
            self._closing = True
            self._spawn(self._shutdown())

    async def wait_done(self) -> None:
        assert self._done is not None
        await self._done.wait()

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        deadline = self._loop.time() + SHUTDOWN_GRACE
        while True:
            busy = False
            for conn in list(self._clients):
                if conn.idle_since:
                    conn.writer.close()  # idle keep-alive connection: nothing in flight
                else:
                    busy = True
            if not busy or self._loop.time() >= deadline:
                break
            await asyncio.sleep(0.01)
        if busy:  # grace over: cut the upstream side, in-flight requests answer 503
            self._forced = True
            for conn in list(self._clients):
                if conn.up is not None:
                    conn.up.close()
            deadline = self._loop.time() + 0.3
            while self._clients and self._loop.time() < deadline:
                await asyncio.sleep(0.01)
        for conn in list(self._clients):
            conn.writer.close()
        for pool in self._pools.values():
            pool.close_all()
        await asyncio.sleep(0)  # let the transports close
        assert self._done is not None
        self._done.set()

    async def _sweeper(self) -> None:
        """Enforce upstream timeouts, close idle clients, expire idle upstream connections.

        A request past its deadline gets its upstream connection closed (it
        answers 504, or is cut if its response had started); one still stuck a
        second later (a client that stops reading or sending) is closed.
        """
        tick = max(0.01, min(0.25, self.upstream_timeout / 4))
        next_expiry = 0.0
        ring = self._routed_ring
        while not self._closing:
            await asyncio.sleep(tick)
            now = self._loop.time()
            idle_limit = now - self.idle_timeout
            cut = self._cut(now, ring)
            for conn in list(self._clients):
                if 0 < conn.since <= cut and not conn.stuck and conn.vc is not None:
                    conn.stuck = True  # routed before the cut, no answer yet: waited `stuck_after` at least
                    conn.vc.stuck += 1
                if 0 < conn.deadline < now:
                    if not conn.timed_out:
                        conn.timed_out = True
                        conn.deadline = now + 1.0
                        if conn.up is not None:
                            conn.up.close()
                    else:
                        conn.writer.close()
                elif 0 < conn.idle_since < idle_limit:
                    conn.writer.close()
            if now >= next_expiry:
                next_expiry = now + 1.0
                for pool in self._pools.values():
                    pool.expire(now - POOL_IDLE_TTL)

    def _cut(self, now: float, ring: deque[tuple[float, list[tuple[VersionCounters, int]]]]) -> float:
        """Record every version's `routed` now and advance `due` to the newest record at least
        `stuck_after` old; return that record's time (requests routed until then are due), or 0.

        Requests routed before the cut and still unanswered are marked stuck in the same sweep, so
        `stuck` never counts a request that `due` does not (each waited `stuck_after` at least).
        """
        ring.append((now, [(vc, vc.routed) for vc in self._by_version.values()]))
        limit = now - self.stuck_after
        while len(ring) > 1 and ring[1][0] <= limit:
            ring.popleft()
        t, routed = ring[0]
        if t > limit:
            return 0.0
        for vc, n in routed:
            vc.due = n
        return t

    # ----------------------------------------------------------------- config

    def config_with_counters(self) -> dict[str, Any]:
        out = dict(self._route.raw)
        out["requests"] = {"stable": self.n_stable, "canary": self.n_canary}
        out["cohort_requests"] = self.n_cohort
        out["pinned_requests"] = self.n_pinned
        out["errors"] = {
            "stable": self.err_stable,
            "canary": self.err_canary,
            "bad_request": self.err_bad_request,
            "aborted": self.err_aborted,
            "no_canary": self.err_no_canary,
        }
        out["versions"] = versions = {name: vc.as_dict() for name, vc in self._by_version.items()}
        for c in versions.values():
            c["stuck_now"] = 0
            c["oldest_wait_ms"] = 0
        now = self._loop.time() if hasattr(self, "_loop") else 0.0
        names = {id(vc): name for name, vc in self._by_version.items()}
        for conn in self._clients:  # what waits for an answer right now, by version (a gauge, not a counter)
            if conn.since > 0 and conn.vc is not None and id(conn.vc) in names:
                c = versions[names[id(conn.vc)]]
                age = now - conn.since
                if age >= self.stuck_after:
                    c["stuck_now"] += 1
                c["oldest_wait_ms"] = max(c["oldest_wait_ms"], int(age * 1000))
        out["router"] = {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            "config_file": os.path.abspath(self.config_path),
            "upstream_timeout_s": self.upstream_timeout,
            "stuck_after_s": self.stuck_after,
            "canary_port": self.canary_port,
        }
        return out

    def apply(self, config: dict[str, Any]) -> None:
        """Switch to a validated config; requests in flight keep the old route."""
        route = _Route(config, self._pools, self._by_version)
        live = {id(route.stable.pool) if route.stable else 0, id(route.canary.pool) if route.canary else 0}
        for key, pool in list(self._pools.items()):
            if id(pool) not in live:
                pool.retired = True
                pool.close_all()
                del self._pools[key]
        self._route = route

    # ----------------------------------------------------------------- proxy

    async def _serve_pinned(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve_client(reader, writer, pinned=True)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pinned: bool = False
    ) -> None:
        peer = writer.get_extra_info("peername")
        client_ip = (str(peer[0]) if peer else "unknown").encode("latin-1")
        conn = _Conn(writer)
        self._clients.add(conn)
        time_ = self._loop.time
        try:
            while not self._closing:
                conn.idle_since = time_()
                try:
                    if _head_buffered(reader):
                        head = await reader.readuntil(b"\r\n\r\n")
                    else:  # not all there yet (or bare LF): line by line, so a bare LF is answered at once
                        head = await _read_head(reader)
                except asyncio.IncompleteReadError as e:
                    if e.partial.strip():
                        self.err_bad_request += 1
                        writer.write(_simple_response(400, "bad request: incomplete request head\n"))
                    return
                except _BadHead as e:
                    self._bad(conn, 400, str(e))
                    return
                except asyncio.LimitOverrunError:
                    self.err_bad_request += 1
                    writer.write(_simple_response(431, "request head too large\n"))
                    conn.linger = True
                    return
                conn.idle_since = 0.0
                if not await self._proxy(head, reader, conn, client_ip, pinned):
                    return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, _ClientGone):
            pass
        except asyncio.CancelledError:  # only at exit, after the shutdown grace
            pass
        except Exception as e:  # a bug: keep serving others, say so once per kind
            _report_bug(e)
        finally:
            if conn.linger and not self._forced:
                await _linger(reader, writer)
            self._clients.discard(conn)
            writer.close()

    def _bad(self, conn: _Conn, status: int, why: str) -> bool:
        self.err_bad_request += 1
        conn.writer.write(_simple_response(status, f"{_REASONS[status].lower()}: {why}\n"))
        conn.linger = True
        return False

    async def _proxy(
        self, head: bytes, reader: asyncio.StreamReader, conn: _Conn, client_ip: bytes, pinned: bool = False
    ) -> bool:
        """Forward one request and its response; return whether the client connection stays open."""
        route = self._route
        writer = conn.writer
        if head[:2] == b"\r\n":  # empty lines before a request line are allowed
            head = head.lstrip(b"\r\n")
            if not head:
                return True
        if head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\r\n"):
            return self._bad(conn, 400, "bare CR or LF in the request head")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            return self._bad(conn, 400, "malformed request line")
        method, target, proto = parts
        if proto == b"HTTP/1.1":
            http11 = keep = True
        elif proto == b"HTTP/1.0":
            http11 = keep = False
        elif proto[:5] == b"HTTP/":
            return self._bad(conn, 505, "only HTTP/1.0 and HTTP/1.1")
        else:
            return self._bad(conn, 400, "malformed request line")
        if method == b"CONNECT":
            return self._bad(conn, 501, "CONNECT is not supported")

        out = [method + b" " + target + b" HTTP/1.1"]
        length = -1
        chunked = False
        conn_tokens: bytes | None = None
        xff: bytes | None = None
        has_host = False
        expect: bytes | None = None
        cohort_hit = False
        cohort_name = route.cohort_name
        for k in range(1, len(lines) - 2):
            line = lines[k]
            i = line.find(b":")
            if i <= 0 or line[0] in (32, 9) or line[i - 1] in (32, 9):
                return self._bad(conn, 400, "malformed header line")
            lname = line[:i].lower()
            if lname in _REQ_SPECIAL:
                value = line[i + 1 :].strip()
                if lname == b"content-length":
                    if not value.isdigit() or (length != -1 and int(value) != length):
                        return self._bad(conn, 400, "invalid Content-Length")
                    length = int(value)
                elif lname == b"transfer-encoding":
                    if value.lower() != b"chunked" or chunked:
                        return self._bad(conn, 501, "only Transfer-Encoding: chunked is supported")
                    chunked = True
                elif lname == b"host":
                    has_host = True
                    out.append(line)
                elif lname == b"connection":
                    conn_tokens = value.lower() if conn_tokens is None else conn_tokens + b"," + value.lower()
                elif lname == b"x-forwarded-for":
                    xff = value if xff is None else xff + b", " + value
                elif lname == b"expect":
                    expect = value.lower()
                continue  # other hop-by-hop headers are dropped
            if lname == cohort_name and line[i + 1 :].strip() == route.cohort_value:
                cohort_hit = True
            out.append(line)

        if conn_tokens is not None:
            tokens = {t.strip() for t in conn_tokens.split(b",")}
            if b"close" in tokens:
                keep = False
            elif b"keep-alive" in tokens and not http11:
                keep = True
            extra = tokens - _STANDARD_CONNECTION_TOKENS
            if extra:
                out = _drop_named(out, 1, extra)
        if chunked and length != -1:  # both: chunked wins (RFC 9112 6.3); don't trust the rest
            length = -1
            keep = False
        if self._closing:
            keep = False

        has_body = chunked or length > 0
        if expect is not None:
            if expect != b"100-continue":
                return self._bad(conn, 417, "only Expect: 100-continue is supported")
            if has_body:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        # choose the version
        if pinned:  # the canary-only listener: never the weighted split
            up = route.canary
            if up is None:
                self.err_no_canary += 1
                writer.write(_simple_response(503, "503 Service Unavailable: no canary is deployed\n"))
                conn.linger = True
                return False
            self.n_pinned += 1
        elif cohort_hit:
            up = route.canary
            self.n_cohort += 1
        elif route.picker.pick():
            up = route.canary
        else:
            up = route.stable
        if pinned:
            pass
        elif up is route.stable:
            self.n_stable += 1
        else:
            self.n_canary += 1
        assert up is not None

        out.append(b"X-Forwarded-For: " + (xff + b", " + client_ip if xff else client_ip))
        if not has_host:
            out.append(up.host_line)
        body = b""
        stream_length = 0
        if chunked:
            out.append(b"Transfer-Encoding: chunked")
        elif length >= 0:
            out.append(b"Content-Length: %d" % length)
            if length > BUFFER_REQUEST_MAX:
                stream_length = length
            elif length:
                try:
                    body = await reader.readexactly(length)
                except asyncio.IncompleteReadError:
                    return False  # the client went away mid-body
        out.append(b"")
        out.append(b"")
        req_head = b"\r\n".join(out)
        replayable = not chunked and not stream_length

        loop = self._loop
        timeout = self.upstream_timeout
        head_sent = False
        ur = uw = None
        vc = up.counters
        vc.routed += 1
        vc.in_flight += 1
        try:
            conn.timed_out = False
            conn.since = t0 = loop.time()  # waiting for an answer (the sweeper counts it stuck after a while)
            conn.deadline = t0 + timeout  # enforced by the sweeper
            conn.vc = vc
            conn.stuck = False
            # -- send the request (retry once on a stale pooled connection)
            pool = up.pool
            while True:
                pooled = pool.acquire()
                if pooled is None:
                    ur, uw = await asyncio.wait_for(
                        asyncio.open_connection(up.host, up.port, limit=HEAD_LIMIT), timeout
                    )
                    reused = False
                else:
                    ur, uw = pooled
                    reused = True
                conn.up = uw
                try:
                    uw.write(req_head + body if body else req_head)
                    if chunked:
                        await _copy_chunked(reader, uw, True, conn, timeout, loop, client_side=True)
                    elif stream_length:
                        await _copy_length(reader, uw, stream_length, conn, timeout, loop, client_side=True)
                    rhead = await ur.readuntil(b"\r\n\r\n")
                    break
                except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as e:
                    uw.close()
                    stale = reused and replayable and not self._forced and not conn.timed_out
                    if stale and (not isinstance(e, asyncio.IncompleteReadError) or not e.partial):
                        continue
                    raise

            # -- read the response head (skipping 1xx interim responses)
            while True:
                status_line = rhead[: rhead.find(b"\r\n")]
                if status_line[:5] != b"HTTP/" or status_line[8:9] != b" " or not status_line[9:12].isdigit():
                    raise _BadUpstream("malformed status line")
                code = int(status_line[9:12])
                if code >= 200:
                    break
                if code == 101:
                    raise _BadUpstream("unexpected 101 Switching Protocols")
                rhead = await ur.readuntil(b"\r\n\r\n")
            up_keep = status_line[5:8] == b"1.1"

            rlines = rhead.split(b"\r\n")
            rout = [b"HTTP/1.1" + status_line[8:]]
            rlength = -1
            rchunked = False
            has_version = False
            rconn: bytes | None = None
            vh = route.vh_lower
            for k in range(1, len(rlines) - 2):
                line = rlines[k]
                i = line.find(b":")
                if i <= 0:
                    raise _BadUpstream("malformed header line")
                lname = line[:i].strip().lower()
                if lname in _RESP_SPECIAL:
                    value = line[i + 1 :].strip()
                    if lname == b"content-length":
                        if not value.isdigit() or (rlength != -1 and int(value) != rlength):
                            raise _BadUpstream("invalid Content-Length")
                        rlength = int(value)
                    elif lname == b"transfer-encoding":
                        if value.lower().rsplit(b",", 1)[-1].strip() != b"chunked":
                            raise _BadUpstream("unsupported Transfer-Encoding")
                        rchunked = True
                    elif lname == b"connection":
                        rconn = value.lower() if rconn is None else rconn + b"," + value.lower()
                    continue
                if lname == vh:
                    has_version = True
                rout.append(line)
            if rconn is not None:
                rtokens = {t.strip() for t in rconn.split(b",")}
                if b"close" in rtokens:
                    up_keep = False
                elif b"keep-alive" in rtokens:
                    up_keep = True
                rextra = rtokens - _STANDARD_CONNECTION_TOKENS
                if rextra:
                    rout = _drop_named(rout, 1, rextra)
            if not has_version:
                vc.no_header += 1
                rout.append(up.version_line)

            if method == b"HEAD" or code == 204 or code == 304:
                framing = _NONE
                if rlength != -1 and code != 204:
                    rout.append(b"Content-Length: %d" % rlength)
            elif rchunked:
                framing = _CHUNKED
                if rlength != -1:
                    up_keep = False
                if http11:
                    rout.append(b"Transfer-Encoding: chunked")
                else:
                    keep = False  # de-chunked to an HTTP/1.0 client: delimited by close
            elif rlength != -1:
                framing = _LENGTH
                rout.append(b"Content-Length: %d" % rlength)
            else:
                framing = _EOF
                up_keep = False
                if http11:
                    rout.append(b"Transfer-Encoding: chunked")  # re-chunked
                else:
                    keep = False
            if not keep:
                rout.append(b"Connection: close")
            elif not http11:
                rout.append(b"Connection: keep-alive")
            rout.append(b"")
            rout.append(b"")
            resp_head = b"\r\n".join(rout)

            # -- the body
            if framing == _LENGTH:
                if rlength <= BUFFER_RESPONSE_MAX:
                    if rlength:
                        writer.write(resp_head + await ur.readexactly(rlength))
                    else:
                        writer.write(resp_head)
                    head_sent = True
                    conn.since = 0.0
                else:
                    writer.write(resp_head)
                    head_sent = True
                    conn.since = 0.0
                    await _copy_length(ur, writer, rlength, conn, timeout, loop)
            else:
                writer.write(resp_head)
                head_sent = True
                conn.since = 0.0
                if framing == _CHUNKED:
                    await _copy_chunked(ur, writer, http11, conn, timeout, loop)
                elif framing == _EOF:
                    await _copy_eof(ur, writer, http11, conn, timeout, loop)
        except (
            OSError,  # includes TimeoutError (connect)
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            _BadUpstream,
            _BadClientBody,
            _ClientGone,
        ) as e:
            conn.up = None
            conn.deadline = 0.0
            if uw is not None:
                uw.close()
            if isinstance(e, _ClientGone):
                vc.cancelled += 1
            elif isinstance(e, _BadClientBody):
                vc.cancelled += 1
                self._bad(conn, 400, "malformed chunked request body")
            elif head_sent:
                vc.aborted += 1
                self.err_aborted += 1
            elif self._forced:
                vc.cancelled += 1
                writer.write(_simple_response(503, "503 Service Unavailable: the router is shutting down\n"))
            elif conn.timed_out or isinstance(e, TimeoutError):
                vc.timeout += 1
                self._upstream_error(conn, up, 504, "did not answer within %gs" % timeout)
            else:
                _count_failure(vc, e)
                self._upstream_error(conn, up, 502, _describe(e))
            return False
        finally:
            vc.in_flight -= 1
            conn.since = 0.0

        vc.answered += 1
        conn.up = None
        conn.deadline = 0.0
        if up_keep:
            up.pool.release(ur, uw, loop.time())
        else:
            uw.close()
        await writer.drain()
        return keep

    def _upstream_error(self, conn: _Conn, up: _Upstream, status: int, why: str) -> None:
        if up.role == "canary":
            self.err_canary += 1
        else:
            self.err_stable += 1
        text = f"{status} {_REASONS[status]}: {up.role} version {up.version} at {up.host}:{up.port} {why}\n"
        conn.linger = True
        conn.writer.write(_simple_response(status, text, extra=up.version_line))

    # ----------------------------------------------------------------- admin

    async def _serve_admin(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(10.0):
                    try:
                        head = await _read_head(reader)
                    except _BadHead as e:
                        return _admin_reply(writer, 400, {"error": str(e)})
                    lines = head.split(b"\r\n")
                    parts = lines[0].split(b" ")
                    if len(parts) != 3:
                        return _admin_reply(writer, 400, {"error": "malformed request line"})
                    method = parts[0].decode("latin-1")
                    path = parts[1].decode("latin-1").split("?", 1)[0]
                    length = 0
                    headers: dict[bytes, bytes] = {}
                    for line in lines[1:]:
                        name, _, value = line.partition(b":")
                        lname = name.strip().lower()
                        headers[lname] = value.strip()
                        if lname == b"content-length":
                            if not value.strip().isdigit():
                                return _admin_reply(writer, 400, {"error": "invalid Content-Length"})
                            length = int(value)
                        elif lname == b"transfer-encoding":
                            return _admin_reply(writer, 411, {"error": "send a Content-Length"})
                    refused = self._admin_refusal(method, headers)
                    if refused is not None:
                        return _admin_reply(writer, *refused)
                    if length > ADMIN_BODY_MAX:
                        return _admin_reply(writer, 413, {"error": "body too large"})
                    body = await reader.readexactly(length) if length else b""
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            status, payload = await self._admin(method, path, body)
            _admin_reply(writer, status, payload)
            await writer.drain()
        except OSError:
            pass
        except Exception as e:
            _report_bug(e)
        finally:
            writer.close()

    def _admin_refusal(self, method: str, headers: dict[bytes, bytes]) -> tuple[int, dict[str, Any]] | None:
        """Why an admin request is refused (status, body), or None: a browser's request (it has an
        Origin), no or a wrong token (constant-time compare), a body that is not declared JSON."""
        if b"origin" in headers:
            return 403, {"error": "cross-origin requests are refused"}
        auth = headers.get(b"authorization", b"")
        scheme, _, given = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
            return 401, {"error": "the admin API needs the token of the router's --token-file (Authorization: Bearer ...)"}
        if method in ("PUT", "POST"):
            ctype = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
            if ctype != b"application/json":
                return 415, {"error": "send the body as Content-Type: application/json"}
        return None

    async def _admin(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if path == "/healthz":
            if method not in ("GET", "HEAD"):
                return 405, {"error": "use GET /healthz"}
            return 200, {"ok": True, "pid": os.getpid(), "generation": self._route.raw["generation"]}
        if path == "/config":
            if method == "GET":
                return 200, self.config_with_counters()
            if method != "PUT":
                return 405, {"error": "use GET or PUT /config"}
            try:
                raw = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                return 400, {"error": f"the body is not JSON: {e}"}
            assert self._config_lock is not None
            async with self._config_lock:
                try:
                    config = validate_config(
                        raw, default_generation=self._route.raw["generation"] + 1, allow_remote=self.allow_remote
                    )
                except ConfigError as e:
                    return 400, {"error": str(e)}
                if self._closing:
                    return 503, {"error": "the router is shutting down"}
                try:  # persisted before it is applied and acknowledged
                    await self._loop.run_in_executor(None, write_json_atomic, self.config_path, config)
                except OSError as e:
                    return 500, {"error": f"could not write {self.config_path}: {e}"}
                self.apply(config)
            return 200, self.config_with_counters()
        if path == "/shutdown":
            if method != "POST":
                return 405, {"error": "use POST /shutdown"}
            self._loop.call_soon(self.request_shutdown)
            return 200, {"ok": True, "shutting_down": True}
        return 404, {"error": f"no such endpoint {path} (try GET /config, PUT /config, GET /healthz, POST /shutdown)"}


# --------------------------------------------------------------------------- body copying


async def _copy_length(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    n: int,
    conn: _Conn | None,
    timeout: float,
    loop: asyncio.AbstractEventLoop,
    *,
    client_side: bool = False,
) -> None:
    while n > 0:
        data = await src.read(min(n, COPY_CHUNK))
        if not data:
            if client_side:
                raise _ClientGone()
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        dst.write(data)
        await dst.drain()
        if conn is not None:
            conn.deadline = loop.time() + timeout


async def _copy_chunked(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    passthrough: bool,
    conn: _Conn | None,
    timeout: float,
    loop: asyncio.AbstractEventLoop,
    *,
    client_side: bool = False,
) -> None:
    """Copy a chunked body, as is (`passthrough`) or de-chunked; validates the framing."""
    try:
        while True:
            line = await src.readuntil(b"\r\n")
            size_field = line[:-2].split(b";", 1)[0].strip()
            if not size_field or len(size_field) > 16 or size_field.strip(_HEX):
                raise ValueError("malformed chunk size")
            size = int(size_field, 16)
            if size == 0:
                trailers = [b"0\r\n"]
                while True:
                    t = await src.readuntil(b"\r\n")
                    trailers.append(t)
                    if t == b"\r\n":
                        break
                if passthrough:
                    dst.write(b"".join(trailers))
                await dst.drain()
                return
            if size <= COPY_CHUNK:
                data = await src.readexactly(size + 2)
                if data[-2:] != b"\r\n":
                    raise ValueError("malformed chunk")
                dst.write(line + data if passthrough else data[:-2])
            else:
                if passthrough:
                    dst.write(line)
                left = size
                while left:
                    data = await src.read(min(left, COPY_CHUNK))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", left)
                    left -= len(data)
                    dst.write(data)
                    await dst.drain()
                if await src.readexactly(2) != b"\r\n":
                    raise ValueError("malformed chunk")
                if passthrough:
                    dst.write(b"\r\n")
            await dst.drain()
            if conn is not None:
                conn.deadline = loop.time() + timeout
    except asyncio.IncompleteReadError:
        if client_side:
            raise _ClientGone() from None
        raise
    except (ValueError, asyncio.LimitOverrunError):
        if client_side:
            raise _BadClientBody() from None
        raise


async def _copy_eof(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    rechunk: bool,
    conn: _Conn | None,
    timeout: float,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Copy a body delimited by the upstream closing; re-chunk it for an HTTP/1.1 client."""
    while True:
        data = await src.read(COPY_CHUNK)
        if not data:
            if rechunk:
                dst.write(b"0\r\n\r\n")
            await dst.drain()
            return
        dst.write(b"%x\r\n%b\r\n" % (len(data), data) if rechunk else data)
        await dst.drain()
        if conn is not None:
            conn.deadline = loop.time() + timeout


# --------------------------------------------------------------------------- helpers


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close after an error answer without losing it to a TCP reset.

    Closing a socket with unread input makes the kernel send RST, which can
    destroy the answer before the client reads it. So: send FIN after the
    answer, then read and discard what the client still sends (up to 1 s, 1 MiB).
    """
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(1.0):
            left = 1 << 20
            while left > 0:
                data = await reader.read(65536)
                if not data:
                    return
                left -= len(data)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, RuntimeError):
        pass


def _count_failure(vc: VersionCounters, e: BaseException) -> None:
    """Charge a failed request to its version under the kind of failure."""
    if isinstance(e, ConnectionRefusedError):
        vc.refused += 1
    elif isinstance(e, _BadUpstream | asyncio.LimitOverrunError | ValueError):
        vc.malformed += 1
    else:  # reset, closed without a complete answer, other socket errors
        vc.reset += 1


def _describe(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "is unreachable (connection refused)"
    if isinstance(e, asyncio.IncompleteReadError):
        return "closed the connection without a complete response"
    if isinstance(e, _BadUpstream):
        return f"sent an invalid response ({e})"
    if isinstance(e, asyncio.LimitOverrunError):
        return "sent a response head that is too large"
    if isinstance(e, OSError):
        return f"is unreachable ({e.strerror or type(e).__name__})"
    return f"failed ({type(e).__name__}: {e})"


def _admin_reply(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode("utf-8")
    writer.write(
        (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'OK' if status == 200 else 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        + data
    )


_reported: set[str] = set()


def _report_bug(e: BaseException) -> None:
    key = type(e).__name__
    if key in _reported:
        return
    _reported.add(key)
    try:
        import traceback

        print("router: unexpected error (reported once per kind):", file=sys.stderr)
        traceback.print_exception(e, file=sys.stderr)
    except Exception:
        pass


# --------------------------------------------------------------------------- main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m rollout.backends.local.router",
        description="Weighted stable/canary HTTP/1.1 router for the local backend.",
    )
    p.add_argument("--port", type=int, required=True, help="proxy port (0: a free one)")
    p.add_argument("--admin-port", type=int, required=True, help="admin API port on 127.0.0.1 (0: a free one)")
    p.add_argument("--config", required=True, help="JSON config file; rewritten on every PUT /config")
    p.add_argument("--ready-file", help="write {pid, port, admin_port} JSON here once listening")
    p.add_argument(
        "--token-file",
        help="the admin API's token (created, random and owner-only, if missing); default: the config path + .token",
    )
    p.add_argument(
        "--allow-remote-upstreams",
        action="store_true",
        help="let the config name non-loopback upstream hosts (the local backend never does)",
    )
    p.add_argument("--host", default="127.0.0.1", help="proxy address (default 127.0.0.1)")
    p.add_argument(
        "--upstream-timeout",
        type=float,
        default=DEFAULT_UPSTREAM_TIMEOUT,
        help="seconds an upstream may take to connect and answer (then 504), and between two body reads",
    )
    p.add_argument(
        "--stuck-after",
        type=float,
        default=DEFAULT_STUCK_AFTER,
        help="seconds without an answer after which a request counts as stuck (the per-version `stuck` counter)",
    )
    p.add_argument(
        "--canary-port", type=int, default=None,
        help="also listen here for load to the canary alone (0: a free one; default: no such listener)",
    )
    p.add_argument(
        "--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT, help="close idle client connections after this"
    )
    return p.parse_args(argv)


async def _run(router: Router, args: argparse.Namespace) -> None:
    await router.start(args.host, args.port, args.admin_port, args.canary_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, router.request_shutdown)
    if args.ready_file:
        try:
            write_json_atomic(
                args.ready_file,
                {"pid": os.getpid(), "port": router.port, "admin_port": router.admin_port, "token_file": router.token_file,
                 "canary_port": router.canary_port},
            )
        except OSError as e:
            print(f"router: cannot write the ready file {args.ready_file}: {e}", file=sys.stderr)
            raise SystemExit(3) from None
    gc.collect()
    gc.freeze()  # long-lived startup objects leave the collector's young generations
    await router.wait_done()


def load_token(path: str) -> str:
    """The admin token in `path`; a new random one (file created 0600, never replaced) if there is none."""
    import secrets

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    with open(path, encoding="ascii") as f:
        token = f.read().strip()
    if len(token) < 16:
        raise ValueError(f"the token in {path} is too short (at least 16 characters)")
    return token


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not 0 < args.stuck_after < float("inf"):
        print(f"router: --stuck-after must be a positive number of seconds, found {args.stuck_after}", file=sys.stderr)
        return 2
    try:
        with open(args.config, encoding="utf-8") as f:
            config = validate_config(json.load(f), allow_remote=args.allow_remote_upstreams)
    except (OSError, ValueError) as e:  # ConfigError and JSONDecodeError are ValueErrors
        print(f"router: cannot use config {args.config}: {e}", file=sys.stderr)
        return 2
    token_file = args.token_file or args.config + ".token"
    try:
        token = load_token(token_file)
    except (OSError, ValueError) as e:
        print(f"router: cannot use token file {token_file}: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # outlive the terminal that started it
    try:  # two sockets per proxied connection: use the hard limit on file descriptors
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    router = Router(
        config,
        config_path=args.config,
        upstream_timeout=args.upstream_timeout,
        idle_timeout=args.idle_timeout,
        token=token,
        allow_remote=args.allow_remote_upstreams,
        stuck_after=args.stuck_after,
    )
    router.token_file = os.path.abspath(token_file)
    gc.set_threshold(10_000, 50, 50)  # fewer collections on the request path
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        uvloop = None
    try:
        if uvloop is not None and sys.version_info >= (3, 12):
            asyncio.run(_run(router, args), loop_factory=uvloop.new_event_loop)
        else:
            if uvloop is not None:
                uvloop.install()
            asyncio.run(_run(router, args))
    except OSError as e:
        print(f"router: cannot listen: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

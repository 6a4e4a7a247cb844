"""Is a target there at all? One bounded TCP connect before any load is run against it.

Shared by `rollout gate` (the candidate's URL) and `rollout run`/`advance` (the
entry point and the canary URL, before the first stage): an unreachable target
is an infrastructure failure (exit 3) named with its URL within seconds, not a
stage that ends in review because "0 requests < 150 needed to judge".
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from rollout.errors import InfraError, UsageError

PROBE_TIMEOUT = 3.0


def host_port(url: str, what: str = "--host") -> tuple[str, int]:
    """(host, port) of an http(s) URL; UsageError (exit 2) for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UsageError(f"{what} {url!r} has an invalid port", "give the target as http://HOST:PORT") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{what} {url!r} is not an http(s) URL", "give the target as http://HOST:PORT or https://HOST")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def probe(url: str, timeout: float = PROBE_TIMEOUT, what: str = "target",
          hint: str = "check that the service is up and the URL is right; no load was run") -> None:
    """A TCP connect to `url`'s host and port, bounded in time; InfraError (exit 3) naming the URL when it fails."""
    host, port = host_port(url)
    t0 = time.monotonic()
    try:
        import gevent  # under gevent (the CLI imports locust first) the name lookup is bounded too

        bound: Any = gevent.Timeout(timeout + 2.0, TimeoutError(f"no answer within {timeout + 2.0:g}s"))
    except ImportError:  # pragma: no cover
        bound = contextlib.nullcontext()
    try:
        with bound, socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:  # refused, timed out, no route, unknown name
        took = time.monotonic() - t0
        why = "timed out" if isinstance(exc, TimeoutError | socket.timeout) else (exc.strerror or str(exc) or type(exc).__name__)
        raise InfraError(f"{what} {url} is unreachable: {why} ({host}:{port}, after {took:.1f}s)", hint) from None

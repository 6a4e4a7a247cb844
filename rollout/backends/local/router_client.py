"""Talking to the local router's admin API (127.0.0.1:ADMIN_PORT) with httpx.

    cfg = get_config(admin_port)             # config + live counters
    cfg = put_config(admin_port, new_config) # persisted by the router, then applied
    healthz(admin_port), shutdown(admin_port)

Errors:
    RouterUnreachable  nothing answers on the admin port (not running, wrong
                       port, timed out) or the answer is not the router's
    ConfigRejected     the router refused the config (HTTP 400): the message
                       lists every problem; the running config is unchanged
Both derive from RouterError, a BackendError (exit code 3 at the CLI).
"""

from __future__ import annotations

from typing import Any

import httpx

from rollout.errors import BackendError

DEFAULT_TIMEOUT = 5.0


class RouterError(BackendError):
    """The local router did not do what was asked."""


class RouterUnreachable(RouterError):
    """The router's admin port does not answer (or something else answers it)."""


class ConfigRejected(RouterError):
    """The router refused a config; `.status` is the HTTP status, the message says why."""

    def __init__(self, what: str, hint: str = "", *, status: int = 400) -> None:
        super().__init__(what, hint)
        self.status = status


def _url(admin_port: int, path: str) -> str:
    return f"http://127.0.0.1:{int(admin_port)}{path}"


def _request(method: str, admin_port: int, path: str, timeout: float, body: Any = None) -> dict[str, Any]:
    url = _url(admin_port, path)
    try:
        response = httpx.request(method, url, json=body, timeout=timeout, trust_env=False)
    except httpx.TimeoutException as e:
        raise RouterUnreachable(
            f"the local router's admin API at {url} did not answer within {timeout:g}s ({type(e).__name__})",
            "check that the router process is alive; `rollout status` shows its pid and ports",
        ) from e
    except httpx.TransportError as e:
        raise RouterUnreachable(
            f"the local router's admin API at {url} is unreachable ({e or type(e).__name__})",
            "the router is not running or uses another port; `rollout status` shows its pid and ports",
        ) from e
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise RouterUnreachable(
            f"{url} answered HTTP {response.status_code} with something that is not the router's JSON",
            "another program may be using the router's admin port",
        )
    if response.status_code == 200:
        return payload
    message = str(payload.get("error", payload))
    if response.status_code == 400:
        raise ConfigRejected(f"the local router refused the config: {message}", "fix the config and retry")
    raise ConfigRejected(
        f"the local router answered HTTP {response.status_code} to {method} {path}: {message}",
        "retry; if it persists, restart the router",
        status=response.status_code,
    )


def get_config(admin_port: int, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """The router's current config plus live counters (requests, cohort_requests, errors, router)."""
    return _request("GET", admin_port, "/config", timeout)


def put_config(admin_port: int, config: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Replace the whole config; returns it as applied (with counters) once the router has persisted it."""
    return _request("PUT", admin_port, "/config", timeout, config)


def healthz(admin_port: int, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """{"ok": true, "pid": ..., "generation": ...} or RouterUnreachable."""
    return _request("GET", admin_port, "/healthz", timeout)


def shutdown(admin_port: int, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Ask the router to exit gracefully (in-flight requests get up to 2 s)."""
    return _request("POST", admin_port, "/shutdown", timeout)

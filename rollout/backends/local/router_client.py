"""Talking to the local router's admin API (127.0.0.1:ADMIN_PORT) with httpx.

    admin = AdminEndpoint(admin_port, token)  # token: the router's --token-file
    cfg = get_config(admin)             # config + live counters
    cfg = put_config(admin, new_config) # persisted by the router, then applied
    healthz(admin), shutdown(admin)

Every request carries ``Authorization: Bearer <token>`` and (with a body)
``Content-Type: application/json``: the router refuses anything else (401/415),
and any request with an ``Origin`` header (403), so neither another local user
nor a web page in a local browser can steer it.

Errors:
    RouterUnreachable  nothing answers on the admin port (not running, wrong
                       port, timed out) or the answer is not the router's
    ConfigRejected     the router refused the config (HTTP 400): the message
                       lists every problem; the running config is unchanged
Both derive from RouterError, a BackendError (exit code 3 at the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class AdminEndpoint:
    """Where the admin API listens and the token it requires."""

    port: int
    token: str

    def __repr__(self) -> str:  # never print the token
        return f"AdminEndpoint(port={self.port}, token=***)"


def _url(admin_port: int, path: str) -> str:
    return f"http://127.0.0.1:{int(admin_port)}{path}"


def _request(method: str, admin: AdminEndpoint, path: str, timeout: float, body: Any = None) -> dict[str, Any]:
    url = _url(admin.port, path)
    headers = {"Authorization": f"Bearer {admin.token}"}
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=timeout, trust_env=False)
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


def get_config(admin: AdminEndpoint, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """The router's current config plus live counters (requests, cohort_requests, errors, router)."""
    return _request("GET", admin, "/config", timeout)


def put_config(admin: AdminEndpoint, config: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Replace the whole config; returns it as applied (with counters) once the router has persisted it."""
    return _request("PUT", admin, "/config", timeout, config)


def healthz(admin: AdminEndpoint, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """{"ok": true, "pid": ..., "generation": ...} or RouterUnreachable."""
    return _request("GET", admin, "/healthz", timeout)


def shutdown(admin: AdminEndpoint, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Ask the router to exit gracefully (in-flight requests get up to 2 s)."""
    return _request("POST", admin, "/shutdown", timeout, {})

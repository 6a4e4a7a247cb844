"""Failures as the real API server reports them: `Status` objects.

Clients branch on `reason`, `code` and `details`, and people read `message`,
so every error the fake returns is built here with the exact shape and
wording of k8s.io/apimachinery/pkg/api/errors. Keeping them in one place
means a handler can only fail "like the real thing".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


def status_object(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    """A `Status` (kind Status, apiVersion v1) with status Failure."""
    out: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
    }
    if reason:
        out["reason"] = reason
    if details is not None:
        out["details"] = details
    out["code"] = code
    return out


def _details(name: str | None, group: str, kind: str, **extra: Any) -> dict:
    # Go's StatusDetails has omitempty on every field: only set ones appear.
    d: dict[str, Any] = {}
    if name:
        d["name"] = name
    if group:
        d["group"] = group
    if kind:
        d["kind"] = kind
    d.update({k: v for k, v in extra.items() if v not in (None, "", [], 0)})
    return d


class ApiError(Exception):
    """An error response. `body()` is the JSON (or text) the server sends."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict | None = None,
        *,
        headers: dict[str, str] | None = None,
        plain_text: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = dict(headers or {})
        self.plain_text = plain_text

    def status(self) -> dict:
        return status_object(self.code, self.reason, self.message, self.details)

    def body(self) -> tuple[bytes, str]:
        """(payload, content type)."""
        if self.plain_text:
            return (self.message + "\n").encode(), "text/plain; charset=utf-8"
        return json.dumps(self.status(), separators=(",", ":")).encode(), "application/json"


# --- resource-scoped errors (qualified resource is e.g. "deployments.apps") ---

def not_found(group: str, plural: str, name: str) -> ApiError:
    q = f"{plural}.{group}" if group else plural
    return ApiError(404, "NotFound", f'{q} "{name}" not found', _details(name, group, plural))


def already_exists(group: str, plural: str, name: str) -> ApiError:
    q = f"{plural}.{group}" if group else plural
    return ApiError(409, "AlreadyExists", f'{q} "{name}" already exists', _details(name, group, plural))


OPTIMISTIC_LOCK_MSG = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def conflict(group: str, plural: str, name: str, why: str = OPTIMISTIC_LOCK_MSG) -> ApiError:
    q = f"{plural}.{group}" if group else plural
    return ApiError(
        409, "Conflict", f'Operation cannot be fulfilled on {q} "{name}": {why}',
        _details(name, group, plural),
    )


def forbidden(group: str, plural: str, subresource: str | None, name: str | None,
              namespace: str | None, user: str, verb: str) -> ApiError:
    """The RBAC denial text: who cannot do what, where."""
    q = f"{plural}.{group}" if group else plural
    res = f"{plural}/{subresource}" if subresource else plural
    subject = f'{q} "{name}"' if name else q
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    msg = (f'{subject} is forbidden: User "{user}" cannot {verb} resource "{res}" '
           f'in API group "{group}"{where}')
    return ApiError(403, "Forbidden", msg, _details(name, group, plural))


@dataclass
class FieldError:
    """One entry of a field.ErrorList (Required / Invalid / Forbidden / ...)."""

    type: str  # "Required" | "Invalid" | "Forbidden" | "NotSupported" | "Duplicate"
    field: str
    value: Any = None
    detail: str = ""
    extra: dict = field(default_factory=dict)

    _REASONS = {
        "Required": ("FieldValueRequired", "Required value"),
        "Invalid": ("FieldValueInvalid", "Invalid value"),
        "Forbidden": ("FieldValueForbidden", "Forbidden"),
        "NotSupported": ("FieldValueNotSupported", "Unsupported value"),
        "Duplicate": ("FieldValueDuplicate", "Duplicate value"),
    }

    def _body(self) -> str:
        label = self._REASONS[self.type][1]
        if self.type in ("Invalid", "NotSupported", "Duplicate"):
            s = f"{label}: {go_repr(self.value)}"
        else:
            s = label
        if self.detail:
            s += f": {self.detail}"
        return s

    def __str__(self) -> str:
        return f"{self.field}: {self._body()}"

    def cause(self) -> dict:
        return {"reason": self._REASONS[self.type][0], "message": self._body(), "field": self.field}


class GoLiteral(str):
    """A value already spelled the way Go prints it (e.g. `0x0`)."""


def go_repr(value: Any) -> str:
    """Roughly how Go's %#v / %q prints the values that show up in messages."""
    if isinstance(value, GoLiteral):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        inner = ", ".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in sorted(value.items()))
        return "map[string]string{" + inner + "}"
    return json.dumps(value, sort_keys=True)


def invalid(group: str, kind: str, name: str, errors: list[FieldError]) -> ApiError:
    """422 Invalid: `Deployment.apps "web" is invalid: spec.x: Required value`."""
    qk = f"{kind}.{group}" if group else kind
    if len(errors) == 1:
        agg = str(errors[0])
    else:
        agg = "[" + ", ".join(str(e) for e in errors) + "]"
    return ApiError(
        422, "Invalid", f'{qk} "{name}" is invalid: {agg}',
        _details(name, group, kind, causes=[e.cause() for e in errors]),
    )


# --- request-scoped errors ---

def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def method_not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed",
                    "the server does not allow this method on the requested resource", {})


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def too_old_resource_version(requested: int, oldest: int) -> ApiError:
    return gone(f"too old resource version: {requested} ({oldest})")


def unsupported_media_type(accepted: list[str]) -> ApiError:
    return ApiError(
        415, "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted),
    )


def json_patch_failed() -> ApiError:
    """What handlers/patch.go returns when a JSON patch cannot be applied
    (including a failed `test`): NewGenericServerResponse(422, ...) whose
    server message is *not* kept, so details is an empty object."""
    return ApiError(422, "Invalid", "the server rejected our request due to an error in our request", {})


def internal_error(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}",
                    {"causes": [{"message": message}]})


def too_many_requests(retry_after: int = 1, as_status: bool = False) -> ApiError:
    """API Priority & Fairness rejects with *plain text* and Retry-After
    (filters/maxinflight.go tooManyRequests); `as_status` gives the Status
    form some handlers (e.g. eviction) use instead."""
    headers = {"Retry-After": str(retry_after)}
    if as_status:
        return ApiError(429, "TooManyRequests", "Too many requests, please try again later.",
                        {"retryAfterSeconds": retry_after}, headers=headers)
    return ApiError(429, "TooManyRequests", "Too many requests, please try again later.",
                    headers={**headers, "X-Content-Type-Options": "nosniff"}, plain_text=True)


def service_unavailable(message: str = "the server is currently unable to handle the request",
                        retry_after: int | None = None) -> ApiError:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    details = {"retryAfterSeconds": retry_after} if retry_after else None
    return ApiError(503, "ServiceUnavailable", message, details, headers=headers)


def timeout(message: str = "request did not complete within requested timeout - context deadline exceeded") -> ApiError:
    return ApiError(504, "Timeout", f"Timeout: {message}", {})


def for_code(code: int, *, group: str = "", plural: str = "", subresource: str | None = None,
             name: str | None = None, namespace: str | None = None, user: str = "",
             verb: str = "", message: str | None = None, retry_after: int | None = None,
             as_status: bool = False) -> ApiError:
    """A realistic error for an injected status code."""
    if code == 401:
        return unauthorized()
    if code == 403:
        err = forbidden(group, plural, subresource, name, namespace, user, verb)
    elif code == 404:
        err = not_found(group, plural, name or "") if name else path_not_found()
    elif code == 409:
        err = conflict(group, plural, name or "")
    elif code == 410:
        err = gone(message or "too old resource version")
    elif code == 429:
        err = too_many_requests(retry_after or 1, as_status=as_status)
    elif code == 500:
        err = internal_error(message or "fake apiserver: injected fault")
    elif code == 503:
        err = service_unavailable(retry_after=retry_after)
    elif code == 504:
        err = timeout()
    elif code == 422:
        err = json_patch_failed()
    elif code == 400:
        err = bad_request(message or "the server rejected our request for an unknown reason")
    else:
        err = ApiError(code, "InternalError" if code >= 500 else "Unknown",
                       message or f"fake apiserver: injected status {code}", {})
    if message and code not in (410, 500, 400):
        err.message = message
    return err

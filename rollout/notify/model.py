"""Webhooks declared in a plan, and redaction of the secrets they carry.

A webhook URL is a credential (Slack's `/services/T…/B…/<token>`, a token in
the query string, `user:password@`), and so are header values (`Authorization`).
The model keeps them in secret types: `repr`, `str`, `model_dump()` and
`model_dump(mode="json")` show only the redacted form; the real value comes out
only through `Webhook.secret_url()` / `Webhook.secret_headers()`, which only the
sender calls. Even a validation error shows the redacted URL (the plan loader
prints the offending input).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args
from urllib.parse import unquote

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Secret, SecretStr, WithJsonSchema, field_validator, model_validator

Event = Literal["stage-started", "gate-failed", "rolled-back", "awaiting-review", "promoted", "reverted", "aborted",
                "watch-breach", "watch-resolved", "watch-blind", "watch-seeing"]
EVENTS: tuple[str, ...] = get_args(Event)

MASK = "***"
_LOWER_WORDS = re.compile(r"^[a-z]+(?:[-_.][a-z]+)*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _tokenish(segment: str) -> bool:
    """Does a path segment look like a credential or an opaque id (Slack's T…, B…, token)?"""
    s = unquote(segment)
    if not s or _LOWER_WORDS.match(s):  # `services`, `api`, `incoming-webhooks`
        return False
    digits = sum(c.isdigit() for c in s)
    letters = sum(c.isalpha() for c in s)
    if len(s) >= 16:
        return True
    if len(s) >= 6 and digits >= 2 and letters >= 1:  # T024BE7LH, B0456EFGH
        return True
    return len(s) >= 6 and digits == len(s)  # numeric ids (Discord)


def _split(url: str) -> tuple[str, str, str, str, str, str]:
    """scheme, userinfo, hostport, path, query, fragment — by hand, so it never raises."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    return scheme, userinfo if at else "", hostport, slash + path, query, fragment


def secret_parts(url: str) -> list[str]:
    """The pieces of a URL that `redact` hides (raw and percent-decoded), longest first."""
    _scheme, userinfo, _host, path, query, fragment = _split(url)
    parts: set[str] = set()
    if userinfo:
        parts.add(userinfo)
        parts.update(p for p in userinfo.split(":") if p)
    parts.update(seg for seg in path.split("/") if _tokenish(seg))
    for pair in query.split("&") if query else []:
        _k, eq, v = pair.partition("=")
        if eq and v:
            parts.add(v)
        elif not eq and pair:
            parts.add(pair)
    if fragment:
        parts.add(fragment)
    parts |= {unquote(p) for p in parts}
    return sorted((p for p in parts if len(p) >= 4), key=len, reverse=True)


def redact(url: str) -> str:
    """The URL with its secrets masked: userinfo, query values, fragment, token-like path segments.

    `https://hooks.slack.com/services/T0/B0/abc` → `https://hooks.slack.com/services/***/***/***`.
    Never raises; hosts, ports and word-like path segments stay readable.
    """
    try:
        scheme, userinfo, hostport, path, query, fragment = _split(str(url))
        out = f"{scheme}://" if scheme else ""
        if userinfo:
            out += f"{MASK}@"
        out += hostport
        out += "/".join(MASK if _tokenish(seg) else seg for seg in path.split("/"))
        if query:
            pairs = []
            for pair in query.split("&"):
                k, eq, v = pair.partition("=")
                pairs.append(f"{k}={MASK}" if eq else (MASK if pair else pair))
            out += "?" + "&".join(pairs)
        if fragment:
            out += "#" + MASK
        return out
    except Exception:  # pragma: no cover - defensive: redaction must never fail open
        return "<url hidden>"


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every occurrence of every secret replaced by ***."""
    for s in secrets:
        if s and s in text:
            text = text.replace(s, MASK)
    return text


class SecretUrl(Secret[str]):
    """A webhook URL: shown (repr, str, JSON dumps) only in its redacted form."""

    def _display(self) -> str:
        return redact(self.get_secret_value())

    def __repr__(self) -> str:  # as a quoted string: plan errors read `found 'https://hooks.slack.com/services/***/***/***'`
        return repr(self._display())


def _wrap_secrets(data: Any) -> Any:
    """Before any field is validated, so even an error shows only the redacted forms."""
    if isinstance(data, dict):
        data = dict(data)
        url = data.get("url")
        if isinstance(url, str):
            data["url"] = SecretUrl(url)
        headers = data.get("headers")
        if isinstance(headers, dict):
            data["headers"] = {k: SecretStr(v) if isinstance(v, str) else v for k, v in headers.items()}
    return data


def _seconds(value: object) -> float:
    # imported here: rollout.plan.model imports this module, so importing rollout.plan at import time is circular
    from rollout.plan.units import parse_duration

    return parse_duration(value)


Seconds = Annotated[
    float,
    BeforeValidator(_seconds),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "pattern": r"^\d+(\.\d+)?\s*(ms|s|m|h)$"}, {"type": "number", "exclusiveMinimum": 0}],
            "description": "a duration: 5s, 500ms (a bare number is seconds)",
        }
    ),
]


class Webhook(BaseModel):
    """A webhook alerted when the rollout changes: a generic JSON payload or a Slack-compatible one."""

    # the plan's `Strict` style (rollout.plan.model imports this module, so it is not imported here)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    url: Annotated[
        SecretUrl,
        WithJsonSchema({"type": "string", "pattern": "^https?://", "description": "http(s) URL; a secret: shown redacted"}),
    ] = Field(description="where to POST; a secret (tokens in it are never printed)")
    format: Literal["json", "slack", "alertmanager"] = Field(
        "json", description="json: {event, plan, owner, message, details, at}; slack: {text, blocks} for Slack-compatible receivers; "
        "alertmanager: the URL is an Alertmanager (its /api/v2/alerts is posted to), alerts fire and resolve there"
    )
    events: list[Event] = Field(default_factory=lambda: list(EVENTS), min_length=1, description="which events to send (default: all)")
    timeout: Seconds = Field(5.0, gt=0, le=60, description="per attempt: connecting, sending, waiting for the answer")
    retries: int = Field(3, ge=0, le=10, description="further attempts after a failed one (timeouts, connection errors, 429, 5xx)")
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="extra request headers, e.g. Authorization; values are secrets")

    _wrap = model_validator(mode="before")(_wrap_secrets)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: SecretUrl) -> SecretUrl:
        raw = v.get_secret_value()
        scheme, _userinfo, hostport, _path, _query, _fragment = _split(raw)
        if scheme.lower() not in ("http", "https") or not hostport or any(c.isspace() for c in raw):
            raise ValueError("an http:// or https:// URL with a host (the URL itself is not shown: it is a secret)")
        return v

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, value in v.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name `{name}`: letters, digits and -")
            if any(c in value.get_secret_value() for c in "\r\n\0"):
                raise ValueError(f"header `{name}`: a value on one line")
        return v

    @field_validator("events")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    def secret_url(self) -> str:
        return self.url.get_secret_value()

    def post_url(self) -> str:
        """Where alerts are POSTed: the URL itself, or an Alertmanager's v2 alerts endpoint under it."""
        url = self.secret_url()
        if self.format == "alertmanager" and not url.split("?", 1)[0].rstrip("/").endswith("/api/v2/alerts"):
            base, q, query = url.partition("?")
            return base.rstrip("/") + "/api/v2/alerts" + (q + query if q else "")
        return url

    def secret_headers(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.headers.items()}

    def redacted_url(self) -> str:
        return redact(self.secret_url())

    def secrets(self) -> list[str]:
        """Every secret string this webhook carries, for scrubbing messages and logs."""
        extra = [v.get_secret_value() for v in self.headers.values()]
        extra += [v.split(None, 1)[1] for v in extra if len(v.split(None, 1)) == 2]  # `Bearer <token>`: the token alone too
        return sorted({self.secret_url(), *secret_parts(self.secret_url()), *(e for e in extra if len(e) >= 4)}, key=len, reverse=True)

"""Evidence for the person who reviews a content alert: the worst answers, bounded, secrets redacted.

A content gate ("answers with confidence < 0.7") says *that* the share rose; the reviewer wants to see
*which* answers — the requests that got them and what came back. `EvidenceSampler` keeps the `keep`
offending exchanges with the lowest values (a max-heap on the value, so each new answer costs
O(log keep) and only an answer that gets in is copied and redacted), each body cut to `max_bytes`.
Memory is bounded by keep × (2 × max_bytes + headers) whatever the watch's length.

Redaction, before anything is kept (so nothing secret reaches the record, status, or an alert):
- headers: Authorization, Cookie, … (`REDACTED_HEADERS`) and the plan's `probe.redact_headers` → ***;
- the URL: userinfo, fragment, token-like path segments (rollout.notify.model's rules), and the values
  of query parameters whose name says secret (token, key, password, …) or whose value looks like a token;
- JSON bodies: the values of keys whose name says secret → *** (recursively);
- then every secret value found above is scrubbed from whatever text remains (an answer that echoes
  the caller's token shows ***), with rollout.notify.model.scrub.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from rollout.notify.model import MASK, _split, _tokenish, scrub
from rollout.plan.watch import REDACTED_HEADERS

SECRET_NAME = re.compile(r"(pass(word|wd)?|secret|token|api[-_]?key|apikey|auth|credential|session|signature|sig|cookie|private[-_]?key)",
                         re.IGNORECASE)


def secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def _token_value(value: str) -> bool:
    """A query value that looks like a credential: one opaque word (text with spaces is a question, not a key)."""
    text = unquote_plus(value)
    return not any(c.isspace() for c in text) and _tokenish(value)


def redact_url(url: str, secrets: list[str]) -> str:
    """The URL with its secrets masked; query values kept unless the name or the value says secret."""
    try:
        scheme, userinfo, hostport, path, query, fragment = _split(str(url))
        out = f"{scheme}://" if scheme else ""
        if userinfo:
            secrets.extend(p for p in userinfo.split(":") if len(p) >= 4)
            out += f"{MASK}@"
        out += hostport
        segs = []
        for seg in path.split("/"):
            if _tokenish(seg):
                secrets.append(seg)
                segs.append(MASK)
            else:
                segs.append(seg)
        out += "/".join(segs)
        if query:
            pairs = []
            for pair in query.split("&"):
                k, eq, v = pair.partition("=")
                if eq and v and (secret_name(k) or _token_value(v)):
                    secrets.append(v)
                    pairs.append(f"{k}={MASK}")
                else:
                    pairs.append(pair)
            out += "?" + "&".join(pairs)
        if fragment:
            out += "#" + MASK
        return out
    except Exception:  # noqa: BLE001  # redaction must never fail open
        return "<url hidden>"


def redact_headers(headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None, listed: frozenset[str], secrets: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    if headers is None:
        return out
    items = headers.items() if hasattr(headers, "items") else headers
    try:
        for k, v in items:
            name, value = str(k), str(v)
            if name.lower() in listed or secret_name(name):
                if len(value) >= 4:
                    secrets.append(value)
                    secrets.extend(p for p in value.split() if len(p) >= 4)  # "Bearer abc…": the token alone too
                out[name] = MASK
            else:
                out[name] = value[:500]
    except Exception:  # noqa: BLE001  # an odd headers object: show none rather than fail
        return {"headers": "<unreadable>"}
    return out


def _mask_json(data: Any, secrets: list[str]) -> Any:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if secret_name(str(k)) and not isinstance(v, (dict, list)):
                if v is not None and len(str(v)) >= 4:
                    secrets.append(str(v))
                out[k] = MASK
            else:
                out[k] = _mask_json(v, secrets)
        return out
    if isinstance(data, list):
        return [_mask_json(v, secrets) for v in data]
    return data


def redact_body(body: Any, secrets: list[str], max_bytes: int) -> str | None:
    """A body as text: secret JSON fields masked, secrets scrubbed, cut to `max_bytes` (UTF-8)."""
    if body is None:
        return None
    raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
    if not raw:
        return ""
    raw = raw[: 64 * 1024]  # parse at most this much; the kept text is cut further below
    text = raw.decode("utf-8", "replace")
    try:
        text = json.dumps(_mask_json(json.loads(text), secrets), ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        pass
    text = scrub(text, sorted(set(secrets), key=len, reverse=True))
    cut = text.encode("utf-8")
    if len(cut) > max_bytes:
        text = cut[:max_bytes].decode("utf-8", "ignore") + f"… ({len(cut):,} bytes)"
    return text


def exchange(method: str, url: str, request_headers: Any, request_body: Any, status: int | None, answer_headers: Any,
             answer_body: Any, listed: frozenset[str], max_bytes: int) -> dict[str, Any]:
    """One request and its answer, redacted (see the module docstring)."""
    secrets: list[str] = []
    req_headers = redact_headers(request_headers, listed, secrets)
    ans_headers = redact_headers(answer_headers, listed, secrets)
    shown_url = redact_url(url, secrets)
    return {
        "request": {"method": method, "url": scrub(shown_url, sorted(set(secrets), key=len, reverse=True)),
                    "headers": req_headers, "body": redact_body(request_body, secrets, max_bytes)},
        "answer": {"status": status, "headers": ans_headers, "body": redact_body(answer_body, secrets, max_bytes)},
    }


@dataclass
class EvidenceSampler:
    """The `keep` offending exchanges with the lowest values seen (see the module docstring)."""

    keep: int = 20
    max_bytes: int = 2048
    redact: tuple[str, ...] = ()
    offered: int = 0  # offending answers seen (kept or not)

    def __post_init__(self) -> None:
        self.listed = frozenset(h.lower() for h in (*REDACTED_HEADERS, *self.redact))
        self._heap: list[tuple[float, int, dict[str, Any]]] = []  # (-value, order, item): the root is the best kept
        self._order = itertools.count()

    def offer(self, value: float, at: float, build: Callable[[frozenset[str], int], dict[str, Any]]) -> bool:
        """An offending answer with `value`: kept when among the `keep` lowest. `build(listed, max_bytes)` makes the
        redacted exchange, called only when it is kept (the common case, a not-so-bad answer, costs nothing)."""
        self.offered += 1
        if self.keep <= 0:
            return False
        if len(self._heap) >= self.keep and not value < -self._heap[0][0]:
            return False
        item = {"value": value, "at": round(at, 3), **build(self.listed, self.max_bytes)}
        entry = (-value, next(self._order), item)
        if len(self._heap) < self.keep:
            heapq.heappush(self._heap, entry)
        else:
            heapq.heapreplace(self._heap, entry)
        return True

    def worst(self) -> list[dict[str, Any]]:
        """The kept exchanges, worst (lowest value) first."""
        return [item for _, _, item in sorted(self._heap, key=lambda e: (-e[0], e[1]))]

    def __len__(self) -> int:
        return len(self._heap)

    def to_dict(self) -> dict[str, Any]:
        return {"offered": self.offered, "worst": self.worst()}

    def restore(self, d: Mapping[str, Any] | None) -> None:
        """Take back what a previous watch saved (a restarted watch shows the same evidence)."""
        if not d:
            return
        self.offered = int(d.get("offered") or 0)
        for item in list(d.get("worst") or [])[: max(self.keep, 0)]:
            if isinstance(item, dict) and isinstance(item.get("value"), (int, float)):
                heapq.heappush(self._heap, (-float(item["value"]), next(self._order), item))


def lines(evidence: Mapping[str, Any], limit: int = 20) -> list[str]:
    """Evidence for people (status): one line per kept answer, worst first."""
    out = []
    for item in list(evidence.get("worst") or [])[:limit]:
        req, ans = item.get("request") or {}, item.get("answer") or {}
        body = (ans.get("body") or "").replace("\n", " ")
        out.append(f"{item.get('value')!s:>8}  {req.get('method', '?')} {req.get('url', '?')} → {ans.get('status', '?')} {body[:160]}")
    return out

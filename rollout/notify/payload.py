"""What a webhook receives: a generic JSON document, or a Slack-compatible message."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

EMOJI = {
    "stage-started": "▶️",
    "gate-failed": "🚨",
    "rolled-back": "⏪",
    "awaiting-review": "✋",
    "promoted": "✅",
    "reverted": "↩️",
    "aborted": "🛑",
    "watch-breach": "📉",
    "watch-resolved": "🟢",
    "watch-blind": "🙈",
    "watch-seeing": "👀",
}
TITLE = {
    "stage-started": "Stage started",
    "gate-failed": "Gate failed",
    "rolled-back": "Rolled back",
    "awaiting-review": "Awaiting review",
    "promoted": "Promoted",
    "reverted": "Reverted",
    "aborted": "Aborted",
    "watch-breach": "Watch: live version degraded",
    "watch-resolved": "Watch: back to normal",
    "watch-blind": "Watch: cannot see the live version",
    "watch-seeing": "Watch: seeing again",
}
# Slack mention syntax that must reach Slack unescaped: <@U123>, <!subteam^S123>, <!here>, <#C123>
_MENTION = re.compile(r"^<[@#!][^<>]+>$")
_SLACK_TEXT_MAX = 2900  # section text is limited to 3000 characters
_SLACK_FIELDS_MAX = 10  # and a section to 10 fields


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_safe(details: Any) -> Any:
    """A JSON-only deep copy of `details` (unknown objects become their str); never raises."""
    try:
        return json.loads(json.dumps(details if details is not None else {}, default=str))
    except (TypeError, ValueError):  # circular, or keys json cannot take
        return {"details": str(details)}


def generic(event: str, plan: str, owner: dict[str, str], message: str, details: Any, at: float) -> dict[str, Any]:
    return {"event": event, "plan": plan, "owner": dict(owner), "message": message, "details": json_safe(details), "at": iso(at)}


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _owner_text(owner: dict[str, str]) -> str:
    name, contact = owner.get("name", ""), owner.get("contact", "")
    contact_text = contact if _MENTION.match(contact) else _esc(contact)  # a Slack mention pings the owner
    return f"{_esc(name)} ({contact_text})" if contact else _esc(name)


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def slack(event: str, plan: str, owner: dict[str, str], message: str, details: Any, at: float) -> dict[str, Any]:
    emoji, title = EMOJI.get(event, "ℹ️"), TITLE.get(event, event)
    who = _owner_text(owner)
    text = _cut(f"{emoji} {title} — {_esc(plan)}: {_esc(message)} · owner: {who}", _SLACK_TEXT_MAX)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(f"{emoji} *{title}* — rollout `{_esc(plan)}`\n{_esc(message)}", _SLACK_TEXT_MAX)}},
    ]
    safe = json_safe(details)
    if isinstance(safe, dict) and safe:
        fields = [{"type": "mrkdwn", "text": _cut(f"*{_esc(str(k))}*\n{_esc(_value(v))}", 1900)} for k, v in list(safe.items())[:_SLACK_FIELDS_MAX]]
        blocks.append({"type": "section", "fields": fields})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(f"owner: {who} · {iso(at)}", _SLACK_TEXT_MAX)}]})
    return {"text": text, "blocks": blocks}


# Alertmanager identifies an alert by its label set: a resolving event must carry exactly the labels of the
# event that fired it, so both map to one alert name and one severity.
AM_ALERT = {
    "watch-breach": ("RolloutWatchBreach", "critical"), "watch-resolved": ("RolloutWatchBreach", "critical"),
    "watch-blind": ("RolloutWatchBlind", "warning"), "watch-seeing": ("RolloutWatchBlind", "warning"),
    "gate-failed": ("RolloutGateFailed", "critical"), "rolled-back": ("RolloutRolledBack", "critical"),
    "awaiting-review": ("RolloutAwaitingReview", "warning"), "aborted": ("RolloutAborted", "warning"),
    "reverted": ("RolloutReverted", "warning"), "stage-started": ("RolloutStageStarted", "info"),
    "promoted": ("RolloutPromoted", "info"),
}
AM_RESOLVING = {"watch-resolved", "watch-seeing"}
AM_TTL_SECONDS = 3600.0  # a one-shot event (or a firing one not re-sent) ends by itself after this long


def _label(value: Any) -> str:
    return " ".join(str(value).split())[:200]  # one line, bounded: labels are index keys


def _fit_evidence(evidence: Any, limit: int) -> str:
    """A content alert's sample as JSON within `limit` characters: whole items, worst first, as many as fit
    (bodies shortened first), so the annotation stays valid JSON; the rest is in `rollout status`."""
    if not isinstance(evidence, list):
        return _cut(json.dumps(evidence, ensure_ascii=False, default=str), limit)

    def short(item: Any, n: int) -> Any:
        if not isinstance(item, dict):
            return item
        out = dict(item)
        for side in ("request", "answer"):
            part = out.get(side)
            if isinstance(part, dict) and isinstance(part.get("body"), str):
                out[side] = {**part, "body": _cut(part["body"], n)}
        return out

    for n in (400, 160, 60):
        items = [short(i, n) for i in evidence]
        while items:
            text = json.dumps(items, ensure_ascii=False, default=str)
            if len(text) <= limit:
                return text
            items.pop()
    return "[]"


def alertmanager(event: str, plan: str, owner: dict[str, str], message: str, details: Any, at: float) -> list[dict[str, Any]]:
    """One alert for Alertmanager's v2 API (POST /api/v2/alerts takes a list).

    Labels: alertname, plan, severity, owner, and version / gate when the details name them (a watch
    breach per gate). Firing: startsAt (the evidence's `since` when known) and endsAt = now + ttl
    (`details.ttl`, else one hour), so an alert its sender stops re-sending ends by itself; resolving:
    endsAt = now."""
    safe = json_safe(details)
    d = safe if isinstance(safe, dict) else {}
    name, severity = AM_ALERT.get(event, ("Rollout" + "".join(w.title() for w in event.split("-")), "info"))
    labels = {"alertname": name, "plan": _label(plan), "severity": severity, "owner": _label(owner.get("name", ""))}
    version = d.get("version") or d.get("canary")
    if version:
        labels["version"] = _label(version)
    if d.get("gate"):
        labels["gate"] = _label(d["gate"])
    numbers = {k: v for k, v in d.items() if k not in ("version", "gate", "ttl", "since", "evidence")}
    annotations = {
        "summary": _cut(f"{TITLE.get(event, event)} — {plan}: {message}", 1000),
        "description": _cut(json.dumps(numbers, ensure_ascii=False, default=str), 4000),
        "owner_contact": owner.get("contact", ""),
        "hint": f"rollout status {plan}",
    }
    if d.get("evidence"):
        annotations["evidence"] = _fit_evidence(d["evidence"], 4000)
    since = d.get("since")
    starts = float(since) if isinstance(since, (int, float)) and since <= at else at
    ttl = d.get("ttl")
    ends = at if event in AM_RESOLVING else at + (float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else AM_TTL_SECONDS)
    return [{"labels": labels, "annotations": annotations, "startsAt": iso(starts), "endsAt": iso(ends)}]


def build(fmt: str, event: str, plan: str, owner: dict[str, str], message: str, details: Any, at: float) -> Any:
    if fmt == "alertmanager":
        return alertmanager(event, plan, owner, message, details, at)
    return (slack if fmt == "slack" else generic)(event, plan, owner, message, details, at)

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
}
TITLE = {
    "stage-started": "Stage started",
    "gate-failed": "Gate failed",
    "rolled-back": "Rolled back",
    "awaiting-review": "Awaiting review",
    "promoted": "Promoted",
    "reverted": "Reverted",
    "aborted": "Aborted",
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


def build(fmt: str, event: str, plan: str, owner: dict[str, str], message: str, details: Any, at: float) -> dict[str, Any]:
    return (slack if fmt == "slack" else generic)(event, plan, owner, message, details, at)

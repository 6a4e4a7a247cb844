"""`rollout list`: one row per rollout — name, owner, phase, stage, stable → canary, since.

A row is built from the recorded state, and from the plan when its file was
found; without one (a ConfigMap in a cluster, a bare state directory) the
state's `plan_info` (owner, stage names; written by every command that acts)
fills in what only the plan knows.
"""

from __future__ import annotations

import time
from typing import Any

from tabulate import tabulate

from rollout.engine.state import State


def _ago(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    if s < 172800:
        return f"{s / 3600:.0f}h ago"
    return f"{s / 86400:.0f}d ago"


def row(name: str, state: State | None, location: str, plan: Any = None, plan_path: str | None = None,
        namespace: str | None = None, problem: str = "") -> dict[str, Any]:
    """The machine form of one row (`-o json`); `render` turns rows into the table."""
    info = state.plan_info if state is not None else {}
    stages = [s.name for s in plan.stages] if plan is not None else list(info.get("stages") or [])
    owner = plan.owner.name if plan is not None else info.get("owner")
    out: dict[str, Any] = {"name": name, "owner": owner, "phase": None, "stage": None, "stages": len(stages) or None,
                           "stage_name": None, "stable": None, "canary": None, "since": None, "reason": "",
                           "location": location, "plan": plan_path, "problem": problem}
    if namespace is not None:
        out["namespace"] = namespace
    if state is None:
        return out
    out.update(phase=state.phase.value, stable=state.stable_version, canary=state.canary_version, reason=state.reason)
    if state.phase.active:
        i = state.stage_index
        rec = state.current_stage()
        out["stage"] = i + 1
        out["stage_name"] = stages[i] if i < len(stages) else (rec.name if rec is not None else None)
        out["since"] = state.started_at
    elif state.past:
        last = state.past[-1]
        out.update(stable=last.stable, canary=last.canary, since=last.ended_at)
    else:
        out["since"] = state.updated_at or None
    return out


def _stage_text(r: dict[str, Any]) -> str:
    if r["stage"] is None:
        return "-"
    total = r["stages"] or "?"
    if isinstance(r["stages"], int) and r["stage"] > r["stages"]:
        return f"{total}/{total} done"
    return f"{r['stage']}/{total}" + (f" {r['stage_name']}" if r["stage_name"] else "")


def _versions_text(r: dict[str, Any]) -> str:
    if r["stable"] is None:
        return "-"
    return f"{r['stable']} → {r['canary']}" if r["canary"] else str(r["stable"])


def _since_text(r: dict[str, Any], now: float) -> str:
    if not r["since"]:
        return "-"
    when = time.localtime(r["since"])
    fmt = "%H:%M" if time.strftime("%Y-%m-%d", when) == time.strftime("%Y-%m-%d", time.localtime(now)) else "%Y-%m-%d %H:%M"
    return f"{time.strftime(fmt, when)} ({_ago(now - r['since'])})"


def render(rows: list[dict[str, Any]], now: float | None = None) -> str:
    at = time.time() if now is None else now
    with_ns = any("namespace" in r for r in rows)
    table = []
    for r in rows:
        phase = r["phase"] or ("unreadable: " + r["problem"] if r["problem"] else "never run")
        cells = [r["name"], r["owner"] or "-", phase, _stage_text(r), _versions_text(r), _since_text(r, at)]
        table.append(([r["namespace"]] if with_ns else []) + cells)
    headers = (["namespace"] if with_ns else []) + ["name", "owner", "phase", "stage", "stable → canary", "since"]
    return tabulate(table, headers=headers, disable_numparse=True)

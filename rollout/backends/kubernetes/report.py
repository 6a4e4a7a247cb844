"""The `Live:` lines of `rollout status` for the kubernetes backend (from `KubernetesBackend.inspect`)."""

from __future__ import annotations

from typing import Any

from rollout.backends.kubernetes.routers import replica_counts
from rollout.engine.state import State


def _dep(role: str, d: dict[str, Any] | None) -> str:
    if not d:
        return f"{role} ?"
    if "error" in d:
        return f"{role} {d['deployment']} UNREADABLE ({d['error']})"
    images = ", ".join(sorted(set((d.get("images") or {}).values()))) or "no image"
    return f"{role} {d['deployment']} {d.get('ready', d.get('available', 0))}/{d.get('replicas', 0)} ready ({images})"


def live_lines(state: State, live: dict[str, Any]) -> list[str]:
    deps = live.get("deployments") or {}
    lines = ["Live:     " + "; ".join(_dep(role, deps.get(role)) for role in ("stable", "canary"))]
    t = live.get("traffic") or {}
    router = t.get("router", "?")
    if "error" in t:
        lines.append(f"          {router} router UNREADABLE: {t['error']}")
        return lines
    weight = float(t.get("weight") or 0.0)
    cohort = t.get("cohort")
    said = f"{weight * 100:.4g}% to canary" + (f", cohort {cohort[0]}: {cohort[1]} to canary" if cohort else "")
    how = "read back from the ready pods" if router == "replicas" else "read back from the " + ("HTTPRoute" if router == "gateway-api" else "canary Ingress")
    recorded = state.split
    expected = recorded.weight
    if router == "replicas" and state.backend.get("total") and state.backend.get("canary"):
        expected = replica_counts(int(state.backend["total"]), recorded.weight).effective  # what the pods can express
    differs = abs(weight - expected) > 1e-4 or (tuple(cohort) if cohort else None) != recorded.cohort
    line = f"          {router}: {said} ({how})"
    if differs:
        line += f" — NOT what the state records ({recorded.describe()})"
    lines.append(line)
    if t.get("note"):
        lines.append(f"          coarse weight: {t['note']}")
    return lines

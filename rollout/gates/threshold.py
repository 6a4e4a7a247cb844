"""Threshold gates: absolute SLO guards and the canary-against-stable comparison.

Evaluated every second on the stage's cumulative statistics. A gate judges
only once every version it looks at has `min_requests`; before that it is
pending, and at the end of the stage it is inconclusive (no evidence is not
evidence of health). A failing gate fails at once: the engine stops the stage.
"""

from __future__ import annotations

from rollout.gates.verdict import Status, Verdict
from rollout.load.stats import StageStats
from rollout.plan.model import Gate
from rollout.plan.units import fmt_ms, fmt_percent


def _value(gate: Gate, stats: StageStats, role: str) -> tuple[float, int]:
    vs = stats.role(role)
    if gate.metric == "error_rate":
        return vs.error_rate, vs.requests
    return vs.percentile(float(gate.metric[1:])), vs.requests


def _fmt(gate: Gate, value: float) -> str:
    return fmt_percent(value) if gate.metric == "error_rate" else fmt_ms(value)


def _label(gate: Gate) -> str:
    return "error rate" if gate.metric == "error_rate" else gate.metric


def evaluate(name: str, gate: Gate, stats: StageStats, final: bool) -> Verdict:
    if gate.compare == "stable":
        return _compare(name, gate, stats, final)
    role = gate.version
    value, n = _value(gate, stats, role)
    limit = float(gate.max)  # type: ignore[arg-type]
    who = "all traffic" if role == "all" else role
    if n < gate.min_requests:
        status = Status.INCONCLUSIVE if final else Status.PENDING
        return Verdict(name, status, f"{who} {_label(gate)}: {n:,} requests < {gate.min_requests:,} needed to judge", role, None, limit, n)
    if value > limit:
        return Verdict(name, Status.FAIL, f"{who} {_label(gate)} {_fmt(gate, value)} > {_fmt(gate, limit)} ({n:,} requests)", role, value, limit, n)
    status = Status.PASS if final else Status.PENDING
    return Verdict(name, status, f"{who} {_label(gate)} {_fmt(gate, value)} ≤ {_fmt(gate, limit)} ({n:,} requests)", role, value, limit, n)


def _compare(name: str, gate: Gate, stats: StageStats, final: bool) -> Verdict:
    c_val, c_n = _value(gate, stats, "canary")
    s_val, s_n = _value(gate, stats, "stable")
    inc = float(gate.max_increase or 0.0)
    if min(c_n, s_n) < gate.min_requests:
        status = Status.INCONCLUSIVE if final else Status.PENDING
        return Verdict(
            name, status,
            f"canary vs stable {_label(gate)}: {c_n:,}/{s_n:,} requests < {gate.min_requests:,} each needed to judge",
            "canary", None, None, min(c_n, s_n),
        )
    if gate.metric == "error_rate":
        limit = s_val + inc
        rel = f"stable {_fmt(gate, s_val)} + {fmt_percent(inc)} points"
    else:
        limit = s_val * (1.0 + inc)
        rel = f"stable {_fmt(gate, s_val)} × {1 + inc:g}"
    numbers = f"({c_n:,} canary / {s_n:,} stable requests)"
    if c_val > limit:
        return Verdict(name, Status.FAIL, f"canary {_label(gate)} {_fmt(gate, c_val)} > {_fmt(gate, limit)} = {rel} {numbers}", "canary", c_val, limit, c_n)
    status = Status.PASS if final else Status.PENDING
    return Verdict(name, status, f"canary {_label(gate)} {_fmt(gate, c_val)} ≤ {_fmt(gate, limit)} = {rel} {numbers}", "canary", c_val, limit, c_n)


def evaluate_all(gates: dict[str, Gate], stats: StageStats, final: bool) -> list[Verdict]:
    return [evaluate(name, gate, stats, final) for name, gate in gates.items()]

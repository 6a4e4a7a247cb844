"""Threshold gates: absolute SLO guards and the canary-against-stable comparison.

Evaluated every second on the stage's cumulative statistics. A gate judges
only once every version it looks at has `min_requests` (values, for a
declared metric); before that it is pending, and at the end of the stage it
is inconclusive (no evidence is not evidence of health). A failing gate fails
at once: the engine stops the stage.
"""

from __future__ import annotations

import math

from rollout.gates.verdict import Status, Verdict
from rollout.load.stats import StageStats
from rollout.plan.model import Gate
from rollout.plan.units import fmt_ms, fmt_percent


def _value(gate: Gate, stats: StageStats, role: str) -> tuple[float, int]:
    """(the gate's statistic for one version, how many observations it rests on)."""
    if gate.declared:
        stat = gate.statistic
        if stat == "last":
            values = stats.gauges.get(gate.metric, {})
            if role == "all":
                return (sum(values.values()) if values else math.nan), stats.metric(gate.metric, "all").count
            return values.get(role, math.nan), stats.metric(gate.metric, role).count
        h = stats.metric(gate.metric, role)
        if stat == "mean":
            return h.mean, h.count
        if stat == "share_below":
            return (h.count_at_or_below(float(gate.below or 0.0)) / h.count if h.count else math.nan), h.count
        return h.quantile(float(stat[1:]) / 100.0), h.count
    vs = stats.role(role)
    if gate.metric == "error_rate":
        return vs.error_rate, vs.requests
    return vs.percentile(float(gate.metric[1:])), vs.requests


def _fmt(gate: Gate, value: float) -> str:
    if gate.metric == "error_rate" or gate.stat == "share_below":
        return fmt_percent(value)
    if gate.declared:
        return "n/a" if math.isnan(value) else f"{value:.3g}"
    return fmt_ms(value)


def _label(gate: Gate) -> str:
    if gate.metric == "error_rate":
        return "error rate"
    if gate.declared:
        if gate.stat == "share_below":
            return f"share of {gate.metric} ≤ {gate.below:g}"
        return f"{gate.metric} {gate.statistic}"
    return gate.metric


def _unit(gate: Gate) -> str:
    return "values" if gate.declared else "requests"


def evaluate(name: str, gate: Gate, stats: StageStats, final: bool) -> Verdict:
    if gate.compare == "stable":
        return _compare(name, gate, stats, final)
    role = gate.version
    value, n = _value(gate, stats, role)
    who = "all traffic" if role == "all" else role
    limit = float(gate.max) if gate.max is not None else float(gate.min)  # type: ignore[arg-type]
    if n < gate.min_requests or math.isnan(value):
        status = Status.INCONCLUSIVE if final else Status.PENDING
        problem = stats.source_errors.get(gate.metric, "")
        extra = f"; last problem reading it: {problem}" if problem else ""
        return Verdict(name, status, f"{who} {_label(gate)}: {n:,} {_unit(gate)} < {gate.min_requests:,} needed to judge{extra}", role, None, limit, n)
    numbers = f"({n:,} {_unit(gate)})"
    if gate.max is not None and value > float(gate.max):  # type: ignore[arg-type]
        return Verdict(name, Status.FAIL, f"{who} {_label(gate)} {_fmt(gate, value)} > {_fmt(gate, float(gate.max))} {numbers}", role, value, float(gate.max), n)  # type: ignore[arg-type]
    if gate.min is not None and value < float(gate.min):  # type: ignore[arg-type]
        return Verdict(name, Status.FAIL, f"{who} {_label(gate)} {_fmt(gate, value)} < {_fmt(gate, float(gate.min))} {numbers}", role, value, float(gate.min), n)  # type: ignore[arg-type]
    status = Status.PASS if final else Status.PENDING
    bounds = []
    if gate.min is not None:
        bounds.append(f"≥ {_fmt(gate, float(gate.min))}")  # type: ignore[arg-type]
    if gate.max is not None:
        bounds.append(f"≤ {_fmt(gate, float(gate.max))}")  # type: ignore[arg-type]
    return Verdict(name, status, f"{who} {_label(gate)} {_fmt(gate, value)} {' and '.join(bounds)} {numbers}", role, value, limit, n)


def _compare(name: str, gate: Gate, stats: StageStats, final: bool) -> Verdict:
    c_val, c_n = _value(gate, stats, "canary")
    s_val, s_n = _value(gate, stats, "stable")
    if min(c_n, s_n) < gate.min_requests or math.isnan(c_val) or math.isnan(s_val):
        status = Status.INCONCLUSIVE if final else Status.PENDING
        return Verdict(
            name, status,
            f"canary vs stable {_label(gate)}: {c_n:,}/{s_n:,} {_unit(gate)} < {gate.min_requests:,} each needed to judge",
            "canary", None, None, min(c_n, s_n),
        )
    numbers = f"({c_n:,} canary / {s_n:,} stable {_unit(gate)})"
    if gate.max_decrease is not None:  # higher is better: canary at least stable × (1 − d)
        dec = float(gate.max_decrease)
        limit = s_val * (1.0 - dec)
        rel = f"stable {_fmt(gate, s_val)} × {1 - dec:g}"
        if c_val < limit:
            return Verdict(name, Status.FAIL, f"canary {_label(gate)} {_fmt(gate, c_val)} < {_fmt(gate, limit)} = {rel} {numbers}", "canary", c_val, limit, c_n)
        status = Status.PASS if final else Status.PENDING
        return Verdict(name, status, f"canary {_label(gate)} {_fmt(gate, c_val)} ≥ {_fmt(gate, limit)} = {rel} {numbers}", "canary", c_val, limit, c_n)
    inc = float(gate.max_increase or 0.0)
    if gate.max_ratio is not None:  # error_rate only (validated): at most ratio × stable's
        limit = s_val * float(gate.max_ratio)
        rel = f"stable {_fmt(gate, s_val)} × {float(gate.max_ratio):g}"
    elif gate.metric == "error_rate":
        limit = s_val + inc
        rel = f"stable {_fmt(gate, s_val)} + {fmt_percent(inc)} points"
    else:
        limit = s_val * (1.0 + inc)
        rel = f"stable {_fmt(gate, s_val)} × {1 + inc:g}"
    if c_val > limit:
        return Verdict(name, Status.FAIL, f"canary {_label(gate)} {_fmt(gate, c_val)} > {_fmt(gate, limit)} = {rel} {numbers}", "canary", c_val, limit, c_n)
    status = Status.PASS if final else Status.PENDING
    return Verdict(name, status, f"canary {_label(gate)} {_fmt(gate, c_val)} ≤ {_fmt(gate, limit)} = {rel} {numbers}", "canary", c_val, limit, c_n)


def evaluate_all(gates: dict[str, Gate], stats: StageStats, final: bool) -> list[Verdict]:
    return [evaluate(name, gate, stats, final) for name, gate in gates.items()]

"""The running driver's latest numbers, as saved in `state.live` for `rollout status --watch`.

The driver saves them at most every LIVE_EVERY seconds (the state is the only channel to another
machine, and on Kubernetes each save is an API write). The shape is a contract with the watch view:
{"at", "driver", "stage", "stage_name", "elapsed", "duration", "split": {"weight", "cohort"},
 "versions": {"<version>": {"role", "requests", "rps", "error_rate", "p95_ms"}}, "gates": [verdict dicts]}.
"""

from __future__ import annotations

import math
from typing import Any

from rollout.engine.state import Split
from rollout.gates.verdict import Verdict
from rollout.load.stats import StageStats

LIVE_EVERY = 2.0


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 3)


def snapshot(now: float, driver: str, index: int, name: str, duration: float, split: Split, stats: StageStats,
             versions: dict[str, str], verdicts: list[Verdict]) -> dict[str, Any]:
    """`versions`: role -> version name (stable, canary). rps is the last full second's, the rest cumulative."""
    last = stats.timeline[-1] if stats.timeline else {}
    prev_t = float(stats.timeline[-2]["t"]) if len(stats.timeline) > 1 else 0.0
    dt = max(float(last.get("t", 0.0)) - prev_t, 1e-3) if last else 1.0
    out: dict[str, Any] = {}
    for role, version in versions.items():
        vs = stats.role(role)
        sec = last.get(role) or {}
        out[version] = {"role": role, "requests": vs.requests, "rps": round((sec.get("requests", 0) or 0) / dt, 2),
                        "error_rate": _num(vs.error_rate) if vs.requests else None, "p95_ms": _num(vs.percentile(95)) if vs.requests else None}
    return {"at": now, "driver": driver, "stage": index, "stage_name": name, "elapsed": round(stats.elapsed, 2), "duration": duration,
            "split": {"weight": split.weight, "cohort": list(split.cohort) if split.cohort else None},
            "versions": out, "gates": [v.as_dict() for v in verdicts]}

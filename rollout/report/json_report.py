"""The JSON report: everything a `gate`, `run` or `advance` measured and decided, as one document.

Every other report (JUnit, Markdown, HTML) is rendered from this document, so
`rollout report run.json --html out.html` later draws exactly what the command
would have drawn. The document is versioned (`schema` and `schema_version`);
its JSON Schema is `report.schema.json` beside this file.

Shape (schema_version 1):

    {schema: "rollout-report", schema_version: 1, command: gate|run|advance,
     generated_at, tool: {name, version},
     plan: {name, file, owner, definition} | null,
     target: {host} (gate) | {stable, canary, backend} (run/advance),
     outcome: {result, exit_code, message},
     started_at, ended_at, duration_s,            # epoch seconds
     stages: [{index, name, status, reason, started_at, ended_at, duration_s, planned_duration_s,
               users, split, gates: {name: gate}, skipped: {name: why},
               verdicts: [{gate, status, message, version, observed, threshold, requests}],
               stats: {<version>: {requests, failures, error_rate, p50_ms, p90_ms, p95_ms, p99_ms, mean_ms}, all: {...}, elapsed_s, users},
               timeline: [{t, <version>: {requests, failures, p50_ms, p95_ms, p99_ms}}] | null,
               decisive: {t, gate, status, message} | null,
               distributions: {<version>|all: {requests, failures, latency: Histogram.to_dict()}}  # gate; optional
              }],
     baseline: {file, generated_at, host, version, requests, failures, error_rate, p50_ms, p95_ms, p99_ms} | null  # gate --baseline; optional
    }

Version 2 (#9): `stages[].stats.endpoints` (per request name and method per version: requests, failures,
p50/p95/p99; a failures table of method, name, error message, count, version; bounded to the top rows with
the rest counted; listener errors; the LoadTestShape that drove the users) and `stages[].stats.users_timeline`.
Version 1 documents are still read.

Additions within schema_version 1 (optional keys, so every v1 reader and
every v1 file stay valid): `stages[].distributions` (what `--baseline` reads)
and `baseline`.

Units: times in epoch seconds, durations in seconds, latencies in ms, rates as fractions.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rollout.errors import BadInput

SCHEMA = "rollout-report"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # v2 added stats.endpoints and stats.users_timeline (optional: v1 files read as before)
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")


def _tool() -> dict[str, str]:
    try:
        from importlib.metadata import version

        v = version("rollout")
    except Exception:  # not installed (a checkout on sys.path)
        v = "unknown"
    return {"name": "rollout", "version": v}


def _iso(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else None


def gate_dict(gate: Any) -> dict[str, Any]:
    d = gate.model_dump(mode="json")
    d["max"] = None if gate.max is None else float(gate.max)
    return d


def _clean(x: Any) -> Any:
    """NaN/inf are not JSON: null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _decisive(verdicts: list[dict[str, Any]], decided_t: float | None, elapsed: float) -> dict[str, Any] | None:
    """The moment the stage was decided: the tick a gate failed at, else the end (final verdicts)."""
    if not verdicts:
        return None
    fail = next((v for v in verdicts if v["status"] == "fail"), None)
    unsure = next((v for v in verdicts if v["status"] == "inconclusive"), None)
    v = fail or unsure or verdicts[0]
    t = decided_t if (fail is not None and decided_t is not None) else elapsed
    return {"t": round(float(t), 2), "gate": v["gate"], "status": v["status"], "message": v["message"]}


def _plan_info(loaded: Any) -> dict[str, Any] | None:
    if loaded is None:
        return None
    p = loaded.plan
    return {"name": p.name, "file": str(loaded.path), "owner": {"name": p.owner.name, "contact": p.owner.contact}, "definition": p.model_dump(mode="json")}


def gate_report(setup: Any, stats: Any, verdicts: list[Any], decided_t: float | None, started: float, ended: float,
                result: str, exit_code: int, message: str) -> dict[str, Any]:
    vds = [v.as_dict() for v in verdicts]
    stage = {
        "index": 0,
        "name": "gate",
        "status": {"passed": "passed", "failed": "failed"}.get(result, "needs-review"),
        "reason": message,
        "started_at": started,
        "ended_at": ended,
        "duration_s": round(ended - started, 3),
        "planned_duration_s": setup.duration,
        "users": setup.users,
        "workers": setup.workers,
        "split": None,
        "gates": {n: gate_dict(g) for n, g in setup.gates.items()},
        "skipped": dict(setup.skipped),
        "verdicts": vds,
        "stats": stats.summary(),
        "timeline": list(stats.timeline),
        "decisive": _decisive(vds, decided_t, stats.elapsed),
        "distributions": distributions(stats),
    }
    return _clean({
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "command": "gate",
        "generated_at": _iso(time.time()),
        "tool": _tool(),
        "plan": _plan_info(setup.plan),
        "target": {"host": setup.host, "locustfile": str(setup.locustfile)},
        "baseline": setup.baseline.info() if getattr(setup, "baseline", None) is not None else None,
        "outcome": {"result": result, "exit_code": exit_code, "message": message},
        "started_at": started,
        "ended_at": ended,
        "duration_s": round(ended - started, 3),
        "stages": [stage],
    })


def distributions(stats: Any) -> dict[str, Any]:
    """Per version and for all traffic: counts and the latency histogram (`Histogram.to_dict`), so a later
    run can compare with this one (`rollout gate --baseline`). Constant size: buckets, not requests."""
    out = {role: {"requests": vs.requests, "failures": vs.failures, "latency": vs.latency.to_dict()}
           for role, vs in stats.by_role.items() if vs.requests}
    total = stats.role("all")
    out["all"] = {"requests": total.requests, "failures": total.failures, "latency": total.latency.to_dict()}
    return out


def error_report(command: str, target: dict[str, Any], loaded: Any, exit_code: int, message: str, started: float) -> dict[str, Any]:
    """When the command could not judge at all (target unreachable, load failed): still a report CI can read."""
    now = time.time()
    return _clean({
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "command": command, "generated_at": _iso(now), "tool": _tool(),
        "plan": _plan_info(loaded), "target": target,
        "outcome": {"result": "error", "exit_code": exit_code, "message": message},
        "started_at": started, "ended_at": now, "duration_s": round(now - started, 3), "stages": [],
    })


def rollout_report(command: str, loaded: Any, state: Any, captured: list[dict[str, Any]], outcome: Any,
                   started: float, ended: float, backend: str) -> dict[str, Any]:
    """`run` / `advance`: the rollout's stage records (as the engine saved them) plus what this command measured.

    `captured` is one entry per stage load run by this command, in order
    ({stats: StageStats, decided_at: float|None}); they belong to the last
    len(captured) stage records. Stages run by earlier commands have their
    summaries and verdicts but no timeline.
    """
    plan = loaded.plan
    records = list(state.stages)
    first_captured = len(records) - len(captured)
    stages = []
    for k, rec in enumerate(records):
        cap = captured[k - first_captured] if k >= first_captured else None
        i = rec.index
        gates = plan.stage_gates(i) if i < len(plan.stages) else {}
        stage_def = plan.stages[i] if i < len(plan.stages) else None
        elapsed = float(rec.stats.get("elapsed_s") or ((rec.ended_at or rec.started_at) - rec.started_at))
        stages.append({
            "index": i,
            "name": rec.name,
            "status": rec.status.value,
            "reason": rec.reason,
            "started_at": rec.started_at,
            "ended_at": rec.ended_at,
            "duration_s": round((rec.ended_at or ended) - rec.started_at, 3),
            "planned_duration_s": stage_def.duration if stage_def else None,
            "users": plan.stage_users(i) if stage_def else None,
            "split": {"weight": rec.split.weight, "cohort": list(rec.split.cohort) if rec.split.cohort else None},
            "gates": {n: gate_dict(g) for n, g in gates.items()},
            "skipped": {},
            "verdicts": list(rec.verdicts),
            "stats": dict(rec.stats),
            "timeline": list(cap["stats"].timeline) if cap else None,
            "decisive": _decisive(list(rec.verdicts), cap.get("decided_at") if cap else None, elapsed),
            **({"decided_by": dict(rec.decided_by)} if rec.decided_by else {}),
        })
    result = {"stage-passed": "passed"}.get(outcome.kind, outcome.kind)
    canary = state.canary_version or (state.past[-1].canary if state.past else None)
    return _clean({
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "generated_at": _iso(time.time()),
        "tool": _tool(),
        "plan": _plan_info(loaded),
        "target": {"backend": backend, "stable": state.stable_version, "canary": canary},
        "outcome": {"result": result, "exit_code": int(outcome.exit_code), "message": outcome.message},
        "started_at": started,
        "ended_at": ended,
        "duration_s": round(ended - started, 3),
        "stages": stages,
        "decisions": _decisions(state),
        "bake": _bake(state),
    })


BAKE_ACTIONS = ("bake-started", "bake-clean", "bake-evidence")


def _bake(state: Any) -> dict[str, Any] | None:
    """The bake after the last stage, from the audit trail: how it ended and, when a content gate breached,
    the worst answers it kept (already redacted when kept) — the evidence for whoever reviews the report."""
    since = state.started_at or 0.0
    events = [h for h in state.history if h.action in BAKE_ACTIONS and h.at >= since]
    if not events:
        return None
    clean = next((h for h in events if h.action == "bake-clean"), None)
    kept = next((h for h in events if h.action == "bake-evidence"), None)
    reason = state.reason or ""
    if clean is not None:
        result, message = "clean", clean.detail
    elif reason.startswith("bake:"):
        result, message = "breached", reason
    else:
        result, message = "in-progress", events[-1].detail
    out: dict[str, Any] = {"result": result, "message": message, "started_at": events[0].at}
    if kept is not None:
        head, _, rest = kept.detail.partition(" answers: ")
        out["evidence"] = {"summary": head + (" answers" if rest else ""), "answers": rest.split(" | ") if rest else []}
    return out


def _decisions(state: Any) -> list[dict[str, Any]]:
    """A person's decisions in this rollout, from the audit trail (who, when, what, why)."""
    from rollout.engine.state import MANUAL_ACTIONS

    since = state.started_at or 0.0
    return [{"at": h.at, "who": h.who, "action": h.action, "detail": h.detail, "reason": h.reason}
            for h in state.history if h.action in MANUAL_ACTIONS and h.at >= since]


def write(report: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return p


def load(path: str | Path) -> dict[str, Any]:
    """A saved report, checked for its schema and version (BadInput, exit 2, when it is not one)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"report {p} does not exist", "give the JSON file written by --json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"report {p} is not readable JSON: {exc}", "give the JSON file written by --json") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BadInput(f"{p} is not a rollout report (no \"schema\": \"{SCHEMA}\")", "give the JSON file written by --json")
    if data.get("schema_version") not in READABLE_VERSIONS:
        raise BadInput(f"{p} is a rollout report of schema version {data.get('schema_version')}; this rollout reads versions "
                       f"{', '.join(map(str, READABLE_VERSIONS))}",
                       "render it with the rollout version that wrote it")
    return data


def series(report: dict[str, Any]) -> dict[str, Any]:
    """The report's stages laid end to end on one time axis, for plots.

    Returns {"stages": [{name, status, x0, x1}], "versions": {v: [(t, rps, err, p50, p95, p99)]},
    "thresholds": [...], "decisive": {t, ...} | None, "end": total seconds}. The time of a bucket is
    its end; requests/s is the bucket's requests over its length.
    """
    out_stages, versions, thresholds = [], {}, []
    offset = 0.0
    decisive = None
    for st in report.get("stages", []):
        tl = st.get("timeline") or []
        length = float((st.get("stats") or {}).get("elapsed_s") or (tl[-1]["t"] if tl else 0.0) or st.get("duration_s") or 0.0)
        prev_t = 0.0
        for entry in tl:
            t = float(entry["t"])
            dt = max(t - prev_t, 1e-3)
            for v, d in entry.items():
                if v == "t" or not isinstance(d, dict):
                    continue
                n = d.get("requests", 0) or 0
                versions.setdefault(v, []).append((offset + t, n / dt, (d.get("failures", 0) or 0) / n if n else None,
                                                  d.get("p50_ms"), d.get("p95_ms"), d.get("p99_ms")))
            prev_t = t
        x0, x1 = offset, offset + max(length, prev_t)
        out_stages.append({"name": st["name"], "status": st["status"], "x0": x0, "x1": x1, "has_timeline": bool(tl)})
        for name, g in (st.get("gates") or {}).items():
            vd = next((v for v in st.get("verdicts", []) if v["gate"] == name), None)
            if g.get("max") is not None:
                level = float(g["max"])
            elif vd is not None and vd.get("threshold") is not None and g.get("method") != "sequential":
                level = float(vd["threshold"])  # a comparison: the limit it was judged against
            else:
                continue
            thresholds.append({"gate": name, "metric": g["metric"], "value": level, "x0": x0, "x1": x1,
                               "status": vd["status"] if vd else None, "relative": g.get("max") is None})
        d = st.get("decisive")
        if d and decisive is None and d["status"] == "fail":
            decisive = {**d, "x": offset + float(d["t"]), "stage": st["name"]}
        offset = x1
    if decisive is None and report.get("stages"):
        last = report["stages"][-1]
        d = last.get("decisive")
        if d:
            decisive = {**d, "x": out_stages[-1]["x0"] + float(d["t"]), "stage": last["name"]}
    return {"stages": out_stages, "versions": versions, "thresholds": thresholds, "decisive": decisive, "end": offset}

"""Human tables (tabulate) and machine dicts for `validate` and `status`."""

from __future__ import annotations

import time
from typing import Any

from tabulate import tabulate

from rollout.engine.state import MANUAL_ACTIONS, StageStatus, State, to_dict
from rollout.plan.model import Gate, Plan
from rollout.backends.liveness import pid_alive
from rollout.plan.names import printable
from rollout.plan.units import fmt_duration, fmt_percent


def gate_threshold(gate: Gate) -> str:
    from rollout.gates.threshold import _fmt

    if gate.compare:
        if gate.max_decrease is not None:
            return f"≥ {fmt_percent(float(gate.max_decrease))} below stable at most"
        if gate.max_ratio is not None:
            return f"≤ {float(gate.max_ratio):g} × stable{_how(gate)}"
        if gate.metric == "error_rate":
            return f"≤ +{100 * float(gate.max_increase or 0):g} points above stable{_how(gate)}"
        return f"≤ {fmt_percent(float(gate.max_increase or 0))} above stable{_how(gate)}"
    bounds = []
    if gate.min is not None:
        bounds.append(f"≥ {_fmt(gate, float(gate.min))}")  # type: ignore[arg-type]
    if gate.max is not None:
        bounds.append(f"≤ {_fmt(gate, float(gate.max))}")  # type: ignore[arg-type]
    return " and ".join(bounds) + _how(gate)


def _how(gate: Gate) -> str:
    """How the gate decides: anytime-valid at alpha, or the plain comparison of cumulative numbers."""
    return f" (sequential, α={gate.alpha:g})" if gate.method == "sequential" else ""


def _floor(gate: Gate) -> Any:
    return "-" if gate.method == "sequential" and gate.min_requests <= 1 else gate.min_requests


def _metric_label(gate: Gate) -> str:
    if not gate.declared:
        return gate.metric
    if gate.stat == "share_below":
        return f"{gate.metric} share ≤ {gate.below:g}"
    return f"{gate.metric} {gate.statistic}"


def plan_tables(plan: Plan) -> str:
    rows = []
    for i, s in enumerate(plan.stages):
        gates = plan.stage_gates(i)
        rows.append([
            i + 1,
            s.name,
            "-" if s.weight is None else fmt_percent(s.weight),
            ", ".join(f"{k}: {v}" for k, v in (s.cohort or {}).items()) or "-",
            s.load_to,
            f"shape {plan.stage_shape(i)}" if plan.stage_shape(i) else plan.stage_users(i),
            fmt_duration(s.duration),
            s.approval,
            ", ".join(gates) or "-",
        ])
    stages = tabulate(rows, headers=["#", "stage", "weight", "cohort", "load to", "users", "duration", "approval", "gates"])
    grows = [
        [name, _metric_label(g), "canary vs stable" if g.compare else g.version, gate_threshold(g), _floor(g)]
        for name, g in plan.gates.items()
    ]
    for i, s in enumerate(plan.stages):
        for name, g in (s.gates or {}).items():
            grows.append([f"{name} (stage {s.name})", _metric_label(g) if g else "-", ("canary vs stable" if g.compare else g.version) if g else "removed", gate_threshold(g) if g else "-", _floor(g) if g else "-"])
    gates = tabulate(grows, headers=["gate", "metric", "on", "passes when", "min requests"]) if grows else "(no gates)"
    head = f"Plan `{plan.name}` — owner {printable(plan.owner.name)} <{printable(plan.owner.contact)}> — backend {plan.target.backend}"
    load = plan.load
    notes = []
    if any(plan.stage_shape(i) for i in range(len(plan.stages))):
        notes.append("a LoadTestShape drives the users (and spawn rate) where the users column names one; those stages end at "
                     "their duration or when the shape ends")
    if load.tags or load.exclude_tags:
        notes.append(f"tasks: tags {', '.join(load.tags or []) or 'all'}" + (f", excluding {', '.join(load.exclude_tags)}" if load.exclude_tags else ""))
    if load.options:
        notes.append("locustfile options: " + " ".join(f"--{k}={v}" for k, v in load.options.items()))
    extra = ("\n\n" + "\n".join(f"Load: {n}" for n in notes)) if notes else ""
    return printable(f"{head}\n\n{stages}{extra}\n\n{gates}", keep_newlines=True)


def plan_dict(plan: Plan) -> dict[str, Any]:
    return plan.model_dump(mode="json")


def driver_alive(state: State, store: Any = None) -> bool | None:
    """Whether the driver recorded in the state still runs: by pid and start time on its own host,
    else by the lock (a Lease not expired); None when nobody can tell or no driver is recorded."""
    from rollout.engine.driver import local_alive

    if not state.driver:
        return None
    alive = local_alive(state.driver)
    if alive is None and store is not None and hasattr(store, "holder"):
        try:
            alive = store.holder() is not None
        except Exception:  # status must show what it can even when the cluster does not answer
            alive = None
    return alive


def notes(state: State, alive: bool | None = None) -> list[str]:
    """What the record alone cannot say: work that was cut off by a dead process.
    `alive`: whether the recorded driver runs (driver_alive); None: judged here by pid when it ran on this host."""
    from rollout.engine.driver import describe, local_alive

    out: list[str] = []
    if state.driver and alive is None:
        alive = local_alive(state.driver)
    t = state.transition
    if t is not None and not pid_alive(t.pid):
        out.append(
            f"a `{t.action}` towards {t.to.describe()} was started by pid {t.pid} ({t.by}) and did not finish; "
            f"traffic may be half-changed: `rollout advance` finishes it, `rollout revert` puts all traffic on stable"
        )
    failed_alerts = [h for h in state.history if h.action == "alert-failed" and h.at >= (state.started_at or 0.0)]
    if failed_alerts:
        out.append(f"{len(failed_alerts)} alert(s) of this rollout could not be delivered; latest: {failed_alerts[-1].detail}")
    rec = state.current_stage()
    if state.driver and alive is False and state.phase.active:
        n_at = state.stage_index + 1
        stopped = time.strftime("%H:%M:%S", time.localtime(state.updated_at)) if state.updated_at else "?"
        out.append(f"{describe(state.driver)} is gone: it stopped at {stopped} without finishing stage {n_at}; traffic is at {state.split.describe()}: "
                   f"`rollout run` or `rollout advance` carries on (a stage that was running re-runs from its start), "
                   f"`rollout revert` puts all traffic on stable")
    elif rec is not None and rec.status is StageStatus.RUNNING and state.phase.active and not pid_alive(rec.pid):
        out.append(
            f"stage {rec.index + 1} `{rec.name}` was running in pid {rec.pid}, which is gone (killed?); "
            f"traffic is at {state.split.describe()}: `rollout advance` re-runs the stage, `rollout revert` puts all traffic on stable"
        )
    if state.load_runs and alive is not True:  # in-cluster load pods a killed driver could not delete
        labels = ", ".join(f"rollout.dev/load-run={r.get('run')} (namespace {r.get('namespace')})" for r in state.load_runs)
        out.append(f"in-cluster load may still run: {labels}; the next command on this rollout (`rollout revert`, `run`, "
                   f"`down`, ...) deletes it, or: kubectl delete deploy,svc,cm -l rollout.dev/load-run=<id>")
    return out


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _phase_line(state: State, alive: bool | None) -> str:
    line = f"Phase:    {state.phase.value}" + (f" — {state.reason}" if state.reason else "")
    if state.phase.active and state.driver:
        from rollout.engine.driver import describe

        line += f" (driven by {describe(state.driver)})" if alive else " (its driver is gone: see the note)" if alive is False else ""
    return line


def orphan_lines(plan: Plan, orphans: list[dict[str, Any]] | None) -> list[str]:
    """Processes of this plan the state does not record, and the command that stops them."""
    if not orphans:
        return []
    n = len(orphans)
    lines = [f"Orphans:  {n} process{'es carry' if n > 1 else ' carries'} this plan's marker but {'are' if n > 1 else 'is'} not in the state "
             "(left by a command that was killed, or by a lost state file):"]
    for o in orphans:
        lines.append(f"          pid {o['pid']}  {printable(o['role'])}  started {_when(o.get('started_at'))}  {printable(o['command'][:160])}")
    lines.append(f"          `rollout down {printable(plan.name)}` stops them (with everything else of this plan; a rollout in progress "
                 "is rolled back first)")
    return lines


def status_text(plan: Plan, state: State | None, live: dict[str, Any] | None, location: str, alive: bool | None = None,
                orphans: list[dict[str, Any]] | None = None) -> str:
    if state is None:
        return printable("\n".join([f"Rollout `{plan.name}`: nothing recorded yet ({location}); `rollout run` starts one.",
                                    *orphan_lines(plan, orphans)]), keep_newlines=True)
    if state.driver and alive is None:
        from rollout.engine.driver import local_alive

        alive = local_alive(state.driver)
    pr = printable  # every string from the plan or the state file on one line, control characters escaped
    lines = [
        f"Rollout `{plan.name}` — owner {pr(plan.owner.name)} <{pr(plan.owner.contact)}>",
        pr(_phase_line(state, alive)),
        f"Stable:   {pr(state.stable_version)}" + (f"    Canary: {pr(state.canary_version)}" if state.canary_version else ""),
        f"Traffic:  {state.split.describe()}",
    ]
    if state.phase.active:
        n = len(plan.stages)
        lines.append(f"Stage:    {min(state.stage_index + 1, n)}/{n}" + (f" `{plan.stages[state.stage_index].name}`" if state.stage_index < n else " (promotion next)"))
    if live and live.get("backend") == "kubernetes":  # the Deployments, and the weight read back from the router
        from rollout.backends.kubernetes.report import live_lines

        lines += live_lines(state, live)
    elif live:
        bits = []
        for role in ("stable", "canary"):
            p = live.get(role)
            if p:
                bits.append(f"{role} {printable(p['version'])} pid {p['pid']} :{p['port']} {'up' if p['alive'] else 'DOWN'}")
        r = live.get("router")
        if r:
            lw = r.get("live", {}).get("weight")
            bits.append(f"router :{r['port']} {'up' if r['alive'] else 'DOWN'}" + (f" ({lw * 100:g}% to canary)" if lw is not None else ""))
        if bits:
            lines.append("Live:     " + "; ".join(bits))
    for note in notes(state, alive):
        lines.append(f"Note:     {pr(note)}")
    lines += orphan_lines(plan, orphans)
    if state.stages:
        rows = []
        for r in state.stages:
            s = r.stats.get("all", {})
            verdict = "; ".join(f"{v['gate']}: {v['message']}" for v in r.verdicts if v["status"] in ("fail", "inconclusive")) or r.reason
            if r.decided_by:  # passed by a person's decision, never by its gates
                verdict = r.reason
            rows.append([r.index + 1, pr(r.name), pr(r.split.describe()), _stage_status(r.status.value, r.decided_by), f"{s.get('requests', 0):,}", pr(verdict)])
        lines += ["", tabulate(rows, headers=["#", "stage", "traffic", "status", "requests", "verdict"])]
    if state.past:
        rows = [[r.number, pr(f"{r.stable} → {r.canary}"), r.outcome, _when(r.ended_at), pr(r.reason[:120])] for r in state.past[-5:]]
        lines += ["", "Past rollouts:", tabulate(rows, headers=["#", "versions", "outcome", "ended", "why"])]
    if state.revisions:
        rows = [[r.number, pr(r.version), _when(r.at), pr(r.by)] for r in state.revisions[-10:]]
        lines += ["", "Revisions (`rollout revert --to-revision N`):", tabulate(rows, headers=["#", "version", "promoted", "by"])]
    decisions = [h for h in state.history if h.action in MANUAL_ACTIONS][-10:]
    if decisions:
        rows = [[_when(h.at), pr(h.who), pr(h.action), pr(h.reason or "-"), pr(h.detail[:90])] for h in decisions]
        lines += ["", "Decisions by people (latest 10):", tabulate(rows, headers=["when", "who", "decided", "reason", "detail"])]
    hist = [[_when(h.at), pr(h.who), pr(h.action), pr(h.detail[:110])] for h in state.history[-10:]]
    if hist:
        lines += ["", "History (latest 10):", tabulate(hist, headers=["when", "who", "action", "detail"])]
    return printable("\n".join(lines), keep_newlines=True)


def _stage_status(status: str, decided_by: dict[str, Any] | None) -> str:
    """A stage ended by a person says so: `accepted (promote by alice)`, never a bare `passed`."""
    if not decided_by:
        return status
    return f"{status} ({decided_by.get('action', '?')} by {decided_by.get('who', '?')})"


def status_dict(state: State | None, live: dict[str, Any] | None, location: str, alive: bool | None = None,
                orphans: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`orphans`: the plan's marked processes the state does not record (local backend; null on Kubernetes)."""
    return {"state": to_dict(state) if state else None, "live": live, "notes": notes(state, alive) if state else [], "location": location,
            "driver_alive": alive, "orphans": orphans}


def outcome_table(state: State, total_stages: int | None = None) -> str:
    """The demo's closing table: every finished rollout and the numbers that decided it."""
    rows = []
    for p in state.past:
        decisive = ""
        for st in p.stages:
            if st["status"] == "failed":
                decisive = f"{st['name']}: {st['reason']}"
                break
        if not decisive and p.stages:
            last = p.stages[-1]
            msgs = [f"{v['gate']} {v['message']}" for v in last["verdicts"]]
            decisive = f"{last['name']}: " + "; ".join(msgs[:3])
        reqs = sum(st["stats"].get("all", {}).get("requests", 0) for st in p.stages)
        manual = [d for d in p.decisions if d.get("action") in ("promote", "approve", "revert", "abort", "reject")]
        if manual:
            decisive = f"{manual[-1]['who']} ({manual[-1]['action']}" + (f": {manual[-1]['reason']}" if manual[-1].get("reason") else "") + f"); {decisive}"
        rows.append([p.number, f"{p.stable} → {p.canary}", p.outcome.upper(), f"{sum(1 for s in p.stages if s['status'] == 'passed')}/{total_stages or len(p.stages)}", f"{reqs:,}", f"{p.ended_at - p.started_at:,.0f}s", decisive])
    return tabulate(rows, headers=["#", "rollout", "outcome", "stages passed", "requests", "took", "decided by"], maxcolwidths=[None, None, None, None, None, None, 80])



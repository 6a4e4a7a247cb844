"""The recorded state of a rollout: plain, serialisable data.

A rollout is the plan plus this state. The state says where the rollout is
(phase and stage index), what traffic is doing now (split), what may be
half-done (transition: written before a traffic change, cleared after it),
what each stage measured and decided, who did what and why (history), and
which versions were known good (revisions). Backends store it (a JSON file, a
ConfigMap); nothing in here does I/O.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 1
MAX_HISTORY = 500
MAX_REVISIONS = 20


class Phase(StrEnum):
    IDLE = "idle"  # nothing being rolled out; stable serves everyone
    PROGRESSING = "progressing"  # a rollout is between or inside stages
    PAUSED = "paused"  # waiting for `rollout approve` before stage_index
    AWAITING_REVIEW = "awaiting-review"  # stage_index ended uncertain: a person approves or rejects
    PROMOTED = "promoted"  # the canary became stable
    ROLLED_BACK = "rolled-back"  # a gate failed (or revert): all traffic on stable, canary stopped
    ABORTED = "aborted"  # stopped by a person: all traffic on stable, canary stopped

    @property
    def active(self) -> bool:
        return self in (Phase.PROGRESSING, Phase.PAUSED, Phase.AWAITING_REVIEW)


class StageStatus(StrEnum):
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    REVIEW = "needs-review"


@dataclass(frozen=True)
class Split:
    """What the traffic is doing: the canary's share and an optional cohort sent to it."""

    weight: float = 0.0  # 0..1 of non-cohort traffic to the canary
    cohort: tuple[str, str] | None = None  # (header, value): all of it to the canary

    def describe(self) -> str:
        parts = [f"{self.weight * 100:g}% to canary"]
        if self.cohort:
            parts.append(f"cohort {self.cohort[0]}: {self.cohort[1]} to canary")
        return ", ".join(parts)

    @property
    def all_stable(self) -> bool:
        return self.weight == 0.0 and self.cohort is None


ALL_STABLE = Split()
ALL_CANARY = Split(weight=1.0)


@dataclass(frozen=True)
class Transition:
    """A traffic change that was started; present in the saved state until it is done."""

    action: str  # shift | rollback | promote | abort | revert
    to: Split
    started_at: float
    pid: int
    by: str


@dataclass
class StageRecord:
    index: int
    name: str
    status: StageStatus
    started_at: float
    ended_at: float | None = None
    pid: int | None = None
    split: Split = ALL_STABLE
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # per-version summary numbers
    reason: str = ""


@dataclass(frozen=True)
class AuditEntry:
    at: float
    who: str
    action: str
    detail: str


@dataclass(frozen=True)
class Revision:
    number: int
    version: str
    at: float
    by: str


@dataclass
class RolloutSummary:
    """One finished rollout, kept for `status` and the demo's closing table."""

    number: int
    canary: str
    stable: str
    outcome: str
    reason: str
    started_at: float
    ended_at: float
    stages: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class State:
    plan: str
    stable_version: str
    phase: Phase = Phase.IDLE
    canary_version: str | None = None
    rollout_number: int = 0
    stage_index: int = 0  # the next stage to run; == len(stages) means promote next
    split: Split = ALL_STABLE
    transition: Transition | None = None
    approved: list[int] = field(default_factory=list)
    stages: list[StageRecord] = field(default_factory=list)
    reason: str = ""  # why the phase is what it is
    review_deadline: float | None = None  # awaiting-review: when the plan's default action applies
    started_at: float | None = None
    updated_at: float = 0.0
    history: list[AuditEntry] = field(default_factory=list)
    revisions: list[Revision] = field(default_factory=list)
    past: list[RolloutSummary] = field(default_factory=list)
    backend: dict[str, Any] = field(default_factory=dict)  # the backend's own runtime record
    # the running driver's latest numbers (phase, stage, split, per-version rps/errors/p95, gate verdicts),
    # written at a bounded rate so `rollout status --watch` can show them from another machine; None when no stage runs
    live: dict[str, Any] | None = None
    # who owns the plan and its stage names, recorded by every command that acts, so `rollout list`
    # can show a rollout found without its plan file (a ConfigMap in the cluster, a bare state directory)
    plan_info: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    # -- small helpers that keep records consistent ---------------------------

    def record(self, who: str, action: str, detail: str, now: float | None = None) -> None:
        at = time.time() if now is None else now
        self.history.append(AuditEntry(at=at, who=who, action=action, detail=detail))
        if len(self.history) > MAX_HISTORY:
            del self.history[: len(self.history) - MAX_HISTORY]
        self.updated_at = at

    def current_stage(self) -> StageRecord | None:
        for rec in reversed(self.stages):
            if rec.index == self.stage_index:
                return rec
        return None

    def add_revision(self, version: str, by: str, now: float) -> None:
        number = (self.revisions[-1].number + 1) if self.revisions else 1
        self.revisions.append(Revision(number=number, version=version, at=now, by=by))
        if len(self.revisions) > MAX_REVISIONS:
            del self.revisions[: len(self.revisions) - MAX_REVISIONS]


def new_state(plan_name: str, stable_version: str, now: float | None = None) -> State:
    at = time.time() if now is None else now
    state = State(plan=plan_name, stable_version=stable_version, updated_at=at)
    state.add_revision(stable_version, "plan", at)
    return state


def actor() -> str:
    """Who is acting, for the audit trail: $ROLLOUT_ACTOR, else user@host."""
    env = os.environ.get("ROLLOUT_ACTOR")
    if env:
        return env
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


# -- (de)serialisation ---------------------------------------------------------


def _split_to(d: Split) -> dict[str, Any]:
    return {"weight": d.weight, "cohort": list(d.cohort) if d.cohort else None}


def _split_from(d: dict[str, Any] | None) -> Split:
    if not d:
        return ALL_STABLE
    cohort = d.get("cohort")
    return Split(weight=float(d.get("weight", 0.0)), cohort=(str(cohort[0]), str(cohort[1])) if cohort else None)


def to_dict(state: State) -> dict[str, Any]:
    out = dataclasses.asdict(state)
    out["phase"] = state.phase.value
    out["split"] = _split_to(state.split)
    if state.transition is not None:
        out["transition"]["to"] = _split_to(state.transition.to)
    for rec_out, rec in zip(out["stages"], state.stages):
        rec_out["status"] = rec.status.value
        rec_out["split"] = _split_to(rec.split)
    return out


def from_dict(d: dict[str, Any]) -> State:
    tr = d.get("transition")
    return State(
        plan=d["plan"],
        stable_version=d["stable_version"],
        phase=Phase(d.get("phase", "idle")),
        canary_version=d.get("canary_version"),
        rollout_number=int(d.get("rollout_number", 0)),
        stage_index=int(d.get("stage_index", 0)),
        split=_split_from(d.get("split")),
        transition=Transition(
            action=tr["action"], to=_split_from(tr["to"]), started_at=tr["started_at"], pid=tr["pid"], by=tr["by"]
        )
        if tr
        else None,
        approved=list(d.get("approved", [])),
        stages=[
            StageRecord(
                index=s["index"],
                name=s["name"],
                status=StageStatus(s["status"]),
                started_at=s["started_at"],
                ended_at=s.get("ended_at"),
                pid=s.get("pid"),
                split=_split_from(s.get("split")),
                verdicts=list(s.get("verdicts", [])),
                stats=dict(s.get("stats", {})),
                reason=s.get("reason", ""),
            )
            for s in d.get("stages", [])
        ],
        reason=d.get("reason", ""),
        review_deadline=d.get("review_deadline"),
        started_at=d.get("started_at"),
        updated_at=d.get("updated_at", 0.0),
        history=[AuditEntry(**h) for h in d.get("history", [])],
        revisions=[Revision(**r) for r in d.get("revisions", [])],
        past=[RolloutSummary(**p) for p in d.get("past", [])],
        backend=dict(d.get("backend", {})),
        live=d.get("live"),
        plan_info=dict(d.get("plan_info") or {}),
        schema=int(d.get("schema", SCHEMA_VERSION)),
    )

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
import types
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

SCHEMA_VERSION = 1
MAX_HISTORY = 500
MAX_REVISIONS = 20


class Phase(StrEnum):
    IDLE = "idle"  # nothing being rolled out; stable serves everyone
    PROGRESSING = "progressing"  # a rollout is between or inside stages
    PAUSED = "paused"  # waiting for `rollout approve` before stage_index, or paused by `rollout pause` (state.pause says so)
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
    ACCEPTED = "accepted"  # ended as passed by a decision (approve, promote, a review timeout), not by its gates: decided_by says whose


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
    decided_by: dict[str, Any] | None = None  # a person's decision that ended it: {who, action, reason, at}


@dataclass(frozen=True)
class AuditEntry:
    at: float
    who: str
    action: str
    detail: str
    reason: str = ""  # a person's own words (`--reason`), kept apart from the generated detail

MANUAL_ACTIONS = ("approve", "reject", "pause", "resume", "promote", "abort", "revert", "retry")


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
    decisions: list[dict[str, Any]] = field(default_factory=list)  # the people's decisions in it: {at, who, action, detail, reason}


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
    # who drives the rollout now (or last did): {pid, start_ticks, host, command, since, who}; kept after a
    # crash so `status` can name a driver that is gone, cleared when the driver ends normally
    driver: dict[str, Any] | None = None
    # an operator's `rollout pause` (not an approval wait): {who, reason, at, stage}
    pause: dict[str, Any] | None = None
    # the running driver's latest per-second numbers (rollout.engine.live), None when no stage runs
    live: dict[str, Any] | None = None
    # who owns the plan and its stage names, recorded by every command that acts, so `rollout list`
    # can show a rollout found without its plan file (a ConfigMap in the cluster, a bare state directory)
    plan_info: dict[str, Any] = field(default_factory=dict)
    # in-cluster load runs (load.runner: kubernetes) whose objects may exist: recorded before any is created,
    # removed once all are deleted; the next command deletes what a killed driver left ({run, namespace, ...})
    load_runs: list[dict[str, Any]] = field(default_factory=list)
    schema: int = SCHEMA_VERSION

    # -- small helpers that keep records consistent ---------------------------

    def record(self, who: str, action: str, detail: str, now: float | None = None, reason: str = "") -> None:
        at = time.time() if now is None else now
        self.history.append(AuditEntry(at=at, who=who, action=action, detail=detail, reason=reason))
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
                decided_by=s.get("decided_by"),
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
        driver=d.get("driver"),
        pause=d.get("pause"),
        live=d.get("live"),
        plan_info=dict(d.get("plan_info") or {}),
        load_runs=[dict(r) for r in d.get("load_runs") or []],
        schema=int(d.get("schema", SCHEMA_VERSION)),
    )


# -- shape check (before from_dict) ------------------------------------------------


class StateShapeError(ValueError):
    """A saved state of the wrong shape: `field` is the dotted path, the message says what was expected."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field or '(the whole file)'}: {message}")
        self.field = field
        self.message = message


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "anything"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return {list: "a list", dict: "an object", tuple: "a list"}.get(origin, str(origin))
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return f"an object ({tp.__name__})"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _found(value: Any) -> str:
    text = "null" if value is None else type(value).__name__
    return {"dict": "an object", "list": "a list", "str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean"}.get(text, text)


def check_shape(value: Any, tp: Any, path: str = "") -> None:
    """Check JSON data against a type hint (dataclasses field by field, by their type hints), raising
    StateShapeError naming the first wrong field. Dataclass fields with defaults may be missing; unknown
    keys are refused. Derived from the dataclasses, so a field added to them is checked with no edit here."""
    if tp is Any:
        return
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in typing.get_args(tp):
            try:
                check_shape(value, alt, path)
                return
            except StateShapeError as e:
                errors.append(e)
        deepest = max(errors, key=lambda e: len(e.field))  # the alternative that matched furthest
        if deepest.field != path:
            raise deepest
        raise StateShapeError(path, f"expected {_type_name(tp)}, found {_found(value)}")
    if tp is type(None):
        if value is not None:
            raise StateShapeError(path, f"expected null, found {_found(value)}")
        return
    if origin is list:
        if not isinstance(value, list):
            raise StateShapeError(path, f"expected a list, found {_found(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        for i, v in enumerate(value):
            check_shape(v, item, f"{path}[{i}]")
        return
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise StateShapeError(path, f"expected a list of {len(args)}, found {_found(value)}")
        for i, (v, a) in enumerate(zip(value, args)):
            check_shape(v, a, f"{path}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise StateShapeError(path, f"expected an object, found {_found(value)}")
        _k, vt = typing.get_args(tp) or (str, Any)
        for k, v in value.items():
            check_shape(v, vt, f"{path}.{k}" if path else str(k))
        return
    if isinstance(tp, type) and issubclass(tp, Enum):
        if value not in {m.value for m in tp}:
            raise StateShapeError(path, f"expected {_type_name(tp)}, found {value!r}")
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise StateShapeError(path, f"expected an object ({tp.__name__}), found {_found(value)}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        for key in value:
            if key not in fields:
                raise StateShapeError(f"{path}.{key}" if path else str(key), f"unknown field (known: {', '.join(fields)})")
        for name, f in fields.items():
            sub = f"{path}.{name}" if path else name
            if name not in value:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise StateShapeError(sub, f"missing (expected {_type_name(hints[name])})")
                continue
            check_shape(value[name], hints[name], sub)
        return
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise StateShapeError(path, f"expected a number, found {_found(value)}")
        return
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise StateShapeError(path, f"expected an integer, found {_found(value)}")
        return
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise StateShapeError(path, f"expected {_type_name(tp)}, found {_found(value)}")
        return
    raise TypeError(f"check_shape cannot check {tp!r}")  # a type added to the dataclasses: teach it here


def check_state_shape(data: Any) -> None:
    """The saved state as a whole: a newer schema is refused first, then every field is checked."""
    if isinstance(data, dict):
        schema = data.get("schema", SCHEMA_VERSION)
        if isinstance(schema, int) and not isinstance(schema, bool) and schema > SCHEMA_VERSION:
            raise StateShapeError("schema", f"written by a newer rollout (schema {schema}; this one reads up to {SCHEMA_VERSION}): upgrade rollout")
    check_shape(data, State)

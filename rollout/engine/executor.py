"""The one place that acts: performs what `decide` chose, recording before and after.

Every traffic change follows the same protocol: write the intended change as
`state.transition` and save; act through the backend; write the result and
clear the transition; save. A process killed anywhere in between leaves a
saved state that names the change that may be half done, and the next
command finishes it (`decide` returns FINISH_TRANSITION first). The backend
checkpoints through `save` whenever it starts or stops something.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

from rollout.backends.base import Backend, StateStore
from rollout.engine.decide import Action, Kind, decide, stage_split
from rollout.engine.state import (
    ALL_CANARY,
    ALL_STABLE,
    Phase,
    RolloutSummary,
    Split,
    StageRecord,
    StageStatus,
    State,
    Transition,
    new_state,
)
from rollout.engine.state import MANUAL_ACTIONS
from rollout.engine import driver as drivers
from rollout.engine import requests as rq
from rollout.engine.live import LIVE_EVERY, snapshot
from rollout.engine.requests import Request
from rollout.errors import EXIT_GATE_FAILED, EXIT_OK, EXIT_PAUSED, Interrupted, LoadError, RolloutError, UsageError
from rollout.gates import liveness
from rollout.gates.health import explain_inconclusive, health_checks
from rollout.gates.judge import StageJudge
from rollout.gates.verdict import Status, Verdict
from rollout.load.stats import StageStats
from rollout.notify import Notifier
from rollout.plan.loader import LoadedPlan
from rollout.plan.model import LATENCY_METRICS, Stage
from rollout.testing.killpoints import kill_point  # test-only crash points; inert unless a test sets them

LoadRunner = Callable[[Any, Callable[[StageStats], bool]], StageStats]

ROLLBACK_ACTIONS = {"rollback": Phase.ROLLED_BACK, "abort": Phase.ABORTED, "revert": Phase.ROLLED_BACK}
# audit actions that alert as they are; gate-failed and the end of a rollback are emitted where they happen
ALERT_FOR_ACTION = {"stage-started": "stage-started", "awaiting-review": "awaiting-review", "promoted": "promoted"}
ALERT_FOR_ROLLBACK = {"rollback": "rolled-back", "abort": "aborted", "revert": "reverted"}
ALERT_FLUSH_SECONDS = 10.0  # at command end, how long to wait for alerts still being sent


class Reporter(Protocol):
    def event(self, message: str) -> None: ...

    def progress(self, stage: Stage, index: int, total: int, stats: StageStats, verdicts: list[Verdict], duration: float) -> None: ...

    def stage_done(self, record: StageRecord) -> None: ...


@dataclass(frozen=True)
class Outcome:
    kind: str  # promoted | rolled-back | stage-passed | paused | nothing | aborted | reverted | down
    message: str
    exit_code: int = EXIT_OK


def canary_started(state: State) -> bool:
    """Whether the rollout in progress ever had its canary up: deployed, or a stage recorded."""
    since = state.started_at or 0.0
    return bool(state.stages) or any(h.action == "deployed" and h.at >= since for h in state.history)


class Engine:
    def __init__(
        self,
        loaded: LoadedPlan,
        backend: Backend,
        store: StateStore,
        reporter: Reporter,
        who: str,
        load_runner: LoadRunner | None = None,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        probe: Callable[..., None] | None = None,
    ) -> None:
        self.loaded = loaded
        self.plan = loaded.plan
        self.backend = backend
        self.store = store
        self.out = reporter
        self.who = who
        self.load_runner = load_runner
        self.probe = probe  # rollout.probe.probe from the CLI; None: no probe (tests whose load is simulated)
        self.tags: list[str] | None = None  # --tags / --exclude-tags on run/advance (over load.tags)
        self.exclude_tags: list[str] | None = None
        self.clock = clock
        self.state: State = self._load()
        backend.checkpoint = self.save
        self.notifier = notifier if notifier is not None else Notifier(self.plan.notify, self.plan.name, self.plan.owner)
        # requests from other commands while this one drives (rollout.engine.requests); None: nobody can ask
        self.mailbox: rq.Mailbox | None = None
        self.command = "run"  # the verb this engine drives for (recorded as the driver's identity)
        self._live_at = 0.0
        self._request: Request | None = None  # a request that stopped the running stage

    # -- state -------------------------------------------------------------

    def _load(self) -> State:
        state = self.store.load()
        if state is None:
            state = new_state(self.plan.name, self.plan.target.stable, self.clock())
        return state

    def save(self) -> None:
        self.state.updated_at = self.clock()
        self.store.save(self.state)

    def _audit(self, action: str, detail: str, echo: bool = True, reason: str = "") -> None:
        self.state.record(self.who, action, detail, self.clock(), reason=reason)
        if echo:
            self.out.event(detail)
        if action in ALERT_FOR_ACTION:
            self.notifier.emit(ALERT_FOR_ACTION[action], detail, self._alert_details())

    def _alert_details(self, **extra: Any) -> dict[str, Any]:
        """What a webhook receiver gets besides the message: where the rollout stands."""
        st = self.state
        details: dict[str, Any] = {"rollout": st.rollout_number, "stable": st.stable_version, "canary": st.canary_version,
                                   "phase": st.phase.value, "traffic": st.split.describe(), "by": self.who}
        if st.stages:
            rec = st.stages[-1]
            details["stage"] = {"number": rec.index + 1, "of": len(self.plan.stages), "name": rec.name, "status": rec.status.value}
        return {**details, **extra}

    def finish_alerts(self, timeout: float = ALERT_FLUSH_SECONDS) -> None:
        """At command end, inside the lock: wait (bounded) for alerts in flight; record failures in the state."""
        n = self.notifier
        if not n.webhooks:
            return
        if n.pending:
            self.out.event(f"sending {n.pending} alert(s) (waiting at most {timeout:g}s)")
        n.flush(timeout)
        bad = [d for d in n.results() if d.status != "ok"]
        for d in bad:
            why = d.reason if d.status == "failed" else f"not sent within {timeout:g}s of the command's end" + (f" (last try: {d.reason})" if d.reason else "")
            self._audit("alert-failed", f"`{d.event}` alert to {d.url} failed: {why}")
        n.close(timeout=0)
        if bad:
            self.save()

    # -- driving forward -----------------------------------------------------

    def drive(self, version: str | None, from_cli: bool, one_stage: bool, first_stage: int = 0, resume_reason: str | None = None) -> Outcome:
        """`rollout run` (one_stage=False) and `rollout advance` (one_stage=True); `resume` and `retry` too.

        The driver records who it is in the state (so `status` can tell it is gone if it dies),
        and reads the request mailbox between any two steps and at every tick of a stage's load."""
        self.state.driver = drivers.identity(self.command, self.who, self.clock())
        try:
            return self._drive(version, from_cli, one_stage, first_stage, resume_reason)
        finally:
            self.state.driver = None
            self.state.live = None
            try:
                self.save()
            except RolloutError:
                pass  # the state keeps naming this driver, which `status` will find gone

    def _drive(self, version: str | None, from_cli: bool, one_stage: bool, first_stage: int, resume_reason: str | None) -> Outcome:
        if self.state.transition is not None:
            self._finish_transition()
        self.backend.ensure(self.state)
        self.save()
        if self.state.pause and self.state.phase is Phase.PAUSED:
            self._resume(resume_reason or "")
        stages_run = 0
        while True:
            served = self._serve_between_steps()
            if served is not None:
                return served
            action = decide(self.plan, self.state, version, from_cli, now=self.clock())
            if action.kind is Kind.REFUSE:
                raise UsageError(action.reason, "finish it (`rollout run`), or stop it first with `rollout abort` or `rollout revert`")
            if action.kind is Kind.DONE:
                return Outcome("nothing", action.reason)
            if action.kind is Kind.FINISH_TRANSITION:
                self._finish_transition()
            elif action.kind is Kind.START:
                assert action.version is not None
                self._start(action.version, first_stage)
            elif action.kind is Kind.WAIT_APPROVAL:
                self._pause(action)
                if one_stage and stages_run:
                    return Outcome("stage-passed", f"stage passed; {action.reason}: `rollout approve {self.loaded.path.name}`")
                return Outcome("paused", f"{action.reason}: run `rollout approve`, then `rollout advance` or `rollout run`", EXIT_PAUSED)
            elif action.kind is Kind.WAIT_REVIEW:
                return Outcome("awaiting-review", self._review_hint(), EXIT_PAUSED)
            elif action.kind is Kind.REVIEW_TIMEOUT:
                if not self._review_timeout(action.reason):
                    return Outcome("rolled-back", self.state.reason, EXIT_GATE_FAILED)
            elif action.kind is Kind.RUN_STAGE:
                if one_stage and stages_run:
                    nxt, k, n = self.plan.stages[self.state.stage_index], self.state.stage_index + 1, len(self.plan.stages)
                    self.state.reason = f"stage {k}/{n} `{nxt.name}` next, waiting for `rollout advance`"
                    self.save()
                    return Outcome("stage-passed", f"stage {k - 1} passed; next: stage {k} `{nxt.name}` (`rollout advance`)")
                assert action.stage is not None
                if not stages_run:
                    self._probe_targets(action.stage)
                result = self._run_stage(action.stage)
                stages_run += 1
                if result == "request":
                    assert self._request is not None
                    req, self._request = self._request, None
                    outcome = self._serve(req, stage_running=True)
                    if outcome is not None:
                        return outcome
                    continue
                if result == "failed":
                    return Outcome("rolled-back", self.state.reason, EXIT_GATE_FAILED)
                if result == "review":
                    return Outcome("awaiting-review", self._review_hint(), EXIT_PAUSED)
            elif action.kind is Kind.PROMOTE:
                if self.plan.bake is not None:
                    ended = self._bake()
                    if ended is not None:
                        return ended
                self._promote()
                return Outcome("promoted", f"{self.state.stable_version} promoted: it serves all traffic")

    def _start(self, version: str, first_stage: int = 0) -> None:
        st = self.state
        st.rollout_number += 1
        st.phase = Phase.PROGRESSING
        st.canary_version = version
        st.stage_index = min(first_stage, len(self.plan.stages))
        st.approved = []
        st.stages = []
        st.pause = None
        st.reason = f"rolling out {version} over {st.stable_version}"
        st.started_at = self.clock()
        start_at = f", from stage {st.stage_index + 1}" if first_stage else ""
        self._audit("start", f"rollout #{st.rollout_number}: {version} replaces {st.stable_version}{start_at} (owner: {self.plan.owner.name}, {self.plan.owner.contact})")
        self.save()
        kill_point("start-saved")
        self.backend.deploy_canary(st, version)
        self._audit("deployed", f"canary {version} is up and healthy, serving no users yet")
        self.save()

    def _probe_targets(self, first: int) -> None:
        """Before the first stage of this command: can the load reach where it will go?

        The backend is ensured and the canary deployed by now. An entry point or a
        canary URL that does not accept a connection is an infrastructure failure
        (exit 3, with the URL), found in seconds: a stage loading it would only end
        in review with "0 requests". Traffic is not touched; the state says where it stopped.
        """
        if self.probe is None:
            return
        wanted = {s.load_to for s in self.plan.stages[first:]}
        urls = []
        if "entry" in wanted:
            urls.append(("entry point", self.backend.entry_url(self.state)))
        if "canary" in wanted and self.state.canary_version:
            urls.append(("canary URL", self.backend.canary_url(self.state)))
        for what, url in urls:
            try:
                self.probe(url, what=what, hint="check that it is up and the plan's URL is right (target.entry_url, target.canary_url, "
                      "load.host); no stage ran: `rollout run` again once it answers, or `rollout revert`")
            except Exception as exc:
                self._audit("unreachable", getattr(exc, "what", str(exc)))
                self.save()
                raise

    def _pause(self, action: Action) -> None:
        if self.state.phase is not Phase.PAUSED:
            self.state.phase = Phase.PAUSED
            self.state.reason = action.reason
            self._audit("paused", action.reason)
            self.save()

    def _shift(self, split: Split, why: str) -> None:
        st = self.state
        st.transition = Transition("shift", split, self.clock(), os.getpid(), self.who)
        self.save()
        kill_point("shift-saved")
        self.backend.apply_split(st, split)
        kill_point("shift-applied")
        st.split = split
        st.transition = None
        self._audit("shift", f"traffic: {split.describe()} ({why})")
        self.save()

    def _review_hint(self) -> str:
        st = self.state
        left = max(0.0, (st.review_deadline or 0.0) - self.clock())
        return (f"{st.reason} — `rollout approve` continues, `rollout reject` rolls back; "
                f"unanswered, `{self.plan.review.default}` applies in {left:,.0f}s (at the next command)")

    def _review_timeout(self, reason: str) -> bool:
        """The plan's default for an unanswered review; True when the rollout goes on."""
        if self.plan.review.default == "continue":
            self._accept_stage(f"review timed out: {reason}")
            return True
        self._rollback("rollback", f"stage {self.state.stage_index + 1} `{self.plan.stages[self.state.stage_index].name}`: {reason}")
        return False

    def _accept_stage(self, why: str, action: str = "review-accepted", reason: str = "", record: bool = True) -> None:
        """The stage under review (or about to run, for `promote`) ends as passed by a decision, not its gates."""
        st = self.state
        rec = st.current_stage()
        if rec is None or rec.status not in (StageStatus.REVIEW, StageStatus.RUNNING, StageStatus.INTERRUPTED):
            if st.stage_index < len(self.plan.stages):  # not run at all (promote of a stage that had not started)
                rec = StageRecord(index=st.stage_index, name=self.plan.stages[st.stage_index].name, status=StageStatus.ACCEPTED,
                                  started_at=self.clock(), ended_at=self.clock(), split=st.split, reason="not run")
                st.stages.append(rec)
            else:
                rec = None
        if rec is not None:
            rec.status = StageStatus.ACCEPTED
            rec.ended_at = rec.ended_at or self.clock()
            rec.reason = f"{rec.reason}; {why}" if rec.reason else why
            rec.decided_by = {"who": self.who, "action": action, "reason": reason, "at": self.clock()}
        st.stage_index += 1
        st.phase = Phase.PROGRESSING
        st.review_deadline = None
        st.pause = None
        st.reason = why
        if record:
            self._audit(action, why, reason=reason)
        self.save()

    def _run_stage(self, i: int) -> str:
        st, stage = self.state, self.plan.stages[i]
        n = len(self.plan.stages)
        split = stage_split(self.plan, i)
        if st.split != split:
            self._shift(split, f"stage {i + 1}/{n} `{stage.name}`")
        rec = StageRecord(index=i, name=stage.name, status=StageStatus.RUNNING, started_at=self.clock(), pid=os.getpid(), split=split)
        st.stages.append(rec)
        st.phase = Phase.PROGRESSING
        st.reason = f"stage {i + 1}/{n} `{stage.name}` running"
        where = "the canary alone" if stage.load_to == "canary" else "the entry point"
        shape = self.plan.stage_shape(i)
        users = f"shape {shape} drives the users" if shape else f"{self.plan.stage_users(i)} users"
        self._audit("stage-started", f"stage {i + 1}/{n} `{stage.name}`: {users} to {where} for {stage.duration:g}s")
        self.save()
        kill_point("stage-started")

        gates = self.plan.stage_gates(i)
        judge = StageJudge(gates)
        failing: list[Verdict] = []
        limits = [float(g.max) for g in gates.values() if g.metric in LATENCY_METRICS and g.compare is None and g.max is not None]
        alive = liveness.CanaryLiveness(st.canary_version, st.stable_version, slowest_ms=max(limits) if limits else None)
        alive.observe(0.0, StageStats(), self._canary_probe())  # the window's start: the counters before any load

        early: list[float] = []

        def on_tick(stats: StageStats) -> bool:
            served = alive.observe(stats.elapsed, stats, self._canary_probe())
            verdicts = judge.judge(stats, final=False)
            self.out.progress(stage, i, n, stats, verdicts + [served], stage.duration)
            self._record_live(i, stage, split, stats, verdicts + [served])
            req = self._take_request(stage_running=True)
            if req is not None:  # a person asked (revert, abort, pause, promote): stop the load now
                self._request = req
                return True
            if served.status is Status.FAIL:  # fail closed: a canary that cannot serve ends the stage now
                failing.append(served)
                return True
            bad = [v for v in verdicts if v.status is Status.FAIL and gates[v.gate].critical]
            if bad:
                failing.extend(bad)
                return True
            if stage.min_duration is not None and stats.elapsed >= stage.min_duration and verdicts and all(v.status is Status.PASS for v in verdicts):
                early.append(stats.elapsed)
                return True
            return False

        version = getattr(self.mailbox, "version", None)
        if version is not None:  # a mailbox that can say cheaply that something was posted: look every 0.1 s
            seen = [version()]

            def interrupt() -> bool:
                now = version()
                if now == seen[0]:
                    return False
                seen[0] = now
                req = self._take_request(stage_running=True)
                if req is not None:
                    self._request = req
                return req is not None

            on_tick.interrupt = interrupt  # type: ignore[attr-defined]

        spec = self._load_spec(i)
        watching = getattr(self.mailbox, "watching", None)  # Kubernetes: a watch on the mailbox moves version() at once
        try:
            assert self.load_runner is not None, "a load runner is needed to run stages"
            with watching(self.out.event) if watching is not None else nullcontext():
                stats = self.load_runner(spec, on_tick)
        except KeyboardInterrupt:
            rec.status, rec.ended_at = StageStatus.INTERRUPTED, self.clock()
            rec.reason = "interrupted (Ctrl-C/SIGTERM); traffic left at " + st.split.describe()
            st.reason = f"stage {i + 1}/{n} `{stage.name}` interrupted; traffic stays at {st.split.describe()}: `rollout advance` re-runs the stage, `rollout revert` puts all traffic on stable"
            self._audit("interrupted", st.reason)
            self.save()
            raise Interrupted(detail=st.reason) from None
        except LoadError as exc:
            rec.status, rec.ended_at, rec.reason = StageStatus.FAILED, self.clock(), f"the load could not run: {exc.what}"
            self.save()
            self._rollback("rollback", f"stage `{stage.name}`: the load could not run, so the canary could not be judged: {exc.what}")
            raise

        st.live = None
        if self._request is not None:  # stopped for a request: what the gates saw so far, undecided
            rec.verdicts = [v.as_dict() for v in judge.judge(stats, final=False)]
            rec.stats = stats.summary()
            rec.ended_at = self.clock()
            return "request"
        if not failing:
            served = alive.observe(stats.elapsed, stats, self._canary_probe(), final=True)
            verdicts = judge.judge(stats, final=True)
            verdicts += [served] if served.status is Status.FAIL else []
            verdicts += health_checks(gates, split, stats, stage.load_to == "canary")
            verdicts = explain_inconclusive(verdicts, stats)  # "far fewer requests than expected", said first
        else:  # the failing gates, plus where the others stood at that moment
            names = {v.gate for v in failing}
            verdicts = failing + [v for v in judge.judge(stats, final=False) if v.gate not in names]
        rec.verdicts = [v.as_dict() for v in verdicts]
        rec.stats = stats.summary()
        rec.ended_at = self.clock()
        def is_critical(v: Verdict) -> bool:  # health checks are not gates: never critical; a dead canary always is
            return v.gate == liveness.NAME or (v.gate in gates and gates[v.gate].critical)

        critical = [v for v in verdicts if v.status is Status.FAIL and is_critical(v)]
        uncertain = [v for v in verdicts if v.status is Status.INCONCLUSIVE or (v.status is Status.FAIL and not is_critical(v))]
        if critical:
            rec.status = StageStatus.FAILED
            rec.reason = "; ".join(f"{v.gate}: {v.message}" for v in critical)
            if not any(v.gate == liveness.NAME for v in critical) and (evidence := alive.describe(stats)):
                rec.reason += f" ({evidence})"  # the fault, named even when a gate saw it first
            self.out.stage_done(rec)
            self.save()
            self.notifier.emit("gate-failed", f"stage {i + 1}/{n} `{stage.name}` failed: {rec.reason}; rolling back to {st.stable_version}",
                               self._alert_details(verdicts=[v.as_dict() for v in critical]))
            self._rollback("rollback", f"stage {i + 1}/{n} `{stage.name}` failed: {rec.reason}")
            return "failed"
        if uncertain:
            rec.status = StageStatus.REVIEW
            rec.reason = "; ".join(f"{v.gate}: {v.message}" for v in uncertain)
            st.phase = Phase.AWAITING_REVIEW
            st.review_deadline = self.clock() + self.plan.review.timeout
            st.reason = f"stage {i + 1}/{n} `{stage.name}` is uncertain, a person must decide: {rec.reason}"
            self.out.stage_done(rec)
            self._audit("awaiting-review", st.reason + f" (owner: {self.plan.owner.name}, {self.plan.owner.contact})")
            self.save()
            return "review"
        rec.status = StageStatus.PASSED
        rec.reason = "all gates passed" if verdicts else "no gates: passed on completion"
        if early:
            rec.reason += f", early at {early[0]:.0f}s of {stage.duration:g}s"
        st.stage_index = i + 1
        self.out.stage_done(rec)
        self._audit("stage-passed", f"stage {i + 1}/{n} `{stage.name}` passed", echo=False)
        self.save()
        kill_point("stage-passed")
        return "passed"

    def _canary_probe(self) -> liveness.CanaryProbe | None:
        """The backend's word on the canary this tick; a backend that cannot answer says nothing (None)."""
        probe = getattr(self.backend, "canary_probe", None)
        if probe is None:
            return None
        try:
            return probe(self.state)
        except RolloutError:
            return None

    def _load_spec(self, i: int) -> Any:
        from rollout.load.runner import LoadSpec  # only commands that run load import locust

        stage, load = self.plan.stages[i], self.plan.load
        host = self.backend.canary_url(self.state) if stage.load_to == "canary" else self.backend.entry_url(self.state)
        roles = {self.state.stable_version: "stable", "stable": "stable", "canary": "canary"}
        if self.state.canary_version:
            roles[self.state.canary_version] = "canary"
        cohort = next(iter(stage.cohort.items())) if stage.cohort else None
        return LoadSpec(
            locustfile=self.loaded.resolve(load.locustfile),
            host=host,
            users=self.plan.stage_users(i),
            spawn_rate=self.plan.stage_spawn_rate(i),
            duration=stage.duration,
            version_header=load.version_header,
            roles=roles,
            cohort=cohort if stage.load_to == "entry" else None,
            cohort_share=load.cohort_share,
            max_requests=load.max_requests,
            metrics=dict(load.metrics),
            only_role="canary" if stage.load_to == "canary" else None,
            shape=self.plan.stage_shape(i),
            tags=tuple(self.tags if self.tags is not None else load.tags) if (self.tags is not None or load.tags is not None) else None,
            exclude_tags=tuple(self.exclude_tags if self.exclude_tags is not None else load.exclude_tags)
            if (self.exclude_tags is not None or load.exclude_tags is not None) else None,
            options=tuple(load.options.items()),
            workers=stage.workers,
        )

    # -- ending ----------------------------------------------------------------

    def _rollback(self, action: str, reason: str, why: str = "") -> None:
        """All traffic to stable, then the canary stopped: rollback, abort and revert (`why`: a person's words)."""
        st = self.state
        st.phase = ROLLBACK_ACTIONS[action]
        st.reason = reason
        st.transition = Transition(action, ALL_STABLE, self.clock(), os.getpid(), self.who)
        self._audit(action, reason, reason=why)
        self.save()
        kill_point(f"{action}-saved")
        self._complete_rollback()

    def _complete_rollback(self) -> None:
        st = self.state
        cause = st.transition.action if st.transition is not None else "rollback"
        self.backend.ensure(st, canary=False)
        self.backend.apply_split(st, ALL_STABLE)
        st.split = ALL_STABLE
        self.save()
        kill_point("rollback-routed")
        self.backend.stop_canary(st)
        kill_point("rollback-stopped")
        st.transition = None
        done = f"all traffic on {st.stable_version}; canary {st.canary_version or '-'} stopped"
        self._audit("stable", done)
        self.notifier.emit(ALERT_FOR_ROLLBACK.get(cause, "rolled-back"), f"{done} — {st.reason}", self._alert_details(reason=st.reason))
        if st.canary_version and canary_started(st):  # a rollout ended here (not a revert of an already finished one)
            self._archive(st.phase.value)
        else:  # a canary that never came up is no rollout to keep in history (the audit trail keeps what happened)
            st.canary_version = None
        self.save()

    def _bake(self) -> Outcome | None:
        """All traffic on the canary, the previous version kept ready, judged by the watch gates for bake.duration
        (rollout.engine.bake). None when the bake was clean (promote next); else how driving ends."""
        from rollout.engine.bake import bake

        st, b = self.state, self.plan.bake
        assert b is not None and st.canary_version is not None
        if st.split != ALL_CANARY:
            self._shift(ALL_CANARY, f"bake: {st.canary_version} serves everyone, {st.stable_version} kept ready")
        self._audit("bake-started", f"bake of {st.canary_version} for {b.duration:g}s, judged by the watch gates "
                    f"({', '.join(self.plan.watch.gates) if self.plan.watch else '-'})")
        self.save()
        result = bake(self.plan, st.canary_version, self._serve_between_steps, self.out.event, self.clock)
        if result.verdict == "request":
            return result.outcome
        if result.verdict == "clean":
            self._audit("bake-clean", result.message)
            self.save()
            return None
        self.notifier.emit("gate-failed", f"bake of {st.canary_version} failed: {result.message}; rolling back to {st.stable_version}",
                           self._alert_details(**result.details))
        self._rollback("rollback", f"bake: {result.message}")
        return Outcome("rolled-back", self.state.reason, EXIT_GATE_FAILED)

    def _promote(self, manual: str = "", reason: str = "") -> None:
        """Promotion: after every stage passed, or `manual` (a person's `promote --full`: why, for the record)."""
        st = self.state
        st.transition = Transition("promote", ALL_STABLE, self.clock(), os.getpid(), self.who)
        if manual:
            self._audit("promote", manual, reason=reason)
        else:
            self._audit("promoting", f"promoting {st.canary_version}: all stages passed")
        self.save()
        kill_point("promote-saved")
        self._complete_promote()

    def _complete_promote(self) -> None:
        st = self.state
        self.backend.promote(st)
        kill_point("promote-done")
        if st.canary_version and st.stable_version != st.canary_version:
            previous = st.stable_version
            st.stable_version = st.canary_version
            st.add_revision(st.canary_version, self.who, self.clock())
            detail = f"{st.stable_version} is now stable (was {previous})"
        else:
            detail = f"{st.stable_version} is stable"
        st.phase = Phase.PROMOTED
        st.reason = detail
        st.split = ALL_STABLE
        st.transition = None
        self._audit("promoted", detail)
        self._archive("promoted")
        self.save()

    def _finish_transition(self) -> None:
        t = self.state.transition
        assert t is not None
        self.out.event(f"finishing an interrupted `{t.action}` (started by {t.by}, pid {t.pid})")
        if t.action == "shift":
            self.backend.ensure(self.state)
            self.backend.apply_split(self.state, t.to)
            self.state.split = t.to
            self.state.transition = None
            self._audit("shift", f"traffic: {t.to.describe()} (finished an interrupted change)")
            self.save()
        elif t.action == "promote":
            self._complete_promote()
        else:
            self._complete_rollback()

    def _archive(self, outcome: str) -> None:
        st = self.state
        if not st.canary_version and outcome != "promoted":
            return
        st.past.append(
            RolloutSummary(
                number=st.rollout_number,
                canary=st.canary_version or st.stable_version,
                stable=st.revisions[-2].version if outcome == "promoted" and len(st.revisions) > 1 else st.stable_version,
                outcome=outcome,
                reason=st.reason,
                started_at=st.started_at or self.clock(),
                ended_at=self.clock(),
                stages=[{"name": r.name, "status": r.status.value, "reason": r.reason, "verdicts": r.verdicts, "stats": r.stats,
                         **({"decided_by": r.decided_by} if r.decided_by else {})} for r in st.stages],
                decisions=[{"at": h.at, "who": h.who, "action": h.action, "detail": h.detail, "reason": h.reason}
                           for h in st.history if h.action in MANUAL_ACTIONS and h.at >= (st.started_at or 0.0)],
            )
        )
        del st.past[:-20]
        st.canary_version = None

    # -- the other verbs -------------------------------------------------------

    def approve(self, reason: str = "") -> Outcome:
        st = self.state
        why = f": {reason}" if reason else ""
        if st.phase is Phase.AWAITING_REVIEW:
            name = self.plan.stages[st.stage_index].name
            self._accept_stage(f"stage {st.stage_index + 1} `{name}` accepted on review by {self.who}{why}", action="approve", reason=reason)
            return Outcome("approved", f"{st.reason}; run `rollout advance` or `rollout run` to continue")
        if rq.pause_kind(st) == "operator":
            raise UsageError(f"the rollout is paused by {st.pause.get('who') if st.pause else '?'}, not waiting for approval",
                             "`rollout resume` re-runs the paused stage")
        action = decide(self.plan, st, now=self.clock())
        if action.kind is not Kind.WAIT_APPROVAL or action.stage is None:
            raise UsageError(f"nothing is waiting for approval ({st.phase.value}: {st.reason or 'no rollout in progress'})", "see `rollout status`")
        st.approved.append(action.stage)
        st.phase = Phase.PROGRESSING
        st.reason = f"stage {action.stage + 1} `{self.plan.stages[action.stage].name}` approved by {self.who}{why}"
        self._audit("approve", st.reason, reason=reason)
        self.save()
        return Outcome("approved", f"{st.reason}; run `rollout advance` or `rollout run` to continue")

    def reject(self, reason: str) -> Outcome:
        """A person says no: a stage under review (or waiting for approval) rolls back."""
        st = self.state
        if st.phase not in (Phase.AWAITING_REVIEW, Phase.PAUSED):
            raise UsageError(f"nothing is waiting for a decision ({st.phase.value}: {st.reason or 'no rollout in progress'})",
                             "`rollout abort` stops a rollout in progress; see `rollout status`")
        name = self.plan.stages[min(st.stage_index, len(self.plan.stages) - 1)].name
        st.record(self.who, "reject", f"stage {st.stage_index + 1} `{name}` rejected by {self.who}", self.clock(), reason=reason)
        self._rollback("rollback", f"stage {st.stage_index + 1} `{name}` rejected by {self.who}" + (f": {reason}" if reason else ""))
        return Outcome("rolled-back", f"rejected: all traffic on {st.stable_version}, canary stopped", EXIT_GATE_FAILED)

    def abort(self, reason: str) -> Outcome:
        st = self.state
        if st.transition is not None:
            self._finish_transition()
        if not st.phase.active:
            return Outcome("nothing", f"no rollout in progress ({st.phase.value}); nothing to abort")
        self._close_running_stage(f"stopped: aborted by {self.who}" + (f" ({reason})" if reason else ""))
        st.pause = None
        self._rollback("abort", f"aborted by {self.who}" + (f": {reason}" if reason else ""), why=reason)
        return Outcome("aborted", f"aborted by {self.who}: all traffic on {st.stable_version}, canary stopped")

    def revert(self, reason: str, to_revision: int | None = None) -> Outcome:
        """Whatever the state: all traffic to the last known-good version (or revision `to_revision`,
        which becomes the newest revision, as `kubectl rollout undo` does), the canary stopped. No stage runs."""
        st = self.state
        was = st.phase
        target = None
        if to_revision is not None:
            target = next((r for r in st.revisions if r.number == to_revision), None)
            if target is None:
                known = ", ".join(f"{r.number} ({r.version})" for r in st.revisions) or "none"
                raise UsageError(f"there is no revision {to_revision} of `{self.plan.name}` (kept: {known})",
                                 "pick one of those; `rollout status -o json` lists them under state.revisions")
        if st.transition is not None and st.transition.action == "promote":
            # a promotion that did not finish: the known-good version is still the recorded stable one
            self.out.event("an interrupted promotion is abandoned: reverting to the recorded stable version")
        st.phase = Phase.ROLLED_BACK if was.active or st.transition is not None else was
        st.reason = f"reverted by {self.who}" + (f": {reason}" if reason else "")
        if target is not None and (target.version != st.stable_version or target.number != st.revisions[-1].number):
            st.reason += f"; back to revision {target.number} ({target.version}, was {st.stable_version})"
            st.stable_version = target.version
            st.add_revision(target.version, self.who, self.clock())
            st.phase = Phase.ROLLED_BACK
        self._close_running_stage(f"stopped: reverted by {self.who}" + (f" ({reason})" if reason else ""))
        st.pause = None
        st.transition = Transition("revert", ALL_STABLE, self.clock(), os.getpid(), self.who)
        self._audit("revert", st.reason, reason=reason)
        self.save()
        self._complete_rollback()
        return Outcome("reverted", f"reverted by {self.who}: all traffic on {st.stable_version}; canary stopped")

    # -- a person's decisions on a rollout in progress (directly, or asked of the driver) -------

    def _close_running_stage(self, why: str) -> None:
        """A stage recorded as running (a stopped load, or a driver that died) ends interrupted, saying why."""
        rec = self.state.current_stage()
        if rec is not None and rec.status is StageStatus.RUNNING:
            rec.status, rec.ended_at = StageStatus.INTERRUPTED, rec.ended_at or self.clock()
            rec.reason = why

    def _require_active(self, verb: str) -> None:
        st = self.state
        if st.transition is not None:
            self._finish_transition()
        if not st.phase.active:
            raise UsageError(f"no rollout in progress ({st.phase.value}); nothing to {verb}", "see `rollout status`")

    def pause(self, reason: str = "") -> Outcome:
        """Stop where it stands: the running stage's load ends (by the driver), the split stays, phase `paused`."""
        st = self.state
        self._require_active("pause")
        if st.phase is not Phase.PROGRESSING:
            raise UsageError(f"the rollout already waits for a person ({st.phase.value}: {st.reason})",
                             "`rollout approve`/`reject` answer it; `rollout abort` stops it")
        n = len(self.plan.stages)
        k = min(st.stage_index, n - 1)
        why = f": {reason}" if reason else ""
        self._close_running_stage(f"stopped: paused by {self.who}{why}")
        st.phase = Phase.PAUSED
        st.pause = {"who": self.who, "reason": reason, "at": self.clock(), "stage": k}
        st.reason = (f"paused by {self.who}{why}; traffic stays at {st.split.describe()}: `rollout resume` re-runs stage "
                     f"{k + 1}/{n} `{self.plan.stages[k].name}` from its start, `rollout revert` puts all traffic on stable")
        self._audit("pause", st.reason, reason=reason)
        self.save()
        return Outcome("paused", st.reason, EXIT_PAUSED)

    def _resume(self, reason: str) -> None:
        st = self.state
        paused = st.pause or {}
        st.pause = None
        st.phase = Phase.PROGRESSING
        st.reason = f"resumed by {self.who}" + (f": {reason}" if reason else "")
        self._audit("resume", f"{st.reason} (paused by {paused.get('who', '?')}); `rollout {self.command}` re-runs the stage from its start",
                    reason=reason)
        self.save()

    def check_resumable(self) -> None:
        if rq.pause_kind(self.state) != "operator":
            raise UsageError(f"nothing is paused by `rollout pause` ({self.state.phase.value}: {self.state.reason or 'no rollout in progress'})",
                             "`rollout approve` answers a stage waiting for approval; `rollout run` carries on a rollout in progress")

    def promote(self, reason: str = "", full: bool = False) -> Outcome:
        """A person's promotion: end the current stage as passed (`full`: skip every remaining one and promote now)."""
        st = self.state
        self._require_active("promote")
        n = len(self.plan.stages)
        why = f": {reason}" if reason else ""
        if not full:
            if st.stage_index >= n:
                raise UsageError("every stage has passed; only the promotion is left", "`rollout run` promotes, or `rollout promote --full`")
            k = st.stage_index
            self._accept_stage(f"stage {k + 1}/{n} `{self.plan.stages[k].name}` ended as passed by {self.who} (`rollout promote`){why}",
                               action="promote", reason=reason)
            if st.stage_index < n:
                nxt = self.plan.stages[st.stage_index]
                st.reason += f"; next: stage {st.stage_index + 1}/{n} `{nxt.name}`"
            self.save()
            return Outcome("stage-passed", st.reason)
        skipped = [self.plan.stages[k].name for k in range(st.stage_index, n)]
        while st.stage_index < n:  # each remaining stage: ended (or never run) by this decision
            self._accept_stage(f"skipped by {self.who} (`rollout promote --full`){why}", action="promote", reason=reason, record=False)
        st.approved = []
        if st.canary_version is None:
            raise UsageError("no canary to promote", "see `rollout status`")
        version = st.canary_version
        self._promote(manual=f"{version} promoted manually by {self.who} (`rollout promote --full`), skipping "
                             f"{', '.join(f'`{x}`' for x in skipped) or 'no stage'}{why}", reason=reason)
        st.reason = f"{version} promoted manually by {self.who}{why} (stages skipped: {', '.join(skipped) or 'none'})"
        if st.past:
            st.past[-1].reason = st.reason
        self.save()
        return Outcome("promoted", f"{st.reason}: it serves all traffic")

    def retry_point(self, from_start: bool) -> tuple[str, int]:
        """After a rollback or abort of version X: (X, the stage to start from) — where it stopped, or 0."""
        st = self.state
        if st.phase.active or st.transition is not None:
            raise UsageError(f"a rollout is in progress ({st.phase.value}: {st.reason})", "`rollout run` carries it on")
        last = st.past[-1] if st.past else None
        if last is None or last.outcome not in (Phase.ROLLED_BACK.value, Phase.ABORTED.value):
            raise UsageError("the last rollout was not rolled back or aborted: nothing to retry", "`rollout run --version V` starts a new one")
        if from_start:
            return last.canary, 0
        done = 0
        for rec in last.stages:
            if rec.get("status") not in (StageStatus.PASSED.value, StageStatus.ACCEPTED.value):
                break
            done += 1
        return last.canary, min(done, len(self.plan.stages))

    def record_retry(self, version: str, first: int, reason: str) -> None:
        n = len(self.plan.stages)
        where = f"stage {first + 1}/{n} `{self.plan.stages[first].name}`" if first < n else "the promotion"
        self._audit("retry", f"retry of {version} from {where} by {self.who}" + (f": {reason}" if reason else ""), reason=reason)
        self.save()

    # -- requests from other commands while this one drives ----------------------------------------

    @contextmanager
    def _as(self, who: str) -> Iterator[None]:
        """Act for the person who asked: the audit trail names them, not the driver."""
        saved, self.who = self.who, who
        try:
            yield
        finally:
            self.who = saved

    def _me(self) -> str:
        return drivers.describe(self.state.driver or drivers.identity(self.command, self.who))

    def _take_request(self, stage_running: bool) -> Request | None:
        """The oldest request to act on now (refusals are answered here), claimed so that nobody else acts on it."""
        if self.mailbox is None:
            return None
        box = self.mailbox
        try:
            pending = box.read().pending(self.clock())
            for req in pending:
                kind, why = rq.meaning(req, self.state, stage_running)
                if kind == rq.REFUSE:
                    rq.answer(box, req.id, rq.REFUSED, why, self._me(), self.clock())
                    self._audit("request-refused", f"{req.describe()} refused: {why}")
                    continue
                claim = rq.answer(box, req.id, rq.ACCEPTED, f"{self._me()} is acting on it", self._me(), self.clock())
                if claim.outcome == rq.ACCEPTED and claim.by == self._me():
                    self.out.event(f"request: {req.describe()}")
                    return req
        except RolloutError as exc:  # the mailbox unreadable must not stop the rollout itself
            self.out.event(f"cannot read the request mailbox: {exc.what}")
        return None

    def _serve_between_steps(self) -> Outcome | None:
        req = self._take_request(stage_running=False)
        return self._serve(req, stage_running=False) if req is not None else None

    def _serve(self, req: Request, stage_running: bool) -> Outcome | None:
        """Act on a claimed request, answer it, and say whether driving ends (an Outcome) or goes on (None)."""
        outcome: Outcome | None = None
        try:
            with self._as(req.who):
                if req.verb == "revert":
                    done = self.revert(req.reason)
                    outcome = Outcome("reverted", done.message, EXIT_GATE_FAILED)
                elif req.verb == "abort":
                    done = self.abort(req.reason)
                    outcome = Outcome("aborted", done.message, EXIT_GATE_FAILED)
                elif req.verb == "pause":
                    outcome = done = self.pause(req.reason)
                elif req.verb == "promote":
                    done = self.promote(req.reason, full=bool(req.args.get("full")))
                    outcome = done if done.kind == "promoted" else None
                else:  # meaning() refuses the others while driving
                    raise UsageError(f"`{req.verb}` cannot be done while a driver runs", "")
        except UsageError as exc:
            if stage_running:  # the load was stopped for it: the stage re-runs from its start
                self._close_running_stage(f"stopped for {req.describe()}, which could not be done: {exc.what}")
                self.save()
            if self.mailbox is not None:
                rq.answer(self.mailbox, req.id, rq.REFUSED, exc.what, self._me(), self.clock())
            return None
        if self.mailbox is not None:
            try:
                rq.answer(self.mailbox, req.id, rq.DONE, done.message, self._me(), self.clock())
            except RolloutError as exc:
                self.out.event(f"acted on {req.describe()}, but could not acknowledge it: {exc.what}")
        return outcome

    def _record_live(self, i: int, stage: Stage, split: Split, stats: StageStats, verdicts: list[Verdict]) -> None:
        """The latest numbers into the state, at most every LIVE_EVERY seconds (for `status --watch` anywhere)."""
        now = self.clock()
        if now - self._live_at < LIVE_EVERY:
            return
        self._live_at = now
        st = self.state
        versions = {"stable": st.stable_version, **({"canary": st.canary_version} if st.canary_version else {})}
        st.live = snapshot(now, self._me(), i, stage.name, stage.duration, split, stats, versions, verdicts)
        try:
            self.save()
        except RolloutError as exc:
            self.out.event(f"could not record live numbers: {exc.what}")

    def down(self) -> Outcome:
        st = self.state
        if st.phase.active or st.transition is not None:
            self._rollback("abort", f"stopped by {self.who} with `rollout down`")
        self.backend.down(st)
        self._audit("down", f"everything the {self.backend.name} backend started is stopped")
        self.save()
        return Outcome("down", "stopped the router and every version")

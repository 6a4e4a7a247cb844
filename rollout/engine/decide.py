"""The next action, decided from the plan and the recorded state alone.

A pure function: no I/O, no clock, no randomness. Every command that moves a
rollout forward asks `decide` what to do, does exactly that (in
`rollout.engine.executor`), saves, and asks again. Because the state records a
traffic change before it starts (`transition`), a process killed at any
instant leaves a state from which `decide` picks up: finish the interrupted
change first, then carry on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from rollout.engine.state import Phase, Split, State
from rollout.plan.model import Plan


class Kind(StrEnum):
    FINISH_TRANSITION = "finish-transition"  # re-apply an interrupted traffic change (idempotent)
    START = "start"  # begin a rollout: deploy the canary, no traffic yet
    WAIT_APPROVAL = "wait-approval"  # stop here until `rollout approve`
    WAIT_REVIEW = "wait-review"  # an uncertain stage waits for `rollout approve` / `rollout reject`
    REVIEW_TIMEOUT = "review-timeout"  # nobody answered in time: the plan's default action
    RUN_STAGE = "run-stage"  # shift to the stage's split, load, judge
    PROMOTE = "promote"  # every stage passed: the canary becomes stable
    DONE = "done"  # nothing to do
    REFUSE = "refuse"  # the request contradicts the state (e.g. another version in progress)


@dataclass(frozen=True)
class Action:
    kind: Kind
    stage: int | None = None
    version: str | None = None
    split: Split | None = None
    reason: str = ""


def stage_split(plan: Plan, index: int) -> Split:
    """The traffic split a stage asks for (a canary-only stage exposes no user: weight as planned)."""
    stage = plan.stages[index]
    cohort = next(iter(stage.cohort.items())) if stage.cohort else None
    return Split(weight=stage.weight or 0.0, cohort=cohort)


def decide(plan: Plan, state: State, requested_version: str | None = None, from_cli: bool = False, now: float = 0.0) -> Action:
    """What to do next. `requested_version` comes from the command line (from_cli) or the plan;
    `now` (the caller's clock) decides whether a review has timed out."""
    if state.transition is not None:
        t = state.transition
        return Action(Kind.FINISH_TRANSITION, split=t.to, reason=f"an interrupted `{t.action}` (started by {t.by}) must be finished first")

    n = len(plan.stages)
    if state.phase.active:
        if requested_version is not None and from_cli and requested_version != state.canary_version:
            return Action(
                Kind.REFUSE,
                version=requested_version,
                reason=f"a rollout of {state.canary_version} is in progress (stage {min(state.stage_index + 1, n)}/{n})",
            )
        if state.phase is Phase.AWAITING_REVIEW:
            deadline = state.review_deadline
            if deadline is not None and now >= deadline:
                return Action(Kind.REVIEW_TIMEOUT, stage=state.stage_index, reason=f"the review was not answered within {plan.review.timeout:g}s: default action `{plan.review.default}`")
            return Action(Kind.WAIT_REVIEW, stage=state.stage_index, reason=state.reason)
        if state.stage_index >= n:
            return Action(Kind.PROMOTE, version=state.canary_version, reason=f"all {n} stages passed")
        i = state.stage_index
        stage = plan.stages[i]
        if stage.approval == "manual" and i not in state.approved:
            return Action(Kind.WAIT_APPROVAL, stage=i, reason=f"stage {i + 1} `{stage.name}` needs approval before it starts")
        return Action(Kind.RUN_STAGE, stage=i, split=stage_split(plan, i))

    # idle or finished: a new rollout starts only when a version is asked for
    if requested_version is None:
        return Action(Kind.DONE, reason=f"no rollout in progress ({state.phase.value}); name a version to roll out")
    if requested_version == state.stable_version:
        return Action(Kind.DONE, version=requested_version, reason=f"{requested_version} is already the stable version")
    if not from_cli:
        for past in reversed(state.past):
            if past.canary == requested_version:
                return Action(
                    Kind.DONE,
                    version=requested_version,
                    reason=f"the plan's version {requested_version} was already rolled out ({past.outcome}); "
                    f"to roll it out again, name it with --version",
                )
    return Action(Kind.START, version=requested_version)

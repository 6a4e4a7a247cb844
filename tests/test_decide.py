"""The decision function over every phase: pure, so every case is a plain call."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.engine.decide import Kind, decide, stage_split
from rollout.engine.state import ALL_STABLE, Phase, RolloutSummary, Split, State, Transition, from_dict, new_state, to_dict
from rollout.plan import load_plan
from tests.conftest import write_plan


@pytest.fixture
def plan(tmp_path: Path, base_plan: dict):
    base_plan["stages"] = [
        {"name": "preflight", "weight": 0, "load_to": "canary", "duration": "5s"},
        {"name": "team", "cohort": {"x-team": "pay"}, "duration": "5s"},
        {"name": "ten", "weight": "10%", "duration": "5s", "approval": "manual"},
    ]
    return load_plan(write_plan(tmp_path, base_plan)).plan


def _state(**kw) -> State:
    s = new_state("svc", "v1", now=1.0)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_idle_without_version_does_nothing(plan) -> None:
    a = decide(plan, _state())
    assert a.kind is Kind.DONE and "name a version" in a.reason


def test_idle_with_version_starts(plan) -> None:
    a = decide(plan, _state(), "v2", from_cli=True)
    assert a.kind is Kind.START and a.version == "v2"


def test_version_already_stable_is_nothing_to_do(plan) -> None:
    a = decide(plan, _state(), "v1", from_cli=True)
    assert a.kind is Kind.DONE and "already the stable version" in a.reason


@pytest.mark.parametrize("phase", [Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED])
def test_finished_rollout_restarts_only_when_asked_on_the_command_line(plan, phase: Phase) -> None:
    past = [RolloutSummary(1, "v2", "v1", phase.value, "", 0.0, 1.0)]
    st = _state(phase=phase, past=past)
    assert decide(plan, st, "v2", from_cli=False).kind is Kind.DONE  # the plan's canary, already tried
    assert decide(plan, st, "v2", from_cli=True).kind is Kind.START  # asked for again: retry
    assert decide(plan, st, "v3", from_cli=False).kind is Kind.START


def test_progressing_runs_the_current_stage_with_its_split(plan) -> None:
    st = _state(phase=Phase.PROGRESSING, canary_version="v2", stage_index=0)
    a = decide(plan, st)
    assert a.kind is Kind.RUN_STAGE and a.stage == 0 and a.split == Split(0.0)
    st.stage_index = 1
    a = decide(plan, st)
    assert a.kind is Kind.RUN_STAGE and a.split == Split(0.0, ("x-team", "pay"))


def test_manual_stage_waits_until_approved(plan) -> None:
    st = _state(phase=Phase.PROGRESSING, canary_version="v2", stage_index=2)
    a = decide(plan, st)
    assert a.kind is Kind.WAIT_APPROVAL and a.stage == 2 and "needs approval" in a.reason
    st.phase = Phase.PAUSED
    assert decide(plan, st).kind is Kind.WAIT_APPROVAL
    st.approved = [2]
    a = decide(plan, st)
    assert a.kind is Kind.RUN_STAGE and a.split == Split(0.1)


def test_after_the_last_stage_promote(plan) -> None:
    st = _state(phase=Phase.PROGRESSING, canary_version="v2", stage_index=3)
    a = decide(plan, st)
    assert a.kind is Kind.PROMOTE and a.version == "v2"


def test_another_version_during_a_rollout_is_refused(plan) -> None:
    st = _state(phase=Phase.PROGRESSING, canary_version="v2", stage_index=1)
    a = decide(plan, st, "v3", from_cli=True)
    assert a.kind is Kind.REFUSE and "rollout of v2 is in progress (stage 2/3)" in a.reason
    assert decide(plan, st, "v2", from_cli=True).kind is Kind.RUN_STAGE


@pytest.mark.parametrize("phase", list(Phase))
def test_an_interrupted_transition_is_finished_first_in_every_phase(plan, phase: Phase) -> None:
    t = Transition("shift", Split(0.1), 5.0, 1234, "me")
    st = _state(phase=phase, canary_version="v2", transition=t)
    a = decide(plan, st, "v2", from_cli=True)
    assert a.kind is Kind.FINISH_TRANSITION and a.split == Split(0.1) and "interrupted `shift`" in a.reason


def test_stage_split_of_each_kind(plan) -> None:
    assert stage_split(plan, 0) == ALL_STABLE
    assert stage_split(plan, 1).cohort == ("x-team", "pay")
    assert stage_split(plan, 2).weight == pytest.approx(0.1)


def test_state_round_trips_through_json() -> None:
    import json

    st = _state(phase=Phase.PAUSED, canary_version="v2", split=Split(0.25, ("h", "v")), transition=Transition("shift", Split(0.5), 2.0, 9, "me"))
    st.record("me", "shift", "x", now=3.0)
    back = from_dict(json.loads(json.dumps(to_dict(st))))
    assert back == st


def test_awaiting_review_waits_until_the_deadline_then_times_out(plan) -> None:
    st = _state(phase=Phase.AWAITING_REVIEW, canary_version="v2", stage_index=1, review_deadline=100.0, reason="uncertain")
    a = decide(plan, st, now=99.0)
    assert a.kind is Kind.WAIT_REVIEW and a.stage == 1
    a = decide(plan, st, now=100.0)
    assert a.kind is Kind.REVIEW_TIMEOUT and "default action `rollback`" in a.reason
    assert decide(plan, st, "v3", from_cli=True, now=0.0).kind is Kind.REFUSE

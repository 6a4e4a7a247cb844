"""The driver's side of requests, in memory: a request posted while a stage runs stops the load at the
next tick and is acted on for the person who asked; every decision is in history with who and why, and a
stage ended by a person is never recorded as passed by its gates (issue #8 items 1 and 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from rollout.engine import requests as rq
from rollout.engine.executor import Engine
from rollout.engine.state import ALL_STABLE, Phase, StageStatus, new_state
from rollout.errors import EXIT_GATE_FAILED, EXIT_OK, EXIT_PAUSED, UsageError
from rollout.load.stats import StageStats
from rollout.plan import load_plan
from tests.conftest import write_plan
from tests.test_engine_recovery import MemoryBackend, MemoryStore, Quiet


class MemoryMailbox:
    def __init__(self) -> None:
        self.data = rq.MailboxData()

    def read(self) -> rq.MailboxData:
        return rq.MailboxData.from_dict(self.data.to_dict())

    def update(self, change: Callable[[rq.MailboxData], Any]) -> Any:
        return change(self.data)

    def location(self) -> str:
        return "memory"


def runner_posting(box: MemoryMailbox, at_tick: int, req: rq.Request | None, ticks: int = 30) -> Callable[[Any, Any], StageStats]:
    """A load of `ticks` seconds; `req` is posted to the mailbox just before tick `at_tick` (once)."""
    posted = []

    def run(spec: Any, on_tick: Callable[[StageStats], bool]) -> StageStats:
        stats = StageStats()
        for sec in range(1, ticks + 1):
            for role in ("stable", "canary"):
                for _ in range(50):
                    stats.role(role).add(10.0, False)
            stats.elapsed = float(sec)
            stats.timeline.append({"t": float(sec), "stable": {"requests": 50}, "canary": {"requests": 50}})
            if req is not None and sec == at_tick and not posted:
                posted.append(sec)
                rq.post(box, req)
            if on_tick(stats):
                break
        run.ticks = sec  # type: ignore[attr-defined]
        return stats

    return run


@pytest.fixture
def plan(tmp_path: Path, base_plan: dict) -> Any:
    base_plan["gates"] = {}
    base_plan["stages"] = [{"name": "ten", "weight": 10, "duration": "30s"}, {"name": "half", "weight": 50, "duration": "30s"}]
    return load_plan(write_plan(tmp_path, base_plan))


def engine_for(plan: Any, runner: Any, box: MemoryMailbox | None, clock: list[float]) -> tuple[Engine, MemoryBackend, MemoryStore]:
    store, backend = MemoryStore(new_state("svc", "v1", now=1.0)), MemoryBackend()

    def tick() -> float:
        clock[0] += 0.5
        return clock[0]

    engine = Engine(plan, backend, store, Quiet(), "ci-driver", load_runner=runner, clock=tick)
    engine._load_spec = lambda i: None  # type: ignore[method-assign]  (no Locust here)
    engine.mailbox = box
    return engine, backend, store


def request(verb: str, **args: Any) -> rq.Request:
    return rq.Request.new(verb, "alice", "saw something", 1e9, args, now=0.0)


def test_revert_request_stops_the_stage_and_is_acted_on_for_the_person(plan: Any) -> None:
    box = MemoryMailbox()
    req = request("revert")
    run = runner_posting(box, 3, req)
    engine, backend, store = engine_for(plan, run, box, [1000.0])
    out = engine.drive("v2", from_cli=True, one_stage=False)
    assert out.kind == "reverted" and out.exit_code == EXIT_GATE_FAILED and "reverted by alice" in out.message
    assert run.ticks == 3  # type: ignore[attr-defined]  # the load stopped at the tick that saw the request
    st = store.state
    assert st is not None and st.phase is Phase.ROLLED_BACK and backend.split == ALL_STABLE and backend.canary is None
    assert st.driver is None and st.live is None
    assert st.past[-1].stages[0]["status"] == "interrupted" and "reverted by alice" in st.past[-1].stages[0]["reason"]
    rev = next(h for h in st.history if h.action == "revert")
    assert rev.who == "alice" and rev.reason == "saw something"
    ack = box.data.ack_of(req.id)
    assert ack is not None and ack.outcome == rq.DONE and "reverted by alice" in ack.message


def test_pause_request_keeps_the_split_and_a_later_drive_reruns_the_stage(plan: Any) -> None:
    box = MemoryMailbox()
    engine, backend, store = engine_for(plan, runner_posting(box, 2, request("pause")), box, [1000.0])
    out = engine.drive("v2", from_cli=True, one_stage=False)
    assert out.kind == "paused" and out.exit_code == EXIT_PAUSED
    st = store.state
    assert st is not None and st.phase is Phase.PAUSED and st.pause and st.pause["who"] == "alice" and backend.split.weight == 0.1
    with pytest.raises(UsageError, match="paused by alice, not waiting for approval"):
        engine.approve()  # an approval is not a resume (the hint names `rollout resume`)
    engine.load_runner = runner_posting(box, 0, None, ticks=2)
    out = engine.drive(None, from_cli=False, one_stage=False, resume_reason="looked fine")
    assert out.kind == "promoted", out
    st = store.state
    assert [(s["name"], s["status"]) for s in st.past[-1].stages] == [("ten", "interrupted"), ("ten", "passed"), ("half", "passed")]
    assert [(h.action, h.who) for h in st.history if h.action in ("pause", "resume")] == [("pause", "alice"), ("resume", "ci-driver")]


def test_promote_request_ends_the_stage_as_accepted_not_passed_and_goes_on(plan: Any) -> None:
    box = MemoryMailbox()
    engine, backend, store = engine_for(plan, runner_posting(box, 2, request("promote")), box, [1000.0])
    out = engine.drive("v2", from_cli=True, one_stage=False)
    assert out.kind == "promoted" and out.exit_code == EXIT_OK
    stages = store.state.past[-1].stages  # type: ignore[union-attr]
    assert [(s["name"], s["status"]) for s in stages] == [("ten", "accepted"), ("half", "passed")]
    assert stages[0]["decided_by"]["who"] == "alice" and stages[0]["decided_by"]["action"] == "promote"
    assert "ended as passed by alice" in stages[0]["reason"]
    assert any(d["action"] == "promote" and d["who"] == "alice" for d in store.state.past[-1].decisions)  # type: ignore[union-attr]


def test_promote_full_request_skips_the_rest_and_is_a_manual_promotion(plan: Any) -> None:
    box = MemoryMailbox()
    engine, backend, store = engine_for(plan, runner_posting(box, 2, request("promote", full=True)), box, [1000.0])
    out = engine.drive("v2", from_cli=True, one_stage=False)
    assert out.kind == "promoted" and "promoted manually by alice" in out.message
    st = store.state
    assert st is not None and st.stable_version == "v2" and backend.stable == "v2"
    assert [s["status"] for s in st.past[-1].stages] == ["accepted", "accepted"]
    assert "promoted manually by alice" in st.past[-1].reason
    assert st.revisions[-1].by == "alice"


def test_requests_that_make_no_sense_while_driving_are_refused_and_the_stage_runs_on(plan: Any) -> None:
    box = MemoryMailbox()
    req = request("approve")
    run = runner_posting(box, 2, req, ticks=4)
    engine, backend, store = engine_for(plan, run, box, [1000.0])
    out = engine.drive("v2", from_cli=True, one_stage=True)
    assert out.kind == "stage-passed" and run.ticks == 4  # type: ignore[attr-defined]
    ack = box.data.ack_of(req.id)
    assert ack is not None and ack.outcome == rq.REFUSED and "nothing is waiting for approval" in ack.message
    assert "stage 2/2 `half` next, waiting for `rollout advance`" in store.state.reason  # type: ignore[union-attr]


def test_an_expired_request_is_never_acted_on(plan: Any) -> None:
    box = MemoryMailbox()
    stale = rq.Request.new("revert", "alice", "", 5.0, now=0.0)  # gave up long before the clock's 1000 s
    run = runner_posting(box, 1, stale, ticks=3)
    engine, backend, store = engine_for(plan, run, box, [1000.0])
    out = engine.drive("v2", from_cli=True, one_stage=True)
    assert out.kind == "stage-passed" and box.data.ack_of(stale.id) is None


def test_live_numbers_are_recorded_at_a_bounded_rate_in_the_agreed_shape(plan: Any) -> None:
    seen: list[dict[str, Any]] = []

    class Spy(MemoryStore):
        def save(self, state: Any) -> None:
            super().save(state)
            if state.live:
                seen.append(dict(state.live))

    engine, backend, _ = engine_for(plan, runner_posting(MemoryMailbox(), 0, None, ticks=10), None, [1000.0])
    engine.store = Spy(engine.state)
    engine.drive("v2", from_cli=True, one_stage=True)
    assert seen and len({s["at"] for s in seen}) == len(seen)
    assert all(b["at"] - a["at"] >= 2.0 for a, b in zip(seen, seen[1:]))
    live = seen[-1]
    assert set(live) == {"at", "driver", "stage", "stage_name", "elapsed", "duration", "split", "versions", "gates"}
    assert live["stage"] == 0 and live["stage_name"] == "ten" and live["split"] == {"weight": 0.1, "cohort": None}
    assert live["versions"]["v2"]["role"] == "canary" and live["versions"]["v1"]["role"] == "stable"
    assert live["versions"]["v2"]["rps"] == 50.0 and live["versions"]["v2"]["requests"] > 0


def test_approve_on_review_is_recorded_as_a_decision(plan: Any) -> None:
    engine, backend, store = engine_for(plan, runner_posting(MemoryMailbox(), 0, None), None, [1000.0])
    st = engine.state
    st.phase, st.canary_version, st.stage_index = Phase.AWAITING_REVIEW, "v2", 0
    from rollout.engine.state import StageRecord

    st.stages.append(StageRecord(index=0, name="ten", status=StageStatus.REVIEW, started_at=1.0, reason="p95: inconclusive"))
    engine.approve("p95 is noise from the batch job")
    rec = store.state.stages[0]  # type: ignore[union-attr]
    assert rec.status is StageStatus.ACCEPTED and rec.decided_by["who"] == "ci-driver"  # type: ignore[index]
    h = store.state.history[-1]  # type: ignore[union-attr]
    assert h.action == "approve" and h.reason == "p95 is noise from the batch job"


def test_reports_mark_a_stage_ended_by_a_person_and_list_the_decisions(plan: Any) -> None:
    from rollout.report import json_report, markdown

    box = MemoryMailbox()
    engine, backend, store = engine_for(plan, runner_posting(box, 2, request("promote")), box, [1000.0])
    out = engine.drive("v2", from_cli=True, one_stage=False)
    report = json_report.rollout_report("run", plan, engine.state, [], out, 1000.0, 1100.0, "local")
    first = report["stages"][0]
    assert first["status"] == "accepted" and first["decided_by"]["who"] == "alice"
    assert [(d["action"], d["who"], d["reason"]) for d in report["decisions"]] == [("promote", "alice", "saw something")]
    text = markdown.render(report)
    assert "accepted by alice (`promote`: saw something, not by its gates)" in text
    assert "### Decisions by people" in text and "| alice | promote | saw something |" in text

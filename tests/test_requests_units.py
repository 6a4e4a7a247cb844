"""The request mailbox and what a request means, without processes: the pure model, the local file with
concurrent writers, and the lock holder written atomically with the lock (issue #8 items 1 and 4)."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from rollout.backends.local.mailbox import LocalMailbox
from rollout.backends.local.store import LocalStore
from rollout.engine import requests as rq
from rollout.engine.driver import describe, identity, local_alive
from rollout.engine.state import Phase, State, from_dict, to_dict
from rollout.errors import LockHeld


def req(verb: str = "revert", timeout: float = 10.0, now: float = 100.0, **args: object) -> rq.Request:
    return rq.Request.new(verb, "alice", "why not", timeout, dict(args), now=now)


def test_pending_skips_answered_and_expired_requests() -> None:
    d = rq.MailboxData()
    a, b, c = req(now=100), req("pause", now=101), req("abort", timeout=1, now=90)
    for r in (a, b, c):
        d.post(r)
    d.answer(rq.Ack(a.id, rq.DONE, "ok", 102, "driver"))
    assert [r.id for r in d.pending(now=103)] == [b.id]  # a answered, c expired at 91


def test_a_claim_is_replaced_only_by_its_claimer_and_an_expiry_blocks_a_late_claim() -> None:
    d = rq.MailboxData()
    r = req()
    d.post(r)
    claim = d.answer(rq.Ack(r.id, rq.ACCEPTED, "acting", 1, "driver-1"))
    assert d.answer(rq.Ack(r.id, rq.SELF, "mine", 2, "requester")) == claim  # the requester cannot take it over
    assert d.answer(rq.Ack(r.id, rq.DONE, "reverted", 3, "driver-1")).outcome == rq.DONE
    assert d.ack_of(r.id).message == "reverted"  # type: ignore[union-attr]
    late = req()
    d.post(late)
    d.answer(rq.Ack(late.id, rq.EXPIRED, "gave up", 4, "requester"))
    assert d.answer(rq.Ack(late.id, rq.ACCEPTED, "acting", 5, "driver-1")).outcome == rq.EXPIRED  # never acted on


def test_mailbox_keeps_a_bounded_number_of_entries_and_round_trips() -> None:
    d = rq.MailboxData()
    for i in range(rq.MAX_KEPT + 10):
        d.post(req(now=float(i)))
    assert len(d.requests) == rq.MAX_KEPT
    again = rq.MailboxData.from_dict(json.loads(json.dumps(d.to_dict())))
    assert again.requests == d.requests


@pytest.mark.parametrize("verb,running,kind", [
    ("revert", True, rq.STOP_LOAD), ("abort", True, rq.STOP_LOAD), ("pause", True, rq.STOP_LOAD), ("promote", True, rq.STOP_LOAD),
    ("revert", False, rq.ACT), ("promote", False, rq.ACT),
    ("approve", True, rq.REFUSE), ("reject", True, rq.REFUSE), ("resume", True, rq.REFUSE), ("retry", False, rq.REFUSE),
])
def test_what_a_request_means_to_a_driver(verb: str, running: bool, kind: str) -> None:
    state = State(plan="p", stable_version="v1", phase=Phase.PROGRESSING, canary_version="v2")
    got, why = rq.meaning(req(verb), state, running)
    assert got == kind
    assert (why != "") == (kind == rq.REFUSE)


def test_pause_kinds_are_told_apart() -> None:
    s = State(plan="p", stable_version="v1", phase=Phase.PAUSED)
    assert rq.pause_kind(s) == "approval"
    s.pause = {"who": "alice", "reason": "", "at": 1.0, "stage": 0}
    assert rq.pause_kind(s) == "operator"
    s.phase = Phase.PROGRESSING
    assert rq.pause_kind(s) is None


def test_state_round_trips_the_new_fields_and_old_states_still_load() -> None:
    s = State(plan="p", stable_version="v1", driver=identity("run", "ci"), pause={"who": "a"}, live={"at": 1.0, "stage": 0})
    assert from_dict(json.loads(json.dumps(to_dict(s)))) == s
    old = to_dict(State(plan="p", stable_version="v1"))
    for k in ("driver", "pause", "live"):
        del old[k]
    assert from_dict(old).driver is None


def _post_many(path: str, n: int) -> None:
    box = LocalMailbox(Path(path))
    for _ in range(n):
        rq.post(box, rq.Request.new("pause", f"pid{os.getpid()}", "", 60))


def test_concurrent_writers_lose_no_request(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_post_many, args=(str(tmp_path), 10)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert len(LocalMailbox(tmp_path).read().requests) == 30


def test_the_lock_names_its_holder_by_pid_start_time_host_and_command(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with store.lock("run"):
        info = store.holder()
        assert info is not None and info["pid"] == os.getpid() and info["command"] == "run" and local_alive(info)
        with pytest.raises(LockHeld) as exc:
            with store.lock("revert"):
                pass
        assert f"`rollout run` (pid {os.getpid()} on" in exc.value.what and "unknown" not in exc.value.what
    assert store.holder() is None  # released: nobody named


def test_a_recycled_pid_is_not_the_driver() -> None:
    me = identity("run", "ci")
    assert local_alive(me) is True
    assert local_alive({**me, "start_ticks": me["start_ticks"] + 1}) is False
    assert local_alive({**me, "host": "elsewhere"}) is None
    assert describe(me).startswith("`rollout run` (pid ")


def test_no_answer_in_time_says_so_withdraws_the_request_and_changes_nothing(tmp_path: Path, base_plan: dict) -> None:
    from tests.conftest import run_cli, write_plan

    plan = write_plan(tmp_path, base_plan)
    state_dir = tmp_path / "state"
    store = LocalStore(state_dir / "svc")
    with store.lock("run"):  # a "driver" that never reads its mailbox (stuck)
        r = run_cli("pause", str(plan), "--reason", "look", "--timeout", "1", env={"ROLLOUT_STATE_DIR": str(state_dir), "ROLLOUT_ACTOR": "bob"})
    assert r.returncode == 3, r.stdout + r.stderr
    assert "asked it to pause" in r.stderr and "no acknowledgement within 1s" in r.stderr and "--force" in r.stderr
    assert "Traceback" not in r.stderr
    box = store.mailbox().read()
    (req,) = box.requests
    assert req.verb == "pause" and req.who == "bob" and req.reason == "look"
    assert box.ack_of(req.id).outcome == rq.EXPIRED  # type: ignore[union-attr]  # withdrawn: no later driver acts on it
    assert store.load() is None  # nothing changed

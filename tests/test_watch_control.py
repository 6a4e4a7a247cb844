"""Pause, resume and stop of a watch without a running watch: requests addressed to the watch or the driver,
what each verb does to the record, whether a watch is live, the requester acting on the record when no watch
runs, and the CLI's routing and refusals (the running case is tests/test_watch_ops_e2e.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from rollout.backends.local.mailbox import LocalMailbox
from rollout.engine import requests as rq
from rollout.watch import control
from rollout.watch.record import LocalWatchRecord
from tests.conftest import run_cli


def test_driver_and_watch_each_see_only_the_requests_addressed_to_them() -> None:
    d = rq.MailboxData()
    to_driver = rq.Request.new("revert", "watch", "breach", 10, {"to_revision": 3}, now=100)
    to_watch = rq.Request.new("pause", "alice", "", 10, now=100, to=rq.WATCH)
    d.post(to_driver)
    d.post(to_watch)
    assert [r.id for r in d.pending(101)] == [to_driver.id]
    assert [r.id for r in d.pending(101, rq.WATCH)] == [to_watch.id]
    # a mailbox written before requests had an addressee: all of it is the driver's
    old = {"requests": [{k: v for k, v in json.loads(json.dumps(d.to_dict()))["requests"][0].items() if k != "to"}], "acks": []}
    assert rq.MailboxData.from_dict(old).pending(101)[0].to == rq.DRIVER
    assert to_driver.describe() == "`rollout revert --to-revision 3` by watch (breach)"
    assert to_watch.describe() == "`rollout pause --watch` by alice"
    assert rq.Request.new("stop", "bob", "done", 5, to=rq.WATCH).describe() == "`rollout watch --stop` by bob (done)"


def test_pause_resume_stop_change_the_record_and_refuse_what_makes_no_sense() -> None:
    saved: dict[str, object] = {"version": "v2"}
    pause = rq.Request.new("pause", "alice", "incident 42", 10, now=1000.0, to=rq.WATCH)
    assert control.apply(saved, pause, 1000.5)[0] == rq.DONE
    assert saved["paused"] == {"by": "alice", "at": 1000.5, "reason": "incident 42"}
    assert control.describe(saved) == "watch paused by alice at 1970-01-01 00:16:40 UTC (incident 42)"
    outcome, why = control.apply(saved, rq.Request.new("pause", "bob", "", 10, to=rq.WATCH), 1001)
    assert outcome == rq.REFUSED and "already watch paused by alice" in why and saved["paused"]["by"] == "alice"  # type: ignore[index]
    assert control.apply(saved, rq.Request.new("resume", "bob", "", 10, to=rq.WATCH), 1002)[0] == rq.DONE
    assert saved["paused"] is None and control.describe(saved) is None
    assert control.apply(saved, rq.Request.new("resume", "bob", "", 10, to=rq.WATCH), 1003) == (rq.REFUSED, "the watch is not paused")
    assert control.apply(saved, rq.Request.new("stop", "carol", "night", 10, to=rq.WATCH), 1004)[0] == rq.DONE
    assert saved["stopped"] == {"by": "carol", "at": 1004, "reason": "night"}
    assert control.apply(saved, rq.Request.new("revert", "x", "", 10, to=rq.WATCH), 1005)[0] == rq.REFUSED


def test_a_watch_is_live_while_its_process_runs_and_checks_recently() -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "beat": 1000.0, "ended": None}
    assert control.watcher_alive({"watcher": me}, every=1, now=1010)
    assert not control.watcher_alive({"watcher": me}, every=1, now=1031)  # no check for > 30 s
    assert control.watcher_alive({"watcher": me}, every=60, now=1150)  # 3 checks of 60 s
    assert not control.watcher_alive({"watcher": {**me, "ended": 1005.0}}, every=1, now=1006)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not control.watcher_alive({"watcher": {**me, "pid": gone.pid}}, every=1, now=1001)
    assert control.watcher_alive({"watcher": {**me, "pid": 1, "host": "another-machine"}}, every=1, now=1001)  # no pid to test there
    assert not control.watcher_alive(None, every=1) and not control.watcher_alive({}, every=1)


def test_with_no_watch_running_pause_and_resume_are_recorded_for_the_next_and_stop_is_refused(tmp_path: Path) -> None:
    box, record = LocalMailbox(tmp_path), LocalWatchRecord(tmp_path)
    _, ack = control.ask(box, record, 1.0, "pause", "alice", "", 5)
    assert ack.outcome == rq.REFUSED and "no watch record" in ack.message  # nothing watched yet
    record.save({"version": "v2", "watcher": {"pid": os.getpid(), "host": socket.gethostname(), "beat": time.time(), "ended": time.time()}})
    _, ack = control.ask(box, record, 1.0, "pause", "alice", "maintenance", 5)
    assert ack.outcome == rq.DONE and "recorded for the next one" in ack.message
    assert record.load()["paused"]["reason"] == "maintenance"  # type: ignore[index]
    assert box.read().requests == []  # nobody to ask: nothing posted
    _, ack = control.ask(box, record, 1.0, "stop", "alice", "", 5)
    assert ack.outcome == rq.REFUSED and "nothing to stop" in ack.message
    _, ack = control.ask(box, record, 1.0, "resume", "bob", "", 5)
    assert ack.outcome == rq.DONE and record.load()["paused"] is None  # type: ignore[index]


def test_a_live_watch_that_does_not_answer_in_time_gets_its_request_withdrawn(tmp_path: Path) -> None:
    import pytest

    from rollout.errors import StateError

    box, record = LocalMailbox(tmp_path), LocalWatchRecord(tmp_path)
    record.save({"version": "v2", "watcher": {"pid": os.getpid(), "host": socket.gethostname(), "beat": time.time(), "ended": None}})
    with pytest.raises(StateError, match="no acknowledgement within 0.5s"):
        control.ask(box, record, 1.0, "pause", "alice", "", 0.5)
    (req,) = box.read().requests
    assert req.to == rq.WATCH and box.read().ack_of(req.id).outcome == rq.EXPIRED  # type: ignore[union-attr]
    assert "paused" not in (record.load() or {})  # nothing changed


def _plan(tmp: Path, watch: bool) -> Path:
    plan = {"name": "w", "owner": {"name": "T", "contact": "t@example.com"},
            "target": {"backend": "local", "stable": "v1", "versions": {"v1": {"command": "{python} -c pass --port {port}"}}},
            "load": {"locustfile": "x.py", "users": 1},
            "gates": {"errors": {"metric": "error_rate", "max": "5%"}},
            "stages": [{"name": "all", "weight": 100, "duration": "1s"}]}
    if watch:
        plan["watch"] = {"gates": {"errors": {"max": "1%", "prometheus": {"url": "http://127.0.0.1:9", "bad": "a", "total": "b"}}}}
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_the_cli_refuses_watch_verbs_without_a_watch_and_routes_to_the_rollout_otherwise(tmp_path: Path) -> None:
    env = {"ROLLOUT_STATE_DIR": str(tmp_path / "state"), "ROLLOUT_ACTOR": "pytest"}
    (tmp_path / "x.py").write_text("")
    bare = _plan(tmp_path, watch=False)
    r = run_cli("pause", str(bare), "--watch", env=env)
    assert r.returncode == 2 and "no `watch:` section" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("watch", str(bare), "--stop", env=env)
    assert r.returncode == 2 and "no `watch:` section" in r.stderr, r.stderr
    watched = _plan(tmp_path, watch=True)
    r = run_cli("watch", str(watched), "--reason", "x", env=env)
    assert r.returncode == 2 and "--reason goes with --stop" in r.stderr, r.stderr
    r = run_cli("watch", str(watched), "--stop", "--for", "1s", env=env)
    assert r.returncode == 2, r.stderr
    r = run_cli("watch", str(watched), "--stop", env=env)
    assert r.returncode == 2 and "nothing to stop" in r.stderr, r.stderr
    # no watch ever ran and no rollout: `rollout pause` is the rollout's, refused as before
    r = run_cli("pause", str(watched), env=env)
    assert r.returncode == 2 and "watch" not in r.stderr.split("—")[0], r.stderr

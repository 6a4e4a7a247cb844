"""Operating a running `rollout watch` like a rollout, with real processes (local backend, real Prometheus,
real Alertmanager; see tests/test_watch_e2e.py for the pieces):

- `rollout pause PLAN` reaches the watch through the mailbox and is acknowledged at once; a paused watch
  keeps judging and alerting but never reverts; `rollout resume` lets it revert; `rollout watch PLAN --stop`
  ends it with exit 0, recording who, when and why; `rollout status` says all of it.
- A breach while `rollout run` of the next version holds the rollout's lock: the watch asks that driver to
  revert (mailbox), the driver does within about a second and acknowledges; when the driver is gone
  (SIGKILL) before answering, the watch takes the freed lock and reverts itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_alertmanager import _active, alertmanager  # noqa: F401  (fixture)
from tests.test_watch_e2e import Env, Traffic, env, promote_v2, wait_until  # noqa: F401  (env: fixture)

pytestmark = pytest.mark.slow


def _record(e: Env) -> dict[str, Any]:
    path = e.state / "watched" / "watch.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:  # replaced while read: try again next time
        return {}


def _state(e: Env) -> dict[str, Any]:
    """state.json as the local store wrote it (atomic replace), read directly: polling through `rollout status`
    costs an interpreter start (~1 s) a look."""
    try:
        return json.loads((e.state / "watched" / "state.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def _mailbox(e: Env) -> dict[str, Any]:
    return json.loads((e.state / "watched" / "requests.json").read_text())


def _ack_delay(e: Env, verb: str, to: str) -> float:
    """Seconds from the request being posted to its final acknowledgement, as both recorded them."""
    box = _mailbox(e)
    req = [r for r in box["requests"] if r["verb"] == verb and r.get("to", "driver") == to][-1]
    ack = next(a for a in box["acks"] if a["id"] == req["id"])
    return float(ack["at"]) - float(req["at"])


def _sharper(e: Env) -> None:
    """A 20 % error rate against the 0.5 % limit breaches within a few checks (the test's time, not the point)."""
    plan = yaml.safe_load(e.plan.read_text())
    plan["watch"]["gates"].pop("low-confidence")
    e.plan.write_text(yaml.safe_dump(plan, sort_keys=False))


def test_a_watch_is_paused_resumed_and_stopped_like_a_rollout(env: Any) -> None:
    e = env("revert")
    _sharper(e)
    promote_v2(e)
    traffic = Traffic(e.entry(), seconds=90)
    watch = e.watch()
    try:
        assert wait_until(lambda: _record(e).get("checks", 0) >= 2 and _record(e)["gates"]["errors"]["detector"]["total_n"] > 0, 40)
        # no rollout in progress, a watch live: `rollout pause` goes to the watch
        r = e.cli("pause", "--reason", "investigating a customer report")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "watch paused" in r.stdout and "never reverts" in r.stdout, r.stdout
        assert "asked rollout watch" in r.stderr, r.stderr
        delay = _ack_delay(e, "pause", "watch")
        print(f"pause acknowledged by the watch {delay:.3f}s after it was posted")
        assert delay < 5.0, delay  # ~0.1 s: a wide margin for a busy machine
        shown = e.cli("status").stdout
        assert "watch paused by pytest at" in shown and "investigating a customer report" in shown, shown

        e.degrade("v2", error_rate=0.2)
        fired = wait_until(lambda: _active(env.am, "RolloutWatchBreach"), 40)
        assert fired, "a paused watch still alerts"
        assert "not reverting" in fired[0]["annotations"]["summary"], fired
        checks = _record(e)["checks"]
        assert wait_until(lambda: _record(e).get("checks", 0) >= checks + 2, 20)  # it keeps judging...
        st = _state(e)
        assert st["stable_version"] == "v2" and not [h for h in st["history"] if h["action"] == "revert"]  # ...never reverting
        assert json.loads(e.cli("status", "-o", "json").stdout)["watch"]["firing"]

        r = e.cli("resume", "--reason", "go ahead")
        assert r.returncode == 0 and "watch resumed" in r.stdout, r.stdout + r.stderr
        assert _ack_delay(e, "resume", "watch") < 5.0
        assert wait_until(lambda: _state(e).get("stable_version") == "v1", 20), "not reverted after resume"
        assert [h["who"] for h in _state(e)["history"] if h["action"] == "revert"][0].startswith("rollout watch")

        r = e.cli("watch", "--stop", "--reason", "end of the incident")
        assert r.returncode == 0 and "watch stopping" in r.stdout, r.stdout + r.stderr
        out, _ = watch.communicate(timeout=20)
    finally:
        traffic.close()
        if watch.poll() is None:
            watch.send_signal(signal.SIGTERM)
            watch.communicate(timeout=30)
    assert watch.returncode == 0, out  # stopped by an operator: 0 although it reverted
    assert "watch stopped by pytest" in out and "end of the incident" in out, out
    saved = _record(e)
    assert saved["stopped"]["by"] == "pytest" and saved["stopped"]["reason"] == "end of the incident" and saved["watcher"]["ended"]
    shown = e.cli("status").stdout
    assert "watch stopped by pytest at" in shown and "no watch running" in shown, shown
    # nothing is running any more: stop has nothing to stop (exit 2); pause is recorded for the next watch
    again = e.cli("watch", "--stop")
    assert again.returncode == 2 and "nothing to stop" in again.stderr, again.stderr
    assert e.cli("pause", "--watch").returncode == 0 and _record(e)["paused"]["by"] == "pytest"


def _with_v3(e: Env, stage_seconds: str) -> None:
    """The next version v3 and one long stage: a driver that holds the rollout's lock for a while."""
    plan = yaml.safe_load(e.plan.read_text())
    e.control["v3"] = e.tmp / "v3.control.json"
    plan["target"]["versions"]["v3"] = {"command": plan["target"]["versions"]["v2"]["command"].replace("v2", "v3")}
    plan["stages"] = [{"name": "long", "weight": 20, "duration": stage_seconds}]
    e.plan.write_text(yaml.safe_dump(plan, sort_keys=False))


def _driver(e: Env) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-m", "rollout", "run", str(e.plan), "--version", "v3"], cwd=ROOT,
                         env={**os.environ, **e.env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    e.procs.append(p)
    assert wait_until(lambda: p.poll() is None and (_state(e).get("split") or {}).get("weight") == 0.2, 40), "the stage did not start"
    return p


def test_a_breach_while_a_driver_holds_the_lock_is_reverted_by_that_driver(env: Any) -> None:
    e = env("revert")
    _sharper(e)
    promote_v2(e)
    _with_v3(e, "40s")
    driver = _driver(e)
    traffic = Traffic(e.entry(), seconds=60)
    watch = e.watch("--for", "40s")
    try:
        assert wait_until(lambda: _record(e).get("checks", 0) >= 2, 30)
        e.degrade("v2", error_rate=0.2)  # the stable version (80 % of users) degrades while v3's rollout runs
        assert wait_until(lambda: _state(e).get("stable_version") == "v1", 40), "not reverted"
        out, _ = driver.communicate(timeout=30)
    finally:
        traffic.close()
        watch.send_signal(signal.SIGTERM)
        wout, _ = watch.communicate(timeout=30)
    assert driver.returncode == 1, out  # the driver ended reverted
    assert "holds the rollout: asked it to revert" in wout and "reverted for the watch" in wout, wout
    box = _mailbox(e)
    req = next(r for r in box["requests"] if r["verb"] == "revert")
    ack = next(a for a in box["acks"] if a["id"] == req["id"] and a["outcome"] == "done")
    assert req["to"] == "driver" and req["who"].startswith("rollout watch") and req["args"]["to_revision"] >= 1
    assert ack["by"].startswith("`rollout run`") or "run" in ack["by"], ack
    claimed = [line for line in wout.splitlines() if "accepted the revert" in line]
    print(f"revert acknowledged by the driver {ack['at'] - req['at']:.3f}s after the watch asked; claimed: {claimed}")
    assert ack["at"] - req["at"] < 10.0
    st = e.state_doc()
    assert st["phase"] == "rolled-back" and st["stable_version"] == "v1" and st["canary_version"] in (None, "v3")
    rev = [h for h in st["history"] if h["action"] == "revert"]
    assert len(rev) == 1 and rev[0]["who"].startswith("rollout watch") and "error rate" in rev[0]["detail"], rev
    # users are on v1 now, nobody on the degraded v2 or on v3
    time.sleep(1.0)
    t_rev = time.time() - 0.8
    assert {v for t, v in traffic.versions if t > t_rev} <= {"v1"}


def test_a_watch_takes_over_the_revert_when_the_driver_dies_before_answering(env: Any) -> None:
    e = env("revert")
    _sharper(e)
    promote_v2(e)
    _with_v3(e, "60s")
    driver = _driver(e)
    traffic = Traffic(e.entry(), seconds=60)
    watch = e.watch("--for", "40s")
    try:
        assert wait_until(lambda: _record(e).get("checks", 0) >= 2, 30)
        os.kill(driver.pid, signal.SIGSTOP)  # holds the lock, answers nothing
        e.degrade("v2", error_rate=0.2)
        assert wait_until(lambda: any(r["verb"] == "revert" for r in _mailbox(e)["requests"])
                          if (e.state / "watched" / "requests.json").exists() else False, 40), "the watch did not ask"
        assert _state(e)["stable_version"] == "v2"
        driver.kill()  # gone before answering: its lock is free
        driver.wait(10)
        assert wait_until(lambda: _state(e).get("stable_version") == "v1", 20), "the watch did not take over"
    finally:
        traffic.close()
        if driver.poll() is None:
            driver.kill()
        watch.send_signal(signal.SIGTERM)
        wout, _ = watch.communicate(timeout=30)
    assert "the watch reverts itself" in wout, wout
    box = _mailbox(e)
    req = next(r for r in box["requests"] if r["verb"] == "revert")
    assert next(a for a in box["acks"] if a["id"] == req["id"])["outcome"] == "self"
    rev = [h for h in e.state_doc()["history"] if h["action"] == "revert"]
    assert len(rev) == 1 and rev[0]["who"].startswith("rollout watch") and "error rate" in rev[0]["detail"], rev

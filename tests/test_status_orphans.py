"""`rollout status` names the plan's orphan processes on the local backend: processes carrying the plan's
marker (ROLLOUT_MARKER, see rollout/backends/local/processes.py) that the state does not record, with pid and
command, and says that `rollout down PLAN` stops them — which it does. Real orphans: the driver SIGKILLed by a
test kill point right after spawning the canary and before recording it, and a lost state file."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.test_hardening_local import ONE_STAGE, PLAN_NAME, Env, env, killed_run, marked, state_file, wait_marked  # noqa: F401


def test_a_canary_left_by_a_killed_driver_is_named_with_pid_and_command_and_down_stops_it(env: Env) -> None:
    ro = env.rollout(ONE_STAGE, gates={})
    root = Path(ro.env["ROLLOUT_STATE_DIR"])
    r = killed_run(ro, "canary-spawned", "--version", "v2")
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stdout, r.stderr)
    running = marked(root)
    canary = [pid for pid, m in running.items() if m.endswith("/canary-v2")]
    assert len(canary) == 1, running  # spawned, never recorded: an orphan
    recorded = set(ro.pids())
    assert canary[0] not in recorded

    doc = ro.status()
    assert [(o["pid"], o["role"]) for o in doc["orphans"]] == [(canary[0], "canary-v2")], doc["orphans"]
    assert "--version v2" in doc["orphans"][0]["command"] and doc["orphans"][0]["started_at"] > 0
    text = ro("status")
    assert text.returncode == 0, text.stderr
    assert "Orphans:  1 process carries this plan's marker but is not in the state" in text.stdout, text.stdout
    assert f"pid {canary[0]}  canary-v2" in text.stdout, text.stdout
    assert f"`rollout down {PLAN_NAME}` stops them" in text.stdout, text.stdout
    # the recorded ones (router, stable) are not orphans
    assert all(f"pid {pid} " not in text.stdout.split("Orphans:")[1] for pid in recorded), text.stdout

    r = ro("down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert wait_marked(root, 0) == {}
    doc = ro.status()
    assert doc["orphans"] == []
    assert "Orphans" not in ro("status").stdout


TWO_STAGES = [{"name": "a", "weight": 20, "duration": "1s"}, {"name": "b", "weight": 50, "duration": "1s"}]


def test_processes_left_behind_a_lost_state_file_are_named_and_down_stops_them(env: Env) -> None:
    ro = env.rollout(TWO_STAGES, gates={})  # `advance` runs stage a and stops: stable, canary and router run
    root = Path(ro.env["ROLLOUT_STATE_DIR"])
    r = ro("advance", "--version", "v2")
    assert r.returncode == 0, r.stdout + r.stderr
    running = marked(root)
    assert sorted(m.rsplit("/", 1)[1] for m in running.values()) == ["canary-v2", "router", "stable-v1"], running
    state_file(ro).unlink()  # the state is lost; the processes run on

    doc = ro.status()
    assert doc["state"] is None
    assert sorted((o["pid"], o["role"]) for o in doc["orphans"]) == sorted((pid, m.rsplit("/", 1)[1]) for pid, m in running.items())
    text = ro("status").stdout
    assert "nothing recorded yet" in text and "Orphans:  3 processes" in text and f"`rollout down {PLAN_NAME}` stops them" in text, text

    r = ro("down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert wait_marked(root, 0) == {}
    assert ro.status()["orphans"] == []


def test_a_healthy_rollout_has_no_orphans(env: Env) -> None:
    ro = env.rollout(TWO_STAGES, gates={})
    assert ro("advance", "--version", "v2").returncode == 0
    doc = ro.status()
    assert doc["orphans"] == [] and len(marked(Path(ro.env["ROLLOUT_STATE_DIR"]))) == 3
    assert "Orphans" not in ro("status").stdout
    assert ro("down").returncode == 0

"""Regression tests for the local-backend findings of #12: crashes, the state file, the router's admin API.

Each test replays a finding with real processes (the sample service, the
router, the `rollout` CLI as a subprocess) and asserts the outcome. Processes
are found the way `rollout down --force` finds them: by the ROLLOUT_MARKER in
/proc/<pid>/environ, scanned here independently of the code under test.
Crash instants are hit with the test-only kill points (rollout/testing/killpoints.py:
ROLLOUT_TEST_KILL_AT makes the CLI SIGKILL itself at a named place).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import ROOT
from tests.test_local_e2e import Rollout, make_plan, service, versions_through_router
from tests.test_router import raw

PLAN_NAME = "e2e"  # make_plan's


# --------------------------------------------------------------------------- helpers


def marker_prefix(state_root: Path) -> str:
    """This plan's marker prefix for a state root (ROLLOUT_STATE_DIR): `<plan>@<sha256(dir)[:12]>/`."""
    d = (state_root / PLAN_NAME).resolve()
    return f"{PLAN_NAME}@{hashlib.sha256(str(d).encode()).hexdigest()[:12]}/"


def marked(state_root: Path) -> dict[int, str]:
    """pid -> marker of every live process carrying this plan's marker (a /proc scan)."""
    prefix = ("ROLLOUT_MARKER=" + marker_prefix(state_root)).encode()
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            continue
        for item in env.split(b"\0"):
            if item.startswith(prefix):
                out[int(entry)] = item.split(b"=", 1)[1].decode()
    return out


def wait_marked(state_root: Path, want: int, timeout: float = 15.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    found = marked(state_root)
    while len(found) != want and time.monotonic() < deadline:
        time.sleep(0.1)
        found = marked(state_root)
    return found


def kill_marked(state_root: Path) -> None:
    for pid in marked(state_root):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19])


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Env:
    """A plan plus state roots; every marked process is killed on teardown whatever happened."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.roots: list[Path] = []

    def rollout(self, stages: list[dict], root: str = "state", **kw: Any) -> Rollout:
        plan_dir = self.tmp / f"plan-{len(self.roots)}"
        plan_dir.mkdir()
        ro = Rollout(make_plan(plan_dir, stages, **kw), self.tmp / root)
        self.roots.append(self.tmp / root)
        return ro

    def cleanup(self) -> None:
        for root in self.roots:
            kill_marked(root)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.cleanup()


def killed_run(ro: Rollout, point: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollout", "run", str(ro.plan), *args], cwd=ROOT,
                          env={**os.environ, **ro.env, "ROLLOUT_TEST_KILL_AT": point}, capture_output=True, text=True, timeout=180)


def state_file(ro: Rollout) -> Path:
    return Path(ro.env["ROLLOUT_STATE_DIR"]) / PLAN_NAME / "state.json"


def entry_port(ro: Rollout) -> int:
    """The router's entry port as the state records it, read from the file (called after a command has ended):
    the same number `rollout status -o json` prints, without starting one more CLI process per check."""
    return int(json.loads(state_file(ro).read_text())["backend"]["router"]["port"])


ONE_STAGE = [{"name": "a", "weight": 20, "duration": "1s"}]


# --------------------------------------------------------------------------- processes


@pytest.mark.parametrize("recorded_marker", [True, False])
def test_revert_and_down_never_signal_a_process_the_state_wrongly_names(env: Env, recorded_marker: bool) -> None:
    ro = env.rollout(ONE_STAGE, gates={})
    assert ro("revert").returncode == 0  # stable + router up, a valid state
    root = Path(ro.env["ROLLOUT_STATE_DIR"])
    assert len(wait_marked(root, 2)) == 2
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        path = state_file(ro)
        state = json.loads(path.read_text())
        state["phase"], state["canary_version"] = "progressing", "v2"
        # the real pid and start time of an unrelated process, posing as the canary (even with a plausible marker)
        state["backend"]["canary"] = {"pid": victim.pid, "start_ticks": start_ticks(victim.pid), "port": 1, "version": "v2",
                                      "command": "x", "log": "", "marker": marker_prefix(root) + "canary-v2" if recorded_marker else ""}
        path.write_text(json.dumps(state))
        r = ro("revert")
        assert r.returncode == 0, r.stdout + r.stderr
        assert alive(victim.pid), "revert signalled a process that is not the plan's"
        assert versions_through_router(entry_port(ro), 20) == {"v1": 20}
        r = ro("down")
        assert r.returncode == 0, r.stdout + r.stderr
        assert alive(victim.pid), "down signalled a process that is not the plan's"
        assert wait_marked(root, 0) == {}
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.parametrize("point", ["canary-spawned", "router-spawned"])  # every other point: test_sigkill_sweep
def test_a_kill_while_a_process_starts_leaves_nothing_after_revert_and_down(env: Env, point: str) -> None:
    ro = env.rollout(ONE_STAGE, gates={})
    root = Path(ro.env["ROLLOUT_STATE_DIR"])
    r = killed_run(ro, point, "--version", "v2")
    assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stdout, r.stderr)
    assert marked(root), "the kill point is after a spawn: something of the plan runs"
    r = ro("revert")
    assert r.returncode == 0, r.stdout + r.stderr
    left = wait_marked(root, 2)
    assert sorted(m.rsplit("/", 1)[1] for m in left.values()) == ["router", "stable-v1"], left
    assert versions_through_router(entry_port(ro), 20) == {"v1": 20}
    assert ro("down").returncode == 0
    assert wait_marked(root, 0) == {}


@pytest.mark.parametrize("point", ["promote-swapped"])  # "20 ms into a promotion"; the others: test_sigkill_sweep
def test_a_kill_during_promotion_then_revert_leaves_one_stable_process(env: Env, point: str) -> None:
    ro = env.rollout(ONE_STAGE, gates={})
    root = Path(ro.env["ROLLOUT_STATE_DIR"])
    r = killed_run(ro, point, "--version", "v2")
    assert r.returncode == -signal.SIGKILL, (point, r.stdout, r.stderr)
    r = ro("revert")
    assert r.returncode == 0, r.stdout + r.stderr
    left = wait_marked(root, 2)
    assert len(left) == 2 and sum(m.endswith("-v1") for m in left.values()) == 1, left
    assert versions_through_router(entry_port(ro), 20) == {"v1": 20}
    assert ro("down").returncode == 0
    assert wait_marked(root, 0) == {}


def test_children_of_a_recorded_process_are_not_taken_for_strays(env: Env) -> None:
    """`ensure` stops marked processes the state does not name, but not the children a recorded one started."""
    wrapped = service("v1")["command"]
    ro = env.rollout(ONE_STAGE, gates={}, versions={"v1": {"command": f"sh -c '{wrapped} & wait'"}, "v2": service("v2")})
    root = Path(ro.env["ROLLOUT_STATE_DIR"])
    assert ro("revert").returncode == 0
    assert len(wait_marked(root, 3)) == 3  # router, sh, and the service it started
    r = ro("revert")  # ensure runs again, with the service's child marked but not recorded
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(marked(root)) == 3
    assert versions_through_router(entry_port(ro), 20) == {"v1": 20}
    assert ro("down").returncode == 0
    assert wait_marked(root, 0) == {}


def test_startup_timeout_is_one_deadline_and_the_process_is_stopped(env: Env) -> None:
    ignores_port = {"command": "{python} -c \"import time; time.sleep(300)\"", "startup_timeout": "3s"}
    ro = env.rollout(ONE_STAGE, gates={}, versions={"v1": service("v1"), "v2": ignores_port})
    root = Path(ro.env["ROLLOUT_STATE_DIR"])
    r = ro("run", "--version", "v2")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "within the startup_timeout of 3s" in r.stderr
    logs = sorted(p.name for p in (root / PLAN_NAME / "logs").glob("v2-*.log"))
    assert len(logs) == 1, f"started once, not once per retry: {logs}"
    left = marked(root)
    assert not [m for m in left.values() if m.endswith("-v2")], "the process that never became healthy is stopped"
    assert ro("down").returncode == 0
    assert wait_marked(root, 0) == {}


def test_down_force_stops_the_plans_processes_when_the_state_is_gone_or_corrupt(env: Env) -> None:
    ro = env.rollout(ONE_STAGE, gates={})
    root = Path(ro.env["ROLLOUT_STATE_DIR"])
    for damage in ("delete", "corrupt"):
        assert ro("revert").returncode == 0
        assert len(wait_marked(root, 2)) == 2
        if damage == "delete":
            state_file(ro).unlink()
        else:
            state_file(ro).write_text("[1, 2")
            r = ro("down")
            assert r.returncode == 3 and "down --force" in r.stderr, r.stderr  # the advice names the real cleanup
            assert len(marked(root)) == 2
        r = ro("down", "--force")
        assert r.returncode == 0, r.stdout + r.stderr
        assert wait_marked(root, 0) == {}, damage
        if damage == "corrupt":
            assert "moved" in r.stdout and list((root / PLAN_NAME).glob("state.json.unusable-*"))


# --------------------------------------------------------------------------- the state file


BAD_SHAPES = {
    "a list": (lambda s: [s], "(the whole file)"),
    "null": (lambda s: None, "(the whole file)"),
    "unknown key in a process record": (lambda s: {**s, "backend": {**s["backend"], "stable": {**s["backend"]["stable"], "bogus": 1}}},
                                        "backend.stable.bogus"),
    "router record missing admin_port": (lambda s: {**s, "backend": {**s["backend"], "router": {k: v for k, v in s["backend"]["router"].items() if k != "admin_port"}}},
                                         "backend.router.admin_port"),
    "phase of the wrong type": (lambda s: {**s, "phase": 3}, "phase"),
    "a stage that is a string": (lambda s: {**s, "stages": ["x"]}, "stages[0]"),
}


def test_malformed_state_shapes_are_exit_3_naming_file_and_field(env: Env) -> None:
    ro = env.rollout(ONE_STAGE, gates={})
    assert ro("revert").returncode == 0
    path = state_file(ro)
    good = json.loads(path.read_text())
    try:
        for name, (mutate, field) in BAD_SHAPES.items():
            path.write_text(json.dumps(mutate(good)))
            for verb in ("status", "revert", "down"):
                r = ro(verb)
                assert r.returncode == 3, (name, verb, r.returncode, r.stderr)
                assert str(path) in r.stderr and f"`{field}`" in r.stderr, (name, verb, r.stderr)
                assert "Traceback" not in r.stderr and "internal error" not in r.stderr
        path.write_text(json.dumps({**good, "schema": 99}))
        for verb in ("status", "revert", "down"):
            r = ro(verb)
            assert r.returncode == 3 and "written by a newer rollout" in r.stderr, (verb, r.stderr)
        assert json.loads(path.read_text())["schema"] == 99, "a newer state is never rewritten"
    finally:
        path.write_text(json.dumps(good))
        assert ro("down").returncode == 0


def test_state_files_are_owner_only(env: Env) -> None:
    ro = env.rollout(ONE_STAGE, gates={})
    assert ro("revert").returncode == 0
    d = state_file(ro).parent
    assert d.stat().st_mode & 0o777 == 0o700
    for name in ("state.json", "lock", "router.token", "router.json"):
        assert (d / name).stat().st_mode & 0o777 == 0o600, name
    assert ro("down").returncode == 0


# --------------------------------------------------------------------------- the router's admin API


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """test_router's `raw` (send, read until the server closes), and how long the answer took."""
    t0 = time.monotonic()
    out = raw(port, data, timeout)
    return out, time.monotonic() - t0


def test_admin_api_needs_the_token_and_refuses_browsers(env: Env) -> None:
    ro = env.rollout(ONE_STAGE, gates={})
    assert ro("revert").returncode == 0
    router = ro.status()["state"]["backend"]["router"]
    admin = f"http://127.0.0.1:{router['admin_port']}"
    token = (state_file(ro).parent / "router.token").read_text().strip()
    takeover = {"stable": {"version": "evil", "port": 1}, "canary": None, "weight": 0}
    with httpx.Client(base_url=admin, timeout=10, trust_env=False) as c:
        assert c.get("/config").status_code == 401
        assert c.get("/config", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.put("/config", json=takeover).status_code == 401
        assert c.post("/shutdown").status_code == 401
        # what a web page can send without a preflight: text/plain POST, with an Origin
        r = c.post("/shutdown", content=b"{}", headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
        assert r.status_code in (401, 403)
        r = c.post("/shutdown", content=b"{}", headers={"Content-Type": "text/plain", "Origin": "http://evil.example",
                                                      "Authorization": f"Bearer {token}"})
        assert r.status_code == 403
        auth = {"Authorization": f"Bearer {token}"}
        assert c.put("/config", content=json.dumps(takeover), headers={**auth, "Content-Type": "text/plain"}).status_code == 415
        # with the token: works, but never to a host that is not loopback
        cfg = c.get("/config", headers=auth)
        assert cfg.status_code == 200 and cfg.json()["stable"]["version"] == "v1"
        remote = {k: cfg.json()[k] for k in ("stable", "canary", "weight", "cohort", "version_header")}
        remote["stable"] = {**remote["stable"], "host": "192.0.2.1"}
        r = c.put("/config", json=remote, headers=auth)
        assert r.status_code == 400 and "loopback" in r.json()["error"]
        assert c.get("/healthz", headers=auth).json()["ok"] is True
    assert versions_through_router(router["port"], 20) == {"v1": 20}, "nothing above changed the routing"
    assert ro("down").returncode == 0


def test_bare_lf_requests_get_400_at_once(env: Env) -> None:
    ro = env.rollout(ONE_STAGE, gates={})
    assert ro("revert").returncode == 0
    router = ro.status()["state"]["backend"]["router"]
    for port in (router["port"], router["admin_port"]):
        for req in (b"GET / HTTP/1.1\nHost: x\n\n", b"GET / HTTP/1.1\r\nHost: x\n\n"):
            answer, took = raw_exchange(port, req, timeout=20)
            assert answer.startswith(b"HTTP/1.1 400"), (port, req, answer[:80])
            assert took < 10, f"answered after {took:.1f}s: it waited for a timeout"
    assert versions_through_router(router["port"], 10) == {"v1": 10}
    assert ro("down").returncode == 0


# --------------------------------------------------------------------------- the SIGKILL sweep


SWEEP_STAGES = [{"name": "a", "weight": 20, "duration": "2s"}, {"name": "b", "weight": 50, "duration": "2s"}]
# the kills at named points do not depend on how long a stage lasts (no point is per tick): the promotion plan's
# stages last 1 s there, so each case past a stage start waits half as long; the timed kills inside a stage keep
# the 2 s stages (their spread delays need the room), and so does the rollback plan (its gate needs 10 requests)
SWEEP_STAGES_SHORT = [{**s, "duration": "1s"} for s in SWEEP_STAGES]
SWEEP_GATES = {"errors": {"metric": "error_rate", "max": "5%", "min_requests": 10}}
# deterministic outcomes on a busy machine: the promotion plan has no gates (passed on completion),
# the rollback plan's canary fails every request
SWEEP_VERSIONS = {"v1": service("v1"), "v2": service("v2"), "v3": service("v3", errors="100%")}


def _trace(ro: Rollout, version: str, tmp: Path) -> list[str]:
    trace = tmp / f"trace-{version}.txt"
    r = subprocess.run([sys.executable, "-m", "rollout", "run", str(ro.plan), "--version", version], cwd=ROOT,
                       env={**os.environ, **ro.env, "ROLLOUT_TEST_KILL_TRACE": str(trace)}, capture_output=True, text=True, timeout=180)
    assert r.returncode == {"v2": 0, "v3": 1}[version], r.stdout + r.stderr  # promoted; rolled back
    assert ro("down").returncode == 0
    return trace.read_text().split()


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~1-2 min on a quiet 2-core machine; 7-8 min measured under load average 9
def test_sigkill_sweep(env: Env, tmp_path: Path) -> None:
    """The driver SIGKILLed at every named point of a promotion and of a rollback, and at spread
    instants inside stages; after each: status tells a half-done rollout (naming the dead driver
    where the state records it), revert puts all traffic on stable, down leaves no process."""
    plans = {"v2": env.rollout(SWEEP_STAGES_SHORT, root="trace-v2", gates={}),
             "v3": env.rollout(SWEEP_STAGES, root="trace-v3", gates=SWEEP_GATES, versions=SWEEP_VERSIONS)}
    timed_plans = {"v2": env.rollout(SWEEP_STAGES, root="timed-v2", gates={}), "v3": plans["v3"]}  # same points, 2 s stages
    promote_points = _trace(plans["v2"], "v2", tmp_path)
    rollback_points = _trace(plans["v3"], "v3", tmp_path)
    assert "promote-swapped#1" in promote_points and "rollback-routed#1" in rollback_points, (promote_points, rollback_points)
    # points before `start-saved` come before the rollout is recorded (the router and stable being brought up)
    before_start = set(promote_points[: promote_points.index("start-saved#1")])
    cases: list[tuple[str, str, float | None]] = [("v2", p, None) for p in promote_points]
    cases += [("v3", p, None) for p in rollback_points if p.startswith(("rollback", "shift", "stage-started"))]
    rng = random.Random(12)
    cases += [("v2", "stage-started#1", rng.uniform(0.2, 1.8)), ("v2", "stage-started#2", rng.uniform(0.2, 1.8)),
              ("v3", "stage-started#1", rng.uniform(0.1, 0.4))]
    assert len(cases) >= 25, cases

    t_start = time.monotonic()

    def one(i: int, version: str, point: str, delay: float | None) -> Counter[str]:
        got: Counter[str] = Counter()
        ro = Rollout((plans if delay is None else timed_plans)[version].plan, tmp_path / f"sweep-{i}")
        root = tmp_path / f"sweep-{i}"
        env.roots.append(root)
        if delay is None:
            p = subprocess.Popen([sys.executable, "-m", "rollout", "run", str(ro.plan), "--version", version], cwd=ROOT,
                                 env={**os.environ, **ro.env, "ROLLOUT_TEST_KILL_AT": point},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            assert p.wait(180) == -signal.SIGKILL, (point, p.returncode)
        else:  # a timed kill inside the stage: wait for the stage to start (traced), then a spread delay
            trace = root.parent / f"sweep-{i}.trace"
            p = subprocess.Popen([sys.executable, "-m", "rollout", "run", str(ro.plan), "--version", version], cwd=ROOT,
                                 env={**os.environ, **ro.env, "ROLLOUT_TEST_KILL_TRACE": str(trace)},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and p.poll() is None and point not in (trace.read_text().split() if trace.exists() else []):
                time.sleep(0.02)
            time.sleep(delay)
            assert p.poll() is None, f"{point}+{delay:.2f}s: the run ended before the kill"
            p.send_signal(signal.SIGKILL)
            p.wait(30)
        got["kills"] += 1
        st = ro("status", "-o", "json")
        assert st.returncode == 0, (point, st.stderr)
        state = json.loads(st.stdout)["state"]
        if point in before_start and delay is None:  # nothing of the rollout recorded yet: no state, or idle
            assert state is None or (state["phase"] == "idle" and state["transition"] is None), (point, state)
            got["status_before_start"] += 1
        else:
            half_done = state["transition"] is not None or state["phase"] in ("progressing", "paused", "awaiting-review")
            assert half_done, (point, state["phase"], state["reason"])
            got["status_half_done"] += 1
        if f'"pid": {p.pid}' in st.stdout:  # the dead driver's pid, where the state records it (a transition, a stage)
            got["status_names_pid"] += 1
        r = ro("revert")
        assert r.returncode == 0, (point, r.stdout, r.stderr)
        assert versions_through_router(entry_port(ro), 30) == {"v1": 30}, point
        left = wait_marked(root, 2)  # the router and one stable process: no canary, no second stable
        assert sorted(m.rsplit("/", 1)[1].rsplit("-", 1)[-1] for m in left.values()) == ["router", "v1"], (point, left)
        got["revert_all_stable"] += 1
        assert ro("down").returncode == 0, point
        assert wait_marked(root, 0) == {}, point
        got["down_clean"] += 1
        print(f"sweep {i + 1}/{len(cases)} done at {time.monotonic() - t_start:.0f}s: {version} {point}"
              + (f" +{delay:.2f}s" if delay else ""), flush=True)
        return got

    counts: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=2) as pool:  # cases are independent (one state dir each)
        for got in pool.map(lambda c: one(*c), [(i, *c) for i, c in enumerate(cases)]):
            counts += got
    print(f"\nSIGKILL sweep: {len(cases)} instants in {time.monotonic() - t_start:.0f}s; {dict(counts)}\npromotion points: {' '.join(promote_points)}"
          f"\nrollback points: {' '.join(rollback_points)}")
    assert counts["down_clean"] == counts["revert_all_stable"] == counts["kills"] == len(cases)

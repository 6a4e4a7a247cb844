"""`rollout status --watch` (#8 item 2): redrawn in a terminal, plain lines in a pipe, documented exit codes.

The watcher runs as a real subprocess — in a pseudo-terminal (python's `pty`)
or with its output piped — against a state file this test advances while it
watches (as a driver on another machine would through the store), and once
against a real `rollout run` on the local backend.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rollout.backends.local.store import LocalStore
from rollout.engine.state import Phase, RolloutSummary, Split, StageRecord, StageStatus, State, new_state
from tests.conftest import ROOT, run_cli, write_plan

SERVICE = ROOT / "examples" / "service.py"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COLUMNS = 100


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rollout", *args]


def _env(state_dir: Path) -> dict[str, str]:
    return {**os.environ, "ROLLOUT_STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1", "ROLLOUT_ACTOR": "pytest"}


Step = tuple[str, Callable[[], None]]


def _collect(fd: int, proc: subprocess.Popen[bytes], steps: list[Step], timeout: float) -> str:
    """Read `fd` until the child closes it; when the output first shows a step's marker, take that step (in order)."""
    out = b""
    pending = list(steps)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed its terminal
                break
            if not chunk:
                break
            out += chunk
            while pending and pending[0][0] in ANSI.sub("", out.decode("utf-8", "replace")):
                pending.pop(0)[1]()
        elif proc.poll() is not None:
            break
    else:
        proc.kill()
        pytest.fail(f"the watcher did not end within {timeout}s:\n{out.decode(errors='replace')}")
    assert not pending, f"never showed {pending[0][0]!r}:\n{out.decode(errors='replace')}"
    return out.decode("utf-8", "replace")


def in_pty(args: list[str], env: dict[str, str], steps: list[Step] = [], timeout: float = 90) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal (COLUMNS wide) as stdin/stdout/stderr; its exit code and all it wrote."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, COLUMNS, 0, 0))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, close_fds=True)
    os.close(slave)
    try:
        out = _collect(master, proc, steps, timeout)
        return proc.wait(timeout=10), out
    finally:
        os.close(master)


def in_pipe(args: list[str], env: dict[str, str], steps: list[Step] = [], timeout: float = 90) -> tuple[int, str]:
    """The same with stdout and stderr a pipe."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    assert proc.stdout is not None
    try:
        out = _collect(proc.stdout.fileno(), proc, steps, timeout)
        return proc.wait(timeout=10), out
    finally:
        proc.stdout.close()


# -- a driver simulated through the store ------------------------------------------------


def _plan(tmp_path: Path, base_plan: dict[str, Any]) -> Path:
    base_plan["stages"] = [{"name": "ten", "weight": 10, "duration": "30s"}, {"name": "half", "weight": 50, "duration": "30s"}]
    return write_plan(tmp_path, base_plan)


def running(stage: int, rps: tuple[float, float], gate_status: str = "pending") -> State:
    """Plan `svc` mid-stage `stage` (0-based), with the driver's live numbers (their `at` is set when written)."""
    now = time.time()
    st = new_state("svc", "v1", now=now - 60)
    weight = (0.1, 0.5)[stage]
    st.phase, st.canary_version, st.rollout_number, st.started_at = Phase.PROGRESSING, "v2", 1, now - 30
    st.stage_index, st.split = stage, Split(weight)
    st.stages = [StageRecord(index=i, name=("ten", "half")[i], status=StageStatus.PASSED if i < stage else StageStatus.RUNNING,
                             started_at=now - 5, pid=os.getpid(), split=Split((0.1, 0.5)[i])) for i in range(stage + 1)]
    st.reason = f"stage {stage + 1}/2 `{('ten', 'half')[stage]}` running"
    st.live = {"at": now, "driver": "rollout run (pid 1)", "stage": stage, "stage_name": ("ten", "half")[stage], "elapsed": 5.0,
               "duration": 30.0, "split": {"weight": weight, "cohort": None},
               "versions": {"v1": {"role": "stable", "requests": 900, "rps": rps[0], "error_rate": 0.0, "p95_ms": 12.5},
                            "v2": {"role": "canary", "requests": 100, "rps": rps[1], "error_rate": 0.02, "p95_ms": 14.0}},
               "gates": [{"gate": "errors", "status": gate_status, "message": f"canary 2% vs max 1% ({stage}00 requests)",
                          "version": "canary", "observed": 0.02, "threshold": 0.01, "requests": 100}]}
    return st


def ended(phase: Phase, reason: str) -> State:
    now = time.time()
    st = new_state("svc", "v2" if phase is Phase.PROMOTED else "v1", now=now - 60)
    st.phase, st.reason, st.rollout_number = phase, reason, 1
    if phase in (Phase.PAUSED, Phase.AWAITING_REVIEW):
        st.canary_version, st.stage_index, st.split, st.started_at = "v2", 1, Split(0.1), now - 30
    else:
        st.past.append(RolloutSummary(1, "v2", "v1", phase.value, reason, now - 30, now))
    return st


class Driver:
    """Plays the driver through the store: keeps writing the current state (`updated_at`, `live.at` fresh), as a
    running `rollout run` does at most every 2 s."""

    def __init__(self, store: LocalStore, state: State, every: float = 0.4) -> None:
        self.store, self.state, self.every = store, state, every
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._write()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _write(self) -> None:
        with self._lock:
            self.state.updated_at = time.time()
            if self.state.live is not None:
                self.state.live["at"] = time.time()
            self.store.save(self.state)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def set(self, state: State) -> Callable[[], None]:
        def go() -> None:
            self.state = state
            self._write()
        return go

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "state" / "svc")


def test_in_a_terminal_the_view_is_redrawn_in_place_until_promoted_exit_0(tmp_path: Path, base_plan: dict) -> None:
    plan = _plan(tmp_path, base_plan)
    driver = Driver(_store(tmp_path), running(0, (45.0, 5.0)))
    try:
        code, out = in_pty(_cmd("status", str(plan), "--watch"), _env(tmp_path / "state"), steps=[
            ("`ten` running", driver.set(running(1, (25.5, 24.5), "pass"))),
            ("`half` running", driver.set(ended(Phase.PROMOTED, "v2 is now stable (was v1)")))])
    finally:
        driver.stop()
    assert code == 0, out
    assert "\x1b[J" in out and re.search(r"\x1b\[\d+A", out), "a terminal gets the frame redrawn in place"
    frames = [ANSI.sub("", f) for f in out.split("\x1b[J")[1:]]
    assert len(frames) >= 3, out
    first = next(f for f in frames if "`ten` running" in f)
    assert "Stage:    1/2 `ten` running — " in first and "s left" in first and "Traffic:  10% to canary" in first
    rows = {line.split()[0]: line.split() for line in first.splitlines() if line.startswith(("v1 ", "v2 "))}
    assert rows["v1"][:3] == ["v1", "stable", "45.0"] and rows["v2"][:5] == ["v2", "canary", "5.0", "2%", "14.0"], first
    assert "pending  errors: canary 2% vs max 1%" in first
    second = next(f for f in frames if "`half` running" in f)
    assert "Stage:    2/2 `half` running" in second and "Traffic:  50% to canary" in second and "24.5" in second
    assert "pass  errors:" in second
    assert "✔ promoted: v2 is now stable (was v1) (exit 0)" in frames[-1]
    widest = max(len(line.rstrip("\r")) for f in frames for line in f.split("\n"))
    assert widest < COLUMNS, "lines are cut to the terminal's width, so a redraw never wraps"


def test_in_a_pipe_it_appends_plain_lines_and_exits_1_when_rolled_back(tmp_path: Path, base_plan: dict) -> None:
    plan = _plan(tmp_path, base_plan)
    driver = Driver(_store(tmp_path), running(0, (45.0, 5.0), "fail"))
    try:
        code, out = in_pipe(_cmd("status", str(plan), "--watch"), _env(tmp_path / "state"), steps=[
            ("`ten` running", lambda: time.sleep(2.5)),  # a few seconds of the same stage: no line every tick
            ("`ten` running", driver.set(ended(Phase.ROLLED_BACK, "stage 1/2 `ten` failed: errors")))])
    finally:
        driver.stop()
    assert code == 1, out
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    progress = [line for line in lines if "progressing | stage 1/2 `ten` running" in line]
    assert progress, out
    assert "10% to canary | v1 stable 45.0 rps err 0% p95 12.5 ms | v2 canary 5.0 rps err 2% p95 14.0 ms | gates errors fail" in progress[0]
    assert re.match(r"^\[\d\d:\d\d:\d\d\] ", progress[0])
    assert len(progress) < 6, "plain lines only when something changes (or every few seconds), not every tick"
    assert lines[-1] == "✘ rolled-back: stage 1/2 `ten` failed: errors (exit 1)"


@pytest.mark.parametrize("state, code, says", [
    (lambda: ended(Phase.PAUSED, "stage 2 `half` needs approval before it starts"), 4, "⏸ paused: stage 2 `half` needs approval"),
    (lambda: ended(Phase.AWAITING_REVIEW, "stage 1/2 `ten` is uncertain"), 4, "⏸ awaiting-review: stage 1/2 `ten` is uncertain"),
    (lambda: ended(Phase.ABORTED, "aborted by alice"), 1, "✘ aborted: aborted by alice (exit 1)"),
    (lambda: ended(Phase.PROMOTED, "v2 is now stable"), 0, "✔ promoted: v2 is now stable (exit 0)"),
    (lambda: None, 0, "✔ idle: nothing recorded yet (exit 0)"),
])
def test_final_and_waiting_phases_end_the_watch_with_their_code(tmp_path: Path, base_plan: dict,
                                                                state: Callable[[], State | None], code: int, says: str) -> None:
    plan = _plan(tmp_path, base_plan)
    st = state()
    if st is not None:
        _store(tmp_path).save(st)
    got, out = in_pipe(_cmd("status", str(plan), "--watch"), _env(tmp_path / "state"))
    assert got == code and says in out, out


def test_progressing_with_nobody_driving_is_waiting_for_a_person(tmp_path: Path, base_plan: dict) -> None:
    """After `rollout advance` (or a killed driver): nothing holds the lock, no numbers, no recent write → exit 4, said why."""
    plan = _plan(tmp_path, base_plan)
    st = running(1, (1.0, 1.0))
    st.live, st.updated_at = None, time.time() - 60
    st.stages[-1].status = StageStatus.PASSED
    st.stage_index = 1
    store = _store(tmp_path)
    store.save(st)
    code, out = in_pipe(_cmd("status", str(plan), "--watch"), _env(tmp_path / "state"))
    assert code == 4 and "no command is driving it: `rollout advance` or `rollout run` carries on (exit 4)" in out, out


def test_timeout_is_exit_5_while_a_live_driver_holds_the_lock(tmp_path: Path, base_plan: dict) -> None:
    plan = _plan(tmp_path, base_plan)
    st = running(0, (45.0, 5.0))
    st.live, st.updated_at = None, time.time() - 60  # no numbers: only the lock says someone drives it
    store = _store(tmp_path)
    store.save(st)
    started = time.monotonic()
    with store.lock("run"):  # this test is the driver: it holds the rollout's lock, as `rollout run` does
        code, out = in_pty(_cmd("status", str(plan), "--watch", "--timeout", "2s"), _env(tmp_path / "state"))
    assert code == 5, out
    assert time.monotonic() - started < 60
    text = ANSI.sub("", out)
    assert f"Driver:   `rollout run` (pid {os.getpid()})" in text and "Numbers:  none yet" in text
    assert "⌛ still progressing after 2s (--timeout); the rollout goes on (exit 5)" in text
    for bad, what in ((["--timeout", "2s"], "--timeout needs --watch"), (["--watch", "--timeout", "soon"], "is not a duration"),
                      (["--watch", "-o", "json"], "cannot write JSON")):
        r = run_cli("status", str(plan), *bad, env={"ROLLOUT_STATE_DIR": str(tmp_path / "state")})
        assert r.returncode == 2 and what in r.stderr, r.stderr


def test_help_documents_the_watch_exit_codes() -> None:
    r = run_cli("status", "--help")
    text = " ".join(r.stdout.split())
    assert "exit 0 promoted/idle, 1 rolled back/aborted, 4 waiting for a person, 5 --timeout" in text
    assert "5 `status --watch --timeout`" in " ".join(run_cli("--help").stdout.split())


# -- a real rollout on the local backend ---------------------------------------------------


def test_watching_a_real_run_in_a_terminal_until_it_is_promoted(tmp_path: Path) -> None:
    (tmp_path / "load.py").write_text("from locust import HttpUser, task, constant\n\nclass U(HttpUser):\n    wait_time = constant(0.05)\n"
                                      "    @task\n    def t(self):\n        self.client.get('/api/answer')\n")
    service = f"{{python}} {SERVICE} --port {{port}} --version {{version}} --latency 2ms --seed 1"
    plan = write_plan(tmp_path, {
        "name": "svc", "owner": {"name": "Team", "contact": "team@example.com"},
        "target": {"backend": "local", "stable": "v1", "versions": {"v1": {"command": service}, "v2": {"command": service}}},
        "load": {"locustfile": "load.py", "users": 4},
        "gates": {"errors": {"metric": "error_rate", "max": "5%", "min_requests": 20, "method": "threshold"}},
        "stages": [{"name": "ten", "weight": 10, "duration": "4s"}, {"name": "half", "weight": 50, "duration": "4s"}],
    })
    env = _env(tmp_path / "state")
    state_file = tmp_path / "state" / "svc" / "state.json"
    driver = subprocess.Popen(_cmd("run", str(plan), "--version", "v2", "-q"), env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # watch once the rollout is under way (before it, idle is exit 0)
            if state_file.exists() and json.loads(state_file.read_text()).get("phase") == "progressing":
                break
            time.sleep(0.1)
        code, out = in_pty(_cmd("status", str(plan), "--watch", "--timeout", "3m"), env, timeout=200)
        d_out, d_err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
        run_cli("down", str(plan), env={"ROLLOUT_STATE_DIR": str(tmp_path / "state")})
    assert driver.returncode == 0, d_out + d_err
    text = ANSI.sub("", out)
    assert code == 0, text
    assert "\x1b[J" in out and "Stage:    2/2 `half` running" in text and "Versions: stable v1 → canary v2" in text
    assert "✔ promoted: v2 is now stable (was v1) (exit 0)" in text
    # -q: the driver printed only its outcome, no progress or event lines
    assert d_out.strip() == "✔ promoted: v2 promoted: it serves all traffic" and "•" not in d_err and "stage" not in d_err, (d_out, d_err)


def test_on_kubernetes_the_watch_reads_the_configmap_and_the_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From another machine: the state ConfigMap and the Lease are all the watcher needs (no lock taken, nothing written)."""
    from rollout.backends.kubernetes.client import connect
    from rollout.backends.kubernetes.store import ConfigMapStore, micro_time
    from rollout.testing.apiserver import FakeApiServer
    from tests.test_k8s_backend import NS, plan_data
    from tests.test_k8s_cli import _cli

    with FakeApiServer(controller_delay=0) as fake:
        kc = fake.write_kubeconfig(namespace=NS)
        plan = write_plan(tmp_path, plan_data(tmp_path, kc, "gateway-api"))
        store = ConfigMapStore(connect(kubeconfig=kc), "answer")
        st = running(0, (45.0, 5.0))
        st.plan, st.live, st.updated_at = "answer", None, time.time() - 60
        store.save(st)
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": "rollout-answer", "namespace": NS, "annotations": {"rollout.dev/command": "run"}},
                 "spec": {"holderIdentity": "ci@runner-7 pid 42", "leaseDurationSeconds": 15, "acquireTime": micro_time(),
                          "renewTime": micro_time(), "leaseTransitions": 0}}
        fake.create(lease)
        rv = fake.get("configmaps", NS, "rollout-answer")["metadata"]["resourceVersion"]  # type: ignore[index]
        code, out, err = _cli("status", str(plan), "--watch", "--timeout", "2s")  # the Lease is held: the rollout moves
        assert code == 5, out + err
        assert "progressing | stage 1/3 `payments` running" in out and "still progressing after 2s (--timeout)" in out
        lease = fake.get("leases", NS, "rollout-answer")
        assert lease is not None
        lease["spec"]["renewTime"] = micro_time(time.time() - 60)  # its holder died: expired
        fake.apply(lease)
        code, out, err = _cli("status", str(plan), "--watch")
        assert code == 4 and "no command is driving it" in out, out + err
        assert fake.get("configmaps", NS, "rollout-answer")["metadata"]["resourceVersion"] == rv  # type: ignore[index]
        store.load()
        store.save(ended(Phase.ROLLED_BACK, "reverted by ops"))
        code, out, err = _cli("status", str(plan), "--watch")
        assert code == 1 and out.splitlines()[-1] == "✘ rolled-back: reverted by ops (exit 1)", out + err


def test_a_change_left_half_done_by_a_dead_command_is_named(tmp_path: Path, base_plan: dict) -> None:
    from rollout.engine.state import Transition

    plan = _plan(tmp_path, base_plan)
    st = ended(Phase.ROLLED_BACK, "stage 1/2 `ten` failed")
    st.transition = Transition("rollback", Split(), time.time() - 120, 999_999, "ci")
    st.updated_at = time.time() - 120
    _store(tmp_path).save(st)
    code, out = in_pipe(_cmd("status", str(plan), "--watch"), _env(tmp_path / "state"))
    assert code == 1, out
    assert out.splitlines()[-1] == ("✘ rolled-back: stage 1/2 `ten` failed — an unfinished `rollback` towards 0% to canary: "
                                    "`rollout revert` puts all traffic on stable (exit 1)")

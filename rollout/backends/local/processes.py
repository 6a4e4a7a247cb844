"""Starting, finding and stopping the local processes that outlive a command.

A recorded process is identified by pid, start time (from /proc) *and* a
marker: every process the backend starts gets ``ROLLOUT_MARKER=<plan-id>/<name>``
in its environment, and a pid is only signalled after /proc/<pid>/environ
shows the recorded marker (and /proc/<pid>/stat the recorded start time). So a
recycled pid, or a state file naming somebody else's process, never gets a
signal from us. The marker is also how `rollout down --force` finds the plan's
processes when the state is lost or unreadable: it scans /proc for it
(`find_marked`). Each process gets its own session (process group): stopping
it stops its children.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rollout.errors import BackendError

# Children started by this command, by pid: their exit status is read through
# Popen (which reaps them), so "process 1234 exited with -9" can be said. A
# process started by an earlier command is not our child: only "gone" is known.
_children: dict[int, subprocess.Popen[bytes]] = {}
_exit_codes: dict[int, int] = {}  # pid -> exit code (negative: killed by that signal), once reaped


MARKER_ENV = "ROLLOUT_MARKER"


@dataclass(frozen=True)
class ProcRecord:
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: with the pid, a unique identity
    port: int
    version: str
    command: str
    log: str
    marker: str = ""  # the ROLLOUT_MARKER value it was started with; "" (never verified) is never signalled

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> ProcRecord | None:
        return ProcRecord(**d) if d else None


def _session(pid: int) -> int:
    """The session id of a pid (0 if gone): our processes lead their own session, their children share it."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(raw[raw.rindex(")") + 2 :].split()[3])


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) of a pid, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name is in parentheses and may contain spaces: split after the last ')'
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def start_ticks(pid: int) -> int:
    st = _stat(pid)
    return st[1] if st else 0


@dataclass(frozen=True)
class RouterRecord:
    """state.backend["router"]: admin_port is null between the router's spawn and its ready file."""

    proc: ProcRecord
    port: int
    admin_port: int | None
    canary_port: int | None = None  # the router's canary-only listener, when it has one (fail-closed work)


@dataclass(frozen=True)
class LocalBackendRecord:
    """The shape of `state.backend` for the local backend (checked when the state is loaded)."""

    stable: ProcRecord | None = None
    canary: ProcRecord | None = None
    retired: ProcRecord | None = None  # the old stable during a promotion, until it is stopped
    router: RouterRecord | None = None


def marker_of(pid: int) -> str | None:
    """The ROLLOUT_MARKER in a process's environment (None: none, or not readable by us)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or another user's process: never ours
        return None
    prefix = MARKER_ENV.encode() + b"="
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode("utf-8", "replace")
    return None


def is_alive(rec: ProcRecord | None) -> bool:
    """True when the recorded process runs: same pid, same start time, same marker."""
    if rec is None or not rec.marker:
        return False
    st = _stat(rec.pid)
    if st is None or st[1] != rec.start_ticks:
        return False
    if st[0] in ("Z", "X"):
        _reap(rec.pid)
        return False
    return marker_of(rec.pid) == rec.marker


def find_marked(prefix: str) -> list[tuple[int, int, str]]:
    """(pid, start ticks, marker) of every live process whose marker starts with `prefix` (a /proc scan)."""
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        marker = marker_of(pid)
        if marker is None or not marker.startswith(prefix):
            continue
        st = _stat(pid)
        if st is None or st[0] in ("Z", "X"):
            _reap(pid)
            continue
        found.append((pid, st[1], marker))
    return found


def unrecorded(prefix: str, keep: set[int] | frozenset[int] = frozenset()) -> list[tuple[int, int, str]]:
    """(pid, start ticks, marker) of the processes marked with `prefix` outside the sessions led by the pids in
    `keep` (a recorded process and the children it started): what `stop_marked` stops, what `status` calls orphans."""
    return [(pid, ticks, marker) for pid, ticks, marker in find_marked(prefix) if pid not in keep and _session(pid) not in keep]


def stop_marked(prefix: str, keep: set[int] | frozenset[int] = frozenset(), timeout: float = 5.0) -> list[int]:
    """Stop every process marked with `prefix` except those of the sessions led by the pids in `keep`; the pids stopped."""
    stopped = []
    for pid, ticks, marker in unrecorded(prefix, keep):
        stop(ProcRecord(pid=pid, start_ticks=ticks, port=0, version="?", command="?", log="", marker=marker), timeout)
        stopped.append(pid)
    return stopped


def command_line(pid: int) -> str:
    """The process's command line as one string ("" when gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return shlex.join(part.decode("utf-8", "replace") for part in raw.rstrip(b"\0").split(b"\0")) if raw else ""


def started_at(ticks: int) -> float | None:
    """Wall-clock start time from /proc's start ticks (boot time + ticks / CLK_TCK); None when unknown."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    return None


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        code = child.poll()
        if code is not None:
            _exit_codes[pid] = code
        return
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return
    if got == pid:
        _exit_codes[pid] = os.waitstatus_to_exitcode(status)


def exit_description(rec: ProcRecord) -> str:
    """How a recorded process that is no longer alive ended, as far as this command can know.

    A child of ours can look gone (its environment, hence its marker, is released early in exit) a
    moment before it becomes a zombie that can be reaped: wait a little for its status rather than
    call it unknown."""
    child = _children.get(rec.pid)
    if child is not None and rec.pid not in _exit_codes:
        try:
            _exit_codes[rec.pid] = child.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass
    _reap(rec.pid)
    code = _exit_codes.get(rec.pid)
    if code is None:
        return f"process {rec.pid} is gone (exit status unknown: it was started by an earlier command)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"process {rec.pid} exited with {code} (killed by {name})"
    return f"process {rec.pid} exited with {code}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(argv: list[str], cwd: Path, log: Path, env: dict[str, str], marker: str) -> subprocess.Popen[bytes]:
    """Start a process marked with `marker` (ROLLOUT_MARKER in its environment). The caller records it
    (`record`) and saves the state *before* waiting on it, so a command killed at any instant leaves
    nothing that `revert` and `down` cannot find."""
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with open(fd, "ab") as out:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env, MARKER_ENV: marker},
                start_new_session=True,  # survives the command and its Ctrl-C; one group to stop
                close_fds=True,
            )
        except OSError as exc:
            raise BackendError(f"cannot start `{shlex.join(argv)}`: {exc}", "check the command in the plan") from None
    _children[proc.pid] = proc
    return proc


def record(proc: subprocess.Popen[bytes], port: int, version: str, command: str, log: Path, marker: str) -> ProcRecord:
    return ProcRecord(pid=proc.pid, start_ticks=start_ticks(proc.pid), port=port, version=version, command=command,
                      log=str(log), marker=marker)


def command_argv(command: str, port: int, version: str) -> list[str]:
    text = command.replace("{port}", str(port)).replace("{version}", version).replace("{python}", sys.executable)
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise BackendError(f"cannot parse the command of version {version}: {exc}", "fix target.versions.*.command") from None


def stop(rec: ProcRecord | None, timeout: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL after `timeout`. Safe on a dead or recycled pid, and on a
    record naming somebody else's process: nothing is signalled unless pid, start time and marker match."""
    if rec is None or not is_alive(rec):
        return
    try:
        if os.getpgid(rec.pid) == rec.pid:  # our processes lead their own group (start_new_session)
            os.killpg(rec.pid, signal.SIGTERM)
        else:
            os.kill(rec.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(rec.pid)
        if not is_alive(rec):
            return
        time.sleep(0.05)
    if not is_alive(rec):
        return
    try:
        if os.getpgid(rec.pid) == rec.pid:
            os.killpg(rec.pid, signal.SIGKILL)
        else:
            os.kill(rec.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for _ in range(40):
        _reap(rec.pid)
        if not is_alive(rec):
            return
        time.sleep(0.05)


def tail(path: str, lines: int = 5) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

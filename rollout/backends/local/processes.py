"""Starting, finding and stopping the local processes that outlive a command.

A recorded process is identified by pid *and* start time (from /proc), so a
recycled pid is never mistaken for our version or signalled by mistake. Each
process gets its own session (process group): stopping it stops its children.
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


@dataclass(frozen=True)
class ProcRecord:
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: with the pid, a unique identity
    port: int
    version: str
    command: str
    log: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> ProcRecord | None:
        return ProcRecord(**d) if d else None


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


def is_alive(rec: ProcRecord | None) -> bool:
    if rec is None:
        return False
    st = _stat(rec.pid)
    if st is None or st[1] != rec.start_ticks:
        return False
    if st[0] in ("Z", "X"):
        _reap(rec.pid)
        return False
    return True


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
    """How a recorded process that is no longer alive ended, as far as this command can know."""
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


def spawn(argv: list[str], cwd: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,  # survives the command and its Ctrl-C; one group to stop
                close_fds=True,
            )
        except OSError as exc:
            raise BackendError(f"cannot start `{shlex.join(argv)}`: {exc}", "check the command in the plan") from None
    _children[proc.pid] = proc
    return proc


def command_argv(command: str, port: int, version: str) -> list[str]:
    text = command.replace("{port}", str(port)).replace("{version}", version).replace("{python}", sys.executable)
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise BackendError(f"cannot parse the command of version {version}: {exc}", "fix target.versions.*.command") from None


def stop(rec: ProcRecord | None, timeout: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL after `timeout`. Safe on a dead or recycled pid."""
    if rec is None or not is_alive(rec):
        return
    try:
        os.killpg(rec.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(rec.pid)
        if not is_alive(rec):
            return
        time.sleep(0.05)
    try:
        os.killpg(rec.pid, signal.SIGKILL)
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

"""Who drives a rollout, and whether that process still lives.

A driver (`rollout run`/`advance`/`resume`/`retry`) records its identity in the state when it
takes over: pid *and* the process start time (so a recycled pid is never taken for it), host,
command and since when. `status` then tells a driver that is gone from one that runs, and names
it: "`rollout run` (pid N on HOST) stopped at 06:02 without finishing stage 2". A pid can only be
checked on its own host; for a driver on another machine the lock (the Lease) says whether it lives.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any


def start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), 0 when unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    rest = raw[raw.rindex(")") + 2:].split()
    return 0 if rest[0] in ("Z", "X") else int(rest[19])


def identity(command: str, who: str, now: float | None = None) -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "start_ticks": start_ticks(pid), "host": socket.gethostname(), "command": command,
            "since": time.time() if now is None else now, "who": who}


def local_alive(info: dict[str, Any] | None) -> bool | None:
    """True/False for a process of this host; None when it ran elsewhere (a pid says nothing here)."""
    if not info:
        return False
    if info.get("host") != socket.gethostname():
        return None
    pid = int(info.get("pid") or 0)
    ticks = start_ticks(pid) if pid else 0
    return bool(ticks) and (not info.get("start_ticks") or ticks == int(info["start_ticks"]))


def describe(info: dict[str, Any]) -> str:
    return f"`rollout {info.get('command', '?')}` (pid {info.get('pid', '?')} on {info.get('host', '?')})"

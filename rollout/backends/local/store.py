"""The local state store: one JSON file per plan, written atomically, and a file lock.

Atomic write (temp file, fsync, rename) means a process killed while saving
leaves either the old state or the new one, never half of each. The lock is
an fcntl lock on a file beside it: the kernel releases it when its holder
dies, so a killed command never leaves a stale lock behind; a second command
is told who holds it and since when.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rollout.engine.state import State, from_dict, to_dict
from rollout.errors import LockHeld, StateError


class LocalStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "state.json"
        self._lock_path = directory / "lock"

    def location(self) -> str:
        return str(self.path)

    def load(self) -> State | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the rollout state {self.path}: {exc}", "check the file's permissions") from None
        try:
            return from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(
                f"the rollout state {self.path} is unreadable ({type(exc).__name__}: {exc})",
                "restore it from a backup, or move it aside and run `rollout down` to stop what it recorded",
            ) from None

    def save(self, state: State) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp.{os.getpid()}")
        data = json.dumps(to_dict(state), indent=1, sort_keys=True)
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StateError(f"cannot write the rollout state {self.path}: {exc}", "check free disk space and permissions") from None

    @contextmanager
    def lock(self, command: str, force: bool = False) -> Iterator[None]:
        """Held while a command acts. `force` is accepted for symmetry with cluster
        backends; a local lock cannot go stale (the kernel frees it with its holder)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder()
                raise LockHeld(
                    f"another command is acting on this rollout: {holder}",
                    "wait for it to finish (`rollout status` shows progress), or stop that process first",
                ) from None
            info = {"pid": os.getpid(), "command": command, "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _holder(self) -> str:
        try:
            info = json.loads(self._lock_path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info:
            return "unknown holder"
        since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
        return f"`rollout {info.get('command', '?')}` (pid {info.get('pid', '?')}, since {since})"

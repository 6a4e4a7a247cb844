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
from typing import Any

from rollout.backends.local.mailbox import LocalMailbox
from rollout.engine.driver import describe, identity, local_alive
from rollout.engine.state import State, actor, from_dict, to_dict
from rollout.errors import LockHeld, StateError


class LocalStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "state.json"
        self._lock_path = directory / "lock"
        self._holder_path = directory / "lock.holder"

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

    def mailbox(self) -> LocalMailbox:
        return LocalMailbox(self.dir)

    @contextmanager
    def lock(self, command: str, force: bool = False) -> Iterator[None]:
        """Held while a command acts. `force` is accepted for symmetry with cluster
        backends; a local lock cannot go stale (the kernel frees it with its holder).

        The holder's identity (pid, process start time, host, command, since) is written to
        `lock.holder` with temp file + rename right after the lock is taken; a command refused
        the lock re-reads it for a moment when it names no living process, so it never
        reports an "unknown holder" in the instant between the two."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self.holder(wait=1.0)
                raise LockHeld(
                    f"another command is acting on this rollout: {self._describe(holder)}",
                    "wait for it to finish (`rollout status` shows progress), or stop that process first",
                ) from None
            info = identity(command, actor())
            tmp = self._holder_path.with_suffix(f".tmp.{os.getpid()}")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, self._holder_path)
            try:
                yield
            finally:
                self._holder_path.unlink(missing_ok=True)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holder(self, wait: float = 0.0) -> dict[str, Any] | None:
        """The recorded holder of the lock if that process lives, else None (waiting up to `wait`
        seconds for a holder that has just taken the lock to write its name)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                info = json.loads(self._holder_path.read_text() or "{}")
            except (OSError, ValueError):
                info = {}
            if info and local_alive(info) is not False:
                return dict(info)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    @staticmethod
    def _describe(info: dict[str, Any] | None) -> str:
        if not info:
            return "a command that is just starting or ending"
        since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
        return f"{describe(info)}, by {info.get('who', '?')}, since {since}"

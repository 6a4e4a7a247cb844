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

from rollout.backends.local.processes import LocalBackendRecord
from rollout.engine.state import State, StateShapeError, check_shape, check_state_shape, from_dict, to_dict
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
            data = json.loads(text)
            check_state_shape(data)  # a newer schema, then every field, before anything reads it
            check_shape(data.get("backend", {}), LocalBackendRecord, "backend")
            return from_dict(data)
        except StateShapeError as exc:
            if exc.field == "schema" and "newer" in exc.message:
                raise StateError(f"the rollout state {self.path} was {exc.message.split(':')[0]}",
                                 "upgrade rollout to read it (this rollout does not change it)") from None
            raise StateError(
                f"the rollout state {self.path} is malformed: field `{exc.field or '(the whole file)'}`: {exc.message}",
                "restore it from a backup; or run `rollout down --force PLAN` (PLAN: the plan file of"
                f" `{self.dir.name}`): it stops every process of the plan, found by its marker, and moves the file aside",
            ) from None
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise StateError(
                f"the rollout state {self.path} is unreadable ({type(exc).__name__}: {exc})",
                "restore it from a backup; or run `rollout down --force PLAN` (PLAN: the plan file of"
                f" `{self.dir.name}`): it stops every process of the plan, found by its marker, and moves the file aside",
            ) from None

    def _mkdir(self) -> None:
        """The state directory, owner-only (it holds the router's admin token and the processes' records)."""
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.dir.stat().st_mode & 0o077:
                os.chmod(self.dir, 0o700)
        except OSError as exc:
            raise StateError(f"cannot use the state directory {self.dir}: {exc}", "check the path (--state-dir) and its permissions") from None

    def move_aside(self) -> Path | None:
        """Rename an unusable state file out of the way (kept for a post-mortem); its new path."""
        if not self.path.exists():
            return None
        aside = self.path.with_name(f"state.json.unusable-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        os.replace(self.path, aside)
        return aside

    def save(self, state: State) -> None:
        self._mkdir()
        tmp = self.path.with_suffix(f".tmp.{os.getpid()}")
        data = json.dumps(to_dict(state), indent=1, sort_keys=True)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "w", encoding="utf-8") as f:
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
        self._mkdir()
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
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

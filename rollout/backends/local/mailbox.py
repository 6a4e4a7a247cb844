"""The local mailbox: `requests.json` beside state.json (see rollout.engine.requests for why apart).

Writers (the requester posting, the driver acknowledging) take a small flock of their own
(`requests.lock`, never the rollout's lock, which the driver holds) for the read-modify-write,
and write with temp file + rename, so a reader sees the old mailbox or the new one, never half.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollout.engine.requests import MailboxData
from rollout.errors import StateError


class LocalMailbox:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "requests.json"
        self._lock = directory / "requests.lock"

    def location(self) -> str:
        return str(self.path)

    def version(self) -> int:
        """A cheap "has anything been posted?" (the file's mtime in ns; 0 when absent): the driver checks it every
        0.1 s during a stage's load and reads the mailbox only when it changed, so a request waits ~0.1 s, not a tick."""
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError:
            return 0

    def read(self) -> MailboxData:
        try:
            return MailboxData.from_dict(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return MailboxData()
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise StateError(f"the request mailbox {self.path} is unreadable ({type(exc).__name__}: {exc})",
                             "move it aside; the rollout's state is not affected") from None

    def update(self, change: Callable[[MailboxData], Any]) -> Any:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for a read and a small write only
            data = self.read()
            result = change(data)
            tmp = self.path.with_suffix(f".tmp.{os.getpid()}")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(data.to_dict(), indent=1))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            return result
        except OSError as exc:
            raise StateError(f"cannot write the request mailbox {self.path}: {exc}", "check free disk space and permissions") from None
        finally:
            os.close(fd)

"""A gate's verdict: the decision and the numbers behind it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    PENDING = "pending"  # not decided yet (still collecting or within limits so far)
    INCONCLUSIVE = "inconclusive"  # the stage ended without enough evidence


@dataclass(frozen=True)
class Verdict:
    gate: str
    status: Status
    message: str  # e.g. "canary p95 812 ms > 500 ms (4,210 requests)"
    version: str
    observed: float | None = None
    threshold: float | None = None
    requests: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d

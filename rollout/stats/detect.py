"""Change detection for a live version: has its rate risen above the limit, and since when?

A rollout's gates run for minutes and may spend a fixed false-rollback budget
(alpha). A watch runs for months: any fixed-alpha test checked forever fires
eventually, so what must be bounded is the *rate* of false alarms per unit of
time (the average run length to a false alarm, ARL). That is what CUSUM gives
(Page 1954): for a rate moving from p0 to p1, per batch of n requests with x
"bad" ones (failed, slower than the latency limit, answer below a confidence
threshold),

    S ← max(0, S + x·log(p1/p0) + (n−x)·log((1−p1)/(1−p0))),   alarm when S ≥ h.

Each batch's likelihood ratio has expectation ≤ 1 for every true rate p ≤ p0,
so Lorden's bound (1971) holds for the whole pre-change class "p ≤ limit": the
ARL to a false alarm is at least e^h checks. The post-change rate is unknown,
so several CUSUMs run side by side, one per alternative p1 = m·p0
(`multipliers`), each with threshold h + ln(k): their false alarms add up to
at most the budget of one (a union bound), and the alternative closest to the
true rate detects first. The detection delay is about h / KL(p ‖ p1) requests.

`threshold(false_alarms, horizon, every, k)` turns the owner's wish ("at most
one false alarm per 30 days, checked every second") into h. The state is a
few numbers per alternative (constant memory however long the watch runs) and
round-trips through `to_dict`/`from_dict`, so a watch killed and restarted goes
on from its recorded statistic.

After an alarm the statistic is kept, not reset: the alarm resolves when every
CUSUM is back at 0, i.e. when normal data has erased the evidence of the rise
(used by `on_breach: alert`). Each statistic is capped at twice its threshold:
the alarm fires below the cap, so the cap changes nothing before it, but a long
or severe breach cannot pile up evidence that would take hours of normal
traffic to erase once the rate is back (recovery needs at most 2h / drift). After a revert the caller starts a new detector
for the reverted version: its evidence starts from scratch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

DEFAULT_MULTIPLIERS: tuple[float, ...] = (1.5, 2.0, 4.0)
MAX_P1 = 0.999


def threshold(false_alarms: float, horizon_s: float, every_s: float, k: int = len(DEFAULT_MULTIPLIERS)) -> float:
    """The CUSUM threshold h for at most `false_alarms` false alarms per `horizon_s` seconds
    (by Lorden's bound) when the detector is checked every `every_s` seconds with k alternatives."""
    if not (false_alarms > 0 and horizon_s > 0 and every_s > 0 and k >= 1):
        raise ValueError("false_alarms, horizon and every must be > 0 and k >= 1")
    checks = max(horizon_s / every_s, 1.0)
    return math.log(k * checks / false_alarms)


class Change(StrEnum):
    NONE = "none"  # nothing new: normal, or still firing
    ALARM = "alarm"  # the rate credibly rose above the limit: fire
    RESOLVED = "resolved"  # after an alarm, the evidence is gone: resolve


@dataclass
class Window:
    """The evidence behind one CUSUM: the requests since its statistic was last 0."""

    n: int = 0
    x: int = 0
    since: float | None = None

    @property
    def rate(self) -> float:
        return self.x / self.n if self.n else 0.0


@dataclass
class RateCusum:
    """Watches one rate against a limit (see the module docstring)."""

    limit: float
    h: float
    multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS
    s: list[float] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    firing: bool = False
    fired_at: float | None = None
    total_n: int = 0
    total_x: int = 0
    last_at: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.limit < 1.0:
            raise ValueError(f"the limit of a watched rate must be within (0, 1), not {self.limit!r}")
        if not self.multipliers or any(m <= 1.0 for m in self.multipliers):
            raise ValueError("every alternative multiplier must be > 1")
        if not math.isfinite(self.h) or self.h <= 0:
            raise ValueError("the threshold h must be finite and > 0")
        k = len(self.multipliers)
        p0 = self.limit
        self._llr = []  # per alternative: (log LR of a bad request, log LR of a good one)
        for m in self.multipliers:
            p1 = min(m * p0, MAX_P1)
            self._llr.append((math.log(p1 / p0), math.log((1.0 - p1) / (1.0 - p0))))
        if not self.s:
            self.s = [0.0] * k
        if not self.windows:
            self.windows = [Window() for _ in range(k)]
        self._h_each = self.h + math.log(k)

    # -- the statistic -----------------------------------------------------------------

    def update(self, n: int, x: int, at: float) -> Change:
        """Add a batch: n requests, x of them bad, observed at `at` (epoch seconds)."""
        if n < 0 or x < 0 or x > n:
            raise ValueError(f"a batch needs 0 <= bad <= requests, got {x} of {n}")
        self.total_n += n
        self.total_x += x
        self.last_at = at
        if n == 0:
            return Change.NONE
        for i, (bad, good) in enumerate(self._llr):
            s = self.s[i] + x * bad + (n - x) * good
            w = self.windows[i]
            if s <= 0.0:
                self.s[i] = 0.0
                self.windows[i] = Window()
            else:
                self.s[i] = min(s, 2.0 * self._h_each)
                if w.since is None:
                    w.since = at
                w.n += n
                w.x += x
        if not self.firing and self.leading_excess() >= 0.0:
            self.firing, self.fired_at = True, at
            return Change.ALARM
        if self.firing and all(v == 0.0 for v in self.s):
            self.firing, self.fired_at = False, None
            return Change.RESOLVED
        return Change.NONE

    def leading(self) -> int:
        """The alternative whose statistic is furthest along (the one that alarms first)."""
        return max(range(len(self.s)), key=lambda i: self.s[i])

    def leading_excess(self) -> float:
        """max S − h (per alternative threshold): ≥ 0 means alarm."""
        return max(self.s) - self._h_each

    @property
    def statistic(self) -> float:
        return max(self.s)

    @property
    def threshold_each(self) -> float:
        return self._h_each

    def evidence(self) -> Window:
        return self.windows[self.leading()]

    def describe(self, what: str = "error rate", fmt_time: Any = None, unit: str = "requests") -> str:
        """'error rate 2.1 % over the last 4,120 requests (limit 1 %), since 06:12; CUSUM 17.2 ≥ 16.9';
        with unit="answers" (a content gate, whose limit is the baseline share of low answers):
        'answers with confidence < 0.7: 41.00% over the last 320 answers, baseline 5%, since 10:12; CUSUM …'."""
        w = self.evidence()
        since = ""
        if w.since is not None:
            import time as _time

            since = ", since " + (fmt_time(w.since) if fmt_time else _time.strftime("%H:%M:%S", _time.localtime(w.since)))
        rel = "≥" if self.leading_excess() >= 0 else "<"
        if unit == "answers":
            return (f"{what}: {w.rate * 100:.2f}% over the last {w.n:,} answers, baseline {self.limit * 100:g}%{since}; "
                    f"CUSUM {self.statistic:.1f} {rel} {self._h_each:.1f}")
        return (f"{what} {w.rate * 100:.2f}% over the last {w.n:,} {unit} (limit {self.limit * 100:g}%){since}; "
                f"CUSUM {self.statistic:.1f} {rel} {self._h_each:.1f}")

    # -- persistence ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "limit": self.limit, "h": self.h, "multipliers": list(self.multipliers), "s": list(self.s),
            "windows": [{"n": w.n, "x": w.x, "since": w.since} for w in self.windows],
            "firing": self.firing, "fired_at": self.fired_at, "total_n": self.total_n, "total_x": self.total_x,
            "last_at": self.last_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RateCusum:
        mult = tuple(float(m) for m in d["multipliers"])
        s = [float(v) for v in d.get("s", [])]
        windows = [Window(int(w["n"]), int(w["x"]), w.get("since")) for w in d.get("windows", [])]
        if len(s) != len(mult) or len(windows) != len(mult):
            s, windows = [], []
        return cls(limit=float(d["limit"]), h=float(d["h"]), multipliers=mult, s=s, windows=windows,
                   firing=bool(d.get("firing", False)), fired_at=d.get("fired_at"), total_n=int(d.get("total_n", 0)),
                   total_x=int(d.get("total_x", 0)), last_at=d.get("last_at"))


def cusum_path(llr_per_step: Any) -> Any:
    """Vectorised CUSUM over a whole path of per-step log-likelihood ratios (numpy), without reset:
    S_t = C_t − min(0, min_{s≤t} C_s), the Lindley recursion in closed form. For benchmarks."""
    import numpy as np

    c = np.cumsum(llr_per_step)
    return c - np.minimum(np.minimum.accumulate(c), 0.0)

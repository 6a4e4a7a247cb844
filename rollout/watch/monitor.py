"""The watch's judgement, without I/O: cumulative counters in, events out.

`Monitor.observe(now, version, readings)` takes, per gate, the cumulative (bad, total) counts read for
the watched version (or None when the source could not be read), turns them into a batch (the increase
since the last reading), feeds each gate's CUSUM and says what changed: a breach, a breach resolved,
the watch gone blind (no data for `blind_after`), seeing again. It never decides anything on missing
data: a blind watch alerts that it is blind and waits.

A change of the watched version (a promotion, a revert) starts every gate afresh: the evidence about one
version says nothing about another. The whole record round-trips through `to_dict`/`from_dict`, so a
watch killed with SIGKILL and started again goes on from the counters and statistics it last saved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rollout.plan.watch import Watch
from rollout.stats.detect import Change, RateCusum, threshold

RECORD_SCHEMA = 1


@dataclass(frozen=True)
class Event:
    kind: str  # breach | resolved | blind | seeing
    gate: str | None
    message: str
    details: dict[str, Any]


@dataclass
class GateRecord:
    detector: RateCusum
    last: tuple[float, float] | None = None  # the cumulative (bad, total) of the previous reading
    last_batch: tuple[int, int] | None = None


@dataclass
class Monitor:
    watch: Watch
    version: str | None = None
    gates: dict[str, GateRecord] = field(default_factory=dict)
    blind_since: float | None = None
    blind_alerted: bool = False
    checks: int = 0

    def _fresh(self, name: str) -> GateRecord:
        w = self.watch
        h = threshold(1.0, w.false_alarm_every, w.every)
        return GateRecord(RateCusum(limit=w.gates[name].max, h=h))

    def reset(self, version: str) -> None:
        """Start judging `version` from scratch (its own evidence only)."""
        self.version = version
        self.gates = {name: self._fresh(name) for name in self.watch.gates}
        self.blind_since, self.blind_alerted = None, False

    def what(self, name: str) -> str:
        gate = self.watch.gates[name]
        if gate.what:
            return gate.what
        if gate.content:
            return f"answers with {gate.json_field or gate.metric} < {gate.below:g}"
        return name

    def unit(self, name: str) -> str:
        """What a gate counts: the probe's answers for a content gate, else requests."""
        return "answers" if self.watch.gates[name].content else "requests"

    def describe(self, name: str) -> str:
        return self.gates[name].detector.describe(self.what(name), unit=self.unit(name))

    def observe(self, now: float, version: str, readings: dict[str, tuple[float, float] | None]) -> list[Event]:
        events: list[Event] = []
        if version != self.version or set(self.gates) != set(self.watch.gates):
            self.reset(version)
        self.checks += 1
        missing = [n for n in self.watch.gates if readings.get(n) is None]
        if missing:
            if self.blind_since is None:
                self.blind_since = now
            if not self.blind_alerted and now - self.blind_since >= self.watch.blind_after:
                self.blind_alerted = True
                events.append(Event("blind", None, f"cannot see {version}: no data for {', '.join(missing)} for "
                                    f"{now - self.blind_since:.0f}s (a blind watch never reverts)",
                                    {"version": version, "gates": missing, "since": self.blind_since}))
        elif self.blind_since is not None:
            if self.blind_alerted:
                events.append(Event("seeing", None, f"seeing {version} again after {now - self.blind_since:.0f}s without data",
                                    {"version": version, "since": self.blind_since}))
            self.blind_since, self.blind_alerted = None, False
        for name, reading in readings.items():
            rec = self.gates.get(name)
            if rec is None or reading is None:
                continue
            bad, total = reading
            if rec.last is None or total < rec.last[1] or bad < rec.last[0]:
                rec.last = (bad, total)  # first reading, or a counter reset (a restarted process): a new base
                rec.last_batch = None
                continue
            n = int(round(total - rec.last[1]))
            x = min(max(int(round(bad - rec.last[0])), 0), n)
            rec.last = (bad, total)
            rec.last_batch = (n, x)
            change = rec.detector.update(n, x, now)
            if change is Change.ALARM:
                events.append(Event("breach", name, f"{version}: {self.describe(name)}",
                                    self.details(name)))
            elif change is Change.RESOLVED:
                events.append(Event("resolved", name, f"{version}: {self.what(name)} back under {self.watch.gates[name].max * 100:g}% "
                                    f"({self.describe(name)})", self.details(name)))
        return events

    def details(self, name: str) -> dict[str, Any]:
        """The numbers behind a gate's verdict, for alerts and status."""
        rec = self.gates[name]
        d = rec.detector
        w = d.evidence()
        return {"version": self.version, "gate": name, "rate": round(w.rate, 6), "requests": w.n, "bad": w.x,
                "limit": d.limit, "since": w.since, "cusum": round(d.statistic, 3), "threshold": round(d.threshold_each, 3),
                "total_requests": d.total_n, "total_bad": d.total_x}

    @property
    def firing(self) -> list[str]:
        return [n for n, r in self.gates.items() if r.detector.firing]

    def summary(self) -> str:
        parts = []
        for name, rec in self.gates.items():
            d = rec.detector
            rate = d.total_x / d.total_n * 100 if d.total_n else 0.0
            parts.append(f"{self.what(name)} {rate:.2f}% of {d.total_n:,} (limit {d.limit * 100:g}%, CUSUM {d.statistic:.1f}/{d.threshold_each:.1f})")
        blind = f"; BLIND since {time.strftime('%H:%M:%S', time.localtime(self.blind_since))}" if self.blind_since else ""
        return f"watching {self.version}: " + "; ".join(parts) + blind

    # -- persistence ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RECORD_SCHEMA, "version": self.version, "checks": self.checks, "blind_since": self.blind_since,
            "blind_alerted": self.blind_alerted,
            "gates": {n: {"detector": r.detector.to_dict(), "last": list(r.last) if r.last else None} for n, r in self.gates.items()},
        }

    @classmethod
    def from_dict(cls, watch: Watch, d: dict[str, Any] | None) -> Monitor:
        m = cls(watch)
        if not d or d.get("schema") != RECORD_SCHEMA or not d.get("version"):
            return m
        try:
            gates = {}
            for name, g in (d.get("gates") or {}).items():
                if name not in watch.gates:
                    continue
                det = RateCusum.from_dict(g["detector"])
                if det.limit != watch.gates[name].max:  # the plan's limit changed: that evidence no longer applies
                    continue
                last = g.get("last")
                gates[name] = GateRecord(det, (float(last[0]), float(last[1])) if last else None)
            for name in watch.gates:
                gates.setdefault(name, m._fresh(name))
        except (KeyError, TypeError, ValueError, IndexError):
            return m
        m.version, m.gates, m.checks = str(d["version"]), gates, int(d.get("checks", 0))
        m.blind_since, m.blind_alerted = d.get("blind_since"), bool(d.get("blind_alerted", False))
        return m

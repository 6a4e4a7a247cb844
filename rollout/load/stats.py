"""Per-stage, per-version statistics: what the load measured, as plain data.

Filled by the load recorder (one `add` per request, on the load generator's
hot path: keep it cheap) and read by the gates every second. No Locust import
here, so the gates and the engine are tested without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rollout.stats.histogram import Histogram

ROLES = ("stable", "canary")


@dataclass
class VersionStats:
    requests: int = 0
    failures: int = 0
    latency: Histogram = field(default_factory=Histogram)

    def add(self, ms: float, failed: bool) -> None:
        self.requests += 1
        if failed:
            self.failures += 1
        self.latency.record(ms)

    def merge(self, other: VersionStats) -> None:
        self.requests += other.requests
        self.failures += other.failures
        self.latency.merge(other.latency)

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else math.nan

    def percentile(self, p: float) -> float:
        return self.latency.quantile(p / 100.0)

    def summary(self) -> dict[str, Any]:
        def r(x: float) -> float | None:
            return None if x != x else round(x, 3)

        return {
            "requests": self.requests,
            "failures": self.failures,
            "error_rate": r(self.error_rate),
            "p50_ms": r(self.percentile(50)),
            "p90_ms": r(self.percentile(90)),
            "p95_ms": r(self.percentile(95)),
            "p99_ms": r(self.percentile(99)),
            "mean_ms": r(self.latency.mean),
        }


@dataclass
class StageStats:
    """Everything one stage's load measured, cumulative since the stage began."""

    by_role: dict[str, VersionStats] = field(default_factory=lambda: {"stable": VersionStats(), "canary": VersionStats(), "unknown": VersionStats()})
    # (in_cohort, role) -> requests: proves cohort routing
    cohort_routing: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    users: int = 0
    cpu_max: float = 0.0  # the load generator's own CPU % (Locust's monitor); ~100 means saturated
    timeline: list[dict[str, Any]] = field(default_factory=list)  # one entry a second
    # declared metrics (load.metrics): metric -> role -> values seen (response content, custom, prometheus)
    metrics: dict[str, dict[str, Histogram]] = field(default_factory=dict)
    # the latest value of polled metrics (prometheus): metric -> role -> value
    gauges: dict[str, dict[str, float]] = field(default_factory=dict)
    source_errors: dict[str, str] = field(default_factory=dict)  # metric -> last problem reading it
    # -- fail closed (rollout.gates.liveness) --
    last_failure: dict[str, str] = field(default_factory=dict)  # role -> the last failure charged to it, as said
    # role -> what the router did with the requests it sent to that role's version during the stage
    # (routed, answered, refused, reset, timeout, malformed, aborted, ...); empty when the backend cannot tell
    router: dict[str, dict[str, int]] = field(default_factory=dict)
    # --- locust-native (#9): per-endpoint rows, failure messages, listener errors (rollout.load.endpoints) ---
    endpoints: Any = None  # EndpointStats | None
    users_timeline: list[list[float]] = field(default_factory=list)  # [t, running users] a tick (shapes, ramps)
    # --- end locust-native ---
    # Users killed in the middle of a task (the stage's stop, a shape or a rebalance; Locust's stop_timeout 0): each
    # may have had one request on the wire that the service counted and nobody recorded (no answer, so no version).
    # An upper bound on how far the totals may fall short of the service's own count (`runner.count_cut_users`).
    cut_mid_task: int = 0

    def metric(self, name: str, role: str) -> Histogram:
        by_role = self.metrics.setdefault(name, {})
        if role == "all":
            total = Histogram()
            for h in by_role.values():
                total.merge(h)
            return total
        h = by_role.get(role)
        if h is None:
            h = by_role[role] = Histogram()
        return h

    def add_metric(self, name: str, role: str, value: float) -> None:
        self.metric(name, role).record(value)

    def role(self, name: str) -> VersionStats:
        if name == "all":
            total = VersionStats()
            for vs in self.by_role.values():
                total.merge(vs)
            return total
        return self.by_role.setdefault(name, VersionStats())

    @property
    def requests(self) -> int:
        return sum(v.requests for v in self.by_role.values())

    @property
    def failures(self) -> int:
        return sum(v.failures for v in self.by_role.values())

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {role: vs.summary() for role, vs in self.by_role.items() if vs.requests}
        out["all"] = self.role("all").summary()
        out["elapsed_s"] = round(self.elapsed, 2)
        out["load_cpu_max"] = round(self.cpu_max, 1)
        out["users"] = self.users
        if self.cohort_routing:
            out["cohort_routing"] = dict(self.cohort_routing)
        if self.metrics:
            out["metrics"] = {
                name: {role: {"count": h.count, "mean": round(h.mean, 6), "p50": round(h.quantile(0.5), 6), "p10": round(h.quantile(0.1), 6)}
                       for role, h in by_role.items() if h.count}
                for name, by_role in self.metrics.items()
            }
        if self.gauges:
            out["gauges"] = {k: dict(v) for k, v in self.gauges.items()}
        if self.source_errors:
            out["source_errors"] = dict(self.source_errors)
        if self.router:
            out["router"] = {role: dict(c) for role, c in self.router.items()}
        # --- locust-native (#9) ---
        if self.endpoints is not None:
            out["endpoints"] = self.endpoints.summary()
        if self.users_timeline:
            out["users_timeline"] = [list(x) for x in self.users_timeline[-3600:]]
        # --- end locust-native ---
        if self.cut_mid_task:
            out["cut_mid_task"] = self.cut_mid_task
        return out

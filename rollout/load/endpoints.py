"""Per-endpoint statistics and failure messages, per version: what Locust's own report shows, attributed.

Why a module of its own: the version statistics (`rollout.load.stats`) are what
the gates judge; these tables are what a person reads to find *why* a gate
failed ("404 on POST /authenticate, 1,204 times, canary"). Plain data, no
Locust import, so reports and tests use it without the load generator.

Bounded memory whatever the run length or the number of distinct names
(URLs with ids in them make unbounded names): at most `MAX_ENDPOINTS` rows of
(version, method, name) and `MAX_FAILURES` rows of (version, method, name,
error); requests beyond go into one overflow row per version (`name` =
`OTHER`), failures beyond are counted in `failures_dropped`. Each endpoint row
holds a log histogram (constant size), so p50/p95/p99 are exact to the
histogram's resolution, not Locust's two-digit rounding.

Also kept here, because they explain a broken load in the same reports:
exceptions raised by the locustfile's event listeners (`listener_errors`,
reported, never swallowed) and which LoadTestShape drove the users.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rollout.stats.histogram import Histogram

MAX_ENDPOINTS = 200
MAX_FAILURES = 100
MAX_LISTENER_ERRORS = 20
OTHER = "OTHER"
TOP_N = 20  # rows a report shows per table; the rest are summed in one line

_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")


def error_text(exception: BaseException | str) -> str:
    """One line per kind of failure: Locust's wording (`HTTPError('404 ...')`), object addresses removed."""
    if isinstance(exception, str):
        text = exception
    else:
        text = repr(exception)
    return _ADDR.sub("", text).replace("\n", " ")[:300]


@dataclass
class Endpoint:
    requests: int = 0
    failures: int = 0
    latency: Histogram = field(default_factory=Histogram)

    def merge(self, other: Endpoint) -> None:
        self.requests += other.requests
        self.failures += other.failures
        self.latency.merge(other.latency)


@dataclass
class EndpointStats:
    """(version, method, name) -> Endpoint and (version, method, name, error) -> count, bounded."""

    endpoints: dict[tuple[str, str, str], Endpoint] = field(default_factory=dict)
    failures: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    failures_dropped: int = 0
    listener_errors: list[str] = field(default_factory=list)
    shape: str | None = None  # the LoadTestShape class that drove the users, if any

    def add(self, role: str, method: str, name: str, ms: float, error: BaseException | str | None) -> None:
        key = (role, method, name)
        ep = self.endpoints.get(key)
        if ep is None:
            if len(self.endpoints) >= MAX_ENDPOINTS:
                key = (role, "", OTHER)
                ep = self.endpoints.get(key)
            if ep is None:
                ep = self.endpoints[key] = Endpoint()
        ep.requests += 1
        ep.latency.record(ms)
        if error is not None:
            ep.failures += 1
            self.add_failure(role, method, name, error_text(error), 1)

    def add_failure(self, role: str, method: str, name: str, text: str, n: int) -> None:
        fkey = (role, method, name, text)
        if fkey in self.failures:
            self.failures[fkey] += n
        elif len(self.failures) < MAX_FAILURES:
            self.failures[fkey] = n
        else:
            self.failures_dropped += n

    def add_listener_error(self, text: str) -> None:
        if len(self.listener_errors) < MAX_LISTENER_ERRORS:
            self.listener_errors.append(text[-2000:])

    def merge(self, other: EndpointStats) -> None:
        for (role, method, name), ep in other.endpoints.items():
            key = (role, method, name)
            mine = self.endpoints.get(key)
            if mine is None:
                if len(self.endpoints) >= MAX_ENDPOINTS:
                    key = (role, "", OTHER)
                    mine = self.endpoints.get(key)
                if mine is None:
                    mine = self.endpoints[key] = Endpoint()
            mine.merge(ep)
        for (role, method, name, text), n in other.failures.items():
            self.add_failure(role, method, name, text, n)
        self.failures_dropped += other.failures_dropped
        for text in other.listener_errors:
            self.add_listener_error(text)

    # -- wire format (worker -> master deltas) ---------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoints": [[r, m, n, e.requests, e.failures, e.latency.to_dict()] for (r, m, n), e in self.endpoints.items()],
            "failures": [[r, m, n, t, c] for (r, m, n, t), c in self.failures.items()],
            "failures_dropped": self.failures_dropped,
            "listener_errors": list(self.listener_errors),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EndpointStats:
        out = cls()
        for r, m, n, req, fail, lat in data.get("endpoints") or []:
            out.endpoints[(r, m, n)] = Endpoint(int(req), int(fail), Histogram.from_dict(lat))
        for r, m, n, t, c in data.get("failures") or []:
            out.failures[(r, m, n, t)] = int(c)
        out.failures_dropped = int(data.get("failures_dropped") or 0)
        out.listener_errors = list(data.get("listener_errors") or [])
        return out

    # -- for the reports ---------------------------------------------------------

    def summary(self, top: int = TOP_N) -> dict[str, Any]:
        """The report's `endpoints` section: the busiest rows, the most frequent failures, the rest counted."""

        def r(x: float) -> float | None:
            return None if x != x else round(x, 3)

        rows = sorted(self.endpoints.items(), key=lambda kv: (-kv[1].failures, -kv[1].requests, kv[0]))
        shown = [
            {"version": role, "method": method, "name": name, "requests": e.requests, "failures": e.failures,
             "p50_ms": r(e.latency.quantile(0.50)), "p95_ms": r(e.latency.quantile(0.95)), "p99_ms": r(e.latency.quantile(0.99))}
            for (role, method, name), e in rows[:top]
        ]
        rest = rows[top:]
        fails = sorted(self.failures.items(), key=lambda kv: (-kv[1], kv[0]))
        out: dict[str, Any] = {
            "endpoints": shown,
            "endpoints_more": {"rows": len(rest), "requests": sum(e.requests for _, e in rest), "failures": sum(e.failures for _, e in rest)},
            "failures": [{"method": m, "name": n, "error": t, "count": c, "version": role} for (role, m, n, t), c in fails[:top]],
            "failures_more": {"rows": max(0, len(fails) - top), "count": sum(c for _, c in fails[top:]) + self.failures_dropped},
        }
        if self.listener_errors:
            out["listener_errors"] = list(self.listener_errors)
        if self.shape:
            out["shape"] = self.shape
        return out


def top_failures_text(section: dict[str, Any] | None, n: int = 3) -> str:
    """`404 on GET /authenticate (canary): HTTPError(...) ×12; ...` for a failing gate's one-line message."""
    if not section:
        return ""
    parts = [f"{f['method']} {f['name']} ({f['version']}): {f['error']} ×{f['count']:,}" for f in (section.get("failures") or [])[:n]]
    return "; ".join(parts)

"""Reading a watch gate's two counters from Prometheus (instant queries over its HTTP API).

A reading is the cumulative (bad, total) for the watched version, or None when it cannot be had
(Prometheus down, slow, an error answer, or no `total` series yet): the monitor treats None as
"blind", never as evidence. An empty answer for `bad` while `total` has data counts as 0 bad requests
(a counter of errors that never happened has no series yet).
"""

from __future__ import annotations

import math
from typing import Any

from rollout.plan.watch import WatchGate


class PrometheusCounters:
    def __init__(self) -> None:
        import httpx  # here: never at import (a watch with a probe imports locust first)

        self._httpx = httpx
        self._client = httpx.Client(follow_redirects=False)
        self.last_error: dict[str, str] = {}

    def close(self) -> None:
        self._client.close()

    def _query(self, gate: WatchGate, promql: str) -> float | None:
        """The value of a scalar-ish query; None for an empty answer. Raises on any failure."""
        r = self._client.get(f"{gate.prometheus.url}/api/v1/query", params={"query": promql}, timeout=gate.prometheus.timeout)
        r.raise_for_status()
        body: Any = r.json()
        if body.get("status") != "success":
            raise ValueError(f"Prometheus answered {body.get('status')}: {body.get('error', '')}"[:200])
        data = body.get("data") or {}
        result = data.get("result")
        if data.get("resultType") == "scalar" and isinstance(result, list) and len(result) == 2:
            value = float(result[1])
        elif isinstance(result, list):
            if not result:
                return None
            if len(result) != 1:
                raise ValueError(f"the query returned {len(result)} series; aggregate it to one (e.g. sum(...))")
            value = float(result[0]["value"][1])
        else:
            raise ValueError("an answer that is neither a vector nor a scalar")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a count of {value!r}")
        return value

    def read(self, name: str, gate: WatchGate, version: str, role: str = "stable") -> tuple[float, float] | None:
        def fill(q: str) -> str:
            return q.replace("{version}", version).replace("{role}", role)

        try:
            total = self._query(gate, fill(gate.prometheus.total))
            if total is None:
                self.last_error[name] = "no `total` series for this version yet"
                return None
            bad = self._query(gate, fill(gate.prometheus.bad))
        except (self._httpx.HTTPError, ValueError, KeyError, TypeError, IndexError) as exc:
            self.last_error[name] = f"{type(exc).__name__}: {exc}"[:200]
            return None
        self.last_error.pop(name, None)
        return (bad or 0.0, total)

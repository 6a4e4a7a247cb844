"""Custom metrics fired from a locustfile, attributed to the version that served the request.

    from rollout.metrics import record

    class U(FastHttpUser):
        @task
        def ask(self):
            with self.client.get("/api/answer", catch_response=True) as r:
                record("answer_length", len(r.json()["answer"]), r)

Declare the metric in the plan (`load.metrics: {answer_length: {custom: true}}`)
and gate on it like any other. The version comes from the response's version
header (or pass `version=`). Outside a `rollout` load run (plain `locust`),
`record` does nothing, so the same locustfile works everywhere. Values are
non-negative numbers (a histogram with 0.5 % relative error keeps them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_sink: Callable[[str, float, Any, str | None], None] | None = None


def record(name: str, value: float, response: Any = None, version: str | None = None) -> None:
    """Record one value of a declared custom metric for the version that served `response`."""
    sink = _sink
    if sink is not None:
        sink(name, float(value), response, version)


def _install(sink: Callable[[str, float, Any, str | None], None] | None) -> None:
    global _sink
    _sink = sink

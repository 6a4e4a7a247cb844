"""Loaded into each Locust worker process (`locust -f worker_plugin.py,LOCUSTFILE --worker ...`).

Locust's workers report only Locust's own statistics (rounded response times,
no idea which version served a request). This plugin gives each worker the
same recorder the in-process load uses (`rollout.load.runner.Recorder`: the
version read from the response header, raw milliseconds into per-version log
histograms) and ships what it recorded to the master every second as a custom
message, `rollout_stats`: per version the new requests, failures and the
histogram of the new latencies (constant size, whatever the rate), plus the
cohort routing counts. The master merges the deltas (`rollout.load.distributed`).

The recorder's settings come from $ROLLOUT_WORKER_SPEC (JSON: version_header,
roles, host, cohort, cohort_share); in a cohort stage the plugin also defines the
master's cohort user classes (same names, same cohort header and marking). Outside a worker (no such variable, or a local/master runner) the
plugin does nothing, so the file is harmless anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from locust import events

MESSAGE = "rollout_stats"
SPEC_ENV = "ROLLOUT_WORKER_SPEC"
EVERY = 1.0


class Shipper:
    """The worker side: record every request, send the deltas to the master every second and at stop."""

    def __init__(self, environment: Any, settings: dict[str, Any]) -> None:
        from rollout.load.runner import LoadSpec, Recorder
        from rollout.load.stats import VersionStats

        spec = LoadSpec(locustfile=Path("-"), host="", users=0, spawn_rate=1, duration=0,
                        version_header=settings.get("version_header", "X-Version"), roles=dict(settings.get("roles", {})),
                        only_role=settings.get("only_role"))
        self.env = environment
        self.recorder = Recorder(spec)
        self._empty = VersionStats
        self.sent: dict[str, Any] = {}
        self.sent_routing: dict[str, int] = {}
        environment.events.request.add_listener(self.recorder.on_request)

    def delta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"roles": {}, "routing": {}}
        for role, vs in list(self.recorder.stats.by_role.items()):
            prev = self.sent.get(role) or self._empty()
            if vs.requests == prev.requests:
                continue
            out["roles"][role] = {"requests": vs.requests - prev.requests, "failures": vs.failures - prev.failures,
                                  "latency": vs.latency.minus(prev.latency).to_dict()}
            self.sent[role] = self._empty(vs.requests, vs.failures, vs.latency.copy())
        for key, n in list(self.recorder.stats.cohort_routing.items()):
            d = n - self.sent_routing.get(key, 0)
            if d:
                out["routing"][key] = d
                self.sent_routing[key] = n
        return out

    def flush(self, **_: Any) -> None:
        data = self.delta()
        runner = self.env.runner
        if (data["roles"] or data["routing"]) and runner is not None:
            try:
                runner.send_message(MESSAGE, data)
            except Exception:  # the master is gone: nothing left to report to
                pass

    def loop(self) -> None:
        import gevent

        while True:
            gevent.sleep(EVERY)
            self.flush()


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    raw = os.environ.get(SPEC_ENV)
    if not raw:
        return
    from locust.runners import WorkerRunner

    if not isinstance(environment.runner, WorkerRunner):
        return
    import gevent

    settings = json.loads(raw)
    if settings.get("cohort"):  # the master's cohort users (`<User>Cohort`) must exist here too, by name
        from rollout.load.runner import LoadSpec, user_classes_for

        spec = LoadSpec(locustfile=Path("-"), host=settings.get("host") or "", users=0, spawn_rate=1, duration=0,
                        cohort=tuple(settings["cohort"]), cohort_share=float(settings.get("cohort_share", 0.2)))
        environment.user_classes = user_classes_for(spec, list(environment.user_classes))
    shipper = Shipper(environment, settings)
    environment.events.test_stop.add_listener(shipper.flush)
    gevent.spawn(shipper.loop)

"""The bake: after the last stage, the new version serves everyone while the previous one is kept ready.

The executor shifts all traffic to the canary (a recorded transition, like any shift), then this loop
judges the canary with the plan's `watch:` gates — the same counters and CUSUM as `rollout watch`, on
the canary version — every `watch.every` seconds for `bake.duration`, serving operators' requests
between checks. The previous version keeps running the whole time, so a rollback is one router or
route update. The verdict:

- a breach → "breach" with the numbers: the executor rolls back at once (all traffic to the previous
  version, canary stopped) and the rollout ends rolled back;
- no evidence for some gate (its reads all failed, no request was counted, the probe could not start)
  → "no-evidence": a bake that did not see what a gate judges is not a clean bake, and the executor
  rolls back, saying so (missing data never *fails* a version in a watch, but a promotion needs evidence);
- otherwise "clean": the executor promotes and the previous version is released.

A process killed mid-bake leaves the state at "every stage passed", split all on the canary: the next
`rollout run` bakes again from the start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rollout.watch.monitor import Monitor


@dataclass(frozen=True)
class BakeResult:
    verdict: str  # clean | breach | no-evidence | request
    message: str
    details: dict[str, Any]
    outcome: Any = None  # the Outcome of an operator's request that ended the bake


def bake(plan: Any, version: str, serve: Callable[[], Any], say: Callable[[str], None],
         clock: Callable[[], float] = time.time, sleep: Callable[[float], None] | None = None, probe: Any = None) -> BakeResult:
    """`probe`: a started rollout.watch.synthetic.ProbeSource for the plan's `watch.probe` (the caller
    starts it through the entry point; closed here), feeding the probe and content gates."""
    from rollout.watch.sources import PrometheusCounters

    watch, duration = plan.watch, plan.bake.duration
    sleep = sleep or time.sleep  # looked up now: gevent's once locust patched it (the probe's users run meanwhile)
    monitor = Monitor(watch)
    monitor.reset(version)
    source = PrometheusCounters()
    start = clock()
    last_say = 0.0

    def read(name: str, gate: Any) -> tuple[float, float] | None:
        if gate.source == "prometheus":
            return source.read(name, gate, version, "canary")
        return probe.read(name, gate, version) if probe is not None else None

    try:
        while True:
            t = clock()
            outcome = serve()
            if outcome is not None:
                return BakeResult("request", "an operator's request ended the bake", {}, outcome)
            readings = {name: read(name, gate) for name, gate in watch.gates.items()}
            for ev in monitor.observe(t, version, readings):
                if ev.kind == "breach":
                    details = dict(ev.details)
                    if probe is not None and ev.gate is not None and watch.gates[ev.gate].content:
                        doc = probe.evidence(ev.gate, version)
                        if doc is not None:  # the worst answers, redacted, for the alert and the record
                            details.update(evidence=doc["worst"], evidence_offending=doc["offered"])
                    return BakeResult("breach", ev.message, details)
                if ev.kind == "blind":
                    say(f"bake: {ev.message}")
            if t - last_say >= 10.0:
                say(f"bake {t - start:,.0f}s of {duration:g}s: {monitor.summary()}")
                last_say = t
            if clock() - start >= duration:
                break
            sleep(max(0.0, min(watch.every, duration - (clock() - start)) - (clock() - t)))
    finally:
        source.close()
        if probe is not None:
            probe.close()
    blind = [n for n, r in monitor.gates.items() if not r.detector.total_n]
    if blind and len(blind) < len(monitor.gates):  # some gates judged, some saw nothing (a probe that never started…)
        errors = {**source.last_error, **(probe.last_error if probe is not None else {})}
        why = "; ".join(f"{n}: {errors.get(n, 'nothing counted')}" for n in blind)
        return BakeResult("no-evidence", f"the bake of {version} saw no data for {', '.join(blind)} in {duration:g}s ({why}): "
                          "not a clean bake", {"version": version})
    if blind:
        errors = {**source.last_error, **(probe.last_error if probe is not None else {})}
        why = "; ".join(f"{n}: {e}" for n, e in errors.items()) or "no request was counted"
        return BakeResult("no-evidence", f"the bake of {version} saw no data in {duration:g}s ({why}): not a clean bake", {"version": version})
    return BakeResult("clean", f"bake of {version} clean for {duration:g}s: {monitor.summary()}", {"version": version})

"""`rollout watch PLAN`: judge the live version every `watch.every`, alert, and revert on a breach.

One loop, in this order each check: read the rollout state (which version is live: it changes when a
rollout promotes or someone reverts), read every gate's counters — from Prometheus, or from the watch's
synthetic probe (`watch.probe`: Locust users in this process through the entry point, started at the first
check that knows the entry point; rollout.watch.synthetic) — let the monitor judge, act on what it says,
save the watch record (with the content gates' evidence: the worst answers, redacted). Acting:

- breach → a `watch-breach` alert with the numbers; with `on_breach: revert`, `rollout revert` to the
  previous revision at once (taking the rollout's lock like any command; recorded with who = the watch,
  why = the numbers), then the alert is resolved and the reverted version is judged from scratch;
  with `on_breach: alert`, the alert is re-sent every `resend` while firing and resolved when the rate
  is back to normal.
- blind (no data for `blind_after`) → a `watch-blind` alert, never a revert; `watch-seeing` when data is back.

Stopping (Ctrl-C, SIGTERM, `--for` elapsed) saves the record; a watch started again goes on from it.
Exit code: 0 when nothing fired and nothing was reverted, 1 when it reverted or a breach is still firing.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rollout.errors import EXIT_GATE_FAILED, EXIT_OK, LockHeld, UsageError
from rollout.watch.monitor import Event, Monitor

ALERT_OF = {"breach": "watch-breach", "resolved": "watch-resolved", "blind": "watch-blind", "seeing": "watch-seeing"}


def _say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def previous_revision(state: Any) -> Any:
    """The newest kept revision of another version than the live one: what a revert goes back to."""
    for rev in reversed(state.revisions):
        if rev.version != state.stable_version:
            return rev
    return None


class WatchLoop:
    def __init__(self, loaded: Any, backend: Any, store: Any, who: str, clock: Any = time.time, sleep: Any = None) -> None:
        from rollout.notify import Notifier
        from rollout.watch import record
        from rollout.watch.sources import PrometheusCounters

        self.loaded, self.plan = loaded, loaded.plan
        if self.plan.watch is None:
            raise UsageError(f"the plan `{self.plan.name}` has no `watch:` section",
                             "add one (gates over Prometheus counters; see README, “Watching production”)")
        self.watch = self.plan.watch
        self.backend, self.store, self.who = backend, store, who
        # time.sleep looked up now, not at import: with a probe, locust's gevent has patched it since, and a
        # sleep that blocks the whole process would starve the probe's users
        self.clock, self.sleep = clock, sleep or time.sleep
        self.record = record.for_store(store, self.plan.name)
        saved = self.record.load()
        self.monitor = Monitor.from_dict(self.watch, saved)
        self.source = PrometheusCounters()
        self.probe: Any = None  # rollout.watch.synthetic.ProbeSource, started at the first check (it needs the entry point)
        # per content gate, the evidence last shown (about the live version, or the one a breach reverted)
        self.evidence: dict[str, Any] = dict((saved or {}).get("evidence") or {})
        self.notifier = Notifier(self.plan.notify, self.plan.name, self.plan.owner)
        self.last_sent: dict[str, float] = {}
        self.reverted = 0
        self.exporter: Any = None  # rollout.exporter.Exporter with --metrics-port

    def live_version(self) -> tuple[str, Any]:
        state = self.store.load()
        return (state.stable_version if state is not None else self.plan.target.stable), state

    def ensure_probe(self, state: Any, version: str) -> None:
        """Start the probe once the entry point is known (a watch may start before the first rollout); said, retried."""
        if self.watch.probe is None:
            return
        if self.probe is not None:
            self.probe.expect = version
            return
        from rollout.errors import RolloutError
        from rollout.watch.synthetic import ProbeSource

        if self.watch.probe.host is None and state is None:
            if self.monitor.checks <= 1:
                _say(f"probe not started: no rollout of `{self.plan.name}` is recorded, so no entry point is known yet "
                     "(its gates stay blind; `rollout run` first, or give watch.probe.host)")
            return
        try:
            host = self.watch.probe.host or self.backend.entry_url(state)
        except RolloutError as exc:
            _say(f"probe not started: {exc.what} (its gates stay blind; trying again at the next check)")
            return
        probe = ProbeSource(self.loaded, self.watch, host, expect=version, say=_say)
        probe.restore(self.evidence, version)
        probe.start()
        self.probe = probe

    def read(self, name: str, gate: Any, version: str) -> tuple[float, float] | None:
        if gate.source == "prometheus":
            return self.source.read(name, gate, version)
        return self.probe.read(name, gate, version) if self.probe is not None else None

    def with_evidence(self, ev: Event) -> Event:
        """A content gate's breach carries the worst answers kept (redacted) for the reviewer."""
        if ev.kind != "breach" or ev.gate is None or self.probe is None or not self.watch.gates[ev.gate].content:
            return ev
        doc = self.probe.evidence(ev.gate, self.monitor.version or "")
        if doc is None:
            return ev
        self.evidence[ev.gate] = {**doc, "breach": ev.message}
        return Event(ev.kind, ev.gate, ev.message, {**ev.details, "evidence": doc["worst"], "evidence_offending": doc["offered"]})

    def save(self) -> None:
        rec = self.monitor.to_dict()
        if self.probe is not None:
            for gate, doc in self.probe.evidence_doc(self.monitor.version).items():
                prev = self.evidence.get(gate) or {}
                self.evidence[gate] = {**doc, **({"breach": prev["breach"]} if prev.get("version") == doc["version"] and "breach" in prev else {})}
        if self.evidence:
            rec["evidence"] = self.evidence
        self.record.save(rec)

    def alert(self, ev: Event, now: float) -> None:
        details = {**ev.details, "ttl": max(4 * self.watch.resend, 60.0), "on_breach": self.watch.on_breach}
        self.notifier.emit(ALERT_OF[ev.kind], ev.message, details)
        if ev.gate:
            self.last_sent[ev.gate] = now

    def revert(self, ev: Event, state: Any) -> bool:
        """Back to the previous revision; False when it could not be done now (said, and retried next check)."""
        from rollout.engine.executor import Engine
        from rollout.report.console import ConsoleReporter

        prev = previous_revision(state) if state is not None else None
        if prev is None:
            _say(f"cannot revert: no earlier revision of `{self.plan.name}` is kept; the alert stays firing")
            return False
        reason = f"watch breach: {ev.message}"
        try:
            with self.store.lock("watch"):
                engine = Engine(self.loaded, self.backend, self.store, ConsoleReporter(quiet=True), self.who)
                try:
                    outcome = engine.revert(reason, to_revision=prev.number)
                finally:
                    engine.finish_alerts()
        except LockHeld as exc:
            _say(f"cannot revert now: {exc.what}; trying again at the next check")
            return False
        self.reverted += 1
        if self.exporter is not None:
            self.exporter.watch_reverts.labels(self.plan.name).inc()
        _say(f"reverted to revision {prev.number} ({prev.version}): {outcome.message}")
        # the degraded version no longer serves: its alert resolves; the reverted version is judged from scratch
        self.notifier.emit("watch-resolved", f"{ev.details.get('version')} reverted by the watch to {prev.version}: no longer serving",
                           {**ev.details, "reverted_to": prev.version})
        self.last_sent.pop(ev.gate or "", None)
        return True

    def breach(self, name: str, prefix: str = "") -> Event:
        m = self.monitor
        return Event("breach", name, f"{m.version}: {prefix}{m.describe(name)}", m.details(name))

    def check(self) -> None:
        now = self.clock()
        version, state = self.live_version()
        self.ensure_probe(state, version)
        readings = {name: self.read(name, gate, version) for name, gate in self.watch.gates.items()}
        reverted = False  # at most one revert a check: after it the live version changed, judged afresh next check
        for ev in map(self.with_evidence, self.monitor.observe(now, version, readings)):
            _say(f"{ev.kind.upper()}: {ev.message}")
            self.alert(ev, now)
            if ev.kind == "breach" and self.watch.on_breach == "revert" and not reverted:
                reverted = self.revert(ev, state)
        for name in [] if reverted else self.monitor.firing:
            if self.watch.on_breach == "revert" and self.monitor.version == version:
                if self.revert(self.breach(name), state):  # an earlier revert could not be done (lock held): again
                    break
            if now - self.last_sent.get(name, 0.0) >= self.watch.resend:  # Alertmanager ends alerts not re-sent
                self.alert(self.with_evidence(self.breach(name, "still breaching: ")), now)
        self.save()
        if self.exporter is not None:
            self.exporter.watch(self.monitor)
            self.exporter.notifier(self.notifier)

    def run(self, duration: float | None) -> int:
        start = self.clock()
        _say(f"watching `{self.plan.name}` every {self.watch.every:g}s, on breach: {self.watch.on_breach} "
             f"(record: {self.record.location()})")
        last_summary = 0.0
        try:
            while True:
                t = self.clock()
                self.check()
                if t - last_summary >= 30.0 or self.monitor.checks <= 1:
                    _say(self.monitor.summary())
                    last_summary = t
                if duration is not None and self.clock() - start >= duration:
                    break
                self.sleep(max(0.0, self.watch.every - (self.clock() - t)))
        except KeyboardInterrupt:
            _say("watch stopped (Ctrl-C/SIGTERM); `rollout watch` again goes on from the saved record")
        finally:
            try:
                self.save()
            finally:
                if self.probe is not None:
                    self.probe.close()
                self.notifier.flush(10.0)
                self.notifier.close(0)
                self.source.close()
        code = EXIT_GATE_FAILED if (self.reverted or self.monitor.firing) else EXIT_OK
        print(f"{'✘' if code else '✔'} watch ended: {self.monitor.summary()}"
              + (f"; reverted {self.reverted} time(s)" if self.reverted else ""), file=sys.stdout, flush=True)
        return code

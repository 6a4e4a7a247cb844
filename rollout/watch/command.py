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

While the rollout's lock is held (a `rollout run`/`advance` of the next version drives), a revert is
asked of that driver through the mailbox (`revert --to-revision N`, honoured within ~a second and
acknowledged); when the lock frees with nobody answering, the watch takes it and reverts itself.

Between checks the watch answers operators' `pause`, `resume` and `stop` (rollout.watch.control): a
paused watch judges and alerts but never reverts; stop ends it with exit 0, recording who, when and why.

Stopping (Ctrl-C, SIGTERM, `--for` elapsed, `rollout watch --stop`) saves the record; a watch started
again goes on from it (still paused if it was). Exit code: 0 when nothing fired and nothing was reverted,
or when an operator stopped it; 1 when it reverted or a breach is still firing.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

from rollout.engine import requests as rq
from rollout.errors import EXIT_GATE_FAILED, EXIT_OK, LockHeld, RolloutError, UsageError
from rollout.watch import control
from rollout.watch.monitor import Event, Monitor

ASK_DRIVER_SECONDS = 30.0  # how long a revert request to a driver stays valid (a revert takes it ~1-2 s)
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
        saved = self.record.load() or {}
        self.monitor = Monitor.from_dict(self.watch, saved)
        self.paused: dict[str, Any] | None = saved.get("paused") or None  # a restarted watch stays paused
        self.stopped: dict[str, Any] | None = None
        self.box = store.mailbox()
        self.started = clock()
        self.me = f"{who} pid {os.getpid()}"
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

    def alert(self, ev: Event, now: float) -> None:
        details = {**ev.details, "ttl": max(4 * self.watch.resend, 60.0), "on_breach": self.watch.on_breach}
        self.notifier.emit(ALERT_OF[ev.kind], ev.message, details)
        if ev.gate:
            self.last_sent[ev.gate] = now

    def revert(self, ev: Event, state: Any) -> bool:
        """Back to the previous revision; False when it could not be done now (said, and retried next check).

        The rollout's lock free: the watch takes it and reverts. Held (a `rollout run`/`advance` of the next
        version drives): the watch posts a `revert --to-revision N` to the mailbox, which the driver honours
        between two ticks of its load and acknowledges; if the lock frees before anyone answered (the driver
        ended, or the holder was a short command), the watch takes over and reverts itself."""
        prev = previous_revision(state) if state is not None else None
        if prev is None:
            _say(f"cannot revert: no earlier revision of `{self.plan.name}` is kept; the alert stays firing")
            return False
        reason = f"watch breach: {ev.message}"
        try:
            message = self._revert_under_lock(reason, prev.number)
        except LockHeld as exc:
            message = self._ask_driver(reason, prev.number, exc.what.split(": ", 1)[-1])
            if message is None:
                return False
        self.reverted += 1
        if self.exporter is not None:
            self.exporter.watch_reverts.labels(self.plan.name).inc()
        _say(f"reverted to revision {prev.number} ({prev.version}): {message}")
        # the degraded version no longer serves: its alert resolves; the reverted version is judged from scratch
        self.notifier.emit("watch-resolved", f"{ev.details.get('version')} reverted by the watch to {prev.version}: no longer serving",
                           {**ev.details, "reverted_to": prev.version})
        self.last_sent.pop(ev.gate or "", None)
        return True

    def _revert_under_lock(self, reason: str, revision: int) -> str:
        with self.store.lock("watch"):
            return self._revert_locked(reason, revision)

    def _revert_locked(self, reason: str, revision: int) -> str:
        from rollout.engine.executor import Engine
        from rollout.report.console import ConsoleReporter

        engine = Engine(self.loaded, self.backend, self.store, ConsoleReporter(quiet=True), self.who)
        try:
            return str(engine.revert(reason, to_revision=revision).message)
        finally:
            engine.finish_alerts()

    def _ask_driver(self, reason: str, revision: int, holder: str) -> str | None:
        """Ask the command holding the lock to revert; take over when the lock frees unanswered. The message, or None."""
        req = rq.Request.new("revert", self.who, reason, ASK_DRIVER_SECONDS, {"to_revision": revision})
        try:
            rq.post(self.box, req)
        except RolloutError as exc:
            _say(f"cannot revert now: {holder} holds the rollout and the mailbox cannot be written ({exc.what}); trying again at the next check")
            return None
        _say(f"{holder} holds the rollout: asked it to revert to revision {revision} (request {req.id})")
        try:
            return self._await_driver(req, reason, revision, holder)
        except RolloutError as exc:  # the mailbox unreadable meanwhile: the request expires by itself
            _say(f"cannot follow the revert request: {exc.what}; trying again at the next check")
            return None

    def _await_driver(self, req: rq.Request, reason: str, revision: int, holder: str) -> str | None:
        step = control.POLL_LOCAL if hasattr(self.box, "version") else control.POLL_API
        asked = time.monotonic()
        deadline = asked + ASK_DRIVER_SECONDS
        accepted_until: float | None = None
        next_lock_try = asked + 1.0
        while True:
            ack = self.box.read().ack_of(req.id)
            if ack is not None and ack.outcome == rq.DONE:
                _say(f"{ack.by} reverted for the watch ({time.monotonic() - asked:.2f}s after asking)")
                return f"done by {ack.by}: {ack.message}"
            if ack is not None and ack.outcome == rq.REFUSED:
                _say(f"{ack.by} refused the revert: {ack.message}; trying again at the next check")
                return None
            if ack is not None and ack.outcome == rq.ACCEPTED and accepted_until is None:
                accepted_until = time.monotonic() + 60.0  # claimed: the driver is reverting (stopping its load first)
                _say(f"{ack.by} accepted the revert ({time.monotonic() - asked:.2f}s after asking)")
            now = time.monotonic()
            if now >= next_lock_try and (ack is None or ack.outcome != rq.ACCEPTED):
                next_lock_try = now + 1.0
                try:
                    with self.store.lock("watch"):
                        claim = rq.answer(self.box, req.id, rq.SELF, "no driver answered; the watch reverted itself", self.me)
                        if claim.outcome == rq.SELF:
                            _say("the lock is free and nobody answered: the watch reverts itself")
                            return self._revert_locked(reason, revision)
                    continue  # answered meanwhile: read it at the top
                except LockHeld:
                    pass
            if (accepted_until is None and now >= deadline) or (accepted_until is not None and now >= accepted_until):
                rq.answer(self.box, req.id, rq.EXPIRED, f"not answered within {ASK_DRIVER_SECONDS:g}s", self.me)
                _say(f"{holder} did not revert within {ASK_DRIVER_SECONDS:g}s; asking again at the next check")
                return None
            time.sleep(step)

    def breach(self, name: str, prefix: str = "") -> Event:
        m = self.monitor
        return Event("breach", name, f"{m.version}: {prefix}{m.describe(name)}", m.details(name))

    def may_revert(self) -> bool:
        return self.watch.on_breach == "revert" and self.paused is None

    def check(self) -> None:
        now = self.clock()
        version, state = self.live_version()
        self.ensure_probe(state, version)
        readings = {name: self.read(name, gate, version) for name, gate in self.watch.gates.items()}
        tried = False  # at most one revert (or request for one) a check: after it the live version changed, judged afresh next check
        for ev in map(self.with_evidence, self.monitor.observe(now, version, readings)):
            if ev.kind == "breach" and self.paused is not None and self.watch.on_breach == "revert":
                ev = Event(ev.kind, ev.gate, f"{ev.message} (watch {control.describe({'paused': self.paused})}: not reverting)",
                           {**ev.details, "paused_by": self.paused.get("by")})
            _say(f"{ev.kind.upper()}: {ev.message}")
            self.alert(ev, now)
            if ev.kind == "breach" and self.may_revert() and not tried:
                tried = True
                self.revert(ev, state)
        for name in [] if tried else self.monitor.firing:
            if self.may_revert() and self.monitor.version == version:
                # an earlier revert could not be done (lock held, refused), or the watch was paused: again
                if self.revert(self.breach(name), state):
                    break
            if now - self.last_sent.get(name, 0.0) >= self.watch.resend:  # Alertmanager ends alerts not re-sent
                self.alert(self.with_evidence(self.breach(name, "still breaching: ")), now)
        self.save()
        if self.exporter is not None:
            self.exporter.watch(self.monitor)
            self.exporter.notifier(self.notifier)

    def doc(self, ended: bool = False) -> dict[str, Any]:
        """The record: the monitor's statistics, the content gates' evidence, the operator's pause/stop, and who
        is watching (liveness for requesters)."""
        if self.probe is not None:
            for gate, doc in self.probe.evidence_doc(self.monitor.version).items():
                prev = self.evidence.get(gate) or {}
                self.evidence[gate] = {**doc, **({"breach": prev["breach"]} if prev.get("version") == doc["version"] and "breach" in prev else {})}
        rec = {**self.monitor.to_dict(), "paused": self.paused, "stopped": self.stopped,
               "watcher": {"who": self.me, "pid": os.getpid(), "host": socket.gethostname(), "started": self.started,
                           "beat": self.clock(), "every": self.watch.every, "ended": self.clock() if ended else None}}
        if self.evidence:
            rec["evidence"] = self.evidence
        return rec

    def save(self, ended: bool = False) -> None:
        self.record.save(self.doc(ended))

    # -- requests from operators (rollout.watch.control) -----------------------------------

    def serve_requests(self) -> None:
        try:
            pending = self.box.read().pending(self.clock(), rq.WATCH)
        except RolloutError as exc:  # an unreadable mailbox must not stop the watch
            _say(f"cannot read the request mailbox: {exc.what}")
            return
        for req in pending:
            doc = {"paused": self.paused, "stopped": self.stopped, "version": self.monitor.version or "-"}
            outcome, message = control.apply(doc, req, self.clock())
            try:
                ack = rq.answer(self.box, req.id, outcome, message, self.me, self.clock())
            except RolloutError as exc:
                _say(f"cannot answer {req.describe()}: {exc.what}")
                continue
            if ack.by != self.me or ack.outcome != outcome:
                continue  # someone else answered first (the requester gave up): not acted on
            _say(f"request: {req.describe()}: {outcome}: {message}")
            if outcome == rq.DONE:
                self.paused, self.stopped = doc.get("paused"), doc.get("stopped")
                self.save()
                if self.exporter is not None:
                    self.exporter.watch_paused.labels(self.plan.name).set(1 if self.paused else 0)

    def wait(self, seconds: float) -> None:
        """Sleep until the next check, answering operators' requests meanwhile (within ~0.1 s locally)."""
        version = getattr(self.box, "version", None)
        step = control.POLL_LOCAL if version is not None else control.POLL_API
        seen: Any = object()
        end = time.monotonic() + seconds
        while self.stopped is None:
            now_seen = version() if version is not None else None
            if version is None or now_seen != seen:
                seen = now_seen
                self.serve_requests()
            left = end - time.monotonic()
            if left <= 0 or self.stopped is not None:
                return
            self.sleep(min(left, step))

    def run(self, duration: float | None) -> int:
        start = self.clock()
        _say(f"watching `{self.plan.name}` every {self.watch.every:g}s, on breach: {self.watch.on_breach} "
             f"(record: {self.record.location()})" + (f"; {control.describe({'paused': self.paused})}: not reverting until "
                                                     "`rollout resume --watch`" if self.paused else ""))
        last_summary = 0.0
        try:
            self.save()  # live from now on for requesters
            if self.exporter is not None:
                self.exporter.watch_paused.labels(self.plan.name).set(1 if self.paused else 0)
            while self.stopped is None:
                t = self.clock()
                self.check()
                if t - last_summary >= 30.0 or self.monitor.checks <= 1:
                    _say(self.monitor.summary() + (" (paused: not reverting)" if self.paused else ""))
                    last_summary = t
                if duration is not None and self.clock() - start >= duration:
                    break
                self.wait(max(0.0, self.watch.every - (self.clock() - t)))
        except KeyboardInterrupt:
            _say("watch stopped (Ctrl-C/SIGTERM); `rollout watch` again goes on from the saved record")
        finally:
            try:
                self.save(ended=True)
            finally:
                if self.probe is not None:
                    self.probe.close()
                self.notifier.flush(10.0)
                self.notifier.close(0)
                self.source.close()
        if self.stopped is not None:
            print(f"✔ {control.describe({'stopped': self.stopped})}: {self.monitor.summary()}"
                  + (f"; reverted {self.reverted} time(s)" if self.reverted else ""), file=sys.stdout, flush=True)
            return EXIT_OK
        code = EXIT_GATE_FAILED if (self.reverted or self.monitor.firing) else EXIT_OK
        print(f"{'✘' if code else '✔'} watch ended: {self.monitor.summary()}"
              + (f"; reverted {self.reverted} time(s)" if self.reverted else ""), file=sys.stdout, flush=True)
        return code

"""An operator's pause, resume and stop of a running `rollout watch`, through the rollout's mailbox.

The watch holds no lock while it judges (a driver may hold the rollout's), so it cannot be told
anything through a lock: like a driver, it reads the mailbox (rollout.engine.requests) every 0.1 s
between checks (0.25 s on Kubernetes, where a look is an API read) and answers the requests
addressed to it (`to: watch`); a driver answers only those addressed to it, and the other way round.

- pause: the watch goes on reading, judging and alerting, but never reverts until resumed (a breach
  while paused alerts with "paused by X: not reverting"; if it still fires after `resume`, the next
  check reverts). Kept in the watch record, so a restarted watch stays paused.
- resume: reverts allowed again.
- stop: the watch saves its record and exits 0, recording who, when and why.

Routing (`rollout pause/resume PLAN` without `--watch`): a command holding the rollout's lock (a
driver) gets them; with the lock free, a rollout in progress (or paused) gets them as before; only
then a live watch. `--watch` addresses the watch whatever else runs. `rollout watch PLAN --stop`
is for the watch only.

Whether a watch is live: its record names it (`watcher`: pid, host, the time of its last check,
`ended` once it stopped). It is live when not ended, its pid exists (same host), and its last check
is recent (within 3 checks, at least 30 s; the only test possible from another machine). With no live
watch, pause and resume change the record directly (the next watch started honours them) and stop
has nothing to stop.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Any

from rollout.backends.liveness import pid_alive
from rollout.engine import requests as rq

POLL_LOCAL = 0.1  # a cheap look at the mailbox's mtime
POLL_API = 0.25  # a ConfigMap read
WATCH_VERBS = ("pause", "resume", "stop")


def watcher_alive(saved: dict[str, Any] | None, every: float, now: float | None = None) -> bool:
    w = (saved or {}).get("watcher") or {}
    if not w or w.get("ended"):
        return False
    if w.get("host") == socket.gethostname() and not pid_alive(w.get("pid")):
        return False
    now = time.time() if now is None else now
    return now - float(w.get("beat") or 0.0) <= max(3 * every, 30.0)


def describe(saved: dict[str, Any] | None) -> str | None:
    """'paused by X at T (why)' / 'stopped by X at T (why)' for status, or None."""
    for key in ("paused", "stopped"):
        info = (saved or {}).get(key)
        if info:
            at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info.get("at") or 0)))
            return f"watch {key} by {info.get('by', '?')} at {at}" + (f" ({info['reason']})" if info.get("reason") else "")
    return None


def apply(saved: dict[str, Any], req: rq.Request, now: float) -> tuple[str, str]:
    """What `req` does to a watch's control fields in `saved` (changed in place): (outcome, message)."""
    info = {"by": req.who, "at": now, "reason": req.reason}
    if req.verb == "pause":
        if saved.get("paused"):
            return rq.REFUSED, f"already {describe({'paused': saved['paused']})}"
        saved["paused"] = info
        return rq.DONE, "watch paused: it keeps judging and alerting, and never reverts until `rollout resume --watch`"
    if req.verb == "resume":
        if not saved.get("paused"):
            return rq.REFUSED, "the watch is not paused"
        was = describe({"paused": saved["paused"]})
        saved["paused"] = None
        return rq.DONE, f"watch resumed ({was}): a breach reverts again"
    if req.verb == "stop":
        saved["stopped"] = info
        return rq.DONE, "watch stopping: record saved, exit 0"
    return rq.REFUSED, f"a watch does not take `{req.verb}` (it takes pause, resume and stop)"


def ask(box: Any, record: Any, every: float, verb: str, who: str, reason: str, timeout: float) -> tuple[rq.Request, rq.Ack]:
    """The requester's side: post to the live watch and wait for its answer (bounded); with no live watch,
    pause/resume act on the record itself (outcome SELF→done) and stop is refused. Raises StateError on timeout."""
    from rollout.errors import StateError

    saved = record.load() or {}
    req = rq.Request.new(verb, who, reason, timeout, to=rq.WATCH)  # stamped after the record's read: its `at` is the post's
    if watcher_alive(saved, every):
        rq.post(box, req)
        holder = (saved.get("watcher") or {}).get("who", "the watch")
        print(f"• asked {holder} to {verb} (request {req.id}), waiting up to {timeout:g}s for its answer", file=sys.stderr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ack = box.read().ack_of(req.id)
            if ack is not None and ack.outcome not in (rq.ACCEPTED, rq.EXPIRED):
                return req, ack
            if not watcher_alive(record.load(), every):
                break  # it ended meanwhile without answering: act on the record below
            time.sleep(0.1)
        else:
            ack = rq.answer(box, req.id, rq.EXPIRED, f"not answered within {timeout:g}s", who)
            if ack.outcome == rq.EXPIRED:
                raise StateError(f"no acknowledgement within {timeout:g}s from {holder}; the request was withdrawn and nothing changed",
                                 "`rollout status` shows whether the watch still runs; try again with a longer --timeout")
            return req, ack
        claim = rq.answer(box, req.id, rq.SELF, "the watch ended without answering; the requesting command acted itself", who)
        if claim.outcome != rq.SELF:
            return req, claim
        saved = record.load() or {}
    if verb == "stop":
        return req, rq.Ack(req.id, rq.REFUSED, "no `rollout watch` of this plan is running; nothing to stop", time.time(), who)
    outcome, message = apply(saved, req, time.time())
    if outcome == rq.DONE:
        if not saved.get("version"):
            return req, rq.Ack(req.id, rq.REFUSED, "no watch record yet: start `rollout watch` first", time.time(), who)
        record.save(saved)
        message += " (no watch is running: recorded for the next one)"
    return req, rq.Ack(req.id, outcome, message, time.time(), who)

"""Sending alerts in the background: `emit` queues and returns at once, workers send.

One worker thread per webhook, so a receiver that hangs delays only its own
alerts (in order: a receiver sees `gate-failed` before `rolled-back`). Each
attempt has the webhook's timeout (connecting, sending, each wait for the
answer); failed attempts (timeouts, connection errors, 408/425/429, 5xx) are
retried `retries` times with exponential backoff (Retry-After honoured, capped);
other 4xx answers fail at once. A webhook whose last alert failed that way gets
one attempt per alert until it answers again, so alerts queued behind a dead
receiver are not held up by retries. `emit` never blocks and never raises.

Under gevent (load commands import locust, which monkey-patches threading,
socket, time and queue) the worker threads are greenlets and every wait in them
(socket I/O, backoff, queue) yields to the hub, so sending never stalls the
load or the rollback. Threads, locks and queues are created when the Notifier
is built, so they are gevent's when the process is patched by then; httpx is
imported there too, never at module import (ssl must come after the patch).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rollout.notify import payload
from rollout.notify.model import EVENTS, Webhook, scrub

log = logging.getLogger("rollout.notify")

USER_AGENT = "rollout-notify/1"
SNIPPET = 200  # bytes of an error answer kept in the reason (Slack says why: `invalid_token`)
RETRY_STATUS = {408, 425, 429}

# -- keep webhook secrets out of the HTTP client's own log lines ------------------------
# httpx logs every request's full URL at INFO; a filter on its loggers masks our secrets.

_LOG_SECRETS: set[str] = set()
_LOG_LOCK = threading.Lock()  # only ever held for a set update; fine under gevent too
_LOGGERS = ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy")


class _RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        secrets = sorted(_LOG_SECRETS, key=len, reverse=True)
        if secrets:
            try:
                text = record.getMessage()
            except Exception:  # a broken log call is not ours to fix
                return True
            clean = scrub(text, secrets)
            if clean != text:
                record.msg, record.args = clean, None
        return True


_FILTER = _RedactSecrets()


def _guard_logs(secrets: Iterable[str]) -> None:
    with _LOG_LOCK:
        _LOG_SECRETS.update(secrets)
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)


# -- outcomes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One event to one webhook: ok, failed (with the reason), or pending. The URL is redacted."""

    webhook: int  # index in the plan's list
    url: str  # redacted
    event: str
    status: str  # ok | failed | pending
    reason: str  # ok: "HTTP 200"; failed: why; pending: "" or the last attempt's error
    attempts: int
    queued_at: float
    finished_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        tail = f": {self.reason}" if self.reason and self.status != "ok" else ""
        return f"`{self.event}` alert to {self.url}: {self.status}{tail}"


@dataclass
class _Record:
    webhook: int
    url: str
    event: str
    queued_at: float
    status: str = "pending"
    reason: str = ""
    attempts: int = 0
    finished_at: float | None = None

    def snapshot(self) -> Delivery:
        return Delivery(self.webhook, self.url, self.event, self.status, self.reason, self.attempts, self.queued_at, self.finished_at)


def _owner_dict(owner: Any) -> dict[str, str]:
    if owner is None:
        return {"name": "", "contact": ""}
    if isinstance(owner, Mapping):
        return {"name": str(owner.get("name", "")), "contact": str(owner.get("contact", ""))}
    return {"name": str(getattr(owner, "name", "")), "contact": str(getattr(owner, "contact", ""))}


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: use our own backoff
        return None


class Notifier:
    """Alerts for one plan's rollout, sent in the background.

    `emit` queues and returns at once (never raises); `flush(timeout)` waits, bounded,
    for what is queued; `results()` says what happened to each alert.
    """

    def __init__(
        self,
        webhooks: Iterable[Webhook] | None,
        plan_name: str,
        owner: Any,
        *,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        max_queued: int = 100,
        keep: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.webhooks: list[Webhook] = list(webhooks or [])
        self.plan_name = plan_name
        self.owner = _owner_dict(owner)
        self.backoff, self.max_backoff, self.max_queued = backoff, max_backoff, max_queued
        self.clock = clock
        self._cv = threading.Condition()
        self._closed = threading.Event()
        self._records: collections.deque[_Record] = collections.deque(maxlen=keep)
        self._pending = 0
        self._queued = [0] * len(self.webhooks)
        self._failing = [False] * len(self.webhooks)  # the last alert to it failed after its retries: no retries until it answers
        self._queues: list[queue.Queue[tuple[_Record, bytes] | None]] = [queue.Queue() for _ in self.webhooks]
        self._secrets = [w.secrets() for w in self.webhooks]
        self._threads: list[threading.Thread] = []
        if not self.webhooks:
            return
        import httpx  # here, not at import: in load commands this runs after locust's gevent patch

        self._httpx = httpx
        _guard_logs(s for ss in self._secrets for s in ss)
        for i in range(len(self.webhooks)):
            t = threading.Thread(target=self._work, args=(i,), name=f"rollout-notify-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def __repr__(self) -> str:
        return f"Notifier(plan={self.plan_name!r}, webhooks={[w.redacted_url() for w in self.webhooks]!r})"

    # -- the caller's side: never blocks, never raises ------------------------------------

    def emit(self, event: str, message: str, details: dict[str, Any] | None = None) -> None:
        """Queue `event` for every webhook that wants it; returns at once, whatever the receivers do."""
        try:
            if self._closed.is_set() or not self.webhooks:
                return
            if event not in EVENTS:
                log.warning("unknown alert event %r not sent (known: %s)", event, ", ".join(EVENTS))
                return
            at = self.clock()
            bodies: dict[str, bytes] = {}
            for i, w in enumerate(self.webhooks):
                if event not in w.events:
                    continue
                if w.format not in bodies:
                    doc = payload.build(w.format, event, self.plan_name, self.owner, str(message), details, at)
                    bodies[w.format] = payload.json.dumps(doc, ensure_ascii=False).encode()
                rec = _Record(webhook=i, url=w.redacted_url(), event=event, queued_at=at)
                with self._cv:
                    self._records.append(rec)
                    if self._queued[i] >= self.max_queued:
                        rec.status, rec.reason, rec.finished_at = "failed", f"not sent: {self.max_queued} alerts already queued for this webhook", at
                        continue
                    self._queued[i] += 1
                    self._pending += 1
                self._queues[i].put_nowait((rec, bodies[w.format]))
        except Exception:  # an alert must never break (or delay) what it reports on
            log.exception("could not queue the `%s` alert", event)

    def flush(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for every queued alert to end (sent or failed); True when none is left."""
        try:
            with self._cv:
                return self._cv.wait_for(lambda: self._pending == 0, timeout=max(0.0, timeout))
        except Exception:  # pragma: no cover - defensive
            log.exception("flushing alerts")
            return False

    def results(self) -> list[Delivery]:
        """Every alert so far (the latest `keep`), oldest first, with redacted URLs."""
        with self._cv:
            return [r.snapshot() for r in self._records]

    def failures(self) -> list[Delivery]:
        return [d for d in self.results() if d.status == "failed"]

    @property
    def pending(self) -> int:
        with self._cv:
            return self._pending

    def close(self, timeout: float = 1.0) -> None:
        """Stop the workers: alerts not yet sent end as failed (`not sent`); waits at most `timeout`."""
        self._closed.set()
        for q in self._queues:
            q.put_nowait(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the workers -------------------------------------------------------------------------

    def _finish(self, rec: _Record, status: str, reason: str) -> None:
        with self._cv:
            if rec.status != "pending":
                return
            rec.status, rec.reason, rec.finished_at = status, reason, self.clock()
            self._pending -= 1
            self._queued[rec.webhook] -= 1
            self._cv.notify_all()
        if status == "failed":
            log.warning("%s", rec.snapshot().describe())
        else:
            log.debug("%s", rec.snapshot().describe())

    def _work(self, i: int) -> None:
        client = None
        q = self._queues[i]
        try:
            while True:
                item = q.get()
                if item is None:
                    while not q.empty():  # alerts queued behind the stop signal
                        rest = q.get_nowait()
                        if rest is not None:
                            self._finish(rest[0], "failed", "not sent: the notifier was closed")
                    return
                rec, body = item
                try:
                    if self._closed.is_set():
                        self._finish(rec, "failed", "not sent: the notifier was closed")
                        continue
                    if client is None:
                        client = self._httpx.Client(timeout=self._httpx.Timeout(self.webhooks[i].timeout), follow_redirects=False)
                    self._deliver(i, rec, body, client)
                except Exception as exc:  # a bug here must not kill the worker or leave the alert pending
                    self._finish(rec, "failed", scrub(f"internal error: {type(exc).__name__}: {exc}", self._secrets[i]))
        finally:
            if client is not None:
                try:
                    client.close()
                except Exception:  # pragma: no cover
                    pass

    def _deliver(self, i: int, rec: _Record, body: bytes, client: Any) -> None:
        httpx = self._httpx
        w = self.webhooks[i]
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT, **w.secret_headers()}
        tries = 1 if self._failing[i] else w.retries + 1
        reason = ""
        for attempt in range(1, tries + 1):
            with self._cv:
                rec.attempts = attempt
            retryable, wait = True, None
            try:
                with client.stream("POST", w.post_url(), content=body, headers=headers) as resp:
                    code = resp.status_code
                    if 200 <= code < 300:
                        self._failing[i] = False
                        self._finish(rec, "ok", f"HTTP {code}")
                        return
                    reason = f"HTTP {code} {resp.reason_phrase}".rstrip() + self._snippet(resp)
                    retryable = code in RETRY_STATUS or code >= 500
                    wait = _retry_after(resp.headers.get("retry-after"))
            except httpx.TimeoutException as exc:
                reason = f"timed out after {w.timeout:g}s ({type(exc).__name__})"
            except httpx.ConnectError as exc:
                reason = f"could not connect: {exc or type(exc).__name__}"
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            reason = scrub(reason, self._secrets[i])
            with self._cv:
                rec.reason = reason
            if not retryable or attempt == tries:
                if retryable:
                    if tries == 1 and w.retries:
                        reason += "; not retried: its previous alert failed too"
                    self._failing[i] = True
                break
            delay = min(self.max_backoff, wait if wait is not None else self.backoff * 2 ** (attempt - 1))
            if self._closed.wait(delay):
                reason += "; not retried: the notifier was closed"
                break
        self._finish(rec, "failed", f"{reason} ({rec.attempts} attempt{'s' if rec.attempts != 1 else ''})")

    @staticmethod
    def _snippet(resp: Any) -> str:
        buf = b""
        try:
            for chunk in resp.iter_bytes():
                buf += chunk
                if len(buf) >= SNIPPET:
                    break
        except Exception:  # the status says enough
            return ""
        text = " ".join(buf[:SNIPPET].decode("utf-8", "replace").split())
        return f": {text}" if text else ""

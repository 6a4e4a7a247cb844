"""The watch's synthetic probe: a few Locust users through the entry point, counted per version.

Why a probe besides Prometheus: a version can answer 200 OK to every request and still be wrong (a
model whose confidence dropped), or the service's own metrics can be missing; a probe asks what users
ask and reads the answers. It is the plan's locustfile (or `watch.probe.locustfile`) run in this
process with the existing Locust machinery (rollout.load.session: the same Environment, events and
lifecycle as a stage's load), with `probe.users` users (1-5) whose wait_time is stretched so that all
together make at most `probe.rate` requests a second, and a hard bound of `probe.max_requests`
requests over the probe's life (past it the probe stops; its gates go blind, which never reverts).

Each answer is attributed to the version its header names (`load.version_header`, like the stage
load). An answer without the header — or no answer at all — goes to the version the watch judges
(`expect`): at the entry point that version serves everyone, so a request that got nothing failed it
(fail closed). What is counted, cumulatively per version, is what the monitor differences per check:

- `probe: errors` gates: (failed requests, requests);
- content gates: (answers whose value is below `below`, answers that carry the value), plus the worst
  of those answers kept as evidence (rollout.watch.evidence), per version.

Import this module before anything that imports ssl (it imports locust).
"""

from __future__ import annotations

import rollout.load.runner as load_runner  # noqa: I001  (first: locust must patch before ssl is imported)

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollout.errors import UsageError
from rollout.load.runner import LoadSpec, _dig, record_first
from rollout.plan.watch import Watch, WatchGate
from rollout.watch.evidence import EvidenceSampler, exchange

FOREVER = 10 * 365 * 86400.0
FIRST_ANSWER_WAIT = 3.0  # seconds the probe's start waits for its first answer


def content_source(loaded: Any, gate: WatchGate) -> tuple[list[str] | None, str | None]:
    """(JSON path, header) a content gate reads: its own `json`, or its load.metrics entry's source."""
    if gate.json_field:
        return gate.json_field.split("."), None
    metric = loaded.plan.load.metrics.get(gate.metric or "")
    if metric is None or not (metric.json_field or metric.header):  # the loader refuses this; a built plan may not
        raise UsageError(f"watch gate metric `{gate.metric}` is not declared under load.metrics with a json or header source",
                         "declare it (load.metrics: {NAME: {json: FIELD}}) or give the gate `json: FIELD`")
    return (metric.json_field.split(".") if metric.json_field else None), metric.header


def describe_content(loaded: Any, gate: WatchGate) -> str:
    path, header = content_source(loaded, gate)
    return f"answers with {'.'.join(path) if path else header} < {gate.below:g}"


def _paced(cls: type, host: str, min_gap: float) -> type:
    """A subclass aimed at `host` whose users wait at least `min_gap` s between tasks (the probe's rate)."""
    base_wait = getattr(cls, "wait_time", None)

    def wait_time(self: Any) -> float:
        try:
            wanted = float(base_wait(self)) if base_wait is not None else 0.0
        except Exception:  # noqa: BLE001  # a locustfile without wait_time: Locust's default is none
            wanted = 0.0
        return max(wanted if math.isfinite(wanted) else 0.0, min_gap)

    return type(cls.__name__, (cls,), {"host": host, "wait_time": wait_time, "abstract": False, "__module__": cls.__module__})


class ProbeSource:
    """Counts the probe's answers per version for the watch's probe and content gates (see the module docstring)."""

    def __init__(self, loaded: Any, watch: Watch, host: str, expect: str | None = None,
                 say: Callable[[str], None] = lambda text: None) -> None:
        assert watch.probe is not None
        self.loaded, self.watch, self.probe, self.host = loaded, watch, watch.probe, host
        self.say = say
        self.expect = expect  # the version the watch judges: gets unlabelled answers (fail closed)
        self.header = loaded.plan.load.version_header
        self.locustfile = Path(loaded.resolve(self.probe.locustfile or loaded.plan.load.locustfile))
        self.content: dict[str, tuple[list[str] | None, str | None, float]] = {}
        for name, gate in watch.gates.items():
            if gate.content:
                path, header = content_source(loaded, gate)
                self.content[name] = (path, header, float(gate.below))  # type: ignore[arg-type]
        self.requests: dict[str, list[int]] = {}  # version -> [requests, failed]
        self.values: dict[tuple[str, str], list[int]] = {}  # (gate, version) -> [bad answers, answers with the value]
        self.samplers: dict[tuple[str, str], EvidenceSampler] = {}
        self.sent = 0
        self.stopped_why: str | None = None
        self.last_error: dict[str, str] = {}
        self.started_at: float | None = None
        self._runner: Any = None
        self._env: Any = None
        self._sess: Any = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        from rollout.load import session as sessions

        p = self.probe
        spec = LoadSpec(locustfile=self.locustfile, host=self.host, users=p.users, spawn_rate=float(p.users), duration=FOREVER,
                        version_header=self.header, max_requests=p.max_requests, endpoint_stats=False)
        sess = sessions.session(spec.locustfile, workers=0)
        sessions.check(spec)
        classes = [_paced(c, self.host, p.users / p.rate) for c in sess.lf.user_classes]
        env, runner = sess.prepare(spec, classes)
        record_first(env.events.request, self.on_request)
        self._sess, self._env, self._runner = sess, env, runner
        runner.start(p.users, spawn_rate=float(p.users))
        self.started_at = time.time()
        import gevent

        deadline = time.monotonic() + FIRST_ANSWER_WAIT  # the first check then has answers, not a moment of "blind"
        while self.sent == 0 and time.monotonic() < deadline:
            gevent.sleep(0.05)
        self.say(f"probe: {p.users} user(s) of {self.locustfile.name} through {self.host}, at most {p.rate:g} req/s, "
                 f"{p.max_requests:,} requests in all")

    def stop(self, why: str | None = None) -> None:
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        try:
            load_runner.stop_load(runner)
        finally:
            self._env.events.request.remove_listener(self.on_request)
        if why:
            self.stopped_why = why
            self.say(f"probe stopped: {why}")

    def close(self) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._runner is not None

    # -- the hot path: one call per probe request ------------------------------------------

    def on_request(self, request_type: str = "", name: str = "", response_time: float = 0.0, response_length: int = 0,
                   exception: BaseException | None = None, response: Any = None, url: str | None = None, **_: Any) -> None:
        self.sent += 1
        headers = getattr(response, "headers", None) if response is not None else None
        version = headers.get(self.header) if headers is not None else None
        version = str(version) if version else self.expect
        if version is None:
            return
        counts = self.requests.setdefault(version, [0, 0])
        counts[0] += 1
        if exception is not None:
            counts[1] += 1
            self.last_error["probe"] = f"{type(exception).__name__}: {exception}"[:200]
        if self.content and response is not None and exception is None:
            self._content(version, request_type, url, response)
        if self.sent >= self.probe.max_requests and self._runner is not None:
            import gevent

            gevent.spawn(self.stop, f"probe.max_requests ({self.probe.max_requests:,}) reached; its gates go blind")

    def _content(self, version: str, method: str, url: str | None, response: Any) -> None:
        body: Any = None
        for gname, (path, header, below) in self.content.items():
            value: Any = None
            if path is not None:
                if body is None:
                    try:
                        import json

                        body = json.loads(getattr(response, "content", b"") or b"null")
                    except ValueError:
                        body = False  # not JSON: no value (the locustfile decides whether that is a failure)
                value = _dig(body, path) if body is not False else None
            elif header is not None:
                raw = (getattr(response, "headers", None) or {}).get(header)
                try:
                    value = float(raw) if raw is not None else None
                except ValueError:
                    value = None
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                continue
            counts = self.values.setdefault((gname, version), [0, 0])
            counts[1] += 1
            if value < below:
                counts[0] += 1
                self._sampler(gname, version).offer(float(value), time.time(), lambda listed, max_bytes: _exchange(
                    method, url, response, listed, max_bytes))

    def _sampler(self, gate: str, version: str) -> EvidenceSampler:
        s = self.samplers.get((gate, version))
        if s is None:
            p = self.probe
            s = self.samplers[(gate, version)] = EvidenceSampler(p.evidence, p.evidence_bytes, tuple(p.redact_headers))
        return s

    # -- what the watch reads at each check ------------------------------------------------

    def read(self, name: str, gate: WatchGate, version: str) -> tuple[float, float] | None:
        """Cumulative (bad, total) for `version`; None while the probe has nothing for it (blind, not evidence)."""
        if gate.content:
            counts = self.values.get((name, version))
        else:
            got = self.requests.get(version)
            counts = [got[1], got[0]] if got else None
        if not counts or counts[1] == 0:
            self.last_error[name] = self.stopped_why or f"the probe has no {'values' if gate.content else 'answers'} of {version} yet"
            return None
        if self.stopped_why is not None:  # stopped: the counters no longer move; say so as blind
            self.last_error[name] = self.stopped_why
            return None
        self.last_error.pop(name, None)
        return (float(counts[0]), float(counts[1]))

    def evidence(self, gate: str, version: str) -> dict[str, Any] | None:
        s = self.samplers.get((gate, version))
        return {"version": version, **s.to_dict()} if s is not None and len(s) else None

    def evidence_doc(self, version: str | None) -> dict[str, Any]:
        """Per content gate, the evidence kept about `version` (for the record and status)."""
        if version is None:
            return {}
        return {g: e for g in self.content if (e := self.evidence(g, version)) is not None}

    def restore(self, saved: dict[str, Any] | None, version: str | None) -> None:
        """Evidence a previous watch recorded about the same version."""
        for gate, doc in (saved or {}).items():
            if gate in self.content and isinstance(doc, dict) and doc.get("version") == version and version is not None:
                self._sampler(gate, version).restore(doc)


def _exchange(method: str, url: str | None, response: Any, listed: frozenset[str], max_bytes: int) -> dict[str, Any]:
    request = getattr(response, "request", None)
    req_headers = getattr(request, "headers", None) if request is not None else None
    req_body = getattr(request, "body", None) if request is not None else None
    status = getattr(response, "status_code", None)
    return exchange(method or getattr(request, "method", "?"), url or getattr(request, "url", "") or "", req_headers, req_body,
                    int(status) if isinstance(status, int) else None, getattr(response, "headers", None),
                    getattr(response, "content", None), listed, max_bytes)

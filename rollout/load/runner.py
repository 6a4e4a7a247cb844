"""Locust in library mode, in the CLI's own process.

Imports locust first (see `rollout.load`): this module must be imported
before httpx or the kubernetes client, which the CLI ensures.

Why our own recorder instead of Locust's statistics: Locust rounds response
times to about two significant digits and does not know which version served
a request. The recorder listens to every request event, reads the version
from the response header the plan names, and adds the raw milliseconds to
per-version histograms (`rollout.load.stats`). Cohort membership comes from
the user's request context, so a test can prove where cohort requests went.
"""

from __future__ import annotations

import locust  # noqa: F401  (first: gevent monkey-patching must precede ssl/urllib3)

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, HttpUser, User
from locust.env import Environment

from rollout import metrics
from rollout.errors import LoadError
from rollout.load.stats import StageStats, VersionStats

COHORT_KEY = "rollout_cohort"
TICK_SECONDS = 1.0
NO_REQUEST_SECONDS = 10.0


def no_requests_error(seconds: float) -> LoadError:
    return LoadError(f"the locustfile made no requests in {seconds:.0f} s",
                     "check its tasks, wait_time and event listeners (run it with `locust -f FILE --headless` to compare)")


@dataclass(frozen=True)
class LoadSpec:
    """One stage's load: where, how much, for how long, and how to attribute it."""

    locustfile: Path
    host: str
    users: int
    spawn_rate: float
    duration: float
    version_header: str = "X-Version"
    roles: dict[str, str] = field(default_factory=dict)  # header value -> "stable" | "canary"
    cohort: tuple[str, str] | None = None
    cohort_share: float = 0.2
    max_requests: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # name -> rollout.plan.model.MetricSource
    # -- fail closed: the role every request goes to when the load goes to one version alone (load_to:
    # canary): a response without the version header, or no response at all, is that version's
    only_role: str | None = None
    # --- locust-native (#9): what `locust --headless` would be given (rollout.load.session) ---
    shape: str | None = None  # a LoadTestShape class of the locustfile drives users and spawn rate
    tags: tuple[str, ...] | None = None
    exclude_tags: tuple[str, ...] | None = None
    options: tuple[tuple[str, Any], ...] = ()  # the locustfile's own options (load.options), to parsed_options
    endpoint_stats: bool = True  # per-endpoint rows and failure messages (rollout.load.endpoints)
    no_request_timeout: float = NO_REQUEST_SECONDS  # no request at all by then: the load is broken (exit 3)
    # --- end locust-native ---
    workers: int | None = None  # load.runner: kubernetes: this stage's worker pods (stages[].workers; None: load.cluster.workers)


def load_user_classes(path: Path) -> list[type[User]]:
    """The concrete User classes of a locustfile (imported once per process), or LocustfileInvalid (exit 2)."""
    from rollout.load.session import load

    return load(path).user_classes


def _with_host(cls: type[User], host: str, cohort: tuple[str, str] | None, weight: float) -> type[User]:
    """A subclass aimed at our host; cohort users also send the cohort header and mark their requests."""
    attrs: dict[str, Any] = {"host": host, "weight": weight, "abstract": False, "__module__": cls.__module__}
    if cohort is None:
        return type(cls.__name__, (cls,), attrs)
    header, value = cohort
    if issubclass(cls, FastHttpUser):
        attrs["default_headers"] = {**(cls.default_headers or {}), header: value}

    def __init__(self: Any, environment: Environment) -> None:
        cls.__init__(self, environment)
        if isinstance(self, HttpUser):
            self.client.headers[header] = value

    def context(self: Any) -> dict[str, Any]:
        return {**cls.context(self), COHORT_KEY: True}

    attrs["__init__"] = __init__
    attrs["context"] = context
    return type(f"{cls.__name__}Cohort", (cls,), attrs)


def user_classes_for(spec: LoadSpec, base: list[type[User]]) -> list[type[User]]:
    out: list[type[User]] = []
    for cls in base:
        w = float(getattr(cls, "weight", 1) or 1)
        if spec.cohort is None:
            out.append(_with_host(cls, spec.host, None, w))
        else:
            # Locust spreads users over classes by weight: share of users in the cohort.
            out.append(_with_host(cls, spec.host, None, w * (1.0 - spec.cohort_share)))
            out.append(_with_host(cls, spec.host, spec.cohort, w * spec.cohort_share))
    return out


class Recorder:
    """Attributes every request to a version and records its raw latency (the hot path)."""

    def __init__(self, spec: LoadSpec) -> None:
        self.header = spec.version_header
        self.roles = dict(spec.roles)
        self.only_role = spec.only_role
        self.stats = StageStats()
        self._prev: dict[str, VersionStats] = {}  # cumulative copies at the last second's end
        self.last_error: str = ""
        # response-content metrics, read from each response (only when the plan declares some)
        self.json_metrics = [(n, m.json_field.split(".")) for n, m in spec.metrics.items() if m.json_field]
        self.header_metrics = [(n, m.header) for n, m in spec.metrics.items() if m.header]
        self.custom_metrics = {n for n, m in spec.metrics.items() if m.custom}
        # --- locust-native (#9) ---
        from rollout.load.endpoints import EndpointStats

        self.endpoints: EndpointStats | None = EndpointStats() if spec.endpoint_stats else None
        self.stats.endpoints = self.endpoints
        # --- end locust-native ---

    def role_of(self, response: Any, version: str | None = None) -> str:
        if version is None and response is not None:
            headers = getattr(response, "headers", None)
            if headers is not None:
                version = headers.get(self.header)
        if not version:  # fail closed: with one version alone, an unlabelled answer (or none) is still its
            return self.only_role or "unknown"
        return self.roles.get(version, "unknown")

    def on_custom(self, name: str, value: float, response: Any, version: str | None) -> None:
        """`rollout.metrics.record` from the locustfile lands here."""
        if name in self.custom_metrics:
            self.stats.add_metric(name, self.role_of(response, version), value)
        else:
            self.stats.source_errors[name] = "recorded by the locustfile but not declared as `custom: true` under load.metrics"

    def _content_metrics(self, role: str, response: Any) -> str | None:
        """Read the declared metrics from a response; return why it counts as a failure, if it does.

        Fail closed: when the plan declares a `json` metric, the versions promise JSON answers, so a
        successful answer whose body is not JSON is a failure of the version that sent it. A JSON body
        without the field is not (error bodies and other endpoints may lack it): no value is recorded.
        """
        if self.header_metrics:
            headers = getattr(response, "headers", None) or {}
            for name, header in self.header_metrics:
                raw = headers.get(header)
                if raw is not None:
                    try:
                        self.stats.add_metric(name, role, float(raw))
                    except ValueError:
                        self.stats.source_errors[name] = f"header {header}: {raw!r} is not a number"
        if self.json_metrics:
            try:
                body = json.loads(getattr(response, "content", b"") or b"null")
            except ValueError:
                for name, _ in self.json_metrics:
                    self.stats.source_errors[name] = "a response body is not JSON"
                return f"the answer is not JSON (load.metrics declares json field(s) {', '.join('.'.join(p) for _, p in self.json_metrics)})"
            for name, path in self.json_metrics:
                value = _dig(body, path)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.stats.add_metric(name, role, float(value))
                elif value is not None:
                    self.stats.source_errors[name] = f"field {'.'.join(path)} is {type(value).__name__}, not a number"
        return None

    def on_request(
        self,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int,
        exception: BaseException | None = None,
        response: Any = None,
        context: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        role = self.role_of(response)
        failed = exception is not None
        why = ""
        if response is not None and not failed and (self.json_metrics or self.header_metrics):
            why = self._content_metrics(role, response) or ""
            failed = bool(why)
        if exception is not None:
            why = f"{type(exception).__name__}: {exception}"[:200]
        if failed:
            self.last_error = why
            self.stats.last_failure[role] = why
        ms = float(response_time) if response_time is not None else 0.0
        vs = self.stats.by_role.get(role)
        if vs is None:
            vs = self.stats.by_role[role] = VersionStats()
        vs.add(ms, failed)
        if context and context.get(COHORT_KEY):
            key = f"cohort->{role}"
        else:
            key = f"other->{role}"
        routing = self.stats.cohort_routing
        routing[key] = routing.get(key, 0) + 1
        if self.endpoints is not None:  # locust-native (#9): per-endpoint rows and failure messages
            self.endpoints.add(role, request_type, name, ms, exception)

    def roll_second(self, t: float) -> None:
        """Close the current one-second bucket into the timeline (for reports and plots)."""
        entry: dict[str, Any] = {"t": round(t, 2)}
        for role, vs in self.stats.by_role.items():
            prev = self._prev.get(role) or VersionStats()
            if vs.requests == prev.requests:
                continue
            sec = vs.latency.minus(prev.latency)
            entry[role] = {
                "requests": vs.requests - prev.requests,
                "failures": vs.failures - prev.failures,
                "p50_ms": _r(sec.quantile(0.50)),
                "p95_ms": _r(sec.quantile(0.95)),
                "p99_ms": _r(sec.quantile(0.99)),
            }
            self._prev[role] = VersionStats(vs.requests, vs.failures, vs.latency.copy())
        self.stats.timeline.append(entry)


def _dig(data: Any, path: list[str]) -> Any:
    for key in path:
        if isinstance(data, dict):
            data = data.get(key)
        elif isinstance(data, list) and key.isdigit() and int(key) < len(data):
            data = data[int(key)]
        else:
            return None
    return data


def _poll_prometheus(spec: LoadSpec, stats: StageStats, stop: Any) -> None:
    """Query each Prometheus metric per version every `every` seconds (a greenlet; httpx yields under gevent)."""
    import httpx

    versions = {}
    for name, role in spec.roles.items():
        if name not in ("stable", "canary"):
            versions.setdefault(role, name)
    sources = [(n, m.prometheus) for n, m in spec.metrics.items() if m.prometheus]
    due = {n: 0.0 for n, _ in sources}
    with httpx.Client(trust_env=False) as client:
        while not stop.is_set():
            now = time.monotonic()
            for name, prom in sources:
                if now < due[name]:
                    continue
                due[name] = now + prom.every
                for role in ("stable", "canary"):
                    version = versions.get(role)
                    if version is None:
                        continue
                    query = prom.query.replace("{version}", version).replace("{role}", role)
                    try:
                        r = client.get(prom.url.rstrip("/") + "/api/v1/query", params={"query": query}, timeout=prom.timeout)
                        r.raise_for_status()
                        result = r.json()["data"]["result"]
                        if not result:
                            stats.source_errors[name] = f"no series for {role} ({query})"
                            continue
                        value = sum(float(series["value"][1]) for series in result)
                    except (httpx.HTTPError, KeyError, ValueError, TypeError, IndexError) as exc:
                        stats.source_errors[name] = f"prometheus {role}: {type(exc).__name__}: {exc}"[:200]
                        continue
                    stats.gauges.setdefault(name, {})[role] = value
                    stats.add_metric(name, role, value)
            stop.wait(0.2)


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 3)


def tick_until_done(runner: Any, recorder: Recorder, spec: LoadSpec, on_tick: Callable[[StageStats], bool], start: float,
                    ended: Callable[[], bool] | None = None) -> float:
    """The one load loop (in-process and master/worker): a tick a second until the stage's time or
    request bound is reached, the shape ended (`ended`) or `on_tick` says stop. Returns the elapsed seconds.

    No request at all after `spec.no_request_timeout` seconds is a broken load, not a slow one: LoadError.
    `on_tick.interrupt`, when the callback carries one, is asked every 0.1 s between ticks (it must be cheap):
    True ends the loop at once."""
    interrupt: Callable[[], bool] | None = getattr(on_tick, "interrupt", None)
    next_tick = start + TICK_SECONDS
    while True:
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= spec.duration:
            return elapsed
        if spec.max_requests is not None and recorder.stats.requests >= spec.max_requests:
            return elapsed
        if ended is not None and ended():
            return elapsed
        if now >= next_tick:
            next_tick += TICK_SECONDS
            recorder.roll_second(elapsed)
            recorder.stats.elapsed = elapsed
            recorder.stats.users = runner.user_count
            recorder.stats.users_timeline.append([round(elapsed, 2), runner.user_count])
            recorder.stats.cpu_max = max(recorder.stats.cpu_max, float(getattr(runner, "current_cpu_usage", 0.0) or 0.0))
            if elapsed >= spec.no_request_timeout and recorder.stats.requests == 0:
                raise no_requests_error(spec.no_request_timeout)
            if on_tick(recorder.stats):
                return time.monotonic() - start
        if interrupt is not None and interrupt():  # between ticks: an operator's request, acted on at once
            return time.monotonic() - start
        gevent.sleep(min(0.1, max(0.0, min(next_tick, start + spec.duration) - time.monotonic())))


def shape_class_mapper(classes: list[type[User]]) -> Callable[[list[type[User]] | None], list[type[User]] | None]:
    """A shape's per-tick user classes are the locustfile's; ours are subclasses of the same name (and
    `<Name>Cohort` in cohort stages): map one to the other by name."""

    def mapped(wanted: list[type[User]] | None) -> list[type[User]] | None:
        if wanted is None:
            return None
        names = {c.__name__ for c in wanted}
        return [c for c in classes if c.__name__ in names or c.__name__.removesuffix("Cohort") in names]

    return mapped


def start_load(spec: LoadSpec, runner: Any, env: Any, classes: list[type[User]]) -> Any:
    """Start the stage's users: the shape's greenlet when a shape drives them, else users/spawn_rate.
    Returns an event set when the shape ended (or None)."""
    import gevent.event

    from rollout.load.session import drive_shape

    if env.shape_class is None:
        runner.start(spec.users, spawn_rate=spec.spawn_rate)
        return None
    done = gevent.event.Event()
    runner.shape_greenlet = gevent.spawn(drive_shape, runner, env.shape_class, shape_class_mapper(classes), done)
    return done


def stop_load(runner: Any) -> None:
    """End the stage's users (fires test_stopping/test_stop); the shape's greenlet goes with them."""
    g = getattr(runner, "shape_greenlet", None)
    if g is not None and g is not gevent.getcurrent():
        g.kill(block=True)
    runner.shape_greenlet = None
    runner.stop()


def record_first(hook: Any, listener: Callable[..., Any]) -> None:
    """Add the request listener that records the stage's statistics before every listener already there.

    Locust re-raises RescheduleTask, StopUser and InterruptTaskSet from a `request` listener (the locustfile's way
    to end a task on the first failed request, as in Locust's own response_validations example), and that skips
    the listeners after it. Locust's statistics listener comes before any the locustfile adds in `init`; ours,
    added when the stage starts, would come after and miss exactly the failed requests -- a failing version
    looking clean to the gates. First in the list, it sees every request.
    """
    hook._handlers.insert(0, listener)


def run_load(spec: LoadSpec, on_tick: Callable[[StageStats], bool]) -> StageStats:
    """Run one stage's load; call on_tick(stats) about every second; stop when it returns True.

    Bounded in time (spec.duration) and, when given, in count (spec.max_requests); a shape may end it
    sooner. The Environment and runner are this process's (`rollout.load.session`: built like
    `locust --headless`, lifecycle events fired); the stage stops the runner, also on KeyboardInterrupt,
    which then propagates. `rollout.load.session.close_all` quits it when the process is done.
    """
    from rollout.load import session as sessions

    sess = sessions.session(spec.locustfile, workers=0)
    sessions.check(spec)
    classes = user_classes_for(spec, sess.lf.user_classes)
    recorder = Recorder(spec)
    env, runner = sess.prepare(spec, classes)
    if recorder.endpoints is not None:
        recorder.endpoints.shape = spec.shape
        sess.on_listener_error = recorder.endpoints.add_listener_error
    record_first(env.events.request, recorder.on_request)
    import gevent.event

    stop_polls = gevent.event.Event()
    metrics._install(recorder.on_custom)
    start = time.monotonic()
    try:
        if any(m.prometheus for m in spec.metrics.values()):
            gevent.spawn(_poll_prometheus, spec, recorder.stats, stop_polls)
        done = start_load(spec, runner, env, classes)
        tick_until_done(runner, recorder, spec, on_tick, start, ended=done.is_set if done is not None else None)
    finally:
        stop_polls.set()
        metrics._install(None)
        try:
            stop_load(runner)
        finally:
            env.events.request.remove_listener(recorder.on_request)
            sess.on_listener_error = None
    recorder.stats.elapsed = time.monotonic() - start
    recorder.roll_second(recorder.stats.elapsed)
    if recorder.stats.requests == 0:
        raise no_requests_error(min(spec.no_request_timeout, recorder.stats.elapsed))
    return recorder.stats

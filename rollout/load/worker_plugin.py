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
STAGE_MESSAGE = "rollout_stage"  # master -> workers before each stage: its cohort and roles
READY_MESSAGE = "rollout_ready"  # worker -> master once its handlers exist: the master answers with the running stage
SPEC_ENV = "ROLLOUT_WORKER_SPEC"
EVERY = 1.0


# what a worker started by `rollout load-worker` knows before the master's first `rollout_stage` message
# (`await_stage`: hold what it records until that message says how to attribute it)
DEFAULT_SETTINGS: dict[str, Any] = {"version_header": "X-Version", "roles": {}, "host": "", "cohort": None, "cohort_share": 0.2,
                                    "endpoint_stats": True, "only_role": None, "await_stage": True}


def stage_settings(spec: Any) -> dict[str, Any]:
    """What a worker needs to know about a stage (JSON): attribution and the cohort users."""
    return {"version_header": spec.version_header, "roles": dict(spec.roles), "host": spec.host,
            "cohort": list(spec.cohort) if spec.cohort else None, "cohort_share": spec.cohort_share,
            "endpoint_stats": bool(getattr(spec, "endpoint_stats", True)),
            "only_role": getattr(spec, "only_role", None)}  # fail closed: one version alone owns unlabelled answers


class Shipper:
    """The worker side: record every request, send the deltas to the master every second and at stop."""

    def __init__(self, environment: Any, settings: dict[str, Any]) -> None:
        from rollout.load.runner import LoadSpec, Recorder
        from rollout.load.stats import VersionStats

        spec = LoadSpec(locustfile=Path("-"), host="", users=0, spawn_rate=1, duration=0,
                        version_header=settings.get("version_header", "X-Version"), roles=dict(settings.get("roles", {})),
                        endpoint_stats=bool(settings.get("endpoint_stats", True)),
                        only_role=settings.get("only_role"))
        self.env = environment
        self.recorder = Recorder(spec)
        self._empty = VersionStats
        self.sent: dict[str, Any] = {}
        self.sent_routing: dict[str, int] = {}
        from rollout.load.runner import count_cut_users

        self.cut_sent = count_cut_users()  # users killed mid-task (stop, rebalance): sent as deltas too
        # A worker that joins a running stage may get its users before the stage's settings: Locust's master
        # sends `spawn` on `client_ready`, before this worker's `init` has registered the stage handler (so an
        # earlier `rollout_stage` is dropped). Its requests wait here, unattributed, until the settings come.
        self.pending: list[dict[str, Any]] | None = [] if settings.get("await_stage") else None
        early = _take_early()
        from rollout.load.runner import record_first

        record_first(environment.events.request, self.on_request)  # before the locustfile's (RescheduleTask)
        for kw in early:
            self.on_request(**kw)

    def on_request(self, **kw: Any) -> None:
        if self.pending is not None:
            self.pending.append(kw)
        else:
            self.recorder.on_request(**kw)

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
        from rollout.load.runner import count_cut_users

        cut = count_cut_users()
        if cut != self.cut_sent:
            out["cut_mid_task"], self.cut_sent = cut - self.cut_sent, cut
        ep = self.recorder.endpoints
        if ep is not None and (ep.endpoints or ep.listener_errors):  # locust-native (#9): send and start afresh
            self.recorder.endpoints = self.recorder.stats.endpoints = type(ep)()
            out["endpoints"] = ep.to_dict()
        return out

    def new_stage(self, settings: dict[str, Any]) -> None:
        """Every attribution setting from the master: a `rollout load-worker` started elsewhere knows none of
        them until this message (its $ROLLOUT_WORKER_SPEC holds only defaults)."""
        self.recorder.roles = dict(settings.get("roles") or {})
        self.recorder.header = settings.get("version_header", self.recorder.header)
        self.recorder.only_role = settings.get("only_role")
        if not settings.get("endpoint_stats", True):
            self.recorder.endpoints = self.recorder.stats.endpoints = None
        elif self.recorder.endpoints is None:
            from rollout.load.endpoints import EndpointStats

            self.recorder.endpoints = self.recorder.stats.endpoints = EndpointStats()
        pending, self.pending = self.pending, None
        for kw in pending or ():  # recorded as if the settings had been there from the start
            self.recorder.on_request(**kw)

    def flush(self, **_: Any) -> None:
        data = self.delta()
        runner = self.env.runner
        if (data["roles"] or data["routing"] or data.get("endpoints") or data.get("cut_mid_task")) and runner is not None:
            try:
                runner.send_message(MESSAGE, data)
            except Exception:  # the master is gone: nothing left to report to
                pass

    def loop(self) -> None:
        import gevent

        while True:
            gevent.sleep(EVERY)
            self.flush()


def adopt_running_users(runner: Any, classes: list[Any]) -> int:
    """Give users already running the new class of their name; returns how many changed class.

    Locust stops a worker's users (at the stage's end, or when a rebalance takes some away) by class *identity*
    (`type(user) is runner.user_classes_by_name[name]`), while it counts them by class *name*. A worker that joins
    a running stage is given users before its `init` (Locust's `spawn` answers its `client_ready`), of the
    locustfile's own class; `init` and the stage's settings then replace the classes with same-named subclasses.
    Those first users were counted but could no longer be stopped: they ran on past the stage's `stop`, their
    requests reached the service after the worker's final delta and `client_stopped`, and the master's totals
    came out short of what the service served (measured 1-4 % with one of three workers joining mid-stage).
    The new class is a sibling subclass of the same locustfile class (same layout), so the assignment is safe;
    the user's client keeps the host it was built with, which is the stage's host either way."""
    by_name = {c.__name__: c for c in classes}
    changed = 0
    for g in list(getattr(runner, "user_greenlets", None) or ()):
        user = g.args[0] if g.args else None
        new = by_name.get(type(user).__name__) if user is not None else None
        if new is not None and type(user) is not new:
            try:
                user.__class__ = new
                changed += 1
            except TypeError:  # an incompatible layout (never for our subclasses): leave it as it is
                pass
    return changed


# Requests made before `init`: a worker that joins a running stage gets Locust's `spawn` while it connects,
# before `init` fires, and its users start at once. The global `events` are the worker's (as `locust` builds
# it), so a listener from the import holds them until the Shipper takes them over.
_EARLY: list[dict[str, Any]] | None = None


def _buffer(**kw: Any) -> None:
    if _EARLY is not None:
        _EARLY.append(kw)


def _take_early() -> list[dict[str, Any]]:
    global _EARLY
    early, _EARLY = _EARLY or [], None
    events.request.remove_listener(_buffer)
    return early


CLASSES_WAIT = 15.0  # how long a spawn waits for the stage's user classes (`_wait_for_stage_classes`)


def _wait_for_stage_classes() -> None:
    """A worker's spawns wait (bounded) until every user class they name exists here.

    A worker joining a cohort stage is told to spawn `<User>Cohort` users while it connects -- before `init`,
    before the stage's settings (`rollout_stage`, the answer to `rollout_ready`) have defined that class here --
    and Locust's `start_worker` died on the unknown name (KeyError: the worker exited 2, its load lost). The
    spawn runs in its own greenlet, so waiting there lets `init` and the stage's answer arrive; a spawn whose
    classes all exist (every other case) does not wait at all."""
    import time

    import gevent
    from locust.runners import WorkerRunner

    plain = WorkerRunner.start_worker
    if getattr(plain, "_rollout_waits_for_classes", False):
        return

    def start_worker(self: Any, user_classes_count: dict[str, int], **kwargs: Any) -> None:
        deadline = time.monotonic() + CLASSES_WAIT
        while any(name not in self.user_classes_by_name for name in user_classes_count) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        return plain(self, user_classes_count, **kwargs)

    start_worker._rollout_waits_for_classes = True  # type: ignore[attr-defined]
    WorkerRunner.start_worker = start_worker  # type: ignore[method-assign]


if os.environ.get(SPEC_ENV):
    _EARLY = []
    events.request.add_listener(_buffer)
    _wait_for_stage_classes()


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
    base = list(environment.user_classes)

    def set_classes(settings: dict[str, Any]) -> None:
        # the master's user classes (`<User>`, and `<User>Cohort` in cohort stages) must exist here too, by name
        from rollout.load.runner import LoadSpec, user_classes_for

        cohort = settings.get("cohort")
        spec = LoadSpec(locustfile=Path("-"), host=settings.get("host") or "", users=0, spawn_rate=1, duration=0,
                        cohort=tuple(cohort) if cohort else None, cohort_share=float(settings.get("cohort_share", 0.2)))
        environment.user_classes = user_classes_for(spec, base)
        environment._tasks_filtered = False  # new subclasses: Locust filters by tag again at the next test_start
        adopt_running_users(environment.runner, environment.user_classes)

    set_classes(settings)
    shipper = Shipper(environment, settings)
    applied = [settings]

    def on_stage(environment: Any, msg: Any, **_: Any) -> None:  # before the stage's spawn message (in order)
        data = dict(msg.data)
        answer = data.pop("answer", False)  # the master's answer to `rollout_ready`, not a stage's start
        if answer and data == applied[0]:
            return  # the stage's own message came first (and maybe its spawn): keep the classes its users run
        applied[0] = data
        set_classes(data)
        shipper.new_stage(data)
        if answer and environment.runner.worker_state in ("running", "spawning"):
            environment._filter_tasks_by_tags()  # users already run (spawned before `init`): later ones obey the tags too

    environment.runner.register_message(STAGE_MESSAGE, on_stage)
    environment.events.test_stop.add_listener(shipper.flush)
    gevent.spawn(shipper.loop)
    try:  # now this worker can take the stage's settings: ask for them (the master answers if a stage runs)
        environment.runner.send_message(READY_MESSAGE, None)
    except Exception:  # noqa: BLE001 - no master yet: the stage message comes before its spawn anyway
        pass

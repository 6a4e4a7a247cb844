"""Load across cores: Locust's own master/worker mode, N local worker processes, the same gates.

The master runner lives in this process (`env.create_master_runner`), so the
gates are judged here every second exactly as in `run_load`; the users run in
N `locust -f worker_plugin.py,LOCUSTFILE --worker --master-host 127.0.0.1
--master-port P` processes. Attribution per version: each worker records every
request with the same recorder as the in-process load and sends per-version
deltas (requests, failures, a latency histogram) to the master once a second
as the custom message `rollout_stats` (see `worker_plugin`); the master merges
them into one StageStats, which is what the judge and the reports read. So
percentiles stay exact to the histogram's 0.5 %, not Locust's rounding, and a
request is counted for the version whose header answered it.

Lag: a worker's numbers reach the gates up to ~1 s later than in-process; at
the end the master stops the workers and waits for their last deltas before
it returns.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent

from rollout.errors import LoadError
from rollout.load import worker_plugin
from rollout.load.runner import (
    LoadSpec,
    Recorder,
    tick_until_done,
    user_classes_for,
)
from rollout.load.stats import StageStats, VersionStats
from rollout.stats.histogram import Histogram

READY_TIMEOUT = 45.0
FINAL_FLUSH = 5.0  # a bound only: normally the workers report stopped within a fraction of a second


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def merge_delta(stats: StageStats, data: dict[str, Any]) -> None:
    """Add one worker's per-second delta to the stage's statistics."""
    for role, d in (data.get("roles") or {}).items():
        vs = stats.by_role.get(role)
        if vs is None:
            vs = stats.by_role[role] = VersionStats()
        vs.merge(VersionStats(int(d["requests"]), int(d["failures"]), Histogram.from_dict(d["latency"])))
    for key, n in (data.get("routing") or {}).items():
        stats.cohort_routing[key] = stats.cohort_routing.get(key, 0) + int(n)
    if data.get("endpoints") and stats.endpoints is not None:  # locust-native (#9)
        from rollout.load.endpoints import EndpointStats

        stats.endpoints.merge(EndpointStats.from_dict(data["endpoints"]))


class Workers:
    """N worker processes; their output goes to a temporary file shown when they fail."""

    def __init__(self, spec: LoadSpec, n: int, port: int) -> None:
        from rollout.load.session import option_args

        self.log = tempfile.NamedTemporaryFile(prefix="rollout-workers-", suffix=".log", delete=False)
        settings = worker_plugin.stage_settings(spec)
        env = {**os.environ, worker_plugin.SPEC_ENV: json.dumps(settings), "PYTHONUNBUFFERED": "1"}
        files = f"{Path(worker_plugin.__file__).resolve()},{spec.locustfile.resolve()}"
        # the locustfile's own options and the tags, as `locust --worker` would be given them (its `init` sees them)
        extra = option_args(spec.options or ())
        if spec.tags:
            extra += ["--tags", *spec.tags]
        if spec.exclude_tags:
            extra += ["--exclude-tags", *spec.exclude_tags]
        cmd = [sys.executable, "-m", "locust", "-f", files, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port),
               "--loglevel", "WARNING", *extra]
        self.procs = [subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) for _ in range(n)]

    def output(self) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def dead(self) -> list[int]:
        return [p.returncode for p in self.procs if p.poll() is not None]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def run_load_distributed(spec: LoadSpec, on_tick: Callable[[StageStats], bool], workers: int) -> StageStats:
    """`run_load` with the users in `workers` Locust worker processes; same contract (ticks, bounds, cleanup).

    The master runner and the worker processes are this process's session (`rollout.load.session`): they
    live across stages, as `init`/`quitting` fire once per process in a Locust run; each stage sends the
    workers its settings (`rollout_stage`: cohort, roles) before it starts them."""
    from rollout.load import session as sessions
    from rollout.load.runner import no_requests_error, start_load, stop_load

    sess = sessions.session(spec.locustfile, workers=workers)
    sessions.check(spec)
    classes = user_classes_for(spec, sess.lf.user_classes)
    recorder = Recorder(spec)  # its timeline logic; the requests arrive from the workers
    if recorder.endpoints is not None:
        recorder.endpoints.shape = spec.shape
    first = sess.env is None
    env, runner = sess.prepare(spec, classes)
    if first:
        runner.register_message(worker_plugin.MESSAGE, lambda msg, **_: sess.merge(msg.data))
        sess.procs = Workers(spec, workers, sess.port)
    sess.merge = lambda data: merge_delta(recorder.stats, data)  # this stage's statistics
    procs = sess.procs
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while len(runner.clients.ready) < workers:
            if procs.dead() or time.monotonic() > deadline:
                raise LoadError(f"{workers} Locust worker(s) did not connect ({len(runner.clients.ready)} ready): {procs.output().strip() or 'no output'}",
                                "run the locustfile with `locust -f FILE --worker` to see why")
            gevent.sleep(0.1)
        runner.send_message(worker_plugin.STAGE_MESSAGE, worker_plugin.stage_settings(spec))
        start = time.monotonic()
        done = start_load(spec, runner, env, classes)
        elapsed = tick_until_done(runner, recorder, spec, on_tick, start, ended=done.is_set if done is not None else None)
        # Workers stop their users, send their last deltas (on test_stop), then `client_stopped`: messages
        # arrive in order, so once the master counts every worker stopped, every delta has been merged.
        stop_load(runner)
        flush_until = time.monotonic() + FINAL_FLUSH
        while time.monotonic() < flush_until and runner.state != "stopped":
            gevent.sleep(0.05)
    except BaseException:
        try:
            stop_load(runner)
        finally:
            sess.close(1)
        raise
    recorder.stats.elapsed = elapsed
    recorder.roll_second(elapsed)
    if recorder.stats.requests == 0:
        raise no_requests_error(min(spec.no_request_timeout, elapsed))
    return recorder.stats


def load_runner(workers: int) -> Callable[[LoadSpec, Callable[[StageStats], bool]], StageStats]:
    """A LoadRunner for the engine or `rollout gate`: in-process (`run_load`) for 0 workers, else this module's."""
    if workers <= 0:
        from rollout.load.runner import run_load

        return run_load
    return lambda spec, on_tick: run_load_distributed(spec, on_tick, workers=workers)

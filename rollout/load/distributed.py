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

Workers beyond this machine (#13): `rollout load-worker --master HOST:PORT`
runs exactly the command `Workers` starts here (`worker_command`, the same
plugin and environment), only pointed at a master elsewhere; the master side
is `rollout gate/run/advance --expect-workers N --master-bind HOST:PORT`
(`External`), which starts no process and waits, bounded, for N of them to
join. Each stage's settings (`rollout_stage`) reach every worker before its
users start, also a worker that joins late: it asks for them (`rollout_ready`)
once its handlers exist, and holds what it records until they come (Locust may
give it users before that).
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
from dataclasses import dataclass
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
EXTERNAL_READY_TIMEOUT = 120.0  # workers on other machines: started by a person or a CI job, maybe after the master
DEFAULT_MASTER_PORT = 5557  # Locust's own default (--master-bind-port / --master-port)
FINAL_FLUSH = 5.0  # a bound only: normally the workers report stopped within a fraction of a second


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_address(text: str, flag: str, default_host: str | None = None) -> tuple[str, int]:
    """`HOST:PORT` (or `PORT` when a default host is given) -> (host, port); UsageError (exit 2) otherwise."""
    from rollout.errors import UsageError

    host, sep, port = str(text).strip().rpartition(":")
    if not sep:
        host = default_host or ""
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} {text!r}: expected HOST:PORT with a port from 1 to 65535", f"e.g. {flag} 10.0.0.5:{DEFAULT_MASTER_PORT}")
    return host, int(port)


def worker_command(locustfile: Path, master_host: str, master_port: int, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The one worker command line: `locust -f worker_plugin.py,LOCUSTFILE --worker --master-host H --master-port P`.

    Local workers (`Workers`) and `rollout load-worker` on another machine both run exactly this."""
    files = f"{Path(worker_plugin.__file__).resolve()},{Path(locustfile).resolve()}"
    return [sys.executable, "-m", "locust", "-f", files, "--worker", "--master-host", master_host, "--master-port", str(master_port),
            "--loglevel", "WARNING", *extra]


def worker_env(settings: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: the plugin's first stage settings (each stage sends its own before it starts)."""
    return {**(os.environ if base is None else base), worker_plugin.SPEC_ENV: json.dumps(settings), "PYTHONUNBUFFERED": "1"}


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
        env = worker_env(worker_plugin.stage_settings(spec))
        # the locustfile's own options and the tags, as `locust --worker` would be given them (its `init` sees them)
        extra = option_args(spec.options or ())
        if spec.tags:
            extra += ["--tags", *spec.tags]
        if spec.exclude_tags:
            extra += ["--exclude-tags", *spec.exclude_tags]
        cmd = worker_command(spec.locustfile, "127.0.0.1", port, extra)
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


@dataclass(frozen=True)
class External:
    """The master waits for `rollout load-worker` processes started elsewhere instead of starting its own."""

    bind_host: str = "0.0.0.0"
    port: int = DEFAULT_MASTER_PORT
    ready_timeout: float = EXTERNAL_READY_TIMEOUT

    @property
    def address(self) -> str:
        return f"{self.bind_host}:{self.port}"


class Joined:
    """`Workers`' place for external workers: nothing to start or stop here (the master's quit ends them)."""

    def __init__(self, external: External) -> None:
        self.external = external

    def output(self) -> str:
        return ""

    def dead(self) -> list[int]:
        return []

    def stop(self) -> None:
        pass


def run_load_distributed(spec: LoadSpec, on_tick: Callable[[StageStats], bool], workers: int,
                         external: External | None = None) -> StageStats:
    """`run_load` with the users in `workers` Locust worker processes; same contract (ticks, bounds, cleanup).

    With `external` none is started here: the master binds `external.bind_host:port` and waits up to
    `external.ready_timeout` for `workers` of `rollout load-worker` to join (LoadError, exit 3, naming how
    many did).

    The master runner and the worker processes are this process's session (`rollout.load.session`): they
    live across stages, as `init`/`quitting` fire once per process in a Locust run; each stage sends the
    workers its settings (`rollout_stage`: cohort, roles) before it starts them."""
    from rollout.load import session as sessions
    from rollout.load.runner import no_requests_error, start_load, stop_load

    sess = sessions.session(spec.locustfile, workers=workers, bind=(external.bind_host, external.port) if external else None)
    sessions.check(spec)
    classes = user_classes_for(spec, sess.lf.user_classes)
    recorder = Recorder(spec)  # its timeline logic; the requests arrive from the workers
    if recorder.endpoints is not None:
        recorder.endpoints.shape = spec.shape
    first = sess.env is None
    env, runner = sess.prepare(spec, classes)
    if first:
        runner.register_message(worker_plugin.MESSAGE, lambda msg, **_: sess.merge(msg.data))
        # a worker that joins late asks for the running stage's settings once it can take them (`rollout_ready`);
        # what it recorded before the answer waits in the worker (`Shipper.pending`)
        runner.register_message(worker_plugin.READY_MESSAGE, lambda msg, **_: sess.stage is not None and runner.send_message(
            worker_plugin.STAGE_MESSAGE, {**sess.stage, "answer": True}, client_id=msg.node_id))
        sess.procs = Joined(external) if external is not None else Workers(spec, workers, sess.port)
    sess.merge = lambda data: merge_delta(recorder.stats, data)  # this stage's statistics
    sess.stats = recorder.stats  # read live by `rollout load-master` (rollout.load.master)
    sess.stage = worker_plugin.stage_settings(spec)
    procs = sess.procs
    try:
        timeout = external.ready_timeout if external is not None else READY_TIMEOUT
        deadline = time.monotonic() + timeout
        if external is not None and len(runner.clients.ready) < workers:
            print(f"waiting for {workers} Locust worker(s) at {external.address} (up to {timeout:g}s): "
                  f"start them with `rollout load-worker --master THIS_HOST:{external.port} --locustfile {spec.locustfile.name}`",
                  file=sys.stderr, flush=True)
        while len(runner.clients.ready) < workers:
            if external is not None and time.monotonic() > deadline:
                raise LoadError(f"{len(runner.clients.ready)} of {workers} external Locust worker(s) joined the master at "
                                f"{external.address} within {timeout:g}s",
                                f"start them with `rollout load-worker --master HOST:{external.port} --locustfile FILE` where they can reach "
                                f"this machine, or wait longer with --ready-timeout")
            if procs.dead() or time.monotonic() > deadline:
                raise LoadError(f"{workers} Locust worker(s) did not connect ({len(runner.clients.ready)} ready): {procs.output().strip() or 'no output'}",
                                "run the locustfile with `locust -f FILE --worker` to see why")
            gevent.sleep(0.1)
        runner.send_message(worker_plugin.STAGE_MESSAGE, sess.stage)
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


def load_runner(workers: int, external: External | None = None) -> Callable[[LoadSpec, Callable[[StageStats], bool]], StageStats]:
    """A LoadRunner for the engine or `rollout gate`: in-process (`run_load`) for 0 workers, else this module's
    (with `external`: the workers are `rollout load-worker` processes that join from elsewhere)."""
    if workers <= 0:
        from rollout.load.runner import run_load

        return run_load
    return lambda spec, on_tick: run_load_distributed(spec, on_tick, workers=workers, external=external)

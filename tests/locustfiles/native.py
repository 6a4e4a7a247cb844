"""A locustfile that exercises what `locust --headless` gives a locustfile, and writes down what it saw.

Every lifecycle event, the user counts over time (read from the runner each second, on the process that
owns the users' count: local or master) and the requests made per name are appended to the file named by
$NATIVE_RECORD as JSON lines, one per observation, tagged with the process id. The tests run this file
under plain `locust --headless` and under `rollout` and compare the records.

Features: a custom option (`--greeting`, registered through init_command_line_parser, sent as a header and
recorded); tags (`read`, `write`); HttpUser and FastHttpUser; weights and fixed_count; a LoadTestShape with
steps and per-tick user classes (`Steps`, chosen by name: `Flat` exists too, so nothing picks one by accident).
"""

import json
import os
import time

import gevent
from locust import FastHttpUser, HttpUser, LoadTestShape, between, constant, events, tag, task
from locust.runners import MasterRunner, WorkerRunner

RECORD = os.environ.get("NATIVE_RECORD", "")
_counts: dict[str, int] = {}


def note(kind: str, **data) -> None:
    if RECORD:
        with open(RECORD, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "t": time.time(), "event": kind, **data}) + "\n")


@events.init_command_line_parser.add_listener
def _(parser, **_kw):
    parser.add_argument("--greeting", type=str, default="none", help="sent as X-Greeting")


@events.init.add_listener
def on_init(environment, runner, web_ui=None, **_kw):
    note("init", runner=type(runner).__name__, web_ui=web_ui is None, greeting=getattr(environment.parsed_options, "greeting", None),
         tags=getattr(environment.parsed_options, "tags", None))


@events.test_start.add_listener
def on_test_start(environment, **_kw):
    _counts.clear()
    note("test_start", greeting=environment.parsed_options.greeting)
    if not isinstance(environment.runner, WorkerRunner):
        def watch():
            t0 = time.monotonic()
            while True:
                gevent.sleep(1.0)
                runner = environment.runner  # a master counts its workers' users (reported), a local runner its own
                counts = runner.reported_user_classes_count if isinstance(runner, MasterRunner) else runner.user_classes_count
                note("users", s=round(time.monotonic() - t0, 1), n=runner.user_count, classes={k: v for k, v in counts.items() if v})
        environment.rollout_watch = gevent.spawn(watch)


@events.spawning_complete.add_listener
def on_spawning_complete(user_count, **_kw):
    note("spawning_complete", user_count=user_count)


@events.request.add_listener
def on_request(name, **_kw):
    _counts[name] = _counts.get(name, 0) + 1


@events.test_stopping.add_listener
def on_test_stopping(environment, **_kw):
    note("test_stopping")


@events.test_stop.add_listener
def on_test_stop(environment, **_kw):
    watch = getattr(environment, "rollout_watch", None)
    if watch is not None:
        watch.kill(block=False)
    note("test_stop", requests=dict(_counts))


@events.quitting.add_listener
def on_quitting(environment, **_kw):
    note("quitting")


@events.quit.add_listener
def on_quit(exit_code, **_kw):
    note("quit", exit_code=exit_code)


class Reader(HttpUser):
    weight = 3
    wait_time = constant(0.05)

    def on_start(self):
        self.client.headers["X-Greeting"] = self.environment.parsed_options.greeting

    @tag("read")
    @task(3)
    def read(self):
        self.client.get("/api/answer", name="read")

    @tag("write")
    @task(1)
    def write(self):
        self.client.get("/api/answer", name="write")


class Fast(FastHttpUser):
    weight = 1
    wait_time = between(0.02, 0.08)

    @tag("read")
    @task
    def fast_read(self):
        self.client.get("/api/answer", name="fast-read")

    @tag("write")
    @task
    def fast_write(self):
        self.client.get("/api/answer", name="fast-write")


class Admin(HttpUser):
    fixed_count = 1
    wait_time = constant(0.2)

    @tag("read")
    @task
    def admin(self):
        self.client.get("/api/answer", name="admin")


class Steps(LoadTestShape):
    """Three steps of 2 s: Readers only, then all classes, then fewer; then the shape ends."""

    def tick(self):
        t = self.get_run_time()
        if t < 2:
            return (2, 20, [Reader])
        if t < 4:
            return (6, 20, [Reader, Fast, Admin])
        if t < 6:
            return (3, 20, [Reader, Fast, Admin])
        return None


class Flat(LoadTestShape):
    def tick(self):
        return (2, 10) if self.get_run_time() < 3 else None

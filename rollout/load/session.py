"""One Locust per process, built the way `locust --headless` builds it, so a locustfile sees the same things.

What `locust` does, and what this module does the same way:
  * the Environment is built on Locust's global `locust.events` (a locustfile's
    `@events.X.add_listener` registers there), with `parsed_options` from
    Locust's own parser (`locust.argument_parser.get_parser`, which fires
    `init_command_line_parser`, so options a locustfile registers parse), and
    `tags` / `exclude_tags` taken from those options as `--tags` would;
  * `init(environment, runner, web_ui=None)` is fired once the runner exists;
  * `test_start`, `spawning_complete`, `test_stopping`, `test_stop` are fired
    by Locust's runner itself (start and stop);
  * `quitting(environment)` (listeners in reverse order) then `quit(exit_code)`
    when the process is done with load (`close_all`, called by the CLI, and at
    exit as a fallback);
  * a LoadTestShape drives users, spawn rate and per-tick user classes (the
    loop of Locust's `Runner.shape_worker`, see `drive_shape`).

Several stages in one process (`rollout run`), and what fires when — exactly as
a Locust process that runs several tests one after another (web UI: start,
stop, start again):
  * once per process: the locustfile is imported, `init_command_line_parser`,
    `init`, and at the end `quitting` and `quit`;
  * once per stage: `test_start` (stats reset), `spawning_complete` (after each
    ramp, so again when a shape changes the user count), `test_stopping`,
    `test_stop`;
  * each stage gets its own host, user count and user classes on the same
    Environment and runner (`environment.host`, `environment.parsed_options.host`
    and `num_users` follow the stage); objects a listener kept from `init`
    stay valid.
With `load.workers` the master runner lives here and the same rules hold in
every worker process (`locust --worker` fires `init` and `quitting` itself; the
master's start/stop drive `test_start`...`test_stop` there), because the
workers live as long as the session, not one stage.

Exceptions in listeners: Locust logs them and carries on; here each one is
also recorded (`EndpointStats.listener_errors`, shown in every report and on
stderr), and an exception in an `init` listener stops the load before it
starts (Locust exits 1 there too).
"""

from __future__ import annotations

import locust  # noqa: F401  (first: gevent monkey-patching must precede ssl/urllib3)

import argparse
import atexit
import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from locust import User
from locust.env import Environment
from locust.shape import LoadTestShape

from rollout.errors import BadInput, LoadError

LISTENER_ERROR = "Uncaught exception in event handler"


class LocustfileInvalid(BadInput):
    """The locustfile cannot be used: it does not import, has no User class, or names something it lacks."""


@dataclass
class Locustfile:
    """A locustfile imported once per process (importing twice would register its listeners twice)."""

    path: Path
    user_classes: list[type[User]]
    shapes: dict[str, LoadTestShape]  # class name -> instance, as `locust` makes them

    @property
    def tags(self) -> set[str]:
        return set().union(*(tags_of(c) for c in self.user_classes)) if self.user_classes else set()


_LOADED: dict[Path, Locustfile] = {}


def load(path: Path) -> Locustfile:
    """Import the locustfile (once per process); LocustfileInvalid (exit 2) says what is wrong with it."""
    from locust.util.load_locustfile import load_locustfile

    key = Path(path).resolve()
    if key in _LOADED:
        return _LOADED[key]
    if not key.is_file():
        raise LocustfileInvalid(f"locustfile {path} does not exist", "fix --locustfile or load.locustfile in the plan")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            classes, shapes = load_locustfile(str(key))
    except SystemExit as exc:
        raise LocustfileInvalid(f"locustfile {path} could not be loaded (exit {exc.code}): {err.getvalue().strip()[-300:]}",
                                "run it with `locust -f FILE --headless` to see why") from None
    except BaseException as exc:  # noqa: BLE001 - any error of the user's module is the user's input
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise LocustfileInvalid(f"locustfile {path} failed to import: {type(exc).__name__}: {exc}",
                                "fix the locustfile; `python FILE` shows the traceback") from None
    users = [c for c in classes.values() if not getattr(c, "abstract", False)]
    if not users:
        raise LocustfileInvalid(f"locustfile {path} defines no User class",
                                "define a class deriving from locust's HttpUser or FastHttpUser (not abstract)")
    lf = Locustfile(key, users, {type(s).__name__: s for s in shapes})
    _LOADED[key] = lf
    return lf


def tags_of(holder: Any, seen: set[int] | None = None) -> set[str]:
    """Every tag on a User's (or TaskSet's) tasks, recursively: what `--tags` can select."""
    seen = seen if seen is not None else set()
    if id(holder) in seen:
        return set()
    seen.add(id(holder))
    out: set[str] = set(getattr(holder, "locust_tag_set", set()) or set())
    for task in getattr(holder, "tasks", []) or []:
        out |= set(getattr(task, "locust_tag_set", set()) or set())
        if isinstance(task, type):
            out |= tags_of(task, seen)
    return out


def option_args(options: dict[str, Any] | Iterable[tuple[str, Any]]) -> list[str]:
    """`{my-option: x, flag: true, list: [a, b]}` -> ['--my-option', 'x', '--flag', '--list', 'a', 'b']."""
    items = options.items() if isinstance(options, dict) else options
    args: list[str] = []
    for name, value in items:
        flag = "--" + str(name).lstrip("-").replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list | tuple):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def locust_args(spec: Any) -> list[str]:
    """The command line a `locust --headless` run of this stage would have."""
    args = ["-f", str(spec.locustfile), "--headless", "--host", spec.host, "--users", str(spec.users),
            "--spawn-rate", str(spec.spawn_rate), "--run-time", f"{max(1, int(round(spec.duration)))}s"]
    if spec.tags:
        args += ["--tags", *spec.tags]
    if spec.exclude_tags:
        args += ["--exclude-tags", *spec.exclude_tags]
    return args + option_args(spec.options or ())


def parse_options(args: list[str]) -> argparse.Namespace:
    """Locust's own parser (with the locustfile's `init_command_line_parser` options); bad input is exit 2.

    `locust.argument_parser.parse_options` is this, plus a deprecation print; the parser errors are
    turned into one `Error:` line instead of argparse's usage text."""
    from locust.argument_parser import get_parser

    parser = get_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(args=args)
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        at = next((i for i, x in enumerate(lines) if "error:" in x), max(0, len(lines) - 1))
        text = " ".join(x.strip() for x in lines[at:]).split("error:", 1)[-1].strip() or " ".join(args)
        raise LocustfileInvalid(f"Locust's parser refused the options: {text}",
                                "load.options takes the names the locustfile registers (init_command_line_parser) "
                                "or Locust's own (`locust --help`)") from None


def check(spec: Any) -> Locustfile:
    """Everything about a stage's locustfile that is the user's input, before any load: import, shape, tags, options."""
    lf = load(spec.locustfile)
    if spec.shape and spec.shape not in lf.shapes:
        have = ", ".join(lf.shapes) or "none"
        raise LocustfileInvalid(f"locustfile {spec.locustfile} has no LoadTestShape class `{spec.shape}` (it has: {have})",
                                "fix load.shape / stages[].shape (a class name in the locustfile)")
    known = lf.tags
    for flag, names in (("tags", spec.tags), ("exclude_tags", spec.exclude_tags)):
        missing = sorted(set(names or ()) - known)
        if missing:
            raise LocustfileInvalid(f"load.{flag}: {', '.join(missing)} tag{'s' if len(missing) > 1 else ''} no task of {spec.locustfile}",
                                    f"use tags the locustfile's @tag decorators name: {', '.join(sorted(known)) or 'it has none'}")
    parse_options(locust_args(spec))
    return lf


class _ListenerErrors(logging.Handler):
    """Catches Locust's 'Uncaught exception in event handler' log records: listeners' errors, not swallowed."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            return
        if msg.startswith(LISTENER_ERROR):
            self.sink(msg)


class Session:
    """One Environment and one runner (local, or master with worker processes) for the life of the process."""

    def __init__(self, locustfile: Locustfile, workers: int, bind: tuple[str, int] | None = None) -> None:
        self.lf = locustfile
        self.workers = workers
        self.bind = bind  # external workers (`rollout load-worker`): the master's address; None: 127.0.0.1, a free port
        self.stage: dict[str, Any] | None = None  # the running stage's worker settings (rollout_stage), for late joiners
        self.env: Environment | None = None
        self.runner: Any = None
        self.procs: Any = None  # rollout.load.distributed.Workers
        self.port = 0
        self.listener_errors: list[str] = []
        self._handler = _ListenerErrors(self._listener_error)
        self.on_listener_error: Callable[[str], None] | None = None
        self.merge: Callable[[dict[str, Any]], None] = lambda data: None  # workers' deltas -> the running stage
        self.stats: Any = None  # the running stage's StageStats (master side), read by rollout.load.master
        self.closed = False
        self._handlers: dict[str, list[Any]] = {}  # the global events' listeners before this session added any

    def _listener_error(self, text: str) -> None:
        self.listener_errors.append(text)
        print(f"warning: a listener of the locustfile raised: {text.splitlines()[-1] if text else ''}", file=sys.stderr, flush=True)
        if self.on_listener_error is not None:
            self.on_listener_error(text)

    def prepare(self, spec: Any, classes: list[type[User]]) -> tuple[Environment, Any]:
        """The Environment set up for this stage (built, runner created and `init` fired on the first)."""
        options = parse_options(locust_args(spec))
        shape = self.lf.shapes.get(spec.shape) if spec.shape else None
        if self.env is None:
            logging.getLogger().addHandler(self._handler)
            # listeners as the locustfile's import left them; the runner and `init` listeners add more, which
            # `close` removes, so a later session in this process (`run --wait` after a review) starts clean
            self._handlers = {k: list(v._handlers) for k, v in vars(locust.events).items() if hasattr(v, "_handlers")}
            env = Environment(
                user_classes=classes, host=spec.host, events=locust.events, parsed_options=options,
                locustfile=os.path.basename(str(self.lf.path)), parsed_locustfiles=[str(self.lf.path)],
                available_user_classes={c.__name__: c for c in self.lf.user_classes}, available_shape_classes=dict(self.lf.shapes),
                shape_class=shape,
            )
            self.env = env
            if self.workers > 0:
                from locust.exception import RPCError

                from rollout.load.distributed import free_port

                host, self.port = self.bind or ("127.0.0.1", free_port())
                try:
                    self.runner = env.create_master_runner(host, self.port)
                except RPCError as exc:  # the address is taken or not this machine's
                    self.env = None
                    raise LoadError(f"the Locust master cannot listen on {host}:{self.port}: {exc}",
                                    "pick a free port (--master-bind HOST:PORT) on an address of this machine") from None
            else:
                self.runner = env.create_local_runner()
            before = len(self.listener_errors)
            locust.events.init.fire(environment=env, runner=self.runner, web_ui=None)
            if len(self.listener_errors) > before:
                last = self.listener_errors[-1].strip().splitlines()[-1]
                self.close(1)
                raise LoadError(f"an `init` listener of {self.lf.path.name} raised: {last}",
                                "fix the listener (Locust itself exits on this too); the traceback is above")
        else:
            env = self.env
            env.user_classes = classes
            env.host = spec.host
            vars(env.parsed_options).update(vars(options))  # same object: listeners that kept it see this stage
            env.shape_class = shape
            # Locust filters tasks by tag once per Environment (`_tasks_filtered`); this stage's classes are new
            # subclasses, so filter again when the runner starts (test_start), as for the first stage.
            env._tasks_filtered = False  # type: ignore[attr-defined]
        if shape is not None:
            shape.runner = self.runner
        return env, self.runner

    def close(self, exit_code: int = 0) -> None:
        """End of load in this process: runner quit (test_stopping/test_stop if running), `quitting`, `quit`."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.runner is not None:
                self.runner.quit()
            if self.env is not None:
                locust.events.quitting.fire(environment=self.env, reverse=True)
                locust.events.quit.fire(exit_code=exit_code)
        finally:
            if self.procs is not None:
                self.procs.stop()
            logging.getLogger().removeHandler(self._handler)
            for name, handlers in self._handlers.items():
                getattr(locust.events, name)._handlers[:] = handlers
            _SESSIONS.pop((self.lf.path, self.workers, self.bind), None)


_SESSIONS: dict[tuple[Path, int, tuple[str, int] | None], Session] = {}


def session(locustfile: Path, workers: int, bind: tuple[str, int] | None = None) -> Session:
    """This process's session for the locustfile (a different file, worker count or master address closes the
    other one first: one Environment per process on the global events)."""
    lf = load(locustfile)
    key = (lf.path, workers, bind)
    s = _SESSIONS.get(key)
    if s is None:
        close_all()
        s = _SESSIONS[key] = Session(lf, workers, bind)
    return s


def close_all(exit_code: int = 0) -> None:
    for s in list(_SESSIONS.values()):
        s.close(exit_code)


atexit.register(close_all)


def drive_shape(runner: Any, shape: LoadTestShape, map_classes: Callable[[list[type[User]] | None], list[type[User]] | None],
                done: Any) -> None:
    """Locust's `Runner.shape_worker` loop (a tick a second; start when the tick changes), except that the
    end of the shape ends the stage (`done` set) instead of quitting the process: the stage loop stops the
    runner, and a later stage may run."""
    shape.reset_time()
    last: Any = None
    while True:
        t0 = time.time()
        tick = shape.tick()
        if tick is None:
            done.set()
            return
        if tick != last:
            if len(tick) == 2:
                users, rate = tick
                classes = None
            else:
                users, rate, classes = tick
            runner.start(user_count=users, spawn_rate=rate, user_classes=map_classes(classes))
            last = tick
        gevent.sleep(max(1 - (time.time() - t0), 0))

"""The `rollout` command line: one function per verb, errors turned into messages in one place.

Start-up stays fast: nothing heavy is imported at module level. Commands that
run load import `rollout.load.runner` (and so locust) *first*, before
anything that imports ssl (httpx, the kubernetes client).
"""

from __future__ import annotations

import json
import signal
import sys
from enum import Enum
from typing import Annotated, Any, NoReturn, Optional

import typer

try:  # recent typer vendors its own click; its usage errors derive from this
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException  # type: ignore[no-redef]

from rollout.plan.names import printable
from rollout.plan.limits import MAX_USERS, MAX_WORKERS
from rollout.errors import (
    EXIT_BAD_INPUT,
    EXIT_BUG,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PAUSED,
    EXIT_GATE_FAILED,
    Interrupted,
    PlanInvalid,
    RolloutError,
)

EPILOG = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())

app = typer.Typer(
    name="rollout",
    help="Staged rollouts with real load and gates: shift traffic stage by stage, load it with Locust, "
    "judge every second, roll back by itself.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from rollout import __version__

        print(f"rollout {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _top(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="print rollout's version and exit")] = False) -> None:
    """Staged rollouts with real load and gates: shift traffic stage by stage, load it with Locust, judge every second, roll back by itself."""


class Output(str, Enum):
    text = "text"
    json = "json"


PlanArg = Annotated[str, typer.Argument(help="the rollout plan (YAML)", metavar="PLAN")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text for people, json for machines")]
StateDirOpt = Annotated[
    Optional[str], typer.Option("--state-dir", help="where the local backend keeps state (default: .rollout beside the plan; $ROLLOUT_STATE_DIR)")
]
VersionOpt = Annotated[Optional[str], typer.Option("--version", "-v", help="the version to roll out (default: target.canary in the plan)")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="why, for the audit trail")]
JunitOpt = Annotated[Optional[str], typer.Option("--junit", help="write a JUnit XML report (each gate a test case)", metavar="FILE")]
JsonOpt = Annotated[Optional[str], typer.Option("--json", help="write the full JSON report (re-render it with `rollout report`)", metavar="FILE")]
MarkdownOpt = Annotated[Optional[str], typer.Option("--markdown", help="write a Markdown summary (also appended to $GITHUB_STEP_SUMMARY when set)", metavar="FILE")]
HtmlOpt = Annotated[Optional[str], typer.Option("--html", help="write one self-contained HTML file with plots", metavar="FILE")]
TagsOpt = Annotated[Optional[list[str]], typer.Option("--tags", help="run only tasks with this @tag (repeatable; overrides load.tags), as `locust --tags`", metavar="TAG")]
ExcludeTagsOpt = Annotated[Optional[list[str]], typer.Option("--exclude-tags", help="skip tasks with this @tag (repeatable; overrides load.exclude_tags)", metavar="TAG")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=0, max=MAX_WORKERS, help="Locust worker processes for the load (0: in this process; default: load.workers)")]
EXTERNAL_READY_TIMEOUT = 120.0  # = rollout.load.distributed.EXTERNAL_READY_TIMEOUT (not imported: `--help` imports no locust)
ExpectWorkersOpt = Annotated[Optional[int], typer.Option("--expect-workers", min=1, max=MAX_WORKERS, help="start no worker here: wait for N "
                                                         "`rollout load-worker --master THIS_HOST:PORT` processes (other machines, CI runners) to join", metavar="N")]
MasterBindOpt = Annotated[Optional[str], typer.Option("--master-bind", help="with --expect-workers: where the Locust master listens for them "
                                                      "(default 0.0.0.0:5557, Locust's own)", metavar="HOST:PORT")]
ReadyTimeoutOpt = Annotated[float, typer.Option("--ready-timeout", min=1.0, help="with --expect-workers: how long to wait for them to join "
                                                "before exit 3 (seconds)")]
KubeconfigOpt = Annotated[Optional[str], typer.Option("--kubeconfig", help="kubernetes: the kubeconfig file (overrides the plan's and $KUBECONFIG)")]
ContextOpt = Annotated[Optional[str], typer.Option("--context", help="kubernetes: the kubeconfig context (overrides the plan's; default: the current one)")]
NamespaceOpt = Annotated[Optional[str], typer.Option("--namespace", "-n", help="kubernetes: the namespace (overrides the plan's and the context's)")]
StepTimeoutOpt = Annotated[Optional[str], typer.Option("--step-timeout", help="kubernetes: the deadline of each step (deploy, shift, promote, "
                                                       "roll back), e.g. 10m; past it the command stops, exit 3 (default: target.step_timeout, "
                                                       "else 2 × progress_deadline + 60s)", metavar="DURATION")]
RequestTimeoutOpt = Annotated[Optional[str], typer.Option("--request-timeout", help="kubernetes: client-side timeout of each API request "
                                                          "(default: target.request_timeout, 30s)", metavar="DURATION")]
ForceOpt = Annotated[bool, typer.Option("--force", help="take over the rollout's lock from another command (check with `rollout status` that it is gone first)")]
DEFAULT_REQUEST_TIMEOUT = 10.0
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.5, help="when another command drives the rollout: how long to wait for it to "
                                           "acknowledge this request (seconds)")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress or event lines: only the outcome (and errors)")]
MetricsOpt = Annotated[Optional[str], typer.Option("--metrics-port", help="serve the tool's own Prometheus metrics on this port "
                                                 "(127.0.0.1; HOST:PORT to choose, e.g. 0.0.0.0:9464 in a pod)", metavar="[HOST:]PORT")]
ImageOpt = Annotated[Optional[list[str]], typer.Option("--image", help="kubernetes: CONTAINER=IMAGE for the canary, repeatable (instead of the plan's version images; "
                                                      "the version is --version, else the images' tag)", metavar="NAME=REF")]


def _images(image: list[str] | None, version: str | None) -> tuple[str, dict[str, str]] | None:
    if not image:
        return None
    from rollout.backends.kubernetes.images import parse

    return parse(image, version)


def _conn(kubeconfig: str | None, context: str | None, namespace: str | None,
          step_timeout: str | None = None, request_timeout: str | None = None) -> dict[str, Any]:
    """Connection overrides and time bounds for the kubernetes backend (the local backend ignores them)."""
    conn: dict[str, Any] = {"kubeconfig": kubeconfig, "context": context, "namespace": namespace}
    for flag, value in (("--step-timeout", step_timeout), ("--request-timeout", request_timeout)):
        if value is not None:
            from rollout.errors import UsageError
            from rollout.plan.units import parse_duration

            try:
                secs = parse_duration(value)
            except ValueError:
                secs = float("nan")
            if not 0 < secs <= 86400:  # NaN fails too
                raise UsageError(f"{flag} {value!r} is not a duration between 0 and 24h", f"give e.g. {flag} 90s or {flag} 10m")
            conn[flag[2:].replace("-", "_")] = secs
    return conn


def _load(plan: str) -> Any:
    from rollout.plan.loader import load_plan

    return load_plan(plan)


def _engine(plan: str, state_dir: str | None, with_load: bool, quiet: bool = False, conn: dict[str, str | None] | None = None,
            request: Any = None) -> Any:
    """(loaded plan, store, engine factory). With `request` (a rollout.inputs.DriveRequest: run/advance), every
    input is checked against the plan and the recorded state first, before any lock or write."""
    if with_load:
        import rollout.load.runner as runner  # first: locust must patch before ssl is imported

        _install_sigterm_gevent()
        load_runner = runner.run_load
    else:
        load_runner = None
    loaded = _load(plan)
    from rollout.backends import factory
    from rollout.engine.executor import Engine
    from rollout.engine.state import actor
    from rollout.report.console import ConsoleReporter

    backend, store = factory.make(loaded, state_dir, **(conn or {}))
    if request is not None:
        request.check(loaded, store.load())
        if request.images:
            backend.set_images(*request.images)

    from rollout.probe import probe  # commands that run load probe their targets before the first stage

    def make_engine() -> Any:
        engine = Engine(loaded, backend, store, ConsoleReporter(quiet=quiet), actor(), load_runner,
                        probe=probe if with_load else None)
        engine.state.plan_info = factory.plan_info(loaded)  # saved with the engine's first write (for `rollout list`)
        return engine

    return loaded, store, make_engine


def _reap_load_runs(engine: Any) -> None:
    """Delete the in-cluster load objects of every run recorded in the state (by their label), then forget them.

    Called by every command that acts on the rollout under its lock (run, advance, revert, down, abort, ...):
    a driver that held the lock is gone, so whatever load it recorded is an orphan. The verbs that move traffic
    act first (a revert is not held up by a slow cluster of load pods); run/advance clean up before their load."""
    if not engine.state.load_runs:
        return
    from rollout.load.cluster import reap

    gone = set(reap(list(engine.state.load_runs)))
    if gone:
        engine.state.load_runs = [r for r in engine.state.load_runs if str(r.get("run")) not in gone]
        engine.save()


def _cluster_load(engine: Any, loaded: Any, workers: int | None) -> Any:
    """`load.runner: kubernetes` for run/advance: the runner records each load run in the state before it creates
    anything and forgets it once deleted (rollout.load.cluster.ClusterLoad)."""
    from rollout.load.cluster import ClusterLoad, settings_for

    settings = settings_for(loaded.plan)
    if workers:
        settings = settings.model_copy(update={"workers": workers})

    def on_create(record: dict[str, Any]) -> None:
        engine.state.load_runs.append(record)
        engine.save()

    def on_delete(run: str) -> None:
        engine.state.load_runs = [r for r in engine.state.load_runs if r.get("run") != run]
        engine.save()

    return ClusterLoad(settings, on_create=on_create, on_delete=on_delete)


def _finish(outcome: Any) -> int:
    stream = sys.stdout
    mark = {"promoted": "✔", "rolled-back": "✘", "paused": "⏸", "awaiting-review": "⏸", "stage-passed": "✔"}.get(outcome.kind, "•")
    print(f"{mark} {outcome.kind}: {printable(outcome.message)}", file=stream)  # reasons may hold --reason text
    return int(outcome.exit_code)


@app.command()
def validate(plan: PlanArg, output: OutputOpt = Output.text) -> int:
    """Check a plan and show its stages and gates (exit 2 with every problem when invalid)."""
    from rollout.plan.loader import load_plan
    from rollout.report.tables import plan_dict, plan_tables

    try:
        loaded = load_plan(plan)
    except PlanInvalid as exc:
        if output is Output.json:
            print(json.dumps({"valid": False, "file": exc.file, "errors": [i.as_dict() for i in exc.issues]}, indent=2))
            return EXIT_BAD_INPUT
        raise
    if loaded.plan.load.runner == "local":  # the locustfile, imported in a subprocess with a timeout (rollout.load.check)
        from rollout.errors import PlanIssue
        from rollout.load.check import problems
        from rollout.plan.loader import _line_for, parse_yaml, path_str

        found = problems(loaded)
        if found:
            _data, lines = parse_yaml(loaded.path.read_text(encoding="utf-8"), plan)
            exc = PlanInvalid(plan, [PlanIssue(plan, _line_for(loc, lines), path_str(loc), what, expected) for loc, what, expected in found])
            if output is Output.json:
                print(json.dumps({"valid": False, "file": plan, "errors": [i.as_dict() for i in exc.issues]}, indent=2))
                return EXIT_BAD_INPUT
            raise exc
    if output is Output.json:
        print(json.dumps({"valid": True, "file": plan, "plan": plan_dict(loaded.plan),
                          "warnings": [w.as_dict() for w in loaded.warnings]}, indent=2))
    else:
        _warn(loaded)
        print(plan_tables(loaded.plan))
        print(f"\n✔ {printable(plan)} is a valid plan" + (f" ({len(loaded.warnings)} warning(s) above)" if loaded.warnings else ""))
    return EXIT_OK


def _warn(loaded: Any) -> None:
    """A valid plan's likely mistakes (rollout.plan.loader.plan_warnings), on stderr."""
    for w in loaded.warnings:
        print(f"Warning: {printable(w.render())}", file=sys.stderr)


@app.command()
def schema() -> int:
    """Print the JSON Schema of a plan file (for editors: completion and checks)."""
    from rollout.plan.loader import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


REQUEST_POLL_SECONDS = 0.2
LOCK_RETRY_SECONDS = 1.0


def _print_ack(req: Any, ack: Any) -> int:
    from rollout.engine import requests as rq

    if ack.outcome == rq.DONE:
        print(f"✔ {req.verb}: {ack.message} (done by {ack.by})")
        return EXIT_OK
    print(f"Error: {ack.by} refused {req.describe()}: {ack.message} — see `rollout status`", file=sys.stderr)
    return EXIT_BAD_INPUT


def _lock_or_request(store: Any, verb: str, reason: str, args: dict[str, Any], timeout: float, force: bool, body: Any) -> int:
    """Act under the rollout's lock when it is free (no driver alive: the lock of a dead command is free,
    locally at once, on Kubernetes when its Lease expires); while a driver holds it, post the request to
    the mailbox and wait (bounded) for the driver's answer. `--force` skips the mailbox and takes the lock."""
    import time

    from rollout.engine import requests as rq
    from rollout.engine.state import actor
    from rollout.errors import LockHeld, StateError

    box = store.mailbox()
    req = None
    deadline = time.monotonic() + timeout
    accepted_until: float | None = None
    holder = ""
    next_lock_try = 0.0
    while True:
        if req is not None:
            ack = box.read().ack_of(req.id)
            if ack is not None and ack.outcome not in (rq.ACCEPTED, rq.EXPIRED):
                return _print_ack(req, ack)
            if ack is not None and ack.outcome == rq.ACCEPTED and accepted_until is None:
                accepted_until = time.monotonic() + max(timeout, 60.0)
                print(f"• {ack.by} is acting on it", file=sys.stderr)
        if time.monotonic() < next_lock_try:  # the answer is polled often, the lock (is the driver gone?) once a second
            time.sleep(REQUEST_POLL_SECONDS)
            continue
        next_lock_try = time.monotonic() + LOCK_RETRY_SECONDS
        try:
            with store.lock(verb, force=force):
                if req is not None:  # the driver ended (or died) without answering: act here
                    ack = rq.answer(box, req.id, rq.SELF, "no driver answered; the requesting command acted itself", actor())
                    if ack.outcome in (rq.DONE, rq.REFUSED):
                        return _print_ack(req, ack)
                return int(body())
        except LockHeld as exc:
            if force:
                raise
            if req is None:
                holder = exc.what.split(": ", 1)[-1]
                req = rq.Request.new(verb, actor(), reason, timeout, args)
                rq.post(box, req)
                print(f"• another command drives this rollout ({holder}); asked it to {verb} "
                      f"(request {req.id}), waiting up to {timeout:g}s for its answer", file=sys.stderr)
        now = time.monotonic()
        if accepted_until is None and now >= deadline:
            ack = rq.answer(box, req.id, rq.EXPIRED, f"not answered within {timeout:g}s", actor())
            if ack.outcome == rq.EXPIRED:
                raise StateError(f"no acknowledgement within {timeout:g}s from {holder}; the request was withdrawn and nothing changed",
                                 "`rollout status` shows whether it still runs; if it is stuck, run this command again with --force "
                                 "(Kubernetes: or wait for its Lease to expire), or with a longer --timeout")
            continue
        if accepted_until is not None and now >= accepted_until:
            raise StateError(f"{holder} accepted the request but did not report it done in time",
                             "`rollout status` shows what it did; if it is stuck, use --force")
        time.sleep(REQUEST_POLL_SECONDS)


def _exporter(plan_name: str, metrics: str | None) -> Any:
    if not metrics:
        return None
    from rollout.errors import BackendError, UsageError
    from rollout.exporter import Exporter, parse_address

    try:
        parse_address(metrics)
    except ValueError as exc:
        raise UsageError(f"--metrics-port {metrics!r}: expected {exc}", "e.g. --metrics-port 9464") from None
    try:
        return Exporter(plan_name, metrics)
    except OSError as exc:
        raise BackendError(f"cannot serve metrics on {metrics}: {exc.strerror or exc}", "pick a free port") from None


def _external(expect: int | None, bind: str | None, ready_timeout: float, workers: int | None) -> Any:
    """--expect-workers/--master-bind/--ready-timeout -> (N, rollout.load.distributed.External), or None (checked: exit 2)."""
    from rollout.errors import UsageError

    if expect is None:
        if bind is not None:
            raise UsageError("--master-bind is for external workers", "add --expect-workers N (or leave --master-bind out)")
        return None
    if workers:
        raise UsageError(f"--workers {workers} and --expect-workers {expect}: either local worker processes or external ones",
                         "give one of them")
    from rollout.load.distributed import DEFAULT_MASTER_PORT, External, parse_address

    host, port = parse_address(bind or f"0.0.0.0:{DEFAULT_MASTER_PORT}", "--master-bind")
    return expect, External(host, port, ready_timeout)


def _drive(plan: str, version: str | None, state_dir: str | None, verb: str, one_stage: bool,
           conn: dict[str, str | None] | None = None, force: bool = False, reports: Any = None, image: list[str] | None = None,
           workers: int | None = None, quiet: bool = False, metrics: str | None = None,
           tags: list[str] | None = None, exclude_tags: list[str] | None = None, prepare: Any = None,
           ask: tuple[str, dict[str, Any], float] | None = None, external: tuple[int, Any] | None = None) -> int:
    """Drive the rollout: run, advance; resume and retry with `prepare` (which checks the state and returns
    drive()'s arguments); with `ask` = (reason, args, timeout) a held lock means: ask the driver instead."""
    from rollout.inputs import DriveRequest

    request = DriveRequest(verb, version, image)
    if prepare is None:
        early = _load(plan)
        if early.plan.target.backend == "local":  # no ssl involved: a typo fails at once, before locust is even imported
            from rollout.backends import factory

            request.check(early, factory.make_store(early, state_dir).load())
    loaded, store, make_engine = _engine(plan, state_dir, with_load=True, quiet=quiet, conn=conn,
                                         request=request if prepare is None else None)
    _warn(loaded)
    in_cluster = loaded.plan.load.runner == "kubernetes"
    if in_cluster and external is not None:
        from rollout.errors import UsageError

        raise UsageError("--expect-workers with load.runner: kubernetes: the master runs in the cluster there",
                         "leave out --expect-workers (worker pods: stages[].workers, load.cluster.workers), or remove load.runner")
    _check_locustfile(loaded, tags, exclude_tags)  # bad locustfile, shape, tag or option: exit 2 before any traffic moves
    if not in_cluster and (external is not None or workers):  # the plan itself was checked when loaded
        from rollout.errors import UsageError
        from rollout.plan.model import answer_metrics_refusal

        flag = f"--expect-workers {external[0]}" if external is not None else f"--workers {workers}"
        why = answer_metrics_refusal(loaded.plan.load.metrics, flag)
        if why:
            raise UsageError(why.split("; use ")[0], f"leave out {flag} (load in this process), or use a `prometheus` metric source")

    def body() -> int:
        engine = make_engine()
        _reap_load_runs(engine)  # in-cluster load a killed driver left behind, before this command's own
        engine.tags, engine.exclude_tags = tags, exclude_tags
        engine.command = verb
        engine.mailbox = store.mailbox()
        import time

        from rollout.report.outputs import Capture, ReportPaths, rollout_reports

        n_workers = external[0] if external is not None else (workers if workers is not None else loaded.plan.load.workers)
        cluster_load = None
        if in_cluster:  # rollout's master and worker pods in the namespace (rollout.load.cluster); --workers: the pods
            cluster_load = engine.load_runner = _cluster_load(engine, loaded, workers)
            engine.probe = None  # the target may answer only inside the cluster: the load pods are what reach it
        elif n_workers > 0:  # Locust master here, N local worker processes (rollout.load.distributed), or N that join
            from rollout.load.distributed import load_runner as distributed_runner

            engine.load_runner = distributed_runner(n_workers, external[1] if external is not None else None)
        capture = engine.load_runner = Capture(engine.load_runner)  # keeps each stage's timeline for the reports
        exporter = _exporter(loaded.plan.name, metrics)
        if exporter is not None:
            from rollout.exporter import MetricsReporter

            engine.out = MetricsReporter(engine.out, exporter, engine)
            exporter.rollout(engine.state)
        started = time.time()
        quit_code = 3
        try:
            kw = prepare(engine) if prepare else {"version": request.version, "from_cli": request.from_cli}
            outcome = engine.drive(one_stage=one_stage, **kw)
            quit_code = int(outcome.exit_code)
            rollout_reports(verb, loaded, engine, capture, outcome, started, reports or ReportPaths())
            return _finish(outcome)
        finally:
            from rollout.load.session import close_all

            if cluster_load is not None:
                cluster_load.close()  # every in-cluster load object, whatever happened (a killed driver: the next command)
            close_all(quit_code)  # `quitting` and `quit(exit_code)` once per process, as `locust` fires them
            engine.finish_alerts()
            if exporter is not None:
                exporter.rollout(engine.state)
                exporter.close()

    if ask is not None:
        reason, args, timeout = ask
        return _lock_or_request(store, verb, reason, args, timeout, force, body)
    with store.lock(verb, force=force):
        return body()


def _check_locustfile(loaded: Any, tags: list[str] | None, exclude_tags: list[str] | None) -> None:
    """Import the plan's locustfile (once per process) and check every stage's shape, the tags and options."""
    from rollout.load.runner import LoadSpec
    from rollout.load.session import check

    plan = loaded.plan
    load = plan.load
    for i in range(len(plan.stages)):
        t = tags if tags is not None else load.tags
        x = exclude_tags if exclude_tags is not None else load.exclude_tags
        check(LoadSpec(locustfile=loaded.resolve(load.locustfile), host="http://127.0.0.1", users=plan.stage_users(i),
                       spawn_rate=plan.stage_spawn_rate(i), duration=plan.stages[i].duration, shape=plan.stage_shape(i),
                       tags=tuple(t) if t is not None else None, exclude_tags=tuple(x) if x is not None else None,
                       options=tuple(load.options.items())))


@app.command()
def run(plan: PlanArg, version: VersionOpt = None, state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None,
        context: ContextOpt = None, namespace: NamespaceOpt = None, step_timeout: StepTimeoutOpt = None,
        request_timeout: RequestTimeoutOpt = None, force: ForceOpt = False, image: ImageOpt = None,
        junit: JunitOpt = None, json_out: JsonOpt = None, markdown: MarkdownOpt = None, html: HtmlOpt = None,
        workers: WorkersOpt = None, quiet: QuietOpt = False, metrics_port: MetricsOpt = None, tags: TagsOpt = None, exclude_tags: ExcludeTagsOpt = None,
        expect_workers: ExpectWorkersOpt = None, master_bind: MasterBindOpt = None, ready_timeout: ReadyTimeoutOpt = EXTERNAL_READY_TIMEOUT,
        wait: Annotated[bool, typer.Option("--wait", help="when a stage waits for a person, keep waiting (lock released) "
                                           "for `approve`/`reject` from anyone, and apply the review timeout when it passes")] = False) -> int:
    """Run every remaining stage: until promoted, rolled back, or paused for a person (or, with --wait, through pauses)."""
    from rollout.report.outputs import ReportPaths

    conn = _conn(kubeconfig, context, namespace, step_timeout, request_timeout)
    external = _external(expect_workers, master_bind, ready_timeout, workers)
    code = _drive(plan, version, state_dir, "run", one_stage=False, conn=conn, force=force,
                  reports=ReportPaths(json_out, junit, markdown, html), image=image, workers=workers, quiet=quiet, metrics=metrics_port,
                  tags=tags, exclude_tags=exclude_tags, external=external)
    while wait and code == EXIT_PAUSED:
        decided = _wait_for_person(plan, state_dir, conn)
        if decided is not None:
            return decided
        code = _drive(plan, None, state_dir, "run", one_stage=False, conn=conn, force=force,
                      reports=ReportPaths(json_out, junit, markdown, html), workers=workers, quiet=quiet, metrics=metrics_port,
                  tags=tags, exclude_tags=exclude_tags, external=external)
    return code


WAIT_POLL_SECONDS = 2.0


def _wait_for_person(plan: str, state_dir: str | None, conn: dict[str, str | None]) -> int | None:
    """Poll the recorded state (no lock held) until a person decided or the review deadline passed.

    Returns an exit code when the decision ended the rollout (rejected, aborted, reverted),
    None when driving should go on (approved, or the timeout's default is due)."""
    import time

    from rollout.backends import factory
    from rollout.engine.state import Phase

    loaded = _load(plan)
    store = factory.make_store(loaded, state_dir, **conn)
    print("⏸ waiting for a person: `rollout approve` or `rollout reject` (Ctrl-C stops waiting; the state keeps the pause)", file=sys.stderr)
    while True:
        state = store.load()
        if state is None:
            return EXIT_BAD_INPUT
        if state.phase is Phase.PAUSED and state.pause:  # an operator's `rollout pause`: `rollout resume` drives on
            print(f"⏸ paused: {state.reason}")
            return EXIT_PAUSED
        if state.phase is Phase.AWAITING_REVIEW:
            if state.review_deadline is not None and time.time() >= state.review_deadline:
                return None
        elif state.phase is not Phase.PAUSED:
            if state.phase.active:
                return None  # approved: carry on
            print(f"• {state.phase.value}: {state.reason}")
            return EXIT_GATE_FAILED if state.phase is not Phase.PROMOTED else EXIT_OK
        time.sleep(WAIT_POLL_SECONDS)


@app.command()
def advance(plan: PlanArg, version: VersionOpt = None, state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None,
            context: ContextOpt = None, namespace: NamespaceOpt = None, step_timeout: StepTimeoutOpt = None,
        request_timeout: RequestTimeoutOpt = None, force: ForceOpt = False, image: ImageOpt = None,
            junit: JunitOpt = None, json_out: JsonOpt = None, markdown: MarkdownOpt = None, html: HtmlOpt = None,
            workers: WorkersOpt = None, quiet: QuietOpt = False, metrics_port: MetricsOpt = None, tags: TagsOpt = None,
            exclude_tags: ExcludeTagsOpt = None, expect_workers: ExpectWorkersOpt = None, master_bind: MasterBindOpt = None,
            ready_timeout: ReadyTimeoutOpt = EXTERNAL_READY_TIMEOUT) -> int:
    """Run exactly the next stage, then stop (promotes when it was the last)."""
    from rollout.report.outputs import ReportPaths

    external = _external(expect_workers, master_bind, ready_timeout, workers)
    return _drive(plan, version, state_dir, "advance", one_stage=True, conn=_conn(kubeconfig, context, namespace, step_timeout, request_timeout), force=force,
                  reports=ReportPaths(json_out, junit, markdown, html), image=image, workers=workers, quiet=quiet, metrics=metrics_port,
                  tags=tags, exclude_tags=exclude_tags, external=external)


@app.command()
def gate(
    plan: Annotated[Optional[str], typer.Argument(help="a rollout plan: its load profile (load.host) and gates; optional", metavar="[PLAN]")] = None,
    host: Annotated[Optional[str], typer.Option("--host", help="the URL to load (overrides load.host)")] = None,
    locustfile: Annotated[Optional[str], typer.Option("--locustfile", "-f", help="the Locust file (overrides load.locustfile)")] = None,
    users: Annotated[Optional[int], typer.Option("--users", "-u", help="concurrent users (default: load.users, else 10)")] = None,
    duration: Annotated[Optional[str], typer.Option("--duration", "-t", help="how long: 30s, 2m (default: the plan's pre-flight stage)")] = None,
    gate_exprs: Annotated[Optional[list[str]], typer.Option("--gate", "-g", help="a gate: 'p95<300ms', 'p99<1.5s', 'errors<1%' (repeatable)", metavar="EXPR")] = None,
    min_requests: Annotated[int, typer.Option("--min-requests", min=1, help="requests before a --gate may judge")] = 100,
    spawn_rate: Annotated[Optional[float], typer.Option("--spawn-rate", help="users started per second (default: all at once)")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Locust worker processes (0: load in this process; default: load.workers)")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="a JSON report (--json) of an earlier release to compare with", metavar="REPORT.json")] = None,
    baseline_exprs: Annotated[Optional[list[str]], typer.Option("--baseline-gate", help="vs --baseline: 'p95<+10%', 'errors<+0.5pt' (repeatable)", metavar="EXPR")] = None,
    shape: Annotated[Optional[str], typer.Option("--shape", help="the locustfile's LoadTestShape class that drives the users "
                                                 "(default: load.shape; without a plan the locustfile's own shape, as `locust`; none: --users)", metavar="CLASS")] = None,
    tags: TagsOpt = None, exclude_tags: ExcludeTagsOpt = None,
    junit: JunitOpt = None, json_out: JsonOpt = None, markdown: MarkdownOpt = None, html: HtmlOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines")] = False,
    version_header: Annotated[Optional[str], typer.Option("--version-header", help="the response header naming the version that "
                                                          "served a request (overrides load.version_header; default X-Version)")] = None,
    expect_workers: ExpectWorkersOpt = None, master_bind: MasterBindOpt = None, ready_timeout: ReadyTimeoutOpt = EXTERNAL_READY_TIMEOUT,
) -> int:
    """Load a URL with the gates and say pass (0) or fail (1); no traffic moves. Exit 3: target unreachable."""
    import rollout.load.runner  # noqa: F401  (first: locust must patch before ssl is imported)

    _install_sigterm_gevent()
    from rollout.gate import command
    from rollout.report.outputs import ReportPaths

    external = _external(expect_workers, master_bind, ready_timeout, workers)
    return command(plan, host, locustfile, users, duration, gate_exprs or [], min_requests, spawn_rate, workers,
                   ReportPaths(json_out, junit, markdown, html), quiet=quiet, baseline=baseline, baseline_exprs=baseline_exprs or [],
                   version_header=version_header, shape=shape, tags=tags, exclude_tags=exclude_tags, external=external)


@app.command(name="load-worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def load_worker(
    ctx: typer.Context,
    master: Annotated[str, typer.Option("--master", help="the master to join: where `rollout gate/run/advance --expect-workers N "
                                        "--master-bind ...` listens", metavar="HOST:PORT")],
    locustfile: Annotated[str, typer.Option("--locustfile", "-f", help="the same Locust file as the master's (the users run here)")] = "locustfile.py",
) -> int:
    """Run one Locust worker with rollout's per-version recorder that joins a master elsewhere (another VM, a CI runner).

    It is the command `load.workers` starts locally, pointed at HOST:PORT; the master sends each stage's
    settings (version header, roles, cohort), so the gates get exact per-version histograms. Arguments after
    `--` go to Locust as they are (the locustfile's own options, --tags). It exits when the master quits."""
    import os
    from pathlib import Path

    from rollout.load.distributed import DEFAULT_MASTER_PORT, parse_address, worker_command, worker_env
    from rollout.load.session import LocustfileInvalid
    from rollout.load.worker_plugin import DEFAULT_SETTINGS

    host, port = parse_address(master, "--master")
    if not os.path.isfile(locustfile):
        raise LocustfileInvalid(f"locustfile {locustfile} does not exist", "give the master's locustfile with --locustfile (a copy on this machine)")
    cmd = worker_command(Path(locustfile), host, port, list(ctx.args))
    print(f"joining the Locust master at {host}:{port} (default port {DEFAULT_MASTER_PORT}) with {locustfile}", file=sys.stderr, flush=True)
    sys.stderr.flush()
    sys.stdout.flush()
    os.execve(sys.executable, cmd, worker_env(DEFAULT_SETTINGS))  # this process becomes the worker: signals and exit code are Locust's
    return EXIT_OK  # not reached


@app.command(name="load-master")
def load_master(
    locustfile: Annotated[str, typer.Option("--locustfile", "-f", help="the Locust file (the workers run the same one)")] = "locustfile.py",
    master_bind: Annotated[str, typer.Option("--master-bind", help="where the workers (`rollout load-worker --master`) join",
                                             metavar="HOST:PORT")] = "0.0.0.0:5557",
    web_bind: Annotated[str, typer.Option("--web-bind", help="where the CLI reads the per-version statistics (GET /rollout/stats) "
                                          "and starts/stops stages", metavar="HOST:PORT")] = "0.0.0.0:8089",
) -> int:
    """The Locust master of `load.runner: kubernetes` (the master pod runs it): aggregates the workers' exact
    per-version histograms and serves them over HTTP to `rollout run/advance/gate` outside the cluster
    (through the API server's service proxy). Runs until SIGTERM."""
    import os
    from pathlib import Path

    import rollout.load.runner  # noqa: F401  (first: locust must patch before ssl is imported)
    from rollout.load.distributed import parse_address
    from rollout.load.master import serve
    from rollout.load.session import LocustfileInvalid, load

    mhost, mport = parse_address(master_bind, "--master-bind")
    whost, wport = parse_address(web_bind, "--web-bind")
    if not os.path.isfile(locustfile):
        raise LocustfileInvalid(f"locustfile {locustfile} does not exist", "mount the plan's locustfile and give it with --locustfile")
    load(Path(locustfile))  # a broken locustfile is exit 2 here, not a master that fails every stage
    return serve(Path(locustfile).resolve(), (mhost, mport), (whost, wport))


@app.command()
def report(
    report_file: Annotated[str, typer.Argument(help="a JSON report written by --json", metavar="REPORT.json")],
    junit: JunitOpt = None, markdown: MarkdownOpt = None, html: HtmlOpt = None,
) -> int:
    """Render a saved JSON report again: --html, --junit, --markdown (Markdown to stdout when none is given)."""
    from rollout.report import json_report, markdown as md
    from rollout.report.outputs import ReportPaths, write_reports

    data = json_report.load(report_file)
    paths = ReportPaths(None, junit, markdown, html)
    if paths.any:
        write_reports(data, paths, step_summary=False)
    else:
        print(md.render(data), end="")
    return EXIT_OK


@app.command(name="plan")
def dry_run(plan: PlanArg, version: VersionOpt = None, image: ImageOpt = None, output: OutputOpt = Output.text,
            state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
            namespace: NamespaceOpt = None) -> int:
    """Dry run: each stage's traffic change (kubernetes: the exact patches, from the live objects read with `get`); applies nothing."""
    from rollout.backends.kubernetes import dryrun
    from rollout.errors import UsageError

    loaded = _load(plan)
    if version is not None:
        from rollout.inputs import check_version_text, valid_versions

        check_version_text(version, valid_versions(loaded, None))
    images = _images(image, version)
    if loaded.plan.target.backend == "kubernetes":
        from rollout.backends import factory

        backend, store = factory.make(loaded, state_dir, **_conn(kubeconfig, context, namespace))
        if images:
            backend.set_images(*images)
        chosen = images[0] if images else (version or loaded.plan.target.canary)
        if chosen is None:
            raise UsageError("no version to roll out: the plan names no target.canary", "give --version V or --image NAME=REF")
        doc = backend.dry_run(store.load(), chosen)
    else:
        if images:
            raise UsageError(f"--image sets container images, which the {loaded.plan.target.backend} backend has not", "leave it out")
        doc = {"plan": loaded.plan.name, "backend": loaded.plan.target.backend, "applied": False, "steps": dryrun.local_steps(loaded.plan)}
    print(json.dumps(doc, indent=2) if output is Output.json else dryrun.render(doc))
    return EXIT_OK


def _duration_opt(flag: str, text: str) -> float:
    from rollout.errors import UsageError
    from rollout.plan.units import parse_duration

    try:
        return parse_duration(text.strip())
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a duration", "expected a duration such as 30s, 5m or 1h") from None


@app.command()
def status(plan: PlanArg, output: OutputOpt = Output.text, state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None,
           context: ContextOpt = None, namespace: NamespaceOpt = None,
           watch: Annotated[bool, typer.Option("--watch", "-w", help="redraw every second until the rollout ends or waits for a person; "
                                               "exit 0 promoted/idle, 1 rolled back/aborted, 4 waiting for a person, 5 --timeout")] = False,
           timeout: Annotated[Optional[str], typer.Option("--timeout", help="with --watch: stop watching after this long (exit 5), e.g. 10m",
                                                          metavar="DURATION")] = None) -> int:
    """Phase, traffic split, verdicts and history; what is live right now (--watch: live, until it ends). Takes no lock."""
    loaded = _load(plan)
    from rollout.backends import factory
    from rollout.report.tables import driver_alive, status_dict, status_text

    if watch or timeout is not None:
        from rollout.errors import UsageError

        if not watch:
            raise UsageError("--timeout needs --watch", "add --watch")
        if output is Output.json:
            raise UsageError("--watch draws for people and cannot write JSON", "use `rollout status -o json` without --watch")
        limit = _duration_opt("--timeout", timeout) if timeout is not None else None
        from rollout.backends.liveness import lock_holder
        from rollout.report.status_watch import Watcher

        store = factory.make_store(loaded, state_dir, **_conn(kubeconfig, context, namespace))
        return Watcher(loaded.plan, store.load, lambda: lock_holder(store), store.location(), sys.stdout,
                       tty=sys.stdout.isatty(), timeout=limit).run()

    backend, store = factory.make(loaded, state_dir, **_conn(kubeconfig, context, namespace))
    state = store.load()
    live = backend.inspect(state) if state is not None else None
    alive = driver_alive(state, store) if state is not None else None
    orphans = _orphans(backend, store, state)
    watched = _watch_record(loaded, store)
    if output is Output.json:
        doc = status_dict(state, live, store.location(), alive, orphans)
        if watched is not None:
            doc["watch"] = watched
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(status_text(loaded.plan, state, live, store.location(), alive, orphans))
        if watched is not None:
            from rollout.plan.names import printable

            print(f"\nWatch:    {printable(watched['summary'])}" + "".join(f"\n  FIRING  {printable(f)}" for f in watched["firing"]))
            print(f"          {printable(watched['control'] or '')}{'; ' if watched['control'] else ''}"
                  f"{'running' if watched['live'] else 'no watch running'}")
            _print_evidence(watched["evidence"])
    return EXIT_OK


def _orphans(backend: Any, store: Any, state: Any) -> list[dict[str, Any]] | None:
    """The plan's marked processes the state does not record (local backend; None elsewhere). A process a live
    driver spawned after our read of the state is not an orphan: whatever the scan finds is checked again
    against the state read afresh, and only what is still unrecorded is reported."""
    find = getattr(backend, "orphans", None)
    if find is None:
        return None
    found = find(state)
    if found:
        from rollout.errors import RolloutError

        try:
            again = {o["pid"] for o in find(store.load())}
        except RolloutError:
            again = {o["pid"] for o in found}
        found = [o for o in found if o["pid"] in again]
    return found


def _print_evidence(evidence: dict[str, Any]) -> None:
    """The worst answers a content gate kept (redacted when kept), for the person who reviews."""
    from rollout.watch.evidence import lines

    for gate, doc in evidence.items():
        if not isinstance(doc, dict) or not doc.get("worst"):
            continue
        print(f"\nEvidence: {printable(str(gate))} — the {len(doc['worst'])} worst of {int(doc.get('offered') or 0):,} offending "
              f"answers of {printable(str(doc.get('version')))}" + (f" (breach: {printable(str(doc['breach']))})" if doc.get("breach") else ""))
        for line in lines(doc):
            print("  " + printable(line))


def _watch_record(loaded: Any, store: Any) -> dict[str, Any] | None:
    """What `rollout watch` last saved for this plan (its statistics, what fires), for status; None without one."""
    if loaded.plan.watch is None:
        return None
    from rollout.watch import record
    from rollout.watch.monitor import Monitor

    saved = record.for_store(store, loaded.plan.name).load()
    if not saved:
        return None
    m = Monitor.from_dict(loaded.plan.watch, saved)
    if m.version is None:
        return None
    firing = [m.describe(n) for n in m.firing]
    from rollout.watch import control

    return {"summary": m.summary(), "firing": firing, "checks": m.checks, "record": saved,
            "evidence": saved.get("evidence") or {},
            "live": control.watcher_alive(saved, loaded.plan.watch.every), "control": control.describe(saved),
            "paused": saved.get("paused"), "stopped": saved.get("stopped")}


@app.command(name="list")
def list_rollouts(
    paths: Annotated[Optional[list[str]], typer.Argument(help="plan files, state files or directories to search (default: . and $ROLLOUT_STATE_DIR)",
                                                         metavar="PATHS")] = None,
    output: OutputOpt = Output.text, state_dir: StateDirOpt = None,
    kubernetes: Annotated[bool, typer.Option("--kubernetes", "-k", help="list the rollout state ConfigMaps of a cluster's namespace instead "
                                             "(implied by -A, --namespace, --context, --kubeconfig)")] = False,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="kubernetes: every namespace")] = False,
    kubeconfig: KubeconfigOpt = None, context: ContextOpt = None, namespace: NamespaceOpt = None,
) -> int:
    """Every rollout: name, owner, phase, stage, stable → canary, since (local: plans and state found on disk; -k: a cluster's)."""
    import os

    from rollout.report.listing import render, row

    rows: list[dict[str, Any]] = []
    if kubernetes or all_namespaces or namespace or context or kubeconfig:
        if paths:
            from rollout.errors import UsageError

            raise UsageError("PATHS are for local rollouts; the cluster's are found by their labels", "leave out the paths, or -k and its flags")
        from rollout.backends.kubernetes.client import connect
        from rollout.backends.kubernetes.listing import list_states

        kube = connect(kubeconfig, context, namespace)
        for f in sorted(list_states(kube, all_namespaces), key=lambda f: (f.namespace, f.plan)):
            rows.append(row(f.plan, f.state, f.location, namespace=f.namespace, problem=f.problem))
        empty = f"No rollout recorded in {'any namespace' if all_namespaces else 'namespace ' + kube.namespace}."
    else:
        from rollout.backends.local.listing import search

        env_dir = os.environ.get("ROLLOUT_STATE_DIR")
        where = list(paths) if paths else ["."] + [d for d in (state_dir, env_dir) if d and os.path.isdir(d)]
        found = search(where, state_dir)
        for f in found.found:
            name = f.plan.name if f.plan is not None else (f.state.plan if f.state is not None else f.state_file.parent.name)  # type: ignore[attr-defined,union-attr]
            loc = str(f.state_file) if f.state_file is not None else "(no state yet)"
            rows.append(row(name, f.state, loc, plan=f.plan, plan_path=str(f.plan_path) if f.plan_path else None, problem=f.problem))
        rows.sort(key=lambda r: (r["name"], r["location"]))
        for skipped in found.other_backends:
            print(f"note: {skipped} is a plan for another backend: `rollout list -k` lists a cluster's rollouts", file=sys.stderr)
        for bad in found.invalid:
            print(f"note: skipped an invalid plan: {bad}", file=sys.stderr)
        empty = f"No rollout plan or state found under {', '.join(where)}."
    if output is Output.json:
        print(json.dumps(rows, indent=2))
    else:
        print(render(rows) if rows else empty)
    return EXIT_OK


@app.command()
def history(plan: PlanArg, output: OutputOpt = Output.text, state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None,
            context: ContextOpt = None, namespace: NamespaceOpt = None) -> int:
    """Every finished rollout of this plan, with the numbers that decided it."""
    loaded = _load(plan)
    from rollout.backends import factory
    from rollout.report.tables import outcome_table

    state = factory.make_store(loaded, state_dir, **_conn(kubeconfig, context, namespace)).load()
    if output is Output.json:
        from dataclasses import asdict

        print(json.dumps([asdict(p) for p in (state.past if state else [])], indent=2))
    elif state is None or not state.past:
        print(f"No finished rollout of `{loaded.plan.name}` recorded yet.")
    else:
        print(printable(outcome_table(state, len(loaded.plan.stages)), keep_newlines=True))
    return EXIT_OK


def _simple(plan: str, state_dir: str | None, verb: str, call: Any, conn: dict[str, str | None] | None = None,
            force: bool = False, reason: str = "", timeout: float | None = None, args: dict[str, Any] | None = None) -> int:
    """A verb acting on the state. With a `timeout` it is a request: when a live driver holds the rollout,
    it is asked through the mailbox (rollout.engine.requests) instead of being refused."""
    loaded, store, make_engine = _engine(plan, state_dir, with_load=False, conn=conn)

    def body() -> int:
        engine = make_engine()
        try:
            return _finish(call(engine))
        finally:
            try:
                _reap_load_runs(engine)  # in-cluster load a killed driver left behind (after the verb's own work)
            finally:
                engine.finish_alerts()

    if timeout is None:
        with store.lock(verb, force=force):
            return body()
    return _lock_or_request(store, verb, reason, args or {}, timeout, force, body)


def _as_ok(outcome: Any) -> Any:
    """The operator's own command succeeded (exit 0) when it did what was asked, e.g. paused the rollout."""
    from dataclasses import replace

    return replace(outcome, exit_code=EXIT_OK)


WatchVerbOpt = Annotated[bool, typer.Option("--watch", help="address the plan's running `rollout watch` (its reverts), "
                                             "not the rollout; without it a watch gets the request only when no rollout is in progress")]


def _for_watch(plan: str, state_dir: str | None, conn: dict[str, Any], verb: str, explicit: bool) -> bool:
    """Whether `rollout pause/resume` goes to the watch (rollout.watch.control): with --watch; otherwise only when no
    command holds the rollout's lock (a driver gets it), no rollout is in progress (or paused, for resume), and a watch
    of the plan is live (for resume: or its record says paused)."""
    from rollout.errors import UsageError

    loaded = _load(plan)
    if loaded.plan.watch is None:
        if explicit:
            raise UsageError(f"the plan `{loaded.plan.name}` has no `watch:` section, so there is no watch to {verb}",
                             f"leave out --watch to {verb} the rollout")
        return False
    if explicit:
        return True
    from rollout.backends import factory
    from rollout.backends.liveness import lock_holder
    from rollout.watch import control, record

    store = factory.make_store(loaded, state_dir, **conn)
    if lock_holder(store) is not None:
        return False
    state = store.load()
    if state is not None and (state.phase.active or state.transition is not None):
        return False
    saved = record.for_store(store, loaded.plan.name).load()
    return control.watcher_alive(saved, loaded.plan.watch.every) or (verb == "resume" and bool((saved or {}).get("paused")))


def _ask_watch(plan: str, state_dir: str | None, conn: dict[str, Any], verb: str, reason: str, timeout: float) -> int:
    from rollout.backends import factory
    from rollout.engine import requests as rq
    from rollout.engine.state import actor
    from rollout.watch import control, record

    loaded = _load(plan)
    assert loaded.plan.watch is not None
    store = factory.make_store(loaded, state_dir, **conn)
    me = actor()
    req, ack = control.ask(store.mailbox(), record.for_store(store, loaded.plan.name), loaded.plan.watch.every, verb, me, reason, timeout)
    if ack.outcome == rq.REFUSED and ack.by == me:  # refused here, not by a watch: nothing was asked of anyone
        from rollout.errors import UsageError

        raise UsageError(f"cannot {verb} the watch of `{loaded.plan.name}`: {ack.message}",
                         "`rollout status` shows the watch's last record; `rollout watch PLAN` starts one")
    return _print_ack(req, ack)


@app.command()
def approve(plan: PlanArg, reason: ReasonOpt = "", state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None,
        context: ContextOpt = None, namespace: NamespaceOpt = None, step_timeout: StepTimeoutOpt = None,
        request_timeout: RequestTimeoutOpt = None, force: ForceOpt = False,
        timeout: TimeoutOpt = DEFAULT_REQUEST_TIMEOUT) -> int:
    """Let a stage waiting for approval start, or accept a stage awaiting review (then `rollout advance`/`run`)."""
    return _simple(plan, state_dir, "approve", lambda e: e.approve(reason), _conn(kubeconfig, context, namespace, step_timeout, request_timeout), force, reason, timeout)


@app.command()
def reject(plan: PlanArg, reason: ReasonOpt = "", state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None,
        context: ContextOpt = None, namespace: NamespaceOpt = None, step_timeout: StepTimeoutOpt = None,
        request_timeout: RequestTimeoutOpt = None, force: ForceOpt = False,
        timeout: TimeoutOpt = DEFAULT_REQUEST_TIMEOUT) -> int:
    """Say no to a stage awaiting review (or approval): roll back now (exit 1)."""
    return _simple(plan, state_dir, "reject", lambda e: e.reject(reason), _conn(kubeconfig, context, namespace, step_timeout, request_timeout), force, reason, timeout)


@app.command()
def abort(plan: PlanArg, reason: ReasonOpt = "", state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None,
        context: ContextOpt = None, namespace: NamespaceOpt = None, step_timeout: StepTimeoutOpt = None,
        request_timeout: RequestTimeoutOpt = None, force: ForceOpt = False,
        timeout: TimeoutOpt = DEFAULT_REQUEST_TIMEOUT) -> int:
    """Stop the rollout in progress, also while another command drives it: all traffic to stable, canary stopped."""
    return _simple(plan, state_dir, "abort", lambda e: e.abort(reason), _conn(kubeconfig, context, namespace, step_timeout, request_timeout), force, reason, timeout)


@app.command()
def revert(plan: PlanArg, reason: ReasonOpt = "", state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None,
        context: ContextOpt = None, namespace: NamespaceOpt = None, step_timeout: StepTimeoutOpt = None,
        request_timeout: RequestTimeoutOpt = None, force: ForceOpt = False,
        to_revision: Annotated[Optional[int], typer.Option("--to-revision", min=1, help="back to this older revision (`rollout status` lists them), without running stages")] = None,
        timeout: TimeoutOpt = DEFAULT_REQUEST_TIMEOUT) -> int:
    """Whatever the state, also while another command drives it: all traffic back to the last known-good version
    (or --to-revision N), canary stopped."""
    if to_revision is not None:  # not a request a driver takes: it needs the lock
        return _simple(plan, state_dir, "revert", lambda e: e.revert(reason, to_revision), _conn(kubeconfig, context, namespace, step_timeout, request_timeout), force)
    return _simple(plan, state_dir, "revert", lambda e: e.revert(reason), _conn(kubeconfig, context, namespace, step_timeout, request_timeout), force, reason, timeout)


@app.command()
def pause(plan: PlanArg, reason: ReasonOpt = "", state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None,
          context: ContextOpt = None, namespace: NamespaceOpt = None, step_timeout: StepTimeoutOpt = None,
        request_timeout: RequestTimeoutOpt = None, force: ForceOpt = False,
          timeout: TimeoutOpt = DEFAULT_REQUEST_TIMEOUT, to_watch: WatchVerbOpt = False) -> int:
    """Pause the rollout where it stands: the running stage stops its load, the split stays (`rollout resume` re-runs the stage).
    With no rollout in progress and a `rollout watch` running (or with --watch): pause the watch's reverts (it keeps judging and alerting)."""
    conn = _conn(kubeconfig, context, namespace, step_timeout, request_timeout)
    if _for_watch(plan, state_dir, conn, "pause", to_watch):
        return _ask_watch(plan, state_dir, conn, "pause", reason, timeout)
    return _simple(plan, state_dir, "pause", lambda e: _as_ok(e.pause(reason)), _conn(kubeconfig, context, namespace, step_timeout, request_timeout), force, reason, timeout)


@app.command()
def promote(plan: PlanArg, reason: ReasonOpt = "", state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None,
            context: ContextOpt = None, namespace: NamespaceOpt = None, step_timeout: StepTimeoutOpt = None,
        request_timeout: RequestTimeoutOpt = None, force: ForceOpt = False,
            full: Annotated[bool, typer.Option("--full", help="skip every remaining stage and promote the canary now")] = False,
            timeout: TimeoutOpt = DEFAULT_REQUEST_TIMEOUT) -> int:
    """End the current stage as passed (recorded as a person's decision, not its gates) and go on; --full: promote now."""
    return _simple(plan, state_dir, "promote", lambda e: e.promote(reason, full), _conn(kubeconfig, context, namespace, step_timeout, request_timeout), force, reason,
                   timeout, {"full": full})


@app.command()
def resume(plan: PlanArg, reason: ReasonOpt = "", state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None,
           context: ContextOpt = None, namespace: NamespaceOpt = None, step_timeout: StepTimeoutOpt = None,
        request_timeout: RequestTimeoutOpt = None, force: ForceOpt = False, workers: WorkersOpt = None,
           timeout: TimeoutOpt = DEFAULT_REQUEST_TIMEOUT, to_watch: WatchVerbOpt = False) -> int:
    """Resume a rollout paused by `rollout pause`: re-run the paused stage from its start and carry on, like `rollout run`.
    With no rollout paused and a paused `rollout watch` (or with --watch): let the watch revert again."""
    conn = _conn(kubeconfig, context, namespace, step_timeout, request_timeout)
    if _for_watch(plan, state_dir, conn, "resume", to_watch):
        return _ask_watch(plan, state_dir, conn, "resume", reason, timeout)

    def prepare(engine: Any) -> dict[str, Any]:
        engine.check_resumable()
        return {"version": None, "from_cli": False, "resume_reason": reason}

    return _drive(plan, None, state_dir, "resume", one_stage=False, conn=_conn(kubeconfig, context, namespace, step_timeout, request_timeout), force=force,
                  workers=workers, prepare=prepare, ask=(reason, {}, timeout))


@app.command()
def retry(plan: PlanArg, reason: ReasonOpt = "", state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None,
          context: ContextOpt = None, namespace: NamespaceOpt = None, step_timeout: StepTimeoutOpt = None,
        request_timeout: RequestTimeoutOpt = None, force: ForceOpt = False, workers: WorkersOpt = None,
          from_start: Annotated[bool, typer.Option("--from-start", help="from the first stage instead of the one where it stopped")] = False,
          timeout: TimeoutOpt = DEFAULT_REQUEST_TIMEOUT) -> int:
    """After a rollback or abort of version X: roll X out again from the stage where it stopped (or --from-start), like `rollout run`."""

    def prepare(engine: Any) -> dict[str, Any]:
        version, first = engine.retry_point(from_start)
        engine.record_retry(version, first, reason)
        return {"version": version, "from_cli": True, "first_stage": first}

    return _drive(plan, None, state_dir, "retry", one_stage=False, conn=_conn(kubeconfig, context, namespace, step_timeout, request_timeout), force=force,
                  workers=workers, prepare=prepare, ask=(reason, {"from_start": from_start}, timeout))


@app.command()
def down(plan: PlanArg, state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None,
        context: ContextOpt = None, namespace: NamespaceOpt = None, step_timeout: StepTimeoutOpt = None,
        request_timeout: RequestTimeoutOpt = None, force: ForceOpt = False) -> int:
    """Stop every process the local backend started for this plan (rolls back a rollout in progress).
    With --force and an unreadable state: stop the plan's processes found by their marker, move the state aside."""
    if force and _down_without_state(plan, state_dir):
        return EXIT_OK
    return _simple(plan, state_dir, "down", lambda e: e.down(), _conn(kubeconfig, context, namespace, step_timeout, request_timeout), force)


def _down_without_state(plan: str, state_dir: str | None) -> bool:
    """`down --force` when the local state cannot be read: every process carrying this plan's marker
    (a /proc scan, see backends/local/processes.py) is stopped and the state file moved aside. False
    when the state is readable (or the backend is not local): the normal `down` applies."""
    from rollout.backends import factory
    from rollout.errors import StateError

    loaded = _load(plan)
    if loaded.plan.target.backend != "local":
        return False
    backend, store = factory.make(loaded, state_dir)
    try:
        store.load()
        return False
    except StateError as exc:
        print(f"• the state is unusable ({exc.what}); stopping the plan's processes by their marker", file=sys.stderr)
    with store.lock("down", force=True):
        stopped = backend.down_by_marker()
        aside = store.move_aside()
    print(f"• down: stopped {len(stopped)} process(es) of `{loaded.plan.name}` found by their marker"
          + (f" ({', '.join(map(str, stopped))})" if stopped else "") + (f"; the unusable state was moved to {aside}" if aside else ""))
    return True


@app.command()
def watch(plan: PlanArg, state_dir: StateDirOpt = None, kubeconfig: KubeconfigOpt = None, context: ContextOpt = None,
          namespace: NamespaceOpt = None, metrics_port: MetricsOpt = None,
          for_: Annotated[Optional[str], typer.Option("--for", help="stop after this long (30s, 8h); default: until Ctrl-C/SIGTERM", metavar="DURATION")] = None,
          stop: Annotated[bool, typer.Option("--stop", help="stop the plan's running watch (it saves its record and exits 0, recording who, when "
                                             "and why); `rollout pause/resume --watch` hold and release its reverts")] = False,
          reason: ReasonOpt = "", timeout: TimeoutOpt = DEFAULT_REQUEST_TIMEOUT) -> int:
    """Judge the live version continuously (the plan's `watch:`): alert on a breach, revert with `on_breach: revert`.
    Exit 0 when nothing fired (or an operator stopped it), 1 when it reverted or a breach is still firing."""
    if stop:
        from rollout.errors import UsageError

        if for_ is not None or metrics_port is not None:
            raise UsageError("--stop asks the running watch to end; it takes no --for or --metrics-port", "leave them out")
        if _load(plan).plan.watch is None:
            raise UsageError(f"the plan {plan} has no `watch:` section, so no watch runs", "check the plan file")
        return _ask_watch(plan, state_dir, _conn(kubeconfig, context, namespace), "stop", reason, timeout)
    if reason:
        from rollout.errors import UsageError

        raise UsageError("--reason goes with --stop", "add --stop, or leave --reason out")
    from rollout.backends import factory
    from rollout.engine.state import actor
    from rollout.errors import UsageError
    from rollout.plan.units import parse_duration
    from rollout.watch.command import WatchLoop

    duration = None
    if for_ is not None:
        try:
            duration = parse_duration(for_)
        except ValueError as exc:
            raise UsageError(f"--for {for_!r}: expected {exc}", "give a duration such as 30s, 10m or 8h") from None
        if not duration > 0 or duration != duration or duration == float("inf"):
            raise UsageError(f"--for {for_!r}: expected a finite duration above 0", "give a duration such as 30s, 10m or 8h")
    loaded = _load(plan)
    if loaded.plan.watch is not None and loaded.plan.watch.probe is not None:
        import rollout.watch.synthetic  # noqa: F401  (locust first: it must patch before ssl is imported)

        _install_sigterm_gevent()
    backend, store = factory.make(loaded, state_dir, **_conn(kubeconfig, context, namespace))
    loop = WatchLoop(loaded, backend, store, f"rollout watch ({actor()})")
    loop.exporter = _exporter(loaded.plan.name, metrics_port)
    try:
        return loop.run(duration)
    finally:
        if loop.exporter is not None:
            loop.exporter.close()


# -- one place for errors and exit codes ---------------------------------------


def _raise_interrupt(signum: int, _frame: Any) -> NoReturn:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _install_sigterm_gevent() -> None:
    """Under gevent, deliver SIGTERM like Ctrl-C to the main greenlet, so `finally` blocks run."""
    import gevent

    def handler() -> None:
        gevent.get_hub().parent.throw(KeyboardInterrupt("SIGTERM"))

    gevent.signal_handler(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> NoReturn:
    signal.signal(signal.SIGTERM, _raise_interrupt)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv if argv is not None else sys.argv[1:], prog_name="rollout", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        print("Error: interrupted — run `rollout status` to see where it stopped", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except ClickException as exc:
        exc.show()
        code = EXIT_BAD_INPUT
    except PlanInvalid as exc:
        for issue in exc.issues:
            print(printable(issue.render()), file=sys.stderr)
        print(printable(exc.render()), file=sys.stderr)
        code = exc.exit_code
    except RolloutError as exc:
        print(printable(exc.render(), keep_newlines=True), file=sys.stderr)
        code = exc.exit_code
    except (KeyboardInterrupt, Interrupted) as exc:
        detail = getattr(exc, "detail", "") or "the state records where it stopped"
        print(f"Error: interrupted — {detail}; `rollout status` shows it", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        code = EXIT_OK
    except Exception as exc:  # a bug: say so plainly, with the trace only on request
        import os
        import traceback

        print(f"Error: internal error {type(exc).__name__}: {printable(exc)} — this is a bug in rollout; "
              "rerun with ROLLOUT_DEBUG=1 for the trace and report it", file=sys.stderr)
        if os.environ.get("ROLLOUT_DEBUG"):
            traceback.print_exc()
        code = EXIT_BUG
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()

"""`rollout gate`: load a URL with gates and say pass or fail; no traffic moves.

For CI: a release candidate is loaded with the plan's load profile (or a
locustfile given on the command line) and judged by the same gates and the
same per-second judge as a rollout stage (`rollout.load.runner.run_load` and
`rollout.gates.judge.StageJudge`). Nothing is deployed, no traffic is shifted.

Exit codes: 0 every gate passed; 1 a gate failed, or ended without enough
evidence (inconclusive: no proof is not a pass); 2 bad input (plan, flag,
gate expression); 3 the target is unreachable (probed before any load).

The target serves one version, so every gate judges all traffic: gates on
`canary` or `all` judge everything; gates on `stable` and `compare: stable`
gates have nothing to compare with and are reported as skipped.

Gate expressions (`--gate`): METRIC<LIMIT, e.g. `p95<300ms`, `p99<=1.5s`,
`errors<1%`. Metrics: errors (or error_rate), p50, p90, p95, p99. A gate
passes while the measured value is at most the limit (`<` and `<=` mean the
same: the limit is the largest value that still passes).

`--baseline REPORT.json` with `--baseline-gate 'p95<+10%'` / `'errors<+0.5pt'`
(and the plan's `compare: stable` gates, the baseline standing in for
stable) judges the candidate against a saved report of an earlier release
with the anytime-valid tests: see `rollout.gates.baseline` (and its caveat:
the baseline is a fixed sample, not concurrent traffic).

`load.runner: kubernetes` runs the load in the cluster
(`rollout.load.cluster`: rollout's master and worker pods, the same
per-version histograms), and the target is not probed from here (it may
answer only inside the cluster).

This module imports locust (through rollout.load.runner) when it runs load;
the CLI imports it first, before anything that imports ssl.
"""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout.errors import EXIT_GATE_FAILED, EXIT_OK, UsageError
from rollout.plan.limits import INT32_MAX, MAX_USERS, MAX_WORKERS
from rollout.plan.model import Gate
from rollout.probe import PROBE_TIMEOUT, host_port
from rollout.probe import probe as _probe
from rollout.plan.units import (
    fmt_duration,
    parse_duration,
    parse_latency,
    parse_percent,
)

METRIC_ALIASES = {"errors": "error_rate", "error_rate": "error_rate", "error-rate": "error_rate", "p50": "p50", "p90": "p90", "p95": "p95", "p99": "p99"}
_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_-]*)\s*(<=|<|≤)\s*(\S.*?)\s*$")
EXAMPLES = "such as 'p95<300ms' or 'errors<1%'"


def parse_gate(expr: str, min_requests: int = 100) -> tuple[str, Gate]:
    """`p95<300ms` → ("p95<300ms", Gate(metric=p95, version=all, max=300.0)); UsageError (exit 2) otherwise."""
    m = _EXPR.match(expr or "")
    if not m:
        raise UsageError(
            f"--gate {expr!r} is not a gate expression: expected METRIC<LIMIT, {EXAMPLES}",
            "metrics: errors, p50, p90, p95, p99; the gate passes while the value stays at or below the limit",
        )
    word, _op, limit = m.groups()
    metric = METRIC_ALIASES.get(word.lower())
    if metric is None:
        raise UsageError(f"--gate {expr!r}: unknown metric `{word}`", "expected one of errors, p50, p90, p95, p99")
    limit = limit.replace(" ", "")
    try:  # the plan's own unit parsers, for their exact "expected ..." wording
        (parse_percent if metric == "error_rate" else parse_latency)(limit)
    except ValueError as exc:
        raise UsageError(f"--gate {expr!r}: limit `{limit}` is not valid for {word}: expected {exc}", f"write it {EXAMPLES}") from None
    name = f"{'errors' if metric == 'error_rate' else metric}<{limit}"
    # `--gate` keeps the fixed rule its `--min-requests` flag describes ("judge after N requests"): a CI gate
    # of a few seconds must end passed or failed, and a sequential PASS needs hundreds of requests. A plan's
    # absolute gates (`rollout gate PLAN`) follow the plan: sequential unless it says `method: threshold`.
    return name, Gate(metric=metric, version="all", max=limit, min_requests=min_requests, method="threshold")


def parse_gates(exprs: list[str], min_requests: int) -> dict[str, Gate]:
    out: dict[str, Gate] = {}
    for expr in exprs:
        name, gate = parse_gate(expr, min_requests)
        if name in out:
            raise UsageError(f"--gate {expr!r} is given twice", "give each gate once")
        out[name] = gate
    return out


def check_url(url: str) -> tuple[str, int]:
    return host_port(url, "--host")


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> None:
    """A TCP connect to the target, bounded in time: unreachable is exit 3 within seconds, before any load."""
    _probe(url, timeout, "target", "check that the service is up and the URL (--host or load.host) is right; no load was run")


def version_of(url: str, header: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """The version header of one GET / (best effort, for labels only: any failure is None)."""
    import http.client

    host, port = check_url(url)
    cls = http.client.HTTPSConnection if url.startswith("https") else http.client.HTTPConnection
    conn = cls(host, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read(65536)
        return resp.getheader(header)
    except Exception:
        return None
    finally:
        conn.close()


@dataclass
class GateSetup:
    """Everything one `rollout gate` needs, resolved from a plan and/or flags."""

    host: str
    locustfile: Path
    users: int
    spawn_rate: float
    duration: float
    gates: dict[str, Gate]
    skipped: dict[str, str] = field(default_factory=dict)  # gate -> why it cannot judge here
    version_header: str = "X-Version"
    roles: dict[str, str] = field(default_factory=dict)
    max_requests: int | None = None
    plan: Any = None  # LoadedPlan
    workers: int = 0
    baseline: Any = None  # rollout.gates.baseline.Baseline (--baseline)
    baseline_gates: list[str] = field(default_factory=list)  # names in `gates` judged against the baseline
    cluster: Any = None  # load.cluster when load.runner is kubernetes (rollout.load.cluster)
    shape: str | None = None  # a LoadTestShape class of the locustfile drives the users (#9)
    tags: tuple[str, ...] | None = None
    exclude_tags: tuple[str, ...] | None = None
    options: tuple[tuple[str, Any], ...] = ()
    external: Any = None  # rollout.load.distributed.External: `workers` join from elsewhere (`rollout load-worker`)


HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)


def resolve(
    plan_path: str | None,
    host: str | None,
    locustfile: str | None,
    users: int | None,
    duration: str | None,
    gate_exprs: list[str],
    min_requests: int,
    spawn_rate: float | None,
    workers: int | None,
    baseline: str | None = None,
    baseline_exprs: list[str] | None = None,
    version_header: str | None = None,
    shape: str | None = None,
    tags: list[str] | None = None,
    exclude_tags: list[str] | None = None,
) -> GateSetup:
    loaded = None
    options: tuple[tuple[str, Any], ...] = ()
    plan_shape: str | None = None
    gates: dict[str, Gate] = {}
    skipped: dict[str, str] = {}
    baseline_names: list[str] = []
    cluster = None
    if plan_path:
        from rollout.plan.loader import load_plan

        loaded = load_plan(plan_path)
        plan = loaded.plan
        host = host or plan.load.host
        if not host:
            raise UsageError(f"{plan_path}: the plan has no load.host and no --host was given", "give the candidate's URL with --host")
        lf = Path(locustfile) if locustfile else loaded.resolve(plan.load.locustfile)
        users = users or plan.load.users
        spawn = spawn_rate if spawn_rate is not None else (plan.load.spawn_rate or float(users))
        pre = next((i for i, s in enumerate(plan.stages) if s.load_to == "canary"), 0)
        dur = plan.stages[pre].duration if duration is None else _duration(duration)
        plan_shape = plan.stage_shape(pre)
        tags = tags if tags is not None else plan.load.tags
        exclude_tags = exclude_tags if exclude_tags is not None else plan.load.exclude_tags
        options = tuple(plan.load.options.items())
        for name, g in plan.gates.items():
            if g.compare is not None and baseline and g.metric in ("error_rate", "p50", "p90", "p95", "p99") and g.max_increase is not None:
                gates[name] = g.model_copy(update={"method": "sequential"})  # the baseline stands in for stable
                baseline_names.append(name)
            elif g.compare is not None:
                skipped[name] = "compares the canary with stable; a gate run loads one version only"
            elif g.version == "stable":
                skipped[name] = "judges the stable version; a gate run loads only the candidate"
            else:
                gates[name] = g.model_copy(update={"version": "all"})
        header = plan.load.version_header
        roles = {v: v for v in plan.target.versions}
        max_requests = plan.load.max_requests
        plan_workers = plan.load.workers
        if getattr(plan.load, "runner", "local") == "kubernetes":
            from rollout.load.cluster import settings_for

            cluster = settings_for(plan)  # defaults; a kubernetes target's cluster and namespace unless load.cluster says otherwise
            if workers:
                cluster = cluster.model_copy(update={"workers": workers})  # --workers: the worker pods
    else:
        missing = [flag for flag, v in (("--host", host), ("--locustfile", locustfile), ("--duration", duration)) if not v]
        if missing:
            raise UsageError(
                f"without a PLAN, `rollout gate` needs {', '.join(missing)}",
                "e.g. rollout gate --host http://127.0.0.1:8000 --locustfile load.py --users 20 --duration 30s --gate 'p95<300ms'",
            )
        if not gate_exprs and not baseline_exprs:
            raise UsageError("no gate to judge: give at least one --gate", "e.g. --gate 'p95<300ms' --gate 'errors<1%'")
        assert host and locustfile and duration
        lf = Path(locustfile)
        users = users or 10
        spawn = spawn_rate if spawn_rate is not None else float(users)
        dur = _duration(duration)
        header, roles, max_requests, plan_workers = "X-Version", {}, None, 0
    if version_header is not None:  # --version-header wins over the plan's load.version_header
        if not HEADER_NAME.match(version_header):
            raise UsageError(f"--version-header {version_header!r} is not an HTTP header name", "e.g. --version-header X-Version")
        header = version_header
    gates.update(parse_gates(gate_exprs, min_requests))
    check_url(host)
    if not lf.is_file():
        raise UsageError(f"locustfile {lf} does not exist", "fix --locustfile (or load.locustfile in the plan)")
    chosen_shape = _shape_for(lf, shape, plan_shape, from_plan=loaded is not None)
    base = None
    if baseline_exprs and not baseline:
        raise UsageError("--baseline-gate needs --baseline REPORT.json", "give the JSON report of the earlier release's `rollout gate --json`")
    if baseline:
        from rollout.gates.baseline import load_baseline, parse_baseline_gate

        for expr in baseline_exprs or []:
            name, g = parse_baseline_gate(expr, min_requests)
            if name in gates:
                raise UsageError(f"--baseline-gate {expr!r} is given twice", "give each gate once")
            gates[name] = g
            baseline_names.append(name)
        if not baseline_names:
            raise UsageError("--baseline given but no gate compares with it",
                             "add --baseline-gate 'p95<+10%' (or `compare: stable` gates in the plan)")
        base = load_baseline(baseline, lf)
    if users < 1:
        raise UsageError(f"--users {users}: at least 1 user", "give --users N with N ≥ 1")
    if users > MAX_USERS:  # the plan's own cap (load.users): 10,000,000 users would exhaust memory
        raise UsageError(f"--users {users:,}: at most {MAX_USERS:,} users", f"give --users N with 1 ≤ N ≤ {MAX_USERS:,} (more load: --workers)")
    if not math.isfinite(spawn) or spawn <= 0 or spawn > MAX_USERS:
        raise UsageError(f"--spawn-rate {spawn_rate}: users started per second must be a finite number > 0 and at most {MAX_USERS:,}",
                         "give --spawn-rate such as 10 (or leave it out: all users at once)")
    if min_requests > INT32_MAX:
        raise UsageError(f"--min-requests {min_requests}: at most {INT32_MAX:,}", "give --min-requests such as 100")
    if dur <= 0:
        raise UsageError(f"--duration {duration}: the load must run for some time", "give --duration such as 30s or 2m")
    if not gates:
        raise UsageError("no gate can judge this run" + (f" (skipped: {', '.join(skipped)})" if skipped else ""), "add --gate 'p95<300ms' or absolute gates to the plan")
    n_workers = plan_workers if workers is None else workers
    if n_workers < 0 or n_workers > MAX_WORKERS:
        raise UsageError(f"--workers {n_workers}: not a number of processes", f"give --workers N with 0 ≤ N ≤ {MAX_WORKERS} (0: load in this process)")
    return GateSetup(
        host=host.rstrip("/"), locustfile=lf, users=users, spawn_rate=spawn, duration=dur, gates=gates, skipped=skipped,
        version_header=header, roles=roles, max_requests=max_requests, plan=loaded, workers=n_workers,
        baseline=base, baseline_gates=baseline_names, cluster=cluster, shape=chosen_shape,
        tags=tuple(tags) if tags is not None else None, exclude_tags=tuple(exclude_tags) if exclude_tags is not None else None,
        options=options,
    )


def _shape_for(lf: Path, flag: str | None, plan_shape: str | None, from_plan: bool) -> str | None:
    """Which LoadTestShape drives the users: --shape (`none`: users/spawn rate), else the plan's, else — without a
    plan, as `locust -f FILE` does — the locustfile's own shape class when it defines one."""
    if flag is not None:
        return None if flag == "none" else flag
    if from_plan:
        return plan_shape
    return AUTO_SHAPE  # decided when the locustfile is imported (run_gate): resolving must not import locust


AUTO_SHAPE = "<the locustfile's own>"


def _auto_shape(setup: GateSetup) -> None:
    if setup.shape == AUTO_SHAPE:
        from rollout.load.session import load

        shapes = list(load(setup.locustfile).shapes)
        setup.shape = shapes[0] if shapes else None


def _duration(text: str) -> float:
    try:  # the plan's parser: finite (no nan/inf) and at most a year
        return parse_duration(text.strip())
    except ValueError as exc:
        raise UsageError(f"--duration {text!r} is not a duration: expected {exc}", "give a duration such as 30s, 5m or 1h") from None


class _Progress:
    """One plain line on stderr every few seconds (CI logs stay readable)."""

    def __init__(self, duration: float, every: float = 5.0) -> None:
        self.duration, self.every, self.last = duration, every, -1e9

    def __call__(self, stats: Any, failing: list[Any]) -> None:
        now = time.monotonic()
        if now - self.last < self.every and not failing:
            return
        self.last = now
        from rollout.plan.units import fmt_ms, fmt_percent

        tl = stats.timeline[-1] if stats.timeline else {}
        rps = sum(v.get("requests", 0) for k, v in tl.items() if k != "t")
        total = stats.role("all")
        shape = getattr(stats.endpoints, "shape", None)
        users = f"users {stats.users}" + (f" (shape {shape})" if shape else "")
        line = (f"  [gate {stats.elapsed:,.0f}s/{fmt_duration(self.duration)}] {users} | rps {rps:,} | "
                f"err {fmt_percent(total.error_rate)} | p95 {fmt_ms(total.percentile(95))} | {total.requests:,} requests")
        if failing:
            line += f" | FAIL {failing[0].gate}"
        print(line, file=sys.stderr, flush=True)


@dataclass
class GateResult:
    exit_code: int
    summary: str  # one line for people
    report: dict[str, Any]


def run_gate(setup: GateSetup, load_runner: Any, quiet: bool = False) -> GateResult:
    """Probe, run the load with the gates judged every second, build the report. No traffic moves."""
    from rollout.gates.health import explain_inconclusive
    from rollout.gates.judge import StageJudge
    from rollout.gates.verdict import Status
    from rollout.load.runner import LoadSpec
    from rollout.report.json_report import gate_report

    if setup.cluster is None:  # in-cluster load: the target may answer only inside the cluster
        from rollout.load.session import check

        _auto_shape(setup)
        check(_spec(setup))  # bad locustfile, shape, tag or option: exit 2 before anything runs
        probe(setup.host)
    served_by = version_of(setup.host, setup.version_header) if setup.cluster is None else None
    if served_by and served_by not in setup.roles:
        setup.roles[served_by] = served_by  # name the series after the version that answers, not "unknown"
    spec = LoadSpec(
        locustfile=setup.locustfile, host=setup.host, users=setup.users, spawn_rate=setup.spawn_rate,
        duration=setup.duration, version_header=setup.version_header, roles=dict(setup.roles), max_requests=setup.max_requests,
        shape=setup.shape, tags=setup.tags, exclude_tags=setup.exclude_tags, options=setup.options,
    )
    if setup.baseline is not None:
        from rollout.gates.baseline import BaselineJudge

        judge: Any = BaselineJudge(setup.gates, setup.baseline_gates, setup.baseline)
    else:
        judge = StageJudge(setup.gates)
    failing: list[Any] = []
    decided: dict[str, Any] = {}
    progress = _Progress(setup.duration)

    def on_tick(stats: Any) -> bool:
        verdicts = judge.judge(stats, final=False)
        bad = [v for v in verdicts if v.status is Status.FAIL and setup.gates[v.gate].critical]
        if not quiet:
            progress(stats, bad)
        if bad:
            failing.extend(bad)
            decided["t"] = stats.elapsed
            return True
        return False

    started = time.time()
    stats = load_runner(spec, on_tick)
    ended = time.time()
    if failing:
        names = {v.gate for v in failing}
        verdicts = failing + [v for v in judge.judge(stats, final=False) if v.gate not in names]
    else:
        verdicts = judge.judge(stats, final=True)
    verdicts = explain_inconclusive(verdicts, stats)  # an inconclusive run on a thin load says why, first
    bad = [v for v in verdicts if v.status is Status.FAIL]
    unsure = [v for v in verdicts if v.status is Status.INCONCLUSIVE]
    if bad:
        code, result = EXIT_GATE_FAILED, "failed"
        summary = "; ".join(f"gate `{v.gate}` failed: {v.message}" for v in bad)
    elif unsure:
        code, result = EXIT_GATE_FAILED, "inconclusive"
        summary = "; ".join(f"{v.gate}: {v.message}" if v.gate.startswith("health:") else f"gate `{v.gate}` inconclusive: {v.message}"
                            for v in unsure)
    else:
        code, result = EXIT_OK, "passed"
        summary = f"all {len(verdicts)} gate{'s' if len(verdicts) != 1 else ''} passed ({stats.requests:,} requests in {stats.elapsed:,.1f}s)"
    if stats.requests == 0 and code == EXIT_OK:
        code, result, summary = EXIT_GATE_FAILED, "inconclusive", "no request was made: nothing was judged"
    elif code == EXIT_OK and stats.failures == stats.requests:  # e.g. latency gates only, and every request failed fast
        code, result = EXIT_GATE_FAILED, "failed"
        summary = f"every one of the {stats.requests:,} requests failed (no gate judged errors; add --gate 'errors<1%')"
    report = gate_report(setup, stats, verdicts, decided.get("t"), started, ended, result, code, summary)
    return GateResult(code, summary, report)


def _spec(setup: GateSetup) -> Any:
    from rollout.load.runner import LoadSpec

    return LoadSpec(locustfile=setup.locustfile, host=setup.host, users=setup.users, spawn_rate=setup.spawn_rate,
                    duration=setup.duration, shape=setup.shape, tags=setup.tags, exclude_tags=setup.exclude_tags, options=setup.options)


def command(plan: str | None, host: str | None, locustfile: str | None, users: int | None, duration: str | None,
            gate_exprs: list[str], min_requests: int, spawn_rate: float | None, workers: int | None,
            paths: Any, quiet: bool = False, baseline: str | None = None, baseline_exprs: list[str] | None = None,
            version_header: str | None = None, shape: str | None = None, tags: list[str] | None = None,
            exclude_tags: list[str] | None = None, external: tuple[int, Any] | None = None) -> int:
    """The whole `rollout gate`: resolve, probe, load and judge, write the reports; returns the exit code.

    Bad input raises UsageError/PlanInvalid (exit 2) before anything runs. An
    unreachable target raises InfraError (exit 3) after writing the reports
    asked for, with an <error> test case, so CI still shows why.
    """
    from rollout.errors import RolloutError
    from rollout.report.json_report import error_report
    from rollout.report.outputs import write_reports

    setup = resolve(plan, host, locustfile, users, duration, gate_exprs, min_requests, spawn_rate, workers, baseline, baseline_exprs,
                    version_header, shape=shape, tags=tags, exclude_tags=exclude_tags)
    if external is not None:  # --expect-workers N: the master here, N `rollout load-worker` processes join it
        if setup.cluster is not None:
            raise UsageError("--expect-workers with load.runner: kubernetes: the master runs in the cluster there",
                             "leave out --expect-workers, or remove load.runner to run the master here")
        setup.workers, setup.external = external
    load_runner = _load_runner(setup)
    started = time.time()
    quit_code = 3
    try:
        try:
            result = run_gate(setup, load_runner, quiet=quiet)
            quit_code = result.exit_code
        finally:  # the process is done with load: `quitting` and `quit(exit_code)` for the locustfile, as `locust` fires them
            if setup.cluster is None:
                from rollout.load.session import close_all

                close_all(quit_code)
    except RolloutError as exc:
        if exc.exit_code != EXIT_GATE_FAILED:
            write_reports(error_report("gate", {"host": setup.host, "locustfile": str(setup.locustfile)}, setup.plan,
                                       exc.exit_code, exc.render().removeprefix("Error: "), started), paths)
        raise
    write_reports(result.report, paths)
    for v in result.report["stages"][0]["verdicts"]:
        mark = {"pass": "✔", "fail": "✘"}.get(v["status"], "?")
        print(f"  {mark} {v['gate']}: {v['status']} — {v['message']}")
    for name, why in setup.skipped.items():
        print(f"  - {name}: skipped — {why}")
    from rollout.report.console import endpoint_lines

    for line in endpoint_lines(result.report["stages"][0].get("stats", {}).get("endpoints")):
        print(line)
    mark = "✔" if result.exit_code == EXIT_OK else "✘"
    print(f"{mark} gate {result.report['outcome']['result']}: {result.summary}")
    if result.exit_code != EXIT_OK:
        print(f"Error: {result.summary} — the candidate at {setup.host} did not pass its gates; see the report for the numbers", file=sys.stderr)
    return result.exit_code


def _load_runner(setup: GateSetup) -> Any:
    if setup.cluster is not None:  # load.runner: kubernetes (Locust master and workers in the namespace)
        from rollout.load.cluster import cluster_runner

        return cluster_runner(setup.cluster)
    if setup.workers and setup.workers > 0:
        from rollout.load.distributed import run_load_distributed

        return lambda spec, on_tick: run_load_distributed(spec, on_tick, workers=setup.workers, external=setup.external)
    from rollout.load.runner import run_load

    return run_load

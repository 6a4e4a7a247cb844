"""`rollout gate --baseline report.json`: judge a candidate against a saved report of an earlier release.

The baseline is the JSON report an earlier `rollout gate --json` wrote: its
stage carries, per version and for all traffic, the request and failure
counts and the latency histogram (`distributions`, `Histogram.to_dict`), so
a later run can compare distributions, not only the printed percentiles.

Gates (`--baseline-gate`, repeatable; and, when a baseline is given, the
plan's `compare: stable` gates on error_rate / p50..p99 with the baseline
standing in for stable):

    p95<+10%      the candidate's p95 at most 10 % above the baseline's (relative)
    p50<=+25%     (`<` and `<=` mean the same, as for --gate)
    errors<+0.5pt the candidate's error rate at most 0.5 percentage points above
                  the baseline's (additive; `pp` and `points` also accepted)

Statistics: the anytime-valid tests of `rollout.stats.sequential`, with the
baseline's fixed data as the "stable" side, checked every second:
  * latency: `QuantileTest(candidate histogram, baseline histogram)`. The
    baseline's confidence sequence is evaluated at its fixed n (valid at any n,
    so at that one too); the candidate's grows. FAIL when the candidate's
    lower bound is above (1 + margin) × the baseline's upper bound; PASS when
    its upper bound is below (1 + margin) × the baseline's lower bound.
  * errors: `PairedErrorRateTest`; each second the candidate's new requests are
    paired with as many requests drawn without replacement from the baseline's
    pool (errors drawn hypergeometrically, seeded): a uniformly random order
    of the baseline's requests. Once the pool is used up no more pairs form,
    so a baseline of n requests supports at most n pairs.
Each baseline gate gets alpha / (number of baseline gates), alpha = 0.01 by
default (or the plan gate's `alpha`). As for every gate, a run that ends
without a PASS is inconclusive and exits 1: a small baseline (or a tight
margin) may need a longer run; the message says how far the test got.

Statistical caveat: the baseline is a fixed sample from another time, not
concurrent traffic. The tests' guarantees treat both samples as draws from
each release's behaviour under the same conditions; anything that changed
between the runs (the machine, the network, a dependency, the time of day,
the load generator) is attributed to the release. Keep the load profile and
the environment the same, and prefer `compare: stable` in a rollout (both
versions under the same traffic at the same time) for the final word.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout.errors import UsageError
from rollout.gates.verdict import Status, Verdict
from rollout.load.stats import StageStats
from rollout.plan.model import Gate
from rollout.plan.units import fmt_ms, fmt_percent
from rollout.stats.histogram import Histogram

_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_-]*)\s*(<=|<|≤)\s*\+\s*(\d+(?:\.\d+)?)\s*(%|pt|pp|points?)\s*$")
EXAMPLES = "such as 'p95<+10%' or 'errors<+0.5pt'"
METRICS = {"errors": "error_rate", "error_rate": "error_rate", "p50": "p50", "p90": "p90", "p95": "p95", "p99": "p99"}
DEFAULT_ALPHA = 0.01


@dataclass
class Baseline:
    """The fixed side of every baseline gate: one report's all-traffic counts and latency histogram."""

    path: Path
    requests: int
    failures: int
    latency: Histogram
    generated_at: str | None
    host: str | None
    version: str | None  # the version that answered the baseline run, when it said
    locustfile: str | None

    @property
    def label(self) -> str:
        who = f"{self.version} " if self.version else ""
        when = f", {self.generated_at}" if self.generated_at else ""
        return f"baseline {who}({self.path.name}{when})"

    def info(self) -> dict[str, Any]:
        """What the JSON report records about the baseline it was judged against."""
        rate = self.failures / self.requests if self.requests else None
        return {"file": str(self.path), "generated_at": self.generated_at, "host": self.host, "version": self.version,
                "requests": self.requests, "failures": self.failures, "error_rate": rate,
                "p50_ms": _r(self.latency.quantile(0.5)), "p95_ms": _r(self.latency.quantile(0.95)), "p99_ms": _r(self.latency.quantile(0.99))}


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 3)


def load_baseline(path: str, locustfile: Path | None = None) -> Baseline:
    """Read a saved report; BadInput/UsageError (exit 2) when it cannot serve as a baseline."""
    from rollout.report.json_report import load

    doc = load(path)  # not JSON, not a rollout report, unknown schema version: exit 2
    p = Path(path)
    fix = "give the JSON report of an earlier `rollout gate --json` run (rollout ≥ this version)"
    if doc.get("command") != "gate":
        raise UsageError(f"--baseline {p}: a report of `rollout {doc.get('command')}`, not of `rollout gate`", fix)
    stages = doc.get("stages") or []
    if not stages:
        raise UsageError(f"--baseline {p}: the report has no measurements (its run ended with: {doc.get('outcome', {}).get('message', '?')})", fix)
    dist = (stages[0].get("distributions") or {}).get("all")
    if not isinstance(dist, dict):
        raise UsageError(f"--baseline {p}: the report has no latency histograms (`distributions`), written by an older rollout", fix)
    try:
        requests, failures = int(dist["requests"]), int(dist["failures"])
        latency = Histogram.from_dict(dist["latency"])
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise UsageError(f"--baseline {p}: its histogram cannot be read: {exc}", fix) from None
    if requests < 1 or latency.count != requests or not 0 <= failures <= requests:
        raise UsageError(f"--baseline {p}: inconsistent counts ({requests} requests, {failures} failures, {latency.count} latencies)", fix)
    target = doc.get("target") or {}
    lf = target.get("locustfile")
    if locustfile is not None and lf and Path(lf).name != locustfile.name:
        raise UsageError(f"--baseline {p} was measured with the locustfile {Path(lf).name}, this run uses {locustfile.name}",
                         "compare runs of the same load profile (the same locustfile), or make a new baseline")
    versions = [k for k, v in (stages[0].get("stats") or {}).items() if isinstance(v, dict) and k not in ("all", "unknown", "metrics", "gauges", "cohort_routing", "endpoints")]  # endpoints: #9 (not a version)
    return Baseline(p, requests, failures, latency, doc.get("generated_at"), target.get("host"),
                    versions[0] if len(versions) == 1 else None, lf)


def parse_baseline_gate(expr: str, min_requests: int) -> tuple[str, Gate]:
    m = _EXPR.match(expr or "")
    if not m:
        raise UsageError(f"--baseline-gate {expr!r} is not a baseline gate: expected METRIC<+INCREASE, {EXAMPLES}",
                         "latency: a relative increase in %; errors: an increase in percentage points (pt)")
    word, _op, amount, unit = m.groups()
    metric = METRICS.get(word.lower())
    if metric is None:
        raise UsageError(f"--baseline-gate {expr!r}: unknown metric `{word}`", "expected one of errors, p50, p90, p95, p99")
    if metric == "error_rate" and unit == "%":
        raise UsageError(f"--baseline-gate {expr!r}: an error-rate increase is in percentage points",
                         f"write it as errors<+{amount}pt (the baseline's rate plus {amount} points)")
    if metric != "error_rate" and unit != "%":
        raise UsageError(f"--baseline-gate {expr!r}: a latency increase is relative, in %", f"write it as {word}<+{amount}%")
    inc = float(amount) / 100.0
    if metric == "error_rate" and not 0 < inc < 1:
        raise UsageError(f"--baseline-gate {expr!r}: the increase must be above 0 and below 100 points", f"write it {EXAMPLES}")
    if metric != "error_rate" and not inc > 0:
        raise UsageError(f"--baseline-gate {expr!r}: the increase must be above 0 %", "nothing is ever credibly below +0 %")
    name = f"{'errors' if metric == 'error_rate' else metric}<+{amount}{'pt' if metric == 'error_rate' else '%'} vs baseline"
    from pydantic import ValidationError

    try:  # the plan's own rules (a finite increase, at most 100 %): a flag never reaches "internal error"
        gate = Gate(metric=metric, compare="stable", max_increase=f"{amount}%", method="sequential", alpha=DEFAULT_ALPHA,
                    min_requests=min_requests)
    except ValidationError as exc:
        why = "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in exc.errors(include_url=False))
        raise UsageError(f"--baseline-gate {expr!r}: expected {why}", f"write it {EXAMPLES}") from None
    return name, gate


class _ErrorsVsBaseline:
    def __init__(self, gate: Gate, alpha: float, baseline: Baseline) -> None:
        from rollout.stats.sequential import PairedErrorRateTest

        inc = float(gate.max_increase or 0.0)
        passing = float(gate.pass_increase if gate.pass_increase is not None else inc)
        self.test = PairedErrorRateTest(fail_margin=inc, pass_margin=passing, alpha_fail=alpha, alpha_pass=alpha, max_lag=None)
        self.pool_n, self.pool_e = baseline.requests, baseline.failures
        self.drawn_n = self.drawn_e = 0
        self.seen_n = 0
        self.rng = random.Random(7)

    def update(self, n: int, e: int) -> Any:
        from rollout.stats.error_rate import hypergeometric

        new = n - self.seen_n
        self.seen_n = n
        left = self.pool_n - self.drawn_n
        k = min(max(new, 0), left)
        if k:
            self.drawn_e += hypergeometric(self.rng, left, self.pool_e - self.drawn_e, k)
            self.drawn_n += k
        return self.test.update(n, e, self.drawn_n, self.drawn_e)


class BaselineGate:
    """One gate: the candidate (all traffic) against the baseline's fixed sample."""

    def __init__(self, name: str, gate: Gate, alpha: float, baseline: Baseline) -> None:
        from rollout.stats.sequential import QuantileTest

        self.name, self.gate, self.alpha, self.baseline = name, gate, alpha, baseline
        inc = float(gate.max_increase or 0.0)
        passing = float(gate.pass_increase if gate.pass_increase is not None else inc)
        if gate.metric == "error_rate":
            self.errors: _ErrorsVsBaseline | None = _ErrorsVsBaseline(gate, alpha, baseline)
        else:
            self.errors = None
            self.test = QuantileTest(float(gate.metric[1:]) / 100.0, fail_margin=inc, pass_margin=passing, alpha_fail=alpha, alpha_pass=alpha)

    def evaluate(self, stats: StageStats, final: bool) -> Verdict:
        from rollout.stats.sequential import Decision

        c = stats.role("all")
        b = self.baseline
        inc = float(self.gate.max_increase or 0.0)
        if self.errors is not None:
            result = self.errors.update(c.requests, c.failures)
            now = (f"candidate error rate {fmt_percent(c.error_rate)} ({c.failures:,}/{c.requests:,}) vs {b.label} "
                   f"{fmt_percent(b.failures / b.requests)} ({b.failures:,}/{b.requests:,}), limit +{100 * inc:g} points")
            threshold = b.failures / b.requests + inc
            observed = c.error_rate
        else:
            result = self.test.update(c.latency, b.latency)
            q = float(self.gate.metric[1:]) / 100.0
            base = b.latency.quantile(q)
            now = (f"candidate {self.gate.metric} {fmt_ms(c.latency.quantile(q))} vs {b.label} {self.gate.metric} {fmt_ms(base)} "
                   f"({b.requests:,} requests), limit +{100 * inc:g} % = {fmt_ms(base * (1 + inc))}")
            threshold = base * (1 + inc)
            observed = c.latency.quantile(q)
        detail = result.message.replace("canary", "candidate").replace("stable", "baseline")
        if result.decision is Decision.FAIL:
            status = Status.FAIL
        elif c.requests < self.gate.min_requests:
            status = Status.INCONCLUSIVE if final else Status.PENDING
        elif result.decision is Decision.PASS:
            status = Status.PASS
        else:
            status = Status.INCONCLUSIVE if final else Status.PENDING
        if status is Status.INCONCLUSIVE and self.errors is not None and self.errors.drawn_n >= b.requests:
            detail += f"; the baseline's {b.requests:,} requests are all paired: a larger baseline is needed"
        msg = f"{now}: {detail} [sequential vs a fixed baseline, α={self.alpha:.3g}]"
        obs = None if math.isnan(observed) else observed
        return Verdict(self.name, status, msg, "all", obs, threshold, c.requests)


class BaselineJudge:
    """`StageJudge` for the gates that are not baseline gates, plus the baseline gates (same `judge` contract)."""

    def __init__(self, gates: dict[str, Gate], baseline_names: list[str], baseline: Baseline) -> None:
        from rollout.gates.judge import StageJudge

        self.inner = StageJudge({n: g for n, g in gates.items() if n not in baseline_names})
        total = sum(gates[n].alpha for n in baseline_names) / max(1, len(baseline_names))
        self.baseline_gates = {n: BaselineGate(n, gates[n], total / len(baseline_names), baseline) for n in baseline_names}
        self.order = list(gates)

    def judge(self, stats: StageStats, final: bool) -> list[Verdict]:
        out = {v.gate: v for v in self.inner.judge(stats, final)}
        for name, g in self.baseline_gates.items():
            out[name] = g.evaluate(stats, final)
        return [out[n] for n in self.order if n in out]

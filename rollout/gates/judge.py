"""One stage's gates, judged every second: threshold gates and stateful sequential tests.

Sequential gates are comparisons (`compare: stable`, `SequentialCompare`) and,
by default, absolute limits on error_rate and p50–p99 (`SequentialLimit`).

Sequential tests keep state across ticks (their e-processes grow with the
evidence), so a judge is made per stage and fed the stage's cumulative
statistics each second. The sequential gates of a stage share its false-
rollback budget: each gets its alpha divided by their number (Bonferroni),
so the stage's overall false-rollback rate stays at the gates' alpha.
"""

from __future__ import annotations

from typing import Any

from rollout.gates.threshold import evaluate
from rollout.gates.verdict import Status, Verdict
from rollout.load.stats import StageStats
from rollout.plan.model import Gate


class SequentialLimit:
    """One version's error rate or latency percentile against the gate's absolute `max`, anytime-valid.

    Error rate: the one-sample e-processes of `rollout.stats.one_sample` on
    (requests, failures). Percentile q with limit L: the same test on the share
    of requests slower than L against 1 − q ("p95 ≤ 250 ms" ⇔ "at most 5 % of
    requests slower than 250 ms"), counted from the version's latency histogram
    (`exceedances`: the requests within its 0.5 % resolution of L are counted
    against FAIL's evidence and against PASS's, so both guarantees hold exactly).
    A failure is judged at once; `min_requests` only delays a PASS.
    """

    def __init__(self, name: str, gate: Gate, alpha: float) -> None:
        from rollout.stats.one_sample import RateLimitTest

        self.name, self.gate, self.alpha = name, gate, alpha
        self.limit = float(gate.max)  # type: ignore[arg-type]
        self.pass_limit = float(gate.pass_max) if gate.pass_max is not None else self.limit  # type: ignore[arg-type]
        if gate.metric == "error_rate":
            self.q = None
            p0, p1 = self.limit, self.pass_limit
        else:
            self.q = float(gate.metric[1:]) / 100.0
            p0 = p1 = 1.0 - self.q
        self.test = RateLimitTest(p0, pass_limit=p1, alpha_fail=alpha, alpha_pass=alpha)

    def evaluate(self, stats: StageStats, final: bool) -> Verdict:
        from rollout.plan.units import fmt_ms, fmt_percent
        from rollout.stats.one_sample import exceedances
        from rollout.stats.sequential import Decision

        role = self.gate.version
        vs = stats.role(role)
        who = "all traffic" if role == "all" else role
        n = vs.requests
        if self.q is None:
            x = x_pass = vs.failures
            observed = vs.error_rate
        else:
            x, _ = exceedances(vs.latency, self.limit)
            _, x_pass = exceedances(vs.latency, self.pass_limit)
            observed = vs.percentile(100 * self.q)
        decision = self.test.update(n, x, x_pass)
        if decision is Decision.FAIL:
            status = Status.FAIL
        elif decision is Decision.PASS and n >= self.gate.min_requests:
            status = Status.PASS
        else:
            status = Status.INCONCLUSIVE if final else Status.PENDING
        evidence = self.test.evidence()
        floor = ""
        if decision is Decision.PASS and status is not Status.PASS:
            floor = f"; passes once {self.gate.min_requests:,} requests (min_requests) are in"
        if self.q is None:
            label, value, lim, plim = "error rate", fmt_percent(observed), fmt_percent(self.limit), fmt_percent(self.pass_limit)
            share = ""
        else:
            label, value, lim, plim = self.gate.metric, fmt_ms(observed), fmt_ms(self.limit), fmt_ms(self.pass_limit)
            slower = x if decision is Decision.FAIL else x_pass
            share = f"{fmt_percent(slower / n) if n else 'n/a'} slower than {lim if decision is Decision.FAIL else plim} vs {fmt_percent(1 - self.q)} allowed, "
        if status is Status.FAIL:
            head = f"{label} {value} > {lim}"
        elif decision is Decision.PASS:
            head = f"{label} {value} < {plim} credibly"
        else:
            head = f"{label} {value} vs limit {lim}: undecided"
        msg = f"{head} ({who}, {share}{n:,} requests, {evidence}){floor} [sequential]"
        obs = None if observed != observed else observed
        return Verdict(self.name, status, msg, role, obs, self.limit, n)


class SequentialCompare:
    """Canary against stable with an anytime-valid test (from rollout.stats.sequential)."""

    def __init__(self, name: str, gate: Gate, alpha: float) -> None:
        from rollout.stats.sequential import ErrorRateRatioTest, PairedErrorRateTest, QuantileTest

        self.name, self.gate = name, gate
        fail = float(gate.max_increase or 0.0)
        passing = float(gate.pass_increase if gate.pass_increase is not None else fail)
        self.test: Any
        if gate.metric == "error_rate" and gate.max_ratio is not None:
            ratio = float(gate.max_ratio)
            self.test = ErrorRateRatioTest(max_ratio=ratio, alpha=alpha, pass_ratio=ratio, alpha_pass=alpha)
        elif gate.metric == "error_rate":
            self.test = PairedErrorRateTest(fail_margin=fail, pass_margin=passing, alpha_fail=alpha, alpha_pass=alpha)
        else:
            self.test = QuantileTest(float(gate.metric[1:]) / 100.0, fail_margin=fail, pass_margin=passing, alpha_fail=alpha, alpha_pass=alpha)
        self.alpha = alpha

    def evaluate(self, stats: StageStats, final: bool) -> Verdict:
        from rollout.stats.sequential import Decision

        c, s = stats.role("canary"), stats.role("stable")
        if self.gate.metric == "error_rate":
            result = self.test.update(c.requests, c.failures, s.requests, s.failures)
        else:
            result = self.test.update(c.latency, s.latency)
        n = min(c.requests, s.requests)
        if result.decision is Decision.FAIL:
            status = Status.FAIL
        elif n < self.gate.min_requests:
            status = Status.INCONCLUSIVE if final else Status.PENDING
        elif result.decision is Decision.PASS:
            status = Status.PASS
        else:
            status = Status.INCONCLUSIVE if final else Status.PENDING
        msg = f"{result.message} [sequential, α={self.alpha:.3g}]"
        return Verdict(self.name, status, msg, "canary", result.estimate_canary, result.threshold, n)


class StageJudge:
    def __init__(self, gates: dict[str, Gate]) -> None:
        self.gates = gates
        seq = [n for n, g in gates.items() if g.method == "sequential"]
        self.sequential: dict[str, SequentialCompare | SequentialLimit] = {
            n: (SequentialCompare if gates[n].compare is not None else SequentialLimit)(n, gates[n], gates[n].alpha / len(seq))
            for n in seq
        }

    def judge(self, stats: StageStats, final: bool) -> list[Verdict]:
        out = []
        for name, gate in self.gates.items():
            seq = self.sequential.get(name)
            out.append(seq.evaluate(stats, final) if seq else evaluate(name, gate, stats, final))
        return out

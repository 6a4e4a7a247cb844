"""One stage's gates, judged every second: threshold gates and stateful sequential tests.

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


class SequentialCompare:
    """Canary against stable with an anytime-valid test (from rollout.stats.sequential)."""

    def __init__(self, name: str, gate: Gate, alpha: float) -> None:
        from rollout.stats.sequential import PairedErrorRateTest, QuantileTest

        self.name, self.gate = name, gate
        fail = float(gate.max_increase or 0.0)
        passing = float(gate.pass_increase if gate.pass_increase is not None else fail)
        self.test: Any
        if gate.metric == "error_rate":
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
        self.sequential = {n: SequentialCompare(n, gates[n], gates[n].alpha / len(seq)) for n in seq}

    def judge(self, stats: StageStats, final: bool) -> list[Verdict]:
        out = []
        for name, gate in self.gates.items():
            seq = self.sequential.get(name)
            out.append(seq.evaluate(stats, final) if seq else evaluate(name, gate, stats, final))
        return out

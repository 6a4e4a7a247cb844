"""Health checks of the experiment itself, judged at the end of a stage.

A gate asks "is the canary worse?"; these ask "can the answer be trusted?".
When one fails, the canary is not to blame, so the stage goes to a person
(awaiting-review) instead of rolling back:

- sample-ratio mismatch: the canary's observed share of non-cohort traffic is
  far from the planned weight (a router that is not doing what it was told,
  replica counts that make the weight coarse, sticky keep-alive connections);
- the stable version breaching the plan's own absolute limits: the baseline
  is unhealthy, so comparisons against it mean little;
- the load generator saturated: its CPU near 100 % inflates every latency.
"""

from __future__ import annotations

import math

from rollout.engine.state import Split
from rollout.gates.threshold import evaluate
from rollout.gates.verdict import Status, Verdict
from rollout.load.stats import StageStats
from rollout.plan.model import Gate
from rollout.plan.units import fmt_percent

SRM_MIN_REQUESTS = 200
SRM_SIGMAS = 5.0  # far beyond chance: 5 standard deviations of a binomial share
SRM_MIN_GAP = 0.05  # and at least 5 points, so tiny real skews do not page anyone
CPU_SATURATED = 90.0


def split_mismatch(split: Split, stats: StageStats) -> Verdict | None:
    canary = stats.cohort_routing.get("other->canary", 0)
    stable = stats.cohort_routing.get("other->stable", 0)
    n = canary + stable
    if n < SRM_MIN_REQUESTS:
        return None
    p = split.weight
    observed = canary / n
    sigma = math.sqrt(max(p * (1 - p), 1e-12) / n)
    gap = abs(observed - p)
    if gap > max(SRM_MIN_GAP, SRM_SIGMAS * sigma):
        return Verdict("health: split", Status.INCONCLUSIVE,
                       f"the canary got {fmt_percent(observed)} of traffic, planned {fmt_percent(p)} ({n:,} requests): "
                       "the split is not what the plan says", "canary", observed, p, n)
    return None


def stable_breaches(gates: dict[str, Gate], stats: StageStats) -> list[Verdict]:
    out = []
    for name, gate in gates.items():
        if gate.compare is not None or gate.version != "canary":
            continue
        as_stable = gate.model_copy(update={"version": "stable"})
        if gate.method == "sequential":  # credibly above its limit, one look at the stage's end (α of the gate)
            from rollout.gates.judge import SequentialLimit

            v = SequentialLimit(name, as_stable, gate.alpha).evaluate(stats, final=True)
        else:
            v = evaluate(name, as_stable, stats, final=True)
        if v.status is Status.FAIL:
            out.append(Verdict(f"health: stable {name}", Status.INCONCLUSIVE,
                               f"the stable version itself breaches `{name}`: {v.message}", "stable", v.observed, v.threshold, v.requests))
    return out


def saturated(stats: StageStats) -> Verdict | None:
    if stats.cpu_max >= CPU_SATURATED:
        return Verdict("health: load generator", Status.INCONCLUSIVE,
                       f"the load generator reached {stats.cpu_max:.0f}% CPU: latencies may be its own, not the service's "
                       "(fewer users, `load.workers`, or a bigger machine)", "all", stats.cpu_max, CPU_SATURATED, stats.requests)
    return None


def health_checks(gates: dict[str, Gate], split: Split, stats: StageStats, to_canary_only: bool) -> list[Verdict]:
    out: list[Verdict] = []
    if not to_canary_only:
        mismatch = split_mismatch(split, stats)
        if mismatch:
            out.append(mismatch)
        out.extend(stable_breaches(gates, stats))
    sat = saturated(stats)
    if sat:
        out.append(sat)
    return out

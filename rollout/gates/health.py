"""Health checks of the experiment itself, judged at the end of a stage.

A gate asks "is the canary worse?"; these ask "can the answer be trusted?".
When one fails, the canary is not to blame, so the stage goes to a person
(awaiting-review) instead of rolling back:

- sample-ratio mismatch: the canary's observed share of non-cohort traffic is
  far from the planned weight (a router that is not doing what it was told,
  replica counts that make the weight coarse, sticky keep-alive connections);
- the stable version breaching the plan's own absolute limits: the baseline
  is unhealthy, so comparisons against it mean little;
- the load generator saturated: its CPU near 100 % inflates every latency;
- the load far thinner than its users imply (`thin_load`): explains an inconclusive
  stage or gate run instead of leaving "inconclusive" unexplained (see below).
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
# "Far fewer requests than expected": fewer than one request per user every 5 seconds of the run.
THIN_PER_USER_SECOND = 0.2
THIN_MIN_USER_SECONDS = 5.0  # below this there is too little run to say anything about its rate
SLOW_SHARE = 0.5  # a request's own latency is at least this share of a user's time per request: the target is slow


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


def user_seconds(stats: StageStats) -> float:
    """Σ users × time over the run, from the running-user timeline (one point a tick; linear between points, from
    0 users at 0 s), so a ramp-up or a shape is not held against the load; users × elapsed without a timeline."""
    points = [(float(t), float(u)) for t, u in stats.users_timeline if 0 <= t <= stats.elapsed + 1e-9]
    if not points:
        return float(stats.users) * stats.elapsed
    total, (t0, u0) = 0.0, (0.0, 0.0)
    for t, u in points:
        total += (t - t0) * (u0 + u) / 2.0
        t0, u0 = t, u
    return total + max(stats.elapsed - t0, 0.0) * u0


def thin_load(stats: StageStats) -> Verdict | None:
    """The load made far fewer requests than its users and duration imply — the plain reason a gate could not
    decide. The rule: fewer than THIN_PER_USER_SECOND requests per user-second (one per user every 5 s), over at
    least THIN_MIN_USER_SECONDS user-seconds. The cause is named from what was measured: the time a user spent per
    request (user-seconds / requests) against the requests' own mean latency (and, when the router counts them,
    requests still unanswered): mostly latency → the target is slow; mostly not → the users wait between requests
    (the locustfile's `wait_time`). INCONCLUSIVE: not the canary's fault, and not a pass."""
    us = user_seconds(stats)
    if us < THIN_MIN_USER_SECONDS or stats.requests >= THIN_PER_USER_SECOND * us:
        return None
    users = max((u for _, u in stats.users_timeline), default=stats.users) or stats.users
    n = stats.requests
    per_user = us / n if n else math.inf
    mean_s = stats.role("all").latency.mean / 1000.0 if n else math.nan
    waiting = sum(int(c.get("in_flight", 0)) for c in stats.router.values()) if stats.router else 0
    head = (f"the load made far fewer requests than expected: {n:,} in {stats.elapsed:.0f} s from {users:g} users "
            f"({n / us:.2f} per user per second; a load test's users send at least {THIN_PER_USER_SECOND:g}, one every "
            f"{1 / THIN_PER_USER_SECOND:g} s), too few for the gates to decide")
    if n == 0:
        why = ("no request completed: the target answered nothing in time (slow or hanging"
               + (f": {waiting} requests still unanswered at the router" if waiting else "") + "), or the locustfile's users never send "
               "(check the target with `curl`, and the locustfile's tasks and wait_time)")
    elif (mean_s == mean_s and mean_s >= SLOW_SHARE * per_user) or waiting * 2 >= users > 0:
        why = (f"the target is slow: a request took {mean_s:.1f} s on average, so each user completed one every {per_user:.1f} s"
               + (f" ({waiting} requests still unanswered at the router)" if waiting else "")
               + "; check the target's latency, or give the load more users")
    else:
        why = (f"each user spent {per_user:.1f} s per request while a request itself took {mean_s * 1000:.0f} ms on average: "
               f"the users wait ~{per_user - mean_s:.1f} s between requests (the locustfile's wait_time); shorten it, add users "
               "or lengthen the stage")
    return Verdict("health: load volume", Status.INCONCLUSIVE, f"{head}: {why}", "all", n / us, THIN_PER_USER_SECOND, n)


def explain_inconclusive(verdicts: list[Verdict], stats: StageStats) -> list[Verdict]:
    """`verdicts` with the load-volume explanation first when some verdict is inconclusive and the load was thin
    (a run whose gates decided is judged on them, however few its requests)."""
    if not any(v.status is Status.INCONCLUSIVE for v in verdicts):
        return verdicts
    thin = thin_load(stats)
    return [thin, *verdicts] if thin is not None else verdicts


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

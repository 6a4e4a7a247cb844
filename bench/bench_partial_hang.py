"""The partial-hang fail-closed rule (rollout/gates/liveness.py `_partial_hang`): false failures on a healthy but
slow canary, and detection delay on a canary hanging 10 % of its requests — by simulation.

    python bench/bench_partial_hang.py [--stages 200] [--minutes 10] [--users 30] [--quick]

The rule under test is the production code: `CanaryLiveness.observe` is fed, every simulated second, the
numbers the local router would report (per version: routed, answered, in_flight, timeout, `due`, `stuck`, the
gauges) and the load generator's per-version counts — every fail-closed rule runs, not only the partial hang.

The load is a closed loop, as Locust's: `--users` users, each sending one request, waiting for its answer
(or for the router's 30 s upstream timeout: a 504), then `wait_time` between(0.05, 0.15) s (the example
locustfile's), routed to the canary with probability 10 % (the stage's weight). The router's bookkeeping is
modelled as it is coded: the sweeper runs 4 times a second; a request becomes `due` at the first sweep at
least `stuck_after` (2 s) after the sweep record that follows its routing, and is `stuck` if it had no answer
by that sweep. Stable: lognormal latency, median 100 ms, sigma 0.5 (P(> 2 s) ≈ 1e-9).

Canaries (latency per request):
  * healthy-but-slow, long tails: lognormal with heavy sigma, a Pareto tail, a bimodal "5 % slow path";
    each with P(latency > 2 s) printed beside it: the share of its requests the router counts as stuck;
  * hanging 10 %: each request hangs (no answer until the router's 30 s timeout) with probability 0.1,
    from the stage's start, or from 60 s into it; the others as stable.

False failure = the rule failed the stage at any second of a `--minutes` stage. Detection delay = seconds
from the onset of the hang to the failing verdict. Writes bench/results/partial_hang.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rollout.gates import liveness  # noqa: E402
from rollout.gates.liveness import CanaryLiveness, CanaryProbe  # noqa: E402
from rollout.gates.verdict import Status  # noqa: E402
from rollout.load.stats import StageStats  # noqa: E402

UPSTREAM_TIMEOUT = 30.0  # the router's: a hung request becomes a 504 then
STUCK_AFTER = 2.0
SWEEP = 0.25  # the router's sweeper period
WEIGHT = 0.10
HUNG = math.inf

Latency = Callable[[np.random.Generator, int, np.ndarray], np.ndarray]  # (rng, n, routed-at times) -> seconds


def lognormal(median_s: float, sigma: float) -> Latency:
    return lambda rng, n, at: rng.lognormal(math.log(median_s), sigma, n)


def mixture(base: Latency, share: float, tail: Latency) -> Latency:
    def draw(rng: np.random.Generator, n: int, at: np.ndarray) -> np.ndarray:
        out = base(rng, n, at)
        pick = rng.random(n) < share
        out[pick] = tail(rng, int(pick.sum()), at[pick])
        return out
    return draw


def pareto(xm_s: float, alpha: float) -> Latency:
    return lambda rng, n, at: xm_s * (1.0 + rng.pareto(alpha, n))


def uniform(lo: float, hi: float) -> Latency:
    return lambda rng, n, at: rng.uniform(lo, hi, n)


def hanging(base: Latency, share: float, onset: float) -> Latency:
    def draw(rng: np.random.Generator, n: int, at: np.ndarray) -> np.ndarray:
        out = base(rng, n, at)
        out[(rng.random(n) < share) & (at >= onset)] = HUNG
        return out
    return draw


STABLE = lognormal(0.100, 0.5)

# name -> (canary latency, analytic P(latency > 2 s) or None, hang onset or None)
def p_lognormal_over(median_s: float, sigma: float, x: float = STUCK_AFTER) -> float:
    return 0.5 * math.erfc((math.log(x / median_s) / sigma) / math.sqrt(2))


SCENARIOS: dict[str, tuple[Latency, float | None, float | None]] = {
    "slow: lognormal median 250 ms, sigma 1.0": (lognormal(0.25, 1.0), p_lognormal_over(0.25, 1.0), None),
    "slow: lognormal median 400 ms, sigma 1.0": (lognormal(0.40, 1.0), p_lognormal_over(0.40, 1.0), None),
    "slow: lognormal median 300 ms, sigma 1.4": (lognormal(0.30, 1.4), p_lognormal_over(0.30, 1.4), None),
    "slow: 90 % lognormal 150 ms + 10 % Pareto tail from 0.8 s (alpha 1.2)":
        (mixture(lognormal(0.15, 0.6), 0.10, pareto(0.8, 1.2)), 0.10 * (0.8 / 2.0) ** 1.2, None),
    "slow: 5 % of requests on a slow path, 2.5-4 s (p95 just inside 800 ms)":
        (mixture(lognormal(0.15, 0.5), 0.05, uniform(2.5, 4.0)), 0.05, None),
    "slow: 8 % of requests on a slow path, 2.5-4 s": (mixture(lognormal(0.15, 0.5), 0.08, uniform(2.5, 4.0)), 0.08, None),
    "hang 10 % from the stage's start": (hanging(STABLE, 0.10, 0.0), None, 0.0),
    "hang 10 % from 60 s into the stage": (hanging(STABLE, 0.10, 60.0), None, 60.0),
}


def simulate_requests(rng: np.random.Generator, users: int, duration: float, canary: Latency) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Closed loop: per role, (routed-at, latency) of every request sent before `duration` (latency inf: hung)."""
    starts: list[np.ndarray] = []
    lats: list[np.ndarray] = []
    roles: list[np.ndarray] = []
    t = rng.uniform(0.0, 1.0, users)  # users start over the first second (spawn)
    active = np.ones(users, dtype=bool)
    while active.any():
        idx = np.flatnonzero(active)
        at = t[idx]
        is_canary = rng.random(idx.size) < WEIGHT
        lat = np.empty(idx.size)
        lat[~is_canary] = STABLE(rng, int((~is_canary).sum()), at[~is_canary])
        lat[is_canary] = canary(rng, int(is_canary.sum()), at[is_canary])
        starts.append(at)
        lats.append(lat)
        roles.append(is_canary)
        held = np.minimum(lat, UPSTREAM_TIMEOUT)  # a hung request holds its user until the router's 504
        t[idx] = at + held + rng.uniform(0.05, 0.15, idx.size)
        active[idx] = t[idx] < duration
    r, lt, c = np.concatenate(starts), np.concatenate(lats), np.concatenate(roles)
    return {"canary": (r[c], lt[c]), "stable": (r[~c], lt[~c])}


class RouterModel:
    """The router's per-version counters at any time, from the requests' (routed, latency)."""

    def __init__(self, routed: np.ndarray, latency: np.ndarray) -> None:
        self.routed = np.sort(routed)
        done = routed + np.minimum(latency, UPSTREAM_TIMEOUT)
        ok = latency < UPSTREAM_TIMEOUT
        self.answered_at = np.sort(done[ok])
        self.timeout_at = np.sort(done[~ok])
        self.done_at = np.sort(done)
        # due at the first sweep s with some sweep record s' >= routed and s' <= s - STUCK_AFTER
        record = np.ceil(routed / SWEEP) * SWEEP
        due_at = record + STUCK_AFTER
        self.due_at = np.sort(due_at)
        self.stuck_at = np.sort(due_at[routed + latency > due_at])
        order = np.argsort(routed)
        self._start_done = (routed[order], done[order])

    def counters(self, t: float) -> dict[str, int]:
        sweep = math.floor(t / SWEEP) * SWEEP  # the last sweep's bookkeeping
        routed = int(np.searchsorted(self.routed, t, "right"))
        finished = int(np.searchsorted(self.done_at, t, "right"))
        r_all, d_all = self._start_done
        lo = int(np.searchsorted(r_all, t - UPSTREAM_TIMEOUT - 1.0))  # nothing waits longer than the upstream timeout
        r, d = r_all[lo:routed], d_all[lo:routed]
        waiting = d > t
        stuck_now = int(np.count_nonzero(waiting & (t - r >= STUCK_AFTER)))
        oldest = float(np.max(t - r[waiting])) if waiting.any() else 0.0
        return {"routed": routed, "answered": int(np.searchsorted(self.answered_at, t, "right")),
                "timeout": int(np.searchsorted(self.timeout_at, t, "right")), "in_flight": routed - finished,
                "due": int(np.searchsorted(self.due_at, sweep, "right")), "stuck": int(np.searchsorted(self.stuck_at, sweep, "right")),
                "stuck_now": stuck_now, "oldest_wait_ms": int(oldest * 1000)}


def one_stage(seed: int, users: int, minutes: float, canary: Latency, slowest_ms: float | None) -> float | None:
    """Seconds into the stage of the first failing verdict of the fail-closed check, or None (it passed)."""
    rng = np.random.default_rng(seed)
    duration = minutes * 60.0
    reqs = simulate_requests(rng, users, duration, canary)
    models = {role: RouterModel(*reqs[role]) for role in reqs}
    client = {}
    for role, (r, lat) in reqs.items():
        done = r + np.minimum(lat, UPSTREAM_TIMEOUT)
        order = np.argsort(done)
        client[role] = (done[order], np.cumsum(lat[order] >= UPSTREAM_TIMEOUT))
    alive = CanaryLiveness("v2", "v1", slowest_ms=slowest_ms)
    stats = StageStats()
    t = 0.0
    while t <= duration:
        for role in ("canary", "stable"):
            done, failed = client[role]
            n = int(np.searchsorted(done, t, "right"))
            vs = stats.role(role)
            vs.requests, vs.failures = n, int(failed[n - 1]) if n else 0
        probe = CanaryProbe("v2", None, {"v2": models["canary"].counters(t), "v1": models["stable"].counters(t)}, STUCK_AFTER)
        v = alive.observe(t, stats, probe, final=t >= duration)
        if v.status is Status.FAIL:
            return t
        t += 1.0
    return None


def run_scenario(name: str, stages: int, users: int, minutes: float, slowest_ms: float | None, workers: int) -> dict[str, Any]:
    canary, p_over, onset = SCENARIOS[name]
    seeds = [zlib.crc32(f"{name}|{users}|{i}".encode()) for i in range(stages)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        got = list(pool.map(_one, [(s, users, minutes, name, slowest_ms) for s in seeds]))
    fails = [g for g in got if g is not None]
    out: dict[str, Any] = {"stages": stages, "users": users, "minutes": minutes, "slowest_ms": slowest_ms,
                           "p_latency_over_2s": None if p_over is None else round(p_over, 4)}
    if onset is None:
        k = len(fails)
        out["false_failures"] = k
        out["false_failure_rate"] = round(k / stages, 4)
        out["rate_95ci"] = [round(x, 4) for x in wilson(k, stages)]
        out["first_failure_s_median"] = float(np.median(fails)) if fails else None
    else:
        delays = np.array([f - onset for f in fails]) if fails else np.array([])
        out["detected"] = len(fails)
        out["before_onset"] = int(np.sum(delays < 0)) if fails else 0
        pos = delays[delays >= 0] if fails else delays
        if pos.size:
            out["delay_s"] = {"median": float(np.median(pos)), "p95": float(np.percentile(pos, 95)), "max": float(pos.max()),
                              "min": float(pos.min())}
    return out


def _one(args: tuple[int, int, float, str, float | None]) -> float | None:
    seed, users, minutes, name, slowest_ms = args
    return one_stage(seed, users, minutes, SCENARIOS[name][0], slowest_ms)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--users", type=int, nargs="+", default=[30, 10])
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2)))
    ap.add_argument("--only", default="", help="run only the scenarios whose name contains this")
    ap.add_argument("--quick", action="store_true", help="20 stages of 2 minutes (a smoke run)")
    ap.add_argument("--persist", type=float, default=None, help="explore: liveness.HUNG_PERSIST (0: the rule before it)")
    ap.add_argument("--share", type=float, default=None, help="explore: liveness.MIN_STUCK_SHARE")
    a = ap.parse_args()
    if a.persist is not None:  # set before the worker processes fork
        liveness.HUNG_PERSIST = a.persist
    if a.share is not None:
        liveness.MIN_STUCK_SHARE = a.share
    if a.quick:
        a.stages, a.minutes = 20, 2.0
    rule = {k: getattr(liveness, k) for k in ("MIN_STUCK", "MIN_STUCK_SHARE", "STABLE_SHARE_RATIO", "STUCK_ALPHA", "MIN_STABLE_DUE",
                                               "STUCK_WINDOW", "HUNG_PERSIST") if hasattr(liveness, k)}
    results: dict[str, Any] = {"rule": rule, "stuck_after_s": STUCK_AFTER, "weight": WEIGHT, "scenarios": {}}
    t0 = time.time()
    for users in a.users:
        for name in SCENARIOS:
            if a.only and a.only not in name:
                continue
            res = run_scenario(name, a.stages, users, a.minutes, None, a.workers)
            results["scenarios"][f"{name} | {users} users"] = res
            print(f"{users:3d} users | {name}: {json.dumps({k: v for k, v in res.items() if k not in ('stages', 'users', 'minutes')})}",
                  flush=True)
    results["seconds"] = round(time.time() - t0, 1)
    tag = "" if a.persist is None and a.share is None else f"_persist{liveness.HUNG_PERSIST:g}_share{liveness.MIN_STUCK_SHARE:g}"
    out = ROOT / "bench" / "results" / f"partial_hang{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"saved to {out}")


if __name__ == "__main__":
    main()

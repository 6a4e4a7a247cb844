"""Absolute limits ("error rate ≤ 2 %", "p95 ≤ 250 ms"): sequential (anytime-valid) vs the threshold rule, by simulation.

    python bench/bench_absolute.py [--quick] [--stages N] [--runs N] [--out PATH]

Part 1 (false rollbacks): a canary whose true error rate is at the limit (2 %)
or at half of it (1 %), or whose share of requests slower than a p95 limit is
exactly 5 % (p95 at the limit) or 2.5 %, at 200 req/s, judged every second
for 10-minute stages (and for 10-second stages, the case the issue measured).
Rules: the sequential gate (`rollout.stats.one_sample`, α = 1 %, the gate's
default, no request floor) and the threshold rule ("fail when x/n > limit
once n ≥ min_requests", min_requests 150 as in examples/plan.yaml; for p95,
"the histogram's p95 > L once n ≥ 150").

Part 2 (requests to a verdict): 5 % errors against a 2 % limit (FAIL) and
0.5 % against 2 % (PASS), checked at every request, median and 95th
percentile of the requests at the verdict, against two references:
  * the fixed-sample size of the exact one-sided binomial test at the same α
    with power 50 % (compare with the median) and 95 % (with the p95): the
    best any one-look test can do;
  * Wald's bound log(1/α) / KL(p_true ‖ p_limit): the least *expected*
    sample size of any sequential test with type-I error α that knew the true
    rate in advance (Wald 1945; Lai 1988) — a floor no test reaches exactly.

Pure numpy/scipy, vectorised over stages; the e-values are the production
functions `log_e_fail` / `log_e_pass`. Writes bench/results/absolute.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import binom

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rollout.stats.one_sample import log_e_fail, log_e_pass  # noqa: E402

ALPHA = 0.01
RATE = 200  # requests per second to the canary
MIN_REQUESTS = 150  # the threshold rule's floor (examples/plan.yaml)


def wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    p = k / n
    den = 1 + z * z / n
    return (p + z * z / (2 * n) + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / den


def stage_paths(rng: np.random.Generator, p: float, stages: int, seconds: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (requests, bad requests) at the end of each second, shape (stages, seconds)."""
    n = rng.poisson(RATE, (stages, seconds))
    x = rng.binomial(n, p)
    return np.cumsum(n, axis=1), np.cumsum(x, axis=1)


def false_rollbacks(rng: np.random.Generator, p: float, limit: float, stages: int, seconds: int, kind: str) -> dict[str, object]:
    n, x = stage_paths(rng, p, stages, seconds)
    seq = (log_e_fail(n, x, limit) >= math.log(1 / ALPHA)).any(axis=1)
    if kind == "rate":  # "x/n > limit once n ≥ 150"
        thr = ((x > limit * n) & (n >= MIN_REQUESTS)).any(axis=1)
    else:  # nearest-rank p95 > L  ⇔  more than n − ceil(0.95 n) requests slower than L
        q = 1 - limit
        thr = ((x >= n - np.ceil(q * n - 1e-9) + 1) & (n >= MIN_REQUESTS)).any(axis=1)
    k_seq, k_thr = int(seq.sum()), int(thr.sum())
    return {"sequential": k_seq, "sequential_rate": k_seq / stages, "sequential_wilson95_upper": wilson_upper(k_seq, stages),
            "threshold": k_thr, "threshold_rate": k_thr / stages, "stages": stages}


def fixed_sample_size(p_true: float, limit: float, power: float, side: str) -> int:
    """Smallest n for which the exact one-sided binomial test at level ALPHA has the given power at p_true."""
    for n in range(1, 200000):
        if side == "fail":  # reject p ≤ limit when X ≥ c
            c = int(binom.isf(ALPHA, n, limit)) + 1  # smallest c with P(X ≥ c | limit) ≤ α
            while c > 0 and binom.sf(c - 2, n, limit) <= ALPHA:
                c -= 1
            if binom.sf(c - 1, n, p_true) >= power:
                return n
        else:  # reject p ≥ limit when X ≤ c
            c = int(binom.ppf(ALPHA, n, limit))
            while c >= 0 and binom.cdf(c, n, limit) > ALPHA:
                c -= 1
            if c >= 0 and binom.cdf(c, n, p_true) >= power:
                return n
    raise RuntimeError("no sample size found")


def kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def requests_to_verdict(rng: np.random.Generator, p: float, limit: float, side: str, runs: int, horizon: int) -> dict[str, object]:
    x = np.cumsum(rng.random((runs, horizon)) < p, axis=1)
    k = np.arange(1, horizon + 1)[None, :]
    log_e = log_e_fail(k, x, limit) if side == "fail" else log_e_pass(k, x, limit)
    hit = log_e >= math.log(1 / ALPHA)
    decided = hit.any(axis=1)
    first = np.where(decided, hit.argmax(axis=1) + 1, horizon).astype(float)
    wrong = 0
    if side == "pass":  # the other side must never fire first on these (it is a false failure)
        wrong = int((log_e_fail(k, x, limit) >= math.log(1 / ALPHA)).any(axis=1).sum())
    out = {"runs": runs, "decided": int(decided.sum()), "wrong_side_fired": wrong,
           "median": float(np.median(first)), "p95": float(np.percentile(first, 95)),
           "fixed_n_power50": fixed_sample_size(p, limit, 0.5, side), "fixed_n_power95": fixed_sample_size(p, limit, 0.95, side),
           "wald_bound_expected_n": math.log(1 / ALPHA) / kl(p, limit), "mean": float(first.mean())}
    if side == "fail":  # the threshold rule: first n ≥ 150 (checked at every request here) with x/n > limit
        thr = (x > limit * k) & (k >= MIN_REQUESTS)
        t_first = np.where(thr.any(axis=1), thr.argmax(axis=1) + 1, horizon).astype(float)
        out["threshold_median"] = float(np.median(t_first))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 40 stages, 200 runs (a few seconds)")
    ap.add_argument("--stages", type=int, default=None, help="simulated stages per case (default 400)")
    ap.add_argument("--runs", type=int, default=None, help="runs per detection case (default 1000)")
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "absolute.json")
    args = ap.parse_args(argv)
    stages = args.stages or (40 if args.quick else 400)
    runs = args.runs or (200 if args.quick else 1000)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()

    cases = [
        ("error rate at the limit (2 % vs 2 %)", 0.02, 0.02, "rate"),
        ("error rate at half the limit (1 % vs 2 %)", 0.01, 0.02, "rate"),
        ("error rate at 3/4 of the limit (1.5 % vs 2 %)", 0.015, 0.02, "rate"),
        ("p95 at the limit (5 % of requests slower than L)", 0.05, 0.05, "p95"),
        ("p95 well below (2.5 % slower than L)", 0.025, 0.05, "p95"),
    ]
    null_rows = []
    print(f"Part 1: false rollbacks, canary at {RATE} req/s, checked every second; sequential α = {ALPHA:.0%}, "
          f"threshold = 'over the limit once n ≥ {MIN_REQUESTS}'")
    print(f"{'case':52s} {'stage':>6s} {'sequential':>12s} {'(95% up)':>9s} {'threshold':>12s}")
    for seconds in (600, 10):
        for label, p, limit, kind in cases:
            r = false_rollbacks(rng, p, limit, stages, seconds, kind)
            row = {"case": label, "p_true": p, "limit": limit, "kind": kind, "seconds": seconds, **r}
            null_rows.append(row)
            print(f"{label:52s} {seconds:>5d}s {r['sequential']:>5d}/{stages:<6d} {r['sequential_wilson95_upper']:>8.2%} "
                  f"{r['threshold']:>5d}/{stages:<6d} ({r['threshold_rate']:.1%})")

    print(f"\nPart 2: requests to a verdict, checked at every request, {runs} runs, α = {ALPHA:.0%}")
    det_rows = []
    print(f"{'case':34s} {'decided':>8s} {'median':>7s} {'p95':>7s} {'mean':>6s} {'fixed n (50%/95% power)':>24s} {'Wald E[N] floor':>16s} {'threshold median':>17s}")
    for label, p, limit, side, horizon in (("FAIL: 5 % errors vs a 2 % limit", 0.05, 0.02, "fail", 4000),
                                           ("PASS: 0.5 % errors vs a 2 % limit", 0.005, 0.02, "pass", 4000)):
        r = requests_to_verdict(rng, p, limit, side, runs, horizon)
        det_rows.append({"case": label, "p_true": p, "limit": limit, "side": side, **r})
        thr = f"{r['threshold_median']:,.0f}" if "threshold_median" in r else "—"
        print(f"{label:34s} {r['decided']:>4d}/{runs:<4d}{r['median']:>7,.0f} {r['p95']:>7,.0f} {r['mean']:>6,.0f} "
              f"{r['fixed_n_power50']:>11,d} / {r['fixed_n_power95']:<10,d} {r['wald_bound_expected_n']:>16,.0f} {thr:>17s}")
    elapsed = time.perf_counter() - t0
    print(f"\n{elapsed:.1f} s; JSON: {args.out}")
    out = {"alpha": ALPHA, "req_per_s": RATE, "threshold_min_requests": MIN_REQUESTS, "null": null_rows, "detection": det_rows,
           "elapsed_s": round(elapsed, 1), "quick": args.quick, "seed": args.seed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

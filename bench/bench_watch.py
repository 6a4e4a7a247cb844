"""Watching a live version: false alarms per 30 days and detection delay, CUSUM vs a fixed window.

Simulation at 50 req/s, one batch per second (what `rollout watch` judges every second):

- false alarms per 30 days of an unchanged service, for an error rate at 0.1 % with a 1 % limit,
  at the limit itself (1 %, the worst case the bound covers), and a latency limit at the service's own
  p95 (5 % of requests slower than L: at the limit);
- detection delay (median, p95 seconds) for an error-rate jump 0.1 % → 2 % and a p95 increase of 30 %
  (lognormal latencies, sigma 0.3, limit L = 1.1 × the unchanged p95: 2.5 % of requests slower than L
  before, 13.8 % after);
- against the fixed-window rule "over the last 60 s, rate > limit (≥ 100 requests)", checked every second;
- the memory of a `RateCusum` fed 1,000,000 batches (tracemalloc, flat = constant state).

The CUSUM runs the real `rollout.stats.detect.RateCusum` parameters (alternatives 1.5×, 2×, 4× the limit,
h for ≤ 1 false alarm per 30 days checked every second); the month-long paths use its closed form
(`cusum_path`, the same recursion vectorised) for speed, and the memory run feeds the class itself.

    python bench/bench_watch.py [--months 12] [--runs 400]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save  # noqa: E402
from rollout.stats.detect import RateCusum, cusum_path, threshold  # noqa: E402

RPS = 50
MONTH = 30 * 86400
WINDOW = 60


def detector(limit: float) -> RateCusum:
    return RateCusum(limit=limit, h=threshold(1.0, MONTH, 1.0))


def cusum_alarms(x: np.ndarray, n: int, det: RateCusum) -> list[int]:
    """Indices of alarms over a path of per-second bad counts, restarting the statistic after each."""
    llrs = [x * bad + (n - x) * good for bad, good in det._llr]
    alarms, start, steps = [], 0, len(x)
    while start < steps:
        first = None
        for llr in llrs:
            hit = np.flatnonzero(cusum_path(llr[start:]) >= det.threshold_each)
            if hit.size and (first is None or hit[0] < first):
                first = int(hit[0])
        if first is None:
            break
        alarms.append(start + first)
        start += first + 1
    return alarms


def window_alarms(x: np.ndarray, n: int, limit: float) -> int:
    """The fixed-window rule: count *alarm episodes* (a run of consecutive breaching seconds counts once)."""
    w = np.convolve(x, np.ones(WINDOW, dtype=np.int64), "valid")
    breach = w > limit * n * WINDOW
    return int(np.sum(breach[1:] & ~breach[:-1]) + (1 if breach.size and breach[0] else 0))


def false_alarms(p: float, limit: float, months: int, rng: np.random.Generator) -> dict[str, float]:
    det = detector(limit)
    cus, win = 0, 0
    for _ in range(months):
        x = rng.binomial(RPS, p, MONTH)
        cus += len(cusum_alarms(x, RPS, det))
        win += window_alarms(x, RPS, limit)
    return {"true_rate": p, "limit": limit, "months": months, "cusum_per_30d": cus / months, "window_per_30d": win / months}


def delays(p_before: float, p_after: float, limit: float, runs: int, rng: np.random.Generator, warm: int = 3600,
           horizon: int = 1800) -> dict[str, float]:
    """Seconds from the change to the first alarm, CUSUM vs window; the CUSUM warmed for an hour before the change."""
    det = detector(limit)
    cus, win, missed_c, missed_w = [], [], 0, 0
    for _ in range(runs):
        x = np.concatenate([rng.binomial(RPS, p_before, warm), rng.binomial(RPS, p_after, horizon)])
        after = [a - warm for a in cusum_alarms(x, RPS, det) if a >= warm]
        if after:
            cus.append(after[0])
        else:
            missed_c += 1
        w = np.convolve(x, np.ones(WINDOW, dtype=np.int64), "valid")  # w[i] covers seconds i .. i+59
        idx = np.flatnonzero(w[warm - WINDOW + 1:] > limit * RPS * WINDOW)
        if idx.size:
            win.append(int(idx[0]))
        else:
            missed_w += 1

    def q(v: list[int], p: float) -> float:
        return float(np.percentile(v, p)) if v else math.nan

    return {"before": p_before, "after": p_after, "limit": limit, "runs": runs,
            "cusum_median_s": q(cus, 50), "cusum_p95_s": q(cus, 95), "cusum_missed": missed_c,
            "window_median_s": q(win, 50), "window_p95_s": q(win, 95), "window_missed": missed_w}


def memory(batches: int = 1_000_000) -> dict[str, float]:
    det = detector(0.01)
    rng = np.random.default_rng(5)
    xs = rng.binomial(RPS, 0.001, batches)
    tracemalloc.start()
    peaks = {}
    for i, x in enumerate(xs):
        det.update(RPS, int(x), float(i))
        if i + 1 in (10_000, batches):
            peaks[i + 1] = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"batches": batches, "bytes_after_10k": peaks[10_000], "bytes_after_all": peaks[batches]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--runs", type=int, default=400)
    args = ap.parse_args()
    rng = np.random.default_rng(2026)
    t0 = time.time()
    # latency: lognormal sigma 0.3; share above L = 1.1 × p95 before and after a +30 % shift
    z95 = 1.6448536269514722
    sigma = 0.3
    share_before = 0.5 * math.erfc((z95 + math.log(1.1) / sigma) / math.sqrt(2))
    share_after = 0.5 * math.erfc((z95 + (math.log(1.1) - math.log(1.3)) / sigma) / math.sqrt(2))
    out = {
        "rps": RPS, "h": detector(0.01).h, "h_each": detector(0.01).threshold_each, "window_s": WINDOW,
        "false_alarms": [
            false_alarms(0.001, 0.01, args.months, rng),
            false_alarms(0.008, 0.01, args.months, rng),
            false_alarms(0.01, 0.01, args.months, rng),
            false_alarms(0.05, 0.05, args.months, rng),
        ],
        "delays": [
            delays(0.001, 0.02, 0.01, args.runs, rng),
            delays(0.001, 0.02, 0.005, args.runs, rng),
            {**delays(share_before, share_after, 0.05, args.runs, rng), "what": "p95 +30% (share slower than 1.1x p95)"},
        ],
        "memory": memory(),
    }
    out["seconds"] = round(time.time() - t0, 1)
    save("watch", out)
    print(f"h = {out['h']:.2f} (per alternative {out['h_each']:.2f}); window {WINDOW}s")
    print("false alarms per 30 days (unchanged service, 50 req/s, checked every second):")
    for r in out["false_alarms"]:
        print(f"  rate {r['true_rate'] * 100:g}% vs limit {r['limit'] * 100:g}%: CUSUM {r['cusum_per_30d']:.2f}, "
              f"60 s window {r['window_per_30d']:.1f}  ({r['months']} months)")
    print("detection delay, seconds (median / p95):")
    for r in out["delays"]:
        print(f"  {r['before'] * 100:.2f}% -> {r['after'] * 100:.2f}% (limit {r['limit'] * 100:g}%): CUSUM "
              f"{r['cusum_median_s']:.0f} / {r['cusum_p95_s']:.0f} (missed {r['cusum_missed']}), window "
              f"{r['window_median_s']:.0f} / {r['window_p95_s']:.0f} (missed {r['window_missed']})")
    m = out["memory"]
    print(f"memory: {m['bytes_after_10k']:,} B after 10k batches, {m['bytes_after_all']:,} B after {m['batches']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

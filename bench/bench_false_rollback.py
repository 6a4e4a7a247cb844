"""False rollbacks and detection speed of the sequential gates vs naive rules, by simulation.

    python bench/bench_false_rollback.py [--quick] [--stages N] [--workers W] [--out PATH]

Part 1 (null): identical canary and stable versions, 50 req/s each, 10-minute
stages judged every second. Every gate sits at the edge of its null (margin 0:
"any regression"), the hardest case for its type-I error; the stage row judges
all three sequential gates together with alpha split by Bonferroni. The naive
rules are the ones people write by hand: "canary p95 > 1.2 x stable p95 over
a sliding 10 s window" and one-sided z-tests at alpha = 0.01, each checked
every second (and the z-tests once, at the end, for contrast).

Part 2 (detection / pass): 200 req/s per version, a true regression or none,
requests per version until the first verdict (median and 95th percentile of
the runs, with the reference's numbers from
/work/shared/reference/canary-statistics.md for comparison).

Writes bench/results/false_rollback.json. Uses numpy for the simulation only;
the gates are the production code in rollout.stats.sequential.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rollout.stats.histogram import RELATIVE_ERROR, Histogram  # noqa: E402
from rollout.stats.sequential import (  # noqa: E402
    Decision,
    ErrorRateRatioTest,
    PairedErrorRateTest,
    QuantileTest,
    bonferroni,
)

ALPHA = 0.01
Z_ONE_SIDED = 2.3263478740408408  # N(0,1) 0.99 quantile
_LOG_GAMMA = math.log((1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR))
_GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)


def record_bulk(hist: Histogram, values: np.ndarray) -> None:
    """Record many samples at once: one `record(representative, count)` per bucket, exact min/max."""
    if values.size == 0:
        return
    lo, hi = hist.min, hist.max
    keys = np.ceil(np.log(values) / _LOG_GAMMA).astype(np.int64)
    uniq, counts = np.unique(keys, return_counts=True)
    for k, c in zip(uniq.tolist(), counts.tolist()):
        hist.record(2 * _GAMMA**k / (_GAMMA + 1), c)
    hist.min = min(lo, float(values.min()))
    hist.max = max(hi, float(values.max()))


class RunningMoments:
    __slots__ = ("n", "s", "ss")

    def __init__(self) -> None:
        self.n, self.s, self.ss = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        self.n += int(x.size)
        self.s += float(x.sum())
        self.ss += float((x * x).sum())

    def mean_var(self) -> tuple[float, float]:
        m = self.s / self.n
        return m, max(self.ss / self.n - m * m, 0.0) * self.n / max(self.n - 1, 1)


def welch_z(a: RunningMoments, b: RunningMoments) -> float:
    if a.n < 2 or b.n < 2:
        return 0.0
    ma, va = a.mean_var()
    mb, vb = b.mean_var()
    se = math.sqrt(va / a.n + vb / b.n)
    return (ma - mb) / se if se > 0 else 0.0


def two_prop_z(e_c: int, n_c: int, e_b: int, n_b: int) -> float:
    if n_c == 0 or n_b == 0:
        return 0.0
    p = (e_c + e_b) / (n_c + n_b)
    se = math.sqrt(p * (1 - p) * (1 / n_c + 1 / n_b))
    return (e_c / n_c - e_b / n_b) / se if se > 0 else 0.0


# ----------------------------------------------------------------------------- part 1: null stages


def null_stage(seed: int, rate: float, seconds: int, err_rate: float, warmup: int = 10) -> dict[str, object]:
    """One stage with identical versions; returns which rule (falsely) fired, if any."""
    rng = np.random.default_rng(seed)
    a_stage = bonferroni(ALPHA, 3)
    gates = {
        "paired_errors": PairedErrorRateTest(fail_margin=0.0, alpha_fail=ALPHA, seed=seed, compute_bounds=False),
        "ratio_errors": ErrorRateRatioTest(max_ratio=1.0, alpha=ALPHA),
        "p95_sigma0.5": QuantileTest(0.95, fail_margin=0.0, alpha_fail=ALPHA),
        "p95_sigma1": QuantileTest(0.95, fail_margin=0.0, alpha_fail=ALPHA),
    }
    stage_gates = {
        "errors": PairedErrorRateTest(fail_margin=0.0, alpha_fail=a_stage, seed=seed + 1, compute_bounds=False),
        "p95_sigma0.5": QuantileTest(0.95, fail_margin=0.0, alpha_fail=a_stage),
        "p95_sigma1": QuantileTest(0.95, fail_margin=0.0, alpha_fail=a_stage),
    }
    hists = {s: (Histogram(), Histogram()) for s in (0.5, 1.0)}
    windows = {s: (deque(maxlen=10), deque(maxlen=10)) for s in (0.5, 1.0)}
    moments = (RunningMoments(), RunningMoments())
    fired: dict[str, int | None] = {k: None for k in gates}
    fired.update({"stage": None, "naive_p95_window_sigma0.5": None, "naive_p95_window_sigma1": None})
    fired.update({"naive_z_errors_peek": None, "naive_z_latency_peek": None})
    n_c = n_b = e_c = e_b = 0
    z_err = z_lat = 0.0
    for t in range(1, seconds + 1):
        a, b = rng.poisson(rate), rng.poisson(rate)
        n_c += a
        n_b += b
        e_c += int(rng.binomial(a, err_rate))
        e_b += int(rng.binomial(b, err_rate))
        for name in ("paired_errors", "ratio_errors"):
            if fired[name] is None and gates[name].update(n_c, e_c, n_b, e_b).decision is Decision.FAIL:
                fired[name] = t
        stage_fail = stage_gates["errors"].update(n_c, e_c, n_b, e_b).decision is Decision.FAIL
        for sigma in (0.5, 1.0):
            xc = rng.lognormal(math.log(100.0), sigma, a)
            xb = rng.lognormal(math.log(100.0), sigma, b)
            hc, hb = hists[sigma]
            record_bulk(hc, xc)
            record_bulk(hb, xb)
            label = f"p95_sigma{sigma:g}"
            if fired[label] is None and gates[label].update(hc, hb).decision is Decision.FAIL:
                fired[label] = t
            if stage_gates[label].update(hc, hb).decision is Decision.FAIL:
                stage_fail = True
            wc, wb = windows[sigma]
            wc.append(xc)
            wb.append(xb)
            naive = f"naive_p95_window_sigma{sigma:g}"
            if t >= max(10, warmup) and fired[naive] is None:
                pc = float(np.percentile(np.concatenate(wc), 95))
                pb = float(np.percentile(np.concatenate(wb), 95))
                if pc > 1.2 * pb:
                    fired[naive] = t
            if sigma == 0.5:
                moments[0].add(np.log(xc))
                moments[1].add(np.log(xb))
        if stage_fail and fired["stage"] is None:
            fired["stage"] = t
        if t >= warmup:
            z_err = two_prop_z(e_c, n_c, e_b, n_b)
            z_lat = welch_z(moments[0], moments[1])
            if fired["naive_z_errors_peek"] is None and z_err > Z_ONE_SIDED:
                fired["naive_z_errors_peek"] = t
            if fired["naive_z_latency_peek"] is None and z_lat > Z_ONE_SIDED:
                fired["naive_z_latency_peek"] = t
    fired["naive_z_errors_once"] = seconds if z_err > Z_ONE_SIDED else None
    fired["naive_z_latency_once"] = seconds if z_lat > Z_ONE_SIDED else None
    return fired


NULL_ROWS = [
    ("stage", "all 3 sequential gates, Bonferroni α/3 each", "sequential"),
    ("paired_errors", "errors: paired e-process, margin 0, base 1 %", "sequential"),
    ("ratio_errors", "errors: ratio e-process, r0 = 1, base 1 %", "sequential"),
    ("p95_sigma0.5", "p95 conf. sequences, margin 0, σ = 0.5", "sequential"),
    ("p95_sigma1", "p95 conf. sequences, margin 0, σ = 1", "sequential"),
    ("naive_p95_window_sigma0.5", "p95(10 s) > 1.2 × stable, every s, σ = 0.5", "naive"),
    ("naive_p95_window_sigma1", "p95(10 s) > 1.2 × stable, every s, σ = 1", "naive"),
    ("naive_z_errors_peek", "z-test errors α = 0.01, every s", "naive"),
    ("naive_z_latency_peek", "z-test mean log-latency α = 0.01, every s", "naive"),
    ("naive_z_errors_once", "z-test errors α = 0.01, once at 10 min", "fixed"),
    ("naive_z_latency_once", "z-test mean log-latency α = 0.01, once at 10 min", "fixed"),
]


def wilson_upper(k: int, n: int, z: float = 1.959963984540054) -> float:
    if n == 0:
        return 1.0
    p = k / n
    den = 1 + z * z / n
    centre = p + z * z / (2 * n)
    return (centre + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / den


# ----------------------------------------------------------------------------- part 2: detection and pass


def detection_run(case: dict[str, object], seed: int) -> dict[str, object]:
    """Run one stage at 200 req/s per version until the gate decides (or the cap)."""
    rng = np.random.default_rng(10_000_019 * seed + int(case["id"]))  # type: ignore[call-overload]
    rate = 200
    cap = int(case["cap_s"])  # type: ignore[call-overload]
    kind = case["kind"]
    if kind == "errors":
        gate: object = (
            PairedErrorRateTest(
                fail_margin=float(case.get("fail_margin", 0.0)),  # type: ignore[arg-type]
                pass_margin=case.get("pass_margin"),  # type: ignore[arg-type]
                alpha_fail=ALPHA,
                seed=seed,
                compute_bounds=False,
            )
            if case["test"] == "paired"
            else ErrorRateRatioTest(max_ratio=1.0, alpha=ALPHA)
        )
    else:
        gate = QuantileTest(
            0.95,
            fail_margin=float(case.get("fail_margin", 0.0)),  # type: ignore[arg-type]
            pass_margin=case.get("pass_margin"),  # type: ignore[arg-type]
            alpha_fail=ALPHA,
        )
        hc, hb = Histogram(), Histogram()
        wc: deque[np.ndarray] = deque(maxlen=10)
        wb: deque[np.ndarray] = deque(maxlen=10)
    verdict: dict[str, object] | None = None
    naive_at = None
    n_c = n_b = e_c = e_b = 0
    for t in range(1, cap + 1):
        a, b = rng.poisson(rate), rng.poisson(rate)
        n_c += a
        n_b += b
        res = None
        if kind == "errors":
            e_c += int(rng.binomial(a, case["p_canary"]))  # type: ignore[call-overload]
            e_b += int(rng.binomial(b, case["p_stable"]))  # type: ignore[call-overload]
            if verdict is None:
                res = gate.update(n_c, e_c, n_b, e_b)  # type: ignore[attr-defined]
            # naive: one-sided two-proportion z-test at alpha = 0.01, looked at every second
            if naive_at is None and t >= 10 and two_prop_z(e_c, n_c, e_b, n_b) > Z_ONE_SIDED:
                naive_at = min(n_c, n_b)
        else:
            sigma = float(case["sigma"])  # type: ignore[arg-type]
            # lognormal p95 scales with the median: +x % p95 = +x % everywhere
            xc = rng.lognormal(math.log(100.0 * float(case["ratio"])), sigma, a)  # type: ignore[arg-type]
            xb = rng.lognormal(math.log(100.0), sigma, b)
            if verdict is None:
                record_bulk(hc, xc)
                record_bulk(hb, xb)
                res = gate.update(hc, hb)  # type: ignore[attr-defined]
            # naive: p95 over a sliding 10 s window > 1.2 x stable's, looked at every second
            wc.append(xc)
            wb.append(xb)
            if naive_at is None and t >= 10:
                if np.percentile(np.concatenate(wc), 95) > 1.2 * np.percentile(np.concatenate(wb), 95):
                    naive_at = min(n_c, n_b)
        if res is not None and res.decision is not Decision.CONTINUE:
            verdict = {"decision": res.decision.value, "requests": min(n_c, n_b), "seconds": t}
        if verdict is not None and naive_at is not None:
            break
    if verdict is None:
        verdict = {"decision": "continue", "requests": min(n_c, n_b), "seconds": cap}
    verdict["naive"] = naive_at
    return verdict


DETECTION_CASES: list[dict[str, object]] = [
    {"id": 1, "label": "errors 0.1 % → 2 %, paired (margin 0)", "kind": "errors", "test": "paired",
     "p_stable": 0.001, "p_canary": 0.02, "expect": "fail", "ref_fixed": 796, "ref_seq95": 996, "cap_s": 120},
    {"id": 2, "label": "errors 0.1 % → 2 %, ratio (r0 = 1)", "kind": "errors", "test": "ratio",
     "p_stable": 0.001, "p_canary": 0.02, "expect": "fail", "ref_fixed": 796, "ref_seq95": 996, "cap_s": 120},
    {"id": 3, "label": "errors 0.1 % → 1 %, paired (margin 0)", "kind": "errors", "test": "paired",
     "p_stable": 0.001, "p_canary": 0.01, "expect": "fail", "ref_fixed": 1944, "ref_seq95": 2487, "cap_s": 300},
    {"id": 4, "label": "errors 0.1 % → 1 %, ratio (r0 = 1)", "kind": "errors", "test": "ratio",
     "p_stable": 0.001, "p_canary": 0.01, "expect": "fail", "ref_fixed": 1944, "ref_seq95": 2487, "cap_s": 300},
    {"id": 5, "label": "p95 +20 %, σ = 0.5 (margin 0)", "kind": "latency", "sigma": 0.5, "ratio": 1.2,
     "expect": "fail", "ref_fixed": 1059, "ref_seq95": 3000, "cap_s": 300},
    {"id": 6, "label": "p95 +20 %, σ = 1 (margin 0)", "kind": "latency", "sigma": 1.0, "ratio": 1.2,
     "expect": "fail", "ref_fixed": 4237, "ref_seq95": 12025, "cap_s": 600},
    {"id": 7, "label": "p95 +30 %, σ = 0.5 (margin 0)", "kind": "latency", "sigma": 0.5, "ratio": 1.3,
     "expect": "fail", "ref_fixed": None, "ref_seq95": None, "cap_s": 300},
    {"id": 8, "label": "p95 +30 %, σ = 1 (fail margin +10 %)", "kind": "latency", "sigma": 1.0, "ratio": 1.3,
     "fail_margin": 0.1, "expect": "fail", "ref_fixed": None, "ref_seq95": None, "cap_s": 600},
    {"id": 9, "label": "PASS errors 0.1 % = 0.1 %, pass ≤ +0.5 pt", "kind": "errors", "test": "paired",
     "p_stable": 0.001, "p_canary": 0.001, "fail_margin": 0.01, "pass_margin": 0.005, "expect": "pass",
     "ref_fixed": None, "ref_seq95": 3500, "cap_s": 300},
    {"id": 10, "label": "PASS p95 equal, σ = 0.5, pass ≤ +20 %", "kind": "latency", "sigma": 0.5, "ratio": 1.0,
     "fail_margin": 0.2, "pass_margin": 0.2, "expect": "pass", "ref_fixed": None, "ref_seq95": 2900, "cap_s": 300},
    {"id": 11, "label": "PASS p95 equal, σ = 1, pass ≤ +20 %", "kind": "latency", "sigma": 1.0, "ratio": 1.0,
     "fail_margin": 0.2, "pass_margin": 0.2, "expect": "pass", "ref_fixed": None, "ref_seq95": 12500, "cap_s": 600},
]  # fmt: skip


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _fmt_int(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer stages and runs (< 20 s)")
    ap.add_argument("--stages", type=int, default=None, help="null stages (default 200; 12 with --quick)")
    ap.add_argument("--runs", type=int, default=None, help="runs per detection case (default 200; 15 with --quick)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "false_rollback.json")
    args = ap.parse_args(argv)
    stages = args.stages if args.stages is not None else (12 if args.quick else 200)
    runs = args.runs if args.runs is not None else (15 if args.quick else 200)
    seconds = 600
    rate = 50
    err_rate = 0.01
    t0 = time.perf_counter()

    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        null = list(pool.map(null_stage, range(stages), [rate] * stages, [seconds] * stages, [err_rate] * stages))
        det: dict[int, list[dict[str, object]]] = {}
        futures = {
            int(case["id"]): [pool.submit(detection_run, case, seed) for seed in range(runs)]  # type: ignore[call-overload]
            for case in DETECTION_CASES
        }
        for cid, fs in futures.items():
            det[cid] = [f.result() for f in fs]
    elapsed = time.perf_counter() - t0

    out: dict[str, object] = {
        "alpha": ALPHA,
        "null": {"stages": stages, "seconds": seconds, "req_per_s_per_version": rate, "error_rate": err_rate, "rows": []},
        "detection": {"runs": runs, "req_per_s_per_version": 200, "rows": []},
        "elapsed_s": round(elapsed, 1),
        "quick": args.quick,
    }
    print(f"Part 1: identical versions, {rate} req/s each, {stages} stages × {seconds // 60} min, checked every second")
    print(f"{'rule':52s} {'false FAIL':>12s} {'rate':>7s} {'95% upper':>10s} {'target':>7s}")
    for key, label, family in NULL_ROWS:
        k = sum(1 for r in null if r[key] is not None)
        times = [r[key] for r in null if r[key] is not None]
        rate_k = k / stages
        up = wilson_upper(k, stages)
        target = f"≤ {ALPHA:.0%}" if family != "naive" else "—"
        print(f"{label:52s} {k:>5d}/{stages:<6d} {rate_k:>6.1%} {up:>10.1%} {target:>7s}")
        out["null"]["rows"].append(  # type: ignore[index]
            {"rule": key, "label": label, "family": family, "false_fail": k, "stages": stages,
             "rate": rate_k, "wilson95_upper": up, "median_second_fired": _pct(times, 50)}  # type: ignore[arg-type]
        )  # fmt: skip
    print()
    print(f"Part 2: 200 req/s per version, {runs} runs each; requests per version at the first verdict, α = {ALPHA}")
    hdr = f"{'case':44s} {'right':>6s} {'wrong':>6s} {'undec':>6s} {'median':>8s} {'p95':>8s} {'p95 s':>6s} {'ref seq p95':>11s} {'ref fixed':>9s} {'naive fired':>12s} {'naive median':>12s}"
    print(hdr)
    for case in DETECTION_CASES:
        rs = det[int(case["id"])]  # type: ignore[call-overload]
        right = [r for r in rs if r["decision"] == case["expect"]]
        wrong = [r for r in rs if r["decision"] not in (case["expect"], "continue")]
        undecided = [r for r in rs if r["decision"] == "continue"]
        # Runs that never decided count at the cap, so the percentiles are lower bounds then.
        reqs = [float(r["requests"]) for r in rs if r["decision"] == case["expect"] or r["decision"] == "continue"]  # type: ignore[arg-type]
        secs = [float(r["seconds"]) for r in rs if r["decision"] == case["expect"] or r["decision"] == "continue"]  # type: ignore[arg-type]
        naive = [float(r["naive"]) for r in rs if r["naive"] is not None]  # type: ignore[arg-type]
        med, p95, s95 = _pct(reqs, 50), _pct(reqs, 95), _pct(secs, 95)
        print(
            f"{str(case['label']):44s} {len(right):>6d} {len(wrong):>6d} {len(undecided):>6d} {_fmt_int(med):>8s} "
            f"{_fmt_int(p95):>8s} {_fmt_int(s95):>6s} {_fmt_int(case['ref_seq95']):>11s} {_fmt_int(case['ref_fixed']):>9s} "  # type: ignore[arg-type]
            f"{f'{len(naive)}/{len(rs)}':>12s} {_fmt_int(_pct(naive, 50)):>12s}"
        )
        out["detection"]["rows"].append(  # type: ignore[index]
            {"case": case["label"], "expect": case["expect"], "right": len(right), "wrong": len(wrong),
             "undecided": len(undecided), "median_requests": med, "p95_requests": p95, "p95_seconds": s95,
             "ref_sequential_p95": case["ref_seq95"], "ref_fixed_horizon": case["ref_fixed"],
             "naive_rule": "p95(10 s) > 1.2x stable" if case["kind"] == "latency" else "z-test errors, every s",
             "naive_fired": len(naive), "naive_median_requests": _pct(naive, 50)}  # type: ignore[arg-type]
        )  # fmt: skip
    print(
        "naive = 'p95(10 s) > 1.2 × stable' (latency rows) or 'z-test on errors, α = 0.01' (error rows), looked at\n"
        "every second from 10 s; on the PASS rows (identical versions) every naive firing is a false rollback."
    )
    print(f"\n{elapsed:.1f} s with {args.workers} worker(s); JSON: {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

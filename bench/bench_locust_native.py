"""Locust-native load (#9): `rollout gate` against plain `locust --headless` with a LoadTestShape, and the
cost of the per-endpoint statistics.

1. Same locustfile (`bench/shape_nowait.py`: no think time, a shape stepping 5 → 10 → 20 users and then
   ending), same target (the sample service, no latency), same single process each: plain
   `locust -f FILE --headless` (the shape ends the run) against `rollout gate --host … -f FILE` (the shape
   drives the users and ends the stage; the gate is judged every second). Requests per second over the
   run (Locust's own Requests/s; the gate's requests over its stage's elapsed time); rounds alternate so
   drift hits both. Target: ratio ≥ 0.95.
2. The per-endpoint recorder (`rollout.load.endpoints`: a row and a log histogram per endpoint, failure
   messages) on or off (`LoadSpec.endpoint_stats`), otherwise the same in-process load (`run_load`, flat
   20 users, no shape, no think time), as alternating stages of one process (ABBA). Reported: req/s with
   and without per pair, the median ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, save, start_service  # noqa: E402

SHAPE = ROOT / "bench" / "shape_nowait.py"
FLAT = ROOT / "bench" / "nowait.py"

# One process, one Locust session, stages alternating with and without the per-endpoint recorder (ABBA order,
# so a trend in the machine's load hits both alike); each pair gives a ratio.
TOOL = r"""
import rollout.load.runner as r, json, sys
from pathlib import Path
def rps(on):
    spec = r.LoadSpec(locustfile=Path(sys.argv[1]), host=sys.argv[2], users=int(sys.argv[3]), spawn_rate=1000, duration=float(sys.argv[4]),
                      roles={"v1": "stable"}, max_requests=10_000_000, endpoint_stats=on)
    stats = r.run_load(spec, lambda s: False)
    return stats.requests / stats.elapsed
pairs = []
for i in range(int(sys.argv[5])):
    order = (True, False) if i % 2 == 0 else (False, True)
    got = {on: rps(on) for on in order}
    pairs.append([got[True], got[False]])
print(json.dumps(pairs))
"""


def env(seconds: float) -> dict[str, str]:
    return {**os.environ, "BENCH_SHAPE_SECONDS": str(seconds), "PYTHONPATH": str(ROOT)}


def plain_shape(host: str, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "locust", "-f", str(SHAPE), "--headless", "--host", host, "--csv", f"{d}/s", "--only-summary",
                        "--loglevel", "ERROR"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(seconds), cwd=d)
        lines = Path(f"{d}/s_stats.csv").read_text().splitlines()
        col = lines[0].split(",").index("Requests/s")  # Locust's own: requests over its run's span
        return float(next(line for line in lines if ",Aggregated," in line).split(",")[col])


def gate_shape(host: str, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, "-m", "rollout", "gate", "--quiet", "--host", host, "-f", str(SHAPE), "-t", f"{int(seconds) + 10}s",
                            "--gate", "errors<5%", "--json", f"{d}/r.json"], capture_output=True, text=True, env={**env(seconds), "GITHUB_STEP_SUMMARY": ""}, cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError(r.stdout + r.stderr)
        stats = json.loads(Path(f"{d}/r.json").read_text())["stages"][0]["stats"]
        return stats["all"]["requests"] / stats["elapsed_s"]  # over the stage, which the shape's end ends


def in_process_pairs(host: str, users: int, seconds: float, pairs: int) -> list[list[float]]:
    out = subprocess.run([sys.executable, "-c", TOOL, str(FLAT), host, str(users), str(seconds), str(pairs)], check=True,
                         capture_output=True, text=True, env=env(seconds), cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def add_cost_us(n: int = 200_000) -> float:
    """Microseconds per `EndpointStats.add` (the per-request cost of the recorder), 20 endpoints, 1 % failures."""
    import time

    from rollout.load.endpoints import EndpointStats

    ep = EndpointStats()
    names = [f"/api/{i}" for i in range(20)]
    err = ValueError("boom")
    t0 = time.perf_counter()
    for i in range(n):
        ep.add("canary", "GET", names[i % 20], 3.0 + (i % 97) * 0.1, err if i % 100 == 0 else None)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=12)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=8, help="with/without pairs for the per-endpoint cost")
    ap.add_argument("--cost-seconds", type=float, default=4, help="seconds per half of a pair")
    a = ap.parse_args()
    proc, port = start_service()
    host = f"http://127.0.0.1:{port}"
    try:
        shape_rows, cost_rows = [], []
        for i in range(a.rounds):
            p, g = plain_shape(host, a.seconds), gate_shape(host, a.seconds)
            shape_rows.append({"round": i + 1, "plain_rps": round(p, 1), "gate_rps": round(g, 1), "ratio": round(g / p, 3)})
            print(f"round {i + 1}: shape — locust --headless {p:,.0f} req/s, rollout gate {g:,.0f} req/s, ratio {g / p:.2f}", flush=True)
        for j, (on, off) in enumerate(in_process_pairs(host, a.users, a.cost_seconds, a.pairs)):
            cost_rows.append({"pair": j + 1, "with_rps": round(on, 1), "without_rps": round(off, 1), "ratio": round(on / off, 3)})
            print(f"pair {j + 1}: per-endpoint statistics — with {on:,.0f} req/s, without {off:,.0f} req/s, ratio {on / off:.3f}", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    med = statistics.median
    per_add = med(add_cost_us() for _ in range(3))
    print(f"EndpointStats.add: {per_add:.2f} µs per request", flush=True)
    summary = {
        "endpoint_add_us": round(per_add, 3),
        "seconds": a.seconds, "users": a.users,
        "shape": {"rounds": shape_rows, "median_plain_rps": med(r["plain_rps"] for r in shape_rows),
                  "median_gate_rps": med(r["gate_rps"] for r in shape_rows), "median_ratio": med(r["ratio"] for r in shape_rows)},
        "endpoint_stats": {"rounds": cost_rows, "median_with_rps": med(r["with_rps"] for r in cost_rows),
                           "median_without_rps": med(r["without_rps"] for r in cost_rows), "median_ratio": med(r["ratio"] for r in cost_rows)},
    }
    s, c = summary["shape"], summary["endpoint_stats"]
    print(f"median: shape ratio rollout gate / locust --headless {s['median_ratio']:.2f} ({s['median_gate_rps']:,.0f} vs {s['median_plain_rps']:,.0f} req/s); "
          f"per-endpoint statistics with/without {c['median_ratio']:.3f} ({c['median_with_rps']:,.0f} vs {c['median_without_rps']:,.0f} req/s)")
    save("locust_native", summary)


if __name__ == "__main__":
    main()

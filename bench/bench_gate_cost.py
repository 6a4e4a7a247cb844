"""Does judging gates every second starve the load? Requests/s with no gates, threshold gates
and sequential (anytime-valid) gates, same load through the local router at a 50 % split.

The gates run inside the load generator's process (gevent): any CPU they use
is taken from the users. Rounds alternate the three modes so drift hits all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, save, start_service  # noqa: E402

TOOL = r"""
import rollout.load.runner as r, json, sys
from pathlib import Path
from rollout.gates.judge import StageJudge
from rollout.plan.model import Gate
mode = sys.argv[5]
gates = {}
if mode == "threshold":
    gates = {"e": Gate(metric="error_rate", max="1%", min_requests=10), "p": Gate(metric="p95", compare="stable", max_increase="20%", min_requests=10),
             "s": Gate(metric="p99", max="1s", min_requests=10)}
elif mode == "sequential":
    gates = {"e": Gate(metric="error_rate", compare="stable", max_increase="1%", method="sequential", min_requests=10),
             "p95": Gate(metric="p95", compare="stable", max_increase="20%", method="sequential", min_requests=10),
             "p99": Gate(metric="p99", compare="stable", max_increase="20%", method="sequential", min_requests=10),
             "s": Gate(metric="p99", max="1s", min_requests=10)}
judge = StageJudge(gates)
ticks = []
def tick(s):
    import time
    t = time.perf_counter(); judge.judge(s, final=False); ticks.append(time.perf_counter() - t)
    return False
spec = r.LoadSpec(locustfile=Path(sys.argv[1]), host=sys.argv[2], users=int(sys.argv[3]), spawn_rate=1000, duration=float(sys.argv[4]),
                  roles={"v1": "stable", "v2": "canary"}, max_requests=10_000_000)
stats = r.run_load(spec, tick)
print(json.dumps({"requests": stats.requests, "seconds": stats.elapsed, "judge_ms_max": max(ticks) * 1000 if ticks else 0,
                  "judge_ms_mean": sum(ticks) / len(ticks) * 1000 if ticks else 0}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--users", type=int, default=20)
    a = ap.parse_args()
    (p1, port1), (p2, port2) = start_service("v1"), start_service("v2")
    d = Path(tempfile.mkdtemp())
    cfg = d / "router.json"
    cfg.write_text(json.dumps({"stable": {"version": "v1", "port": port1}, "canary": {"version": "v2", "port": port2}, "weight": 0.5, "cohort": None, "version_header": "X-Version"}))
    port = free_port()
    router = subprocess.Popen([sys.executable, "-m", "rollout.backends.local.router", "--port", str(port), "--admin-port", "0", "--config", str(cfg), "--ready-file", str(d / "ready")])
    while not (d / "ready").exists():
        time.sleep(0.05)
    host = f"http://127.0.0.1:{port}"
    rows: dict[str, list[dict]] = {"none": [], "threshold": [], "sequential": []}
    try:
        for i in range(a.rounds):
            for mode in rows:
                out = subprocess.run([sys.executable, "-c", TOOL, str(ROOT / "bench" / "nowait.py"), host, str(a.users), str(a.seconds), mode],
                                     check=True, capture_output=True, text=True).stdout
                data = json.loads(out.strip().splitlines()[-1])
                data["rps"] = data["requests"] / data["seconds"]
                rows[mode].append(data)
                print(f"round {i + 1} {mode:>10}: {data['rps']:,.0f} req/s, judge {data['judge_ms_mean']:.2f} ms mean / {data['judge_ms_max']:.2f} ms max per second", flush=True)
    finally:
        for p in (router, p1, p2):
            p.terminate()
            p.wait()
    summary = {m: {"median_rps": statistics.median(r["rps"] for r in v), "judge_ms_max": max(r["judge_ms_max"] for r in v)} for m, v in rows.items()}
    base = summary["none"]["median_rps"]
    for m, v in summary.items():
        v["ratio_to_no_gates"] = v["median_rps"] / base
        print(f"{m:>10}: median {v['median_rps']:,.0f} req/s ({v['ratio_to_no_gates']:.2f} of no gates), judge ≤ {v['judge_ms_max']:.2f} ms per tick")
    save("gate_cost", {"rounds": rows, "summary": summary})


if __name__ == "__main__":
    main()

"""The tool's load throughput against plain `locust --headless`, same locustfile, users, target, core.

Both drive the sample service (no latency) directly, with a no-think-time
locustfile, for the same duration; rounds alternate so drift hits both.
The tool's side is `rollout.load.runner.run_load` (what a stage runs: our
recorder on every request, gates checked every second). Reported: requests/s
of each and the ratio (target ≥ 0.9).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, save, start_service  # noqa: E402

LOCUSTFILE = ROOT / "bench" / "nowait.py"

TOOL = r"""
import rollout.load.runner as r, json, sys
from pathlib import Path
from rollout.gates.threshold import evaluate_all
from rollout.plan.model import Gate
gates = {"e": Gate(metric="error_rate", max="1%", min_requests=10), "p": Gate(metric="p95", compare="stable", max_increase="20%", min_requests=10)}
spec = r.LoadSpec(locustfile=Path(sys.argv[1]), host=sys.argv[2], users=int(sys.argv[3]), spawn_rate=1000, duration=float(sys.argv[4]),
                  roles={"v1": "stable"}, max_requests=10_000_000)
stats = r.run_load(spec, lambda s: any(v.status == "fail" for v in evaluate_all(gates, s, final=False)))
print(json.dumps({"requests": stats.requests, "seconds": stats.elapsed}))
"""


def plain(host: str, users: int, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", "1000", "-t", f"{int(seconds)}s",
             "--host", host, "--csv", f"{d}/s", "--only-summary", "--loglevel", "ERROR"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        lines = Path(f"{d}/s_stats.csv").read_text().splitlines()
        total = next(line for line in lines if ",Aggregated," in line).split(",")
        return int(total[2]) / seconds


def tool(host: str, users: int, seconds: float) -> float:
    out = subprocess.run([sys.executable, "-c", TOOL, str(LOCUSTFILE), host, str(users), str(seconds)], check=True, capture_output=True, text=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return data["requests"] / data["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--users", type=int, default=20)
    a = ap.parse_args()
    proc, port = start_service()
    host = f"http://127.0.0.1:{port}"
    try:
        rows = []
        for i in range(a.rounds):
            p = plain(host, a.users, a.seconds)
            t = tool(host, a.users, a.seconds)
            rows.append({"round": i + 1, "plain_rps": round(p, 1), "tool_rps": round(t, 1), "ratio": round(t / p, 3)})
            print(f"round {i + 1}: locust --headless {p:,.0f} req/s, rollout {t:,.0f} req/s, ratio {t / p:.2f}", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    summary = {
        "users": a.users, "seconds": a.seconds, "rounds": rows,
        "median_plain_rps": statistics.median(r["plain_rps"] for r in rows),
        "median_tool_rps": statistics.median(r["tool_rps"] for r in rows),
        "median_ratio": statistics.median(r["ratio"] for r in rows),
    }
    print(f"median: plain {summary['median_plain_rps']:,.0f} req/s, rollout {summary['median_tool_rps']:,.0f} req/s, ratio {summary['median_ratio']:.2f}")
    save("load_throughput", summary)


if __name__ == "__main__":
    main()

"""False rollbacks with real Locust traffic: two identical versions, sequential gates, many stages.

The simulated bench (bench_false_rollback.py) runs 200 stages per rule; this
one checks the same statistics on real traffic through the real CLI, the
local router and the sample service: every round is a rollout of a version
whose configuration is identical to stable's (only the name differs), one
50 % stage with anytime-valid error-rate and p95/p99 comparisons at
alpha = 1 % checked every second. Any rollback is a false one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--duration", default="20s")
    a = ap.parse_args()
    svc = ROOT / "examples" / "service.py"
    same = "--latency 20ms --jitter 0.5 --error-rate 1% --seed {seed}"
    with tempfile.TemporaryDirectory() as d:
        plan = {
            "name": "null-bench",
            "owner": {"name": "bench", "contact": "bench@example.com"},
            "target": {"backend": "local", "stable": "a", "versions": {
                name: {"command": f"{{python}} {svc} --port {{port}} --version {name} " + same.format(seed=i)} for i, name in enumerate(("a", "b"))}},
            "load": {"locustfile": str(ROOT / "locustfiles" / "answer.py"), "users": 40, "max_requests": 200000},
            "gates": {
                "errors": {"metric": "error_rate", "compare": "stable", "max_increase": "1%", "method": "sequential", "alpha": 0.01, "min_requests": 100},
                "p95": {"metric": "p95", "compare": "stable", "max_increase": "20%", "method": "sequential", "alpha": 0.01, "min_requests": 100},
                "p99": {"metric": "p99", "compare": "stable", "max_increase": "30%", "method": "sequential", "alpha": 0.01, "min_requests": 100},
            },
            "review": {"timeout": "1s", "default": "continue"},
            "stages": [{"name": "half", "weight": 50, "duration": a.duration}],
        }
        path = Path(d) / "plan.yaml"
        path.write_text(yaml.safe_dump(plan))
        env = {**os.environ, "ROLLOUT_STATE_DIR": str(Path(d) / "state")}
        outcomes = []
        try:
            for i in range(a.rounds):
                version = "b" if i % 2 == 0 else "a"
                r = subprocess.run([sys.executable, "-m", "rollout", "run", str(path), "--version", version], env=env, capture_output=True, text=True)
                if r.returncode == 4:  # inconclusive at the end: not a rollback; let the review default continue
                    subprocess.run([sys.executable, "-m", "rollout", "approve", str(path)], env=env, capture_output=True)
                    r = subprocess.run([sys.executable, "-m", "rollout", "run", str(path)], env=env, capture_output=True, text=True)
                    outcomes.append("inconclusive")
                else:
                    outcomes.append({0: "passed", 1: "FALSE ROLLBACK"}.get(r.returncode, f"exit {r.returncode}"))
                print(f"round {i + 1}: {outcomes[-1]}", flush=True)
            state = json.loads(subprocess.run([sys.executable, "-m", "rollout", "status", str(path), "-o", "json"], env=env, capture_output=True, text=True).stdout)["state"]
        finally:
            subprocess.run([sys.executable, "-m", "rollout", "down", str(path)], env=env, capture_output=True)
    requests = [st["stats"].get("all", {}).get("requests", 0) for p in state["past"] for st in p["stages"]]
    summary = {"rounds": a.rounds, "false_rollbacks": outcomes.count("FALSE ROLLBACK"), "passed": outcomes.count("passed"),
               "inconclusive": outcomes.count("inconclusive"), "requests_per_stage_median": sorted(requests)[len(requests) // 2] if requests else 0,
               "outcomes": outcomes}
    print(f"{summary['false_rollbacks']} false rollbacks, {summary['passed']} passed, {summary['inconclusive']} inconclusive "
          f"of {a.rounds} stages (median {summary['requests_per_stage_median']:,} requests per stage)")
    save("real_null", summary)


if __name__ == "__main__":
    main()

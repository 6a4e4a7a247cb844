"""`make bench`: every benchmark in turn, results in bench/results/*.json (see bench/README.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ["bench_router.py"],
    ["bench_load.py", "--rounds", "3", "--seconds", "10"],
    ["bench_locust_native.py", "--rounds", "3", "--seconds", "12"],
    ["bench_rollback.py", "--rounds", "5"],
    ["bench_revert_live.py", "--rounds", "10"],
    ["bench_request_pickup.py", "--trials", "20"],
    ["bench_canary_death.py", "--rounds", "10", "--baseline-rounds", "4"],
    ["bench_k8s.py", "--rounds", "20"],
    ["bench_cluster_load.py", "--rounds", "2", "--seconds", "10"],
    ["bench_gate_cost.py", "--rounds", "3", "--seconds", "10"],
    ["bench_gate.py"],
    ["bench_false_rollback.py"],
    ["bench_absolute.py"],
    ["bench_watch.py"],
    ["bench_partial_hang.py", "--stages", "100", "--minutes", "5", "--users", "30", "10"],
]

if __name__ == "__main__":
    failed = 0
    for args in RUNS:
        print(f"\n=== {' '.join(args)} ===", flush=True)
        failed += subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]], cwd=HERE.parent).returncode != 0
    sys.exit(1 if failed else 0)

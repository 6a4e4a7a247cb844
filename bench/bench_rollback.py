"""Time from a bad canary starting to serve to all traffic back on stable (local backend).

Each round runs `rollout run` (the real CLI) with one 50 % stage and a canary
that fails 5 % of requests against a 2 % error gate (min 100 requests). Two
clocks: the state's audit trail (traffic shifted → all on stable, canary
stopped) and an outside probe that asks the router every 20 ms which version
answered (first and last canary answer seen by a "user").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, save  # noqa: E402


def plan(d: Path, port: int) -> Path:
    svc = ROOT / "examples" / "service.py"
    p = {
        "name": "bench-rollback",
        "owner": {"name": "bench", "contact": "bench@example.com"},
        "target": {"backend": "local", "stable": "v1", "port": port, "versions": {
            "v1": {"command": f"{{python}} {svc} --port {{port}} --version v1 --latency 10ms --error-rate 0%"},
            "v3": {"command": f"{{python}} {svc} --port {{port}} --version v3 --latency 10ms --error-rate 5%"},
        }},
        "load": {"locustfile": str(ROOT / "locustfiles" / "answer.py"), "users": 30, "max_requests": 100000},
        "gates": {"errors": {"metric": "error_rate", "max": "2%", "min_requests": 100}},
        "stages": [{"name": "half", "weight": 50, "duration": "60s"}],
    }
    path = d / "plan.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def probe(port: int, stop: threading.Event, seen: list[tuple[float, str]]) -> None:
    with httpx.Client(timeout=2) as c:
        while not stop.is_set():
            try:
                v = c.get(f"http://127.0.0.1:{port}/api/answer").headers.get("x-version", "?")
                seen.append((time.time(), v))
            except httpx.HTTPError:
                pass
            time.sleep(0.02)


def one_round(d: Path) -> dict[str, float]:
    from bench.common import free_port

    port = free_port()
    path = plan(d, port)
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(d / "state")}
    stop, seen = threading.Event(), []
    t = threading.Thread(target=probe, args=(port, stop, seen), daemon=True)
    t.start()
    try:
        r = subprocess.run([sys.executable, "-m", "rollout", "run", str(path), "--version", "v3"], env=env, capture_output=True, text=True)
        assert r.returncode == 1, r.stdout + r.stderr
        state = json.loads(subprocess.run([sys.executable, "-m", "rollout", "status", str(path), "-o", "json"], env=env, capture_output=True, text=True).stdout)["state"]
    finally:
        stop.set()
        t.join()
        subprocess.run([sys.executable, "-m", "rollout", "down", str(path)], env=env, capture_output=True)
    hist = state["history"]
    shifted = next(h["at"] for h in hist if h["action"] == "shift")
    verdict = state["stages"][0]["ended_at"]
    on_stable = next(h["at"] for h in hist if h["action"] == "stable")
    canary_seen = [ts for ts, v in seen if v == "v3"]
    return {
        "canary_serving_to_all_stable_s": on_stable - shifted,
        "verdict_to_all_stable_s": on_stable - verdict,
        "probe_first_to_last_canary_answer_s": (canary_seen[-1] - canary_seen[0]) if canary_seen else float("nan"),
        "requests_judged": next(v["requests"] for v in state["stages"][0]["verdicts"] if v["status"] == "fail"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    rows = []
    for i in range(a.rounds):
        with tempfile.TemporaryDirectory() as d:
            row = one_round(Path(d))
        rows.append(row)
        print(f"round {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    summary = {k: {"median": statistics.median(r[k] for r in rows), "max": max(r[k] for r in rows)} for k in rows[0]}
    for k, v in summary.items():
        print(f"{k}: median {v['median']:.2f}, max {v['max']:.2f}")
    save("rollback", {"rounds": rows, "summary": summary})


if __name__ == "__main__":
    main()

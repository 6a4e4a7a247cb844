"""Time from a canary's death (SIGKILL) to all traffic on stable (local backend, #10 fail closed).

Each round runs `rollout run` (the real CLI) with the example plan's gates and
one 10 % stage of 60 s, 30 users, a healthy canary. 2 s into the stage the
canary process is killed with SIGKILL. Clocks (wall time, same machine):

- kill → the router's config has no canary and weight 0 (an outside probe asks
  its admin API every 10 ms): all traffic on stable;
- kill → the stage's failing verdict (the state's `ended_at`);
- kill → the last user request that got a 502 (an outside user probing the
  entry point every 10 ms).

Baseline, in alternating rounds: the same run with the canary-alive check
switched off in the CLI process (the gates alone, as before #10): the error
gate (`max 2%`, `min_requests: 150`) has to see 150 canary requests first.

`--fault-rounds N` also measures, for each fault of tests/faulty_service.py
(a canary broken from its first request), the stage's start → all traffic on
stable, with the same plan.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, save  # noqa: E402

# The CLI with the canary-alive check neutralised (never fails): the baseline's "gates alone".
GATES_ALONE = (
    "import sys; from rollout.gates import liveness as l; from rollout.gates.verdict import Status, Verdict\n"
    "l.CanaryLiveness.observe = lambda self, t, stats, probe, final=False: Verdict(l.NAME, Status.PENDING, 'off', 'canary')\n"
    "from rollout.cli import main; sys.argv[0] = 'rollout'; sys.exit(main())\n"
)


FAULTS = ("hang", "reset", "raw", "garbage", "noheader")


def plan(d: Path, port: int, fault: str | None = None) -> Path:
    svc = ROOT / "examples" / "service.py"
    p = {
        "name": "bench-canary-death",
        "owner": {"name": "bench", "contact": "bench@example.com"},
        "target": {"backend": "local", "stable": "v1", "port": port, "versions": {
            "v1": {"command": f"{{python}} {svc} --port {{port}} --version v1 --latency 20ms --error-rate 0.1%"},
            "v2": {"command": f"{{python}} {svc} --port {{port}} --version v2 --latency 18ms --error-rate 0.1%"},
        }},
        "load": {"locustfile": str(ROOT / "locustfiles" / "answer.py"), "users": 30, "spawn_rate": 30, "max_requests": 100000},
        "gates": {  # examples/plan.yaml's as #10 found them: the threshold rule, judged from min_requests on
            "errors": {"metric": "error_rate", "max": "2%", "min_requests": 150, "method": "threshold"},
            "p95-slo": {"metric": "p95", "max": "250ms", "method": "threshold"},
            "p95-vs-stable": {"metric": "p95", "compare": "stable", "max_increase": "50%", "min_requests": 150},
        },
        "stages": [{"name": "ten-percent", "weight": "10%", "duration": "60s"}],
    }
    if fault:
        faulty = ROOT / "tests" / "faulty_service.py"
        p["target"]["versions"]["v2"] = {"command": f"{{python}} {faulty} --port {{port}} --version v2 --fault {fault} --latency 18"}
        p["load"]["metrics"] = {"confidence": {"json": "confidence"}}  # garbage answers fail the plan's JSON promise
    path = d / "plan.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def state_of(path: Path, env: dict[str, str]) -> dict[str, Any]:
    state_file = Path(env["ROLLOUT_STATE_DIR"])
    for f in state_file.rglob("state.json"):
        try:
            return json.loads(f.read_text())
        except ValueError:
            pass
    r = subprocess.run([sys.executable, "-m", "rollout", "status", str(path), "-o", "json"], env=env, capture_output=True, text=True)
    return json.loads(r.stdout).get("state") or {}


def watch(admin_port: int, entry_port: int, stop: threading.Event, out: dict[str, float]) -> None:
    """Admin API: when the canary leaves the config; entry point: when users stop getting 502s."""
    with httpx.Client(timeout=2, trust_env=False) as c:
        while not stop.is_set():
            now = time.time()
            if "all_stable" not in out:
                try:
                    cfg = c.get(f"http://127.0.0.1:{admin_port}/config").json()
                    if cfg.get("canary") is None and cfg.get("weight") == 0:
                        out["all_stable"] = now
                except (httpx.HTTPError, ValueError):
                    pass
            try:
                r = c.get(f"http://127.0.0.1:{entry_port}/api/answer")
                if r.status_code >= 500:
                    out["last_5xx"] = time.time()
            except httpx.HTTPError:
                out["last_5xx"] = time.time()
            time.sleep(0.01)


def one_round(d: Path, gates_alone: bool, fault: str | None = None) -> dict[str, Any]:
    port = free_port()
    path = plan(d, port, fault)
    env = {**os.environ, "ROLLOUT_STATE_DIR": str(d / "state"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", GATES_ALONE] if gates_alone else [sys.executable, "-m", "rollout"]
    proc = subprocess.Popen([*cmd, "run", str(path), "--version", "v2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, seen = threading.Event(), {}
    watcher = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = state_of(path, env)
            stages = st.get("stages") or []
            if stages and stages[-1]["status"] == "running":
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the stage did not start")
        router = st["backend"]["router"]
        watcher = threading.Thread(target=watch, args=(router["admin_port"], router["port"], stop, seen), daemon=True)
        watcher.start()
        if fault:  # broken from its first request: the clock starts with the stage
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 1, out + err
            time.sleep(0.3)
            stage = state_of(path, env)
            started = next(h["at"] for h in stage["history"] if h["action"] == "stage-started")
            fail = next((v for v in (stage.get("past") or [{}])[-1].get("stages", [{}])[0].get("verdicts", []) if v["status"] == "fail"), {})
            return {"stage_start_to_all_stable_s": seen.get("all_stable", float("nan")) - started, "failed_by": fail.get("gate", "?"),
                    "reason": fail.get("message", "")[:120]}
        time.sleep(2.0)
        pid = st["backend"]["canary"]["pid"]
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, out + err
        time.sleep(0.3)  # the watcher sees the last answers
    finally:
        stop.set()
        if watcher is not None:
            watcher.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run([sys.executable, "-m", "rollout", "down", str(path)], env=env, capture_output=True)
    st = state_of(path, env)
    stage = st["stages"][0] if st.get("stages") else (st["past"][-1]["stages"][0] if st.get("past") else {})
    ended = st["stages"][0]["ended_at"] if st.get("stages") else float("nan")
    fail = next((v for v in stage.get("verdicts", []) if v["status"] == "fail"), {})
    return {
        "kill_to_all_stable_s": seen.get("all_stable", float("nan")) - killed,
        "kill_to_verdict_s": ended - killed,
        "kill_to_last_5xx_s": seen.get("last_5xx", killed) - killed,
        "failed_by": fail.get("gate", "?"),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in rows[0] if k.endswith("_s")]
    return {k: {"median": round(statistics.median(r[k] for r in rows), 3), "max": round(max(r[k] for r in rows), 3),
                "min": round(min(r[k] for r in rows), 3)} for k in keys} | {"failed_by": sorted({r["failed_by"] for r in rows})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10, help="rounds with the canary-alive check")
    ap.add_argument("--baseline-rounds", type=int, default=4, help="rounds with the gates alone, alternating")
    ap.add_argument("--fault-rounds", type=int, default=0, help="rounds per fault of tests/faulty_service.py")
    a = ap.parse_args()
    rows: dict[str, list[dict[str, Any]]] = {"fail_closed": [], "gates_alone": []}
    order = ["fail_closed"] * a.rounds
    for i in range(a.baseline_rounds):  # alternate: a baseline round after every few fail-closed rounds
        order.insert(min(len(order), (i + 1) * max(1, a.rounds // max(1, a.baseline_rounds))) + i, "gates_alone")
    for n, kind in enumerate(order, 1):
        with tempfile.TemporaryDirectory() as d:
            row = one_round(Path(d), gates_alone=kind == "gates_alone")
        rows[kind].append(row)
        print(f"round {n} ({kind}): " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    for fault in FAULTS if a.fault_rounds else ():
        rows[f"fault_{fault}"] = []
        for n in range(a.fault_rounds):
            with tempfile.TemporaryDirectory() as d:
                row = one_round(Path(d), gates_alone=False, fault=fault)
            rows[f"fault_{fault}"].append(row)
            print(f"fault {fault} round {n + 1}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    summary = {kind: summarize(r) for kind, r in rows.items() if r}
    if rows["gates_alone"]:
        summary["ratio_all_stable_median"] = round(summary["gates_alone"]["kill_to_all_stable_s"]["median"]
                                                   / summary["fail_closed"]["kill_to_all_stable_s"]["median"], 2)
    print(json.dumps(summary, indent=2))
    save("canary_death" + ("_faults" if a.fault_rounds and not a.rounds else ""), {"rounds": rows, "summary": summary})


if __name__ == "__main__":
    main()

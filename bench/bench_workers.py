"""`load.workers: 2` and `load.workers: 4` against in-process, and the histogram traffic from workers to the master.

Issue #13 asks for the requests/s of Locust worker processes against the in-process load, with a load generator
that saturates first, and for the bytes per second each worker sends the master for rollout's per-version
statistics. One script, rounds alternating (in-process, 2 workers, 4 workers, again), so drift hits all three.

* Load generator: the real CLI (`rollout gate PLAN`), the plan's `load.workers` set to 0 / 2 / 4, Locust's
  HttpUser (python-requests: ~1.5-2k requests/s per core) with `wait_time = constant(0)`, the same users.
  Bounded: `--seconds` per run and `load.max_requests`.
* Target: bench/fast_target.py, one asyncio process on 127.0.0.1 answering at once, alternating
  `X-Version: v1` / `v2` (so every worker keeps two per-version histograms, as in a canary stage). Which side
  saturated is measured, not assumed: the CPU seconds of the target and of the load generator's processes
  (the CLI and its workers) per second of load, sampled with psutil.
* Histogram traffic: the bench's locustfile wraps, in each worker, the Locust RPC client's `send` and adds up
  `len(msg.serialize())` (the msgpack payload Locust puts on its ZeroMQ socket) per message type: rollout's
  `rollout_stats` deltas, and for comparison Locust's own `stats` reports and heartbeats. Per worker: bytes per
  second of load and bytes per message. (ZeroMQ and TCP add a few dozen bytes of framing per message.)
* Exactness on the side: the target's count of served requests against the gate's total (they may differ by
  the users cut mid-request at the stop, which the report counts: `cut_mid_task`, plus the gate's probe).

Ratios are against the in-process median of the same run. The machine has 2 cores: 4 worker processes plus the
master share them with the target, so "workers: 4" measures what process parallelism buys on 2 cores, not on 4.

    python bench/bench_workers.py [--rounds 3] [--seconds 10] [--users 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, free_port, save  # noqa: E402

WORKERS = (0, 2, 4)

LOCUSTFILE = '''
"""HttpUser, no think time; in a Locust worker, the size of every message it sends the master is added up."""
import json
import os
import time

from locust import HttpUser, constant, events, task


class NoWaitHttp(HttpUser):
    wait_time = constant(0)

    @task
    def ask(self):
        self.client.get("/api/answer", name="/api/answer")


OUT = os.environ.get("BENCH_MESSAGES_DIR")


@events.init.add_listener
def _measure(environment, **_):
    from locust.runners import WorkerRunner

    runner = environment.runner
    if not OUT or not isinstance(runner, WorkerRunner):
        return
    sent = {}
    times = []

    plain = runner.client.send

    def send(msg):
        n = len(msg.serialize())  # what rpc.Client.send puts on the socket (msgpack)
        row = sent.setdefault(msg.type, [0, 0])
        row[0] += 1
        row[1] += n
        if msg.type == "rollout_stats":
            times.append(time.monotonic())
        return plain(msg)

    runner.client.send = send

    @events.quitting.add_listener
    def _dump(**_):
        data = {"pid": os.getpid(), "sent": {k: {"messages": v[0], "bytes": v[1]} for k, v in sent.items()},
                "rollout_stats_span_s": (times[-1] - times[0]) if len(times) > 1 else 0.0}
        with open(os.path.join(OUT, f"worker-{os.getpid()}.json"), "w") as f:
            json.dump(data, f)
'''


def write_plan(d: Path, users: int, seconds: float, workers: int) -> Path:
    import yaml

    (d / "load.py").write_text(LOCUSTFILE)
    plan = {
        "name": "bench-workers",
        "owner": {"name": "Bench", "contact": "bench@example.com"},
        "target": {"backend": "local", "stable": "v1",  # the gate starts nothing: the versions name the roles
                   "versions": {"v1": {"command": "{python} s.py --port {port}"}, "v2": {"command": "{python} s.py --port {port}"}}},
        "load": {"locustfile": "load.py", "users": users, "workers": workers, "max_requests": 2_000_000},
        "gates": {"errors": {"metric": "error_rate", "max": "50%"}},
        "stages": [{"name": "s", "weight": 50, "duration": f"{seconds:g}s"}],
    }
    path = d / f"plan-{workers}.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def start_target(seconds: float) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fast_target.py"), "--port", str(port), "--seconds", f"{seconds:g}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/count", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the target did not start")


def served(url: str) -> int:
    import httpx

    return int(httpx.get(f"{url}/count", timeout=5).text)


def cpu_seconds(proc: Any) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def one_run(url: str, target_pid: int, users: int, seconds: float, workers: int) -> dict[str, Any]:
    """One `rollout gate` run; requests/s, CPU per side, and the workers' message sizes."""
    import psutil

    target = psutil.Process(target_pid)
    with tempfile.TemporaryDirectory() as d:
        dd = Path(d)
        plan = write_plan(dd, users, seconds, workers)
        msgs = dd / "messages"
        msgs.mkdir()
        before_served = served(url)
        t0 = time.monotonic()
        gate = subprocess.Popen([sys.executable, "-m", "rollout", "gate", str(plan), "--host", url, "--quiet", "--json", str(dd / "r.json")],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "GITHUB_STEP_SUMMARY": "", "BENCH_MESSAGES_DIR": str(msgs)})
        me = psutil.Process(gate.pid)
        last: dict[int, float] = {}  # pid -> latest CPU seconds (children are gone before the CLI exits)
        samples: list[tuple[float, int, float, float]] = []  # (t, served, load CPU s, target CPU s)
        while gate.poll() is None:
            try:
                for p in [me, *me.children(recursive=True)]:
                    try:
                        last[p.pid] = cpu_seconds(p)
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            samples.append((time.monotonic(), served(url), sum(last.values()), cpu_seconds(target)))
            time.sleep(0.25)
        err = gate.stderr.read() if gate.stderr else ""
        if gate.wait() != 0:
            raise RuntimeError(f"rollout gate (workers {workers}) exited {gate.returncode}: {err[-2000:]}")
        wall = time.monotonic() - t0
        # CPU while the load runs: from the first to the last sample at which the target's count grew, less a
        # second at each end (spawn, stop); start-up and shutdown of the CLI and its workers are not load
        growing = [i for i in range(1, len(samples)) if samples[i][1] > samples[i - 1][1]]
        window = [s for s in samples[growing[0]:growing[-1] + 1] if samples[growing[0]][0] + 1 <= s[0] <= samples[growing[-1]][0] - 1] \
            if growing else []
        if len(window) < 2:
            window = samples[growing[0] - 1:growing[-1] + 1] if growing else samples
        span = max(1e-6, window[-1][0] - window[0][0])
        load_cores = (window[-1][2] - window[0][2]) / span
        target_cores = (window[-1][3] - window[0][3]) / span
        window_requests = max(1, window[-1][1] - window[0][1])
        load_us = (window[-1][2] - window[0][2]) / window_requests * 1e6
        n_served = served(url) - before_served
        st = json.loads((dd / "r.json").read_text())["stages"][0]["stats"]
        per_worker = [json.loads(p.read_text()) for p in sorted(msgs.glob("worker-*.json"))]
    elapsed = float(st["elapsed_s"])
    requests = int(st["all"]["requests"])
    row: dict[str, Any] = {
        "workers": workers, "rps": round(requests / elapsed, 1), "requests": requests, "elapsed_s": elapsed,
        "service_served_minus_gate": n_served - requests, "cut_mid_task": int(st.get("cut_mid_task", 0)),
        "load_cpu_cores": round(load_cores, 2),  # the CLI and its workers, while the load runs
        "target_cpu_cores": round(target_cores, 2),
        # CPU of the load generator (CLI + workers) per request: robust to other work on the machine, which
        # steals CPU time from every process (the req/s figures) but not the cost of one request
        "load_cpu_us_per_request": round(load_us, 1),
        "wall_s": round(wall, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if workers:
        stats_msgs = [w["sent"].get("rollout_stats", {"messages": 0, "bytes": 0}) for w in per_worker]
        locust_msgs = [w["sent"].get("stats", {"messages": 0, "bytes": 0}) for w in per_worker]
        row["workers_reporting"] = len(per_worker)
        row["rollout_stats_bytes_per_s_per_worker"] = round(statistics.mean(m["bytes"] for m in stats_msgs) / elapsed, 1)
        row["rollout_stats_bytes_per_message"] = round(sum(m["bytes"] for m in stats_msgs) / max(1, sum(m["messages"] for m in stats_msgs)), 1)
        row["rollout_stats_messages_per_s_per_worker"] = round(statistics.mean(m["messages"] for m in stats_msgs) / elapsed, 2)
        row["locust_stats_bytes_per_s_per_worker"] = round(statistics.mean(m["bytes"] for m in locust_msgs) / elapsed, 1)
        row["all_messages_bytes_per_s_per_worker"] = round(
            statistics.mean(sum(v["bytes"] for v in w["sent"].values()) for w in per_worker) / elapsed, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--users", type=int, default=40)
    a = ap.parse_args()
    proc, url = start_target(seconds=a.rounds * len(WORKERS) * (a.seconds + 60) + 60)  # outlives every run, bounded
    rows: list[dict[str, Any]] = []
    try:
        for i in range(a.rounds):
            for w in WORKERS:
                row = one_run(url, proc.pid, a.users, a.seconds, w)
                row["round"] = i + 1
                rows.append(row)
                extra = (f", {row['rollout_stats_bytes_per_s_per_worker']:,.0f} B/s per worker in rollout_stats "
                         f"({row['rollout_stats_bytes_per_message']:,.0f} B/message)") if w else ""
                print(f"  round {i + 1}, workers {w}: {row['rps']:,.0f} req/s; CPU cores: load {row['load_cpu_cores']} "
                      f"({row['load_cpu_us_per_request']:,.0f} µs/request), "
                      f"target {row['target_cpu_cores']}{extra}", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    med = {w: statistics.median(r["rps"] for r in rows if r["workers"] == w) for w in WORKERS}
    summary: dict[str, Any] = {
        "cpus": os.cpu_count(), "users": a.users, "seconds": a.seconds, "rounds": a.rounds,
        "median_rps": {str(w): med[w] for w in WORKERS},
        "ratio_to_inprocess": {str(w): round(med[w] / med[0], 3) for w in WORKERS if w},
        "median_load_cpu_cores": {str(w): statistics.median(r["load_cpu_cores"] for r in rows if r["workers"] == w) for w in WORKERS},
        "median_load_cpu_us_per_request": {str(w): statistics.median(r["load_cpu_us_per_request"] for r in rows if r["workers"] == w) for w in WORKERS},
        "median_target_cpu_cores": {str(w): statistics.median(r["target_cpu_cores"] for r in rows if r["workers"] == w) for w in WORKERS},
    }
    for key in ("rollout_stats_bytes_per_s_per_worker", "rollout_stats_bytes_per_message", "rollout_stats_messages_per_s_per_worker",
                "locust_stats_bytes_per_s_per_worker", "all_messages_bytes_per_s_per_worker"):
        summary[key] = {str(w): statistics.median(r[key] for r in rows if r["workers"] == w) for w in WORKERS if w}
    print(json.dumps(summary, indent=2))
    save("workers", {**summary, "runs": rows})


if __name__ == "__main__":
    main()

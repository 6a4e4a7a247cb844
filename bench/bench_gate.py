"""`rollout gate` as a load generator: against plain Locust, across worker processes, and over time.

1. throughput: requests/s of `rollout gate` (the real CLI: recorder on every request, gates judged every
   second) against plain `locust --headless`, same no-think-time locustfile (bench/nowait.py), same users,
   same target; both pinned to the same core (the sample service pinned to the other), rounds alternating.
   Target: ratio >= 0.9.
2. scaling: `rollout gate --workers 0` (in-process), `--workers 1` and `--workers 2`, same users, no pinning
   (the service shares the 2 cores: that is the machine's real ceiling), rounds alternating; once with
   FastHttpUser (bench/nowait.py: the target saturates first) and once with HttpUser (`scaling_http`: the
   load generator saturates first, so extra worker processes can show).
3. memory: peak RSS of one long `rollout gate` at its maximum rate (no think time), sampled every second
   with psutil (the CLI process and, with workers, its children); flat = no per-request storage.
   Default 120 s (the issue asks for 10 minutes: `--rss-seconds 600`).

    python bench/bench_gate.py [--rounds 3] [--seconds 10] [--users 20] [--rss-seconds 120]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_load import plain
from bench.common import ROOT, free_port, save

LOCUSTFILE = ROOT / "bench" / "nowait.py"
PIN = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if (PIN and cpu is not None) else cmd


def start_service(cpu: int | None) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen(pinned(cpu, [sys.executable, str(ROOT / "examples" / "service.py"), "--port", str(port), "--version", "v1",
                                         "--latency", "0ms"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the sample service did not start")


# A load generator that is CPU-bound long before the sample service is: Locust's HttpUser (requests) makes
# ~1.8k req/s on a core here against FastHttpUser's ~6k, so worker processes have something to scale.
HTTPUSER_LOCUSTFILE = """
from locust import HttpUser, constant, task

class NoWaitHttp(HttpUser):
    wait_time = constant(0)

    @task
    def ask(self):
        self.client.get("/api/answer", name="/api/answer")
"""


def gate_cmd(host: str, users: int, seconds: float, out: Path, workers: int = 0, locustfile: Path = LOCUSTFILE) -> list[str]:
    return [sys.executable, "-m", "rollout", "gate", "--quiet", "--host", host, "--locustfile", str(locustfile), "--users", str(users),
            "--duration", f"{seconds:g}s", "--gate", "errors<50%", "--gate", "p99<10s", "--min-requests", "1", "--workers", str(workers),
            "--json", str(out)]


def gate_rps(host: str, users: int, seconds: float, workers: int = 0, cpu: int | None = None, locustfile: Path = LOCUSTFILE) -> float:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.json"
        subprocess.run(pinned(cpu, gate_cmd(host, users, seconds, out, workers, locustfile)), check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "GITHUB_STEP_SUMMARY": ""})
        st = json.loads(out.read_text())["stages"][0]["stats"]
        return st["all"]["requests"] / st["elapsed_s"]


def plain_rps(host: str, users: int, seconds: float, cpu: int | None) -> float:
    if PIN and cpu is not None:  # bench_load.plain, on one core
        os.sched_setaffinity(0, {cpu})
        try:
            return plain(host, users, seconds)
        finally:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return plain(host, users, seconds)


def throughput(rounds: int, seconds: float, users: int) -> dict:
    proc, host = start_service(cpu=0)
    rows = []
    try:
        for i in range(rounds):
            p = plain_rps(host, users, seconds, cpu=1)
            t = gate_rps(host, users, seconds, cpu=1)
            rows.append({"round": i + 1, "locust_rps": round(p, 1), "gate_rps": round(t, 1), "ratio": round(t / p, 3),
                         "loadavg_1m": round(os.getloadavg()[0], 2)})  # other work on the machine shows here
            print(f"  round {i + 1}: locust --headless {p:,.0f} req/s, rollout gate {t:,.0f} req/s, ratio {t / p:.2f}", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    return {"pinned": PIN, "users": users, "seconds": seconds, "rounds": rows,
            "median_ratio": statistics.median(r["ratio"] for r in rows),
            "median_locust_rps": statistics.median(r["locust_rps"] for r in rows),
            "median_gate_rps": statistics.median(r["gate_rps"] for r in rows)}


def scaling(rounds: int, seconds: float, users: int, locustfile: Path = LOCUSTFILE) -> dict:
    proc, host = start_service(cpu=None)
    rows = []
    try:
        for i in range(rounds):
            row = {"round": i + 1, "loadavg_1m": round(os.getloadavg()[0], 2)}
            for w in (0, 1, 2):
                row[f"workers_{w}_rps"] = round(gate_rps(host, users, seconds, workers=w, locustfile=locustfile), 1)
            rows.append(row)
            print(f"  round {i + 1}: in-process {row['workers_0_rps']:,.0f}, 1 worker {row['workers_1_rps']:,.0f}, "
                  f"2 workers {row['workers_2_rps']:,.0f} req/s", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    med = {f"median_workers_{w}_rps": statistics.median(r[f"workers_{w}_rps"] for r in rows) for w in (0, 1, 2)}
    return {"locustfile": locustfile.name, "users": users, "seconds": seconds, "rounds": rows, **med,
            "scaling_2_vs_1": round(med["median_workers_2_rps"] / med["median_workers_1_rps"], 3),
            "scaling_2_vs_inprocess": round(med["median_workers_2_rps"] / med["median_workers_0_rps"], 3)}


def memory(seconds: float, users: int, workers: int = 0) -> dict:
    import psutil

    proc, host = start_service(cpu=0)
    samples = []
    try:
        with tempfile.TemporaryDirectory() as d:
            p = subprocess.Popen(pinned(1, gate_cmd(host, users, seconds, Path(d) / "r.json", workers)), cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "GITHUB_STEP_SUMMARY": ""})
            me = psutil.Process(p.pid)
            t0 = time.monotonic()
            while p.poll() is None:
                try:
                    rss = me.memory_info().rss
                except psutil.Error:
                    break
                samples.append((round(time.monotonic() - t0, 1), rss))
                time.sleep(1.0)
            p.wait()
            st = json.loads((Path(d) / "r.json").read_text())["stages"][0]["stats"]
    finally:
        proc.terminate()
        proc.wait()
    mb = [(t, r / 2**20) for t, r in samples]
    steady = [m for t, m in mb if t >= 10]  # after imports, spawn and warm-up
    first, last = (steady[: max(1, len(steady) // 10)], steady[-max(1, len(steady) // 10):]) if steady else ([0], [0])
    out = {"seconds": seconds, "users": users, "requests": st["all"]["requests"], "rps": round(st["all"]["requests"] / st["elapsed_s"], 1),
           "rss_mb_at_10s": round(statistics.median(first), 1), "rss_mb_at_end": round(statistics.median(last), 1),
           "rss_mb_peak": round(max(m for _, m in mb), 1),
           "growth_mb": round(statistics.median(last) - statistics.median(first), 2),
           "samples_mb": [(t, round(m, 1)) for t, m in mb[:: max(1, len(mb) // 40)]]}
    print(f"  {out['requests']:,} requests in {seconds:g}s ({out['rps']:,.0f} req/s): RSS {out['rss_mb_at_10s']} MB at 10 s, "
          f"{out['rss_mb_at_end']} MB at the end (growth {out['growth_mb']} MB), peak {out['rss_mb_peak']} MB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--rss-seconds", type=float, default=120)
    ap.add_argument("--only", choices=["throughput", "scaling", "scaling_http", "memory"], default=None)
    a = ap.parse_args()
    result: dict = {"cpus": os.cpu_count()}
    if a.only in (None, "throughput"):
        print("throughput: rollout gate vs locust --headless (one core each, service on the other)", flush=True)
        result["throughput"] = throughput(a.rounds, a.seconds, a.users)
    if a.only in (None, "scaling"):
        print("scaling: --workers 0 (in-process) / 1 / 2", flush=True)
        result["scaling"] = scaling(a.rounds, a.seconds, a.users * 2)
    if a.only in (None, "scaling_http"):
        print("scaling, CPU-bound users (HttpUser): --workers 0 / 1 / 2", flush=True)
        with tempfile.TemporaryDirectory() as d:
            lf = Path(d) / "nowait_http.py"
            lf.write_text(HTTPUSER_LOCUSTFILE)
            result["scaling_http"] = scaling(a.rounds, a.seconds, a.users * 2, locustfile=lf)
    if a.only in (None, "memory"):
        print(f"memory: one {a.rss_seconds:g} s gate at its maximum rate", flush=True)
        result["memory"] = memory(a.rss_seconds, a.users)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("rounds", "samples_mb")} if isinstance(v, dict) else v
                      for k, v in result.items()}, indent=2))
    save("gate" if a.only is None else f"gate_{a.only}", result)


if __name__ == "__main__":
    main()

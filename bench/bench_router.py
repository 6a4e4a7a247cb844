"""How much does the local backend's router cost? Direct vs through the router, same run.

    .venv/bin/python bench/bench_router.py                 # ~2 minutes
    .venv/bin/python bench/bench_router.py --rounds 5 --phase 5

Setup, all on 127.0.0.1: one sample service (examples/service.py), one router
(rollout.backends.local.router) in front of it with all traffic to stable, and
a load generator in its own process: N closed-loop users on gevent +
geventhttpclient (the HTTP client of Locust's FastHttpUser), each with its own
keep-alive connection, no think time, bounded by time and by request count.

Each scenario alternates phases, direct then router, for a few rounds, so
both see the same machine state; a phase is `--warmup` seconds unmeasured then
`--phase` seconds measured. Scenarios:

  realistic   service latency 20 ms (lognormal, sigma 0.3), 50 users: what a
              rollout stage looks like; the router's cost shows as added latency
  saturation  service latency 0, 32 users: everything CPU-bound; the router's
              cost shows as lost throughput and as CPU time per request

Figures per phase: requests/s, p50/p99 latency, errors, and the CPU time per
request of the service and (router phases) of the router process, from /proc
(user + system, so the kernel's loopback TCP work is included). Prints a table and
writes bench/results/router.json.

`--loadgen ...` is the load generator's own entry point (used internally).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICE = REPO / "examples" / "service.py"
RESULTS = REPO / "bench" / "results" / "router.json"
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

SCENARIOS = {
    "realistic": {"latency": "20ms", "jitter": 0.3, "users": 50},
    "saturation": {"latency": "0ms", "jitter": 0.0, "users": 32},
}
MAX_REQUESTS_PER_PHASE = 400_000


# --------------------------------------------------------------------------- load generator (own process)


def loadgen(url: str, users: int, warmup: float, duration: float, max_requests: int) -> dict:
    from gevent import joinall, spawn
    from geventhttpclient import HTTPClient, URL

    target = URL(url)
    path = target.request_uri
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration
    latencies: list[float] = []
    errors = [0]
    requests = [0]

    def user() -> None:
        client = HTTPClient(
            target.host, target.port, concurrency=1, connection_timeout=10, network_timeout=30
        )
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at or requests[0] >= max_requests:
                    return
                try:
                    response = client.get(path)
                    response.read()
                    ok = response.status_code == 200
                    response.release()
                except Exception:
                    ok = False
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    requests[0] += 1
                    latencies.append(t1 - t0)
                    if not ok:
                        errors[0] += 1
        finally:
            client.close()

    joinall([spawn(user) for _ in range(users)], timeout=warmup + duration + 60)
    elapsed = min(time.perf_counter(), stop_at + 30) - measure_from
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p * n))] * 1000 if n else float("nan")

    return {
        "requests": n,
        "errors": errors[0],
        "rps": n / elapsed if elapsed > 0 else 0.0,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(latencies) * 1000 if n else float("nan"),
    }


# --------------------------------------------------------------------------- orchestration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, path: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(12).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"port {port} did not answer within {timeout}s")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_phase(url: str, users: int, warmup: float, duration: float) -> dict:
    cmd = [sys.executable, __file__, "--loadgen", url, "--users", str(users)]
    cmd += ["--warmup", str(warmup), "--phase", str(duration), "--max-requests", str(MAX_REQUESTS_PER_PHASE)]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=warmup + duration + 120)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed: {out.stderr}")
    return json.loads(out.stdout)


def run_scenario(name: str, spec: dict, rounds: int, warmup: float, duration: float, tmp: Path) -> dict:
    procs: list[subprocess.Popen] = []
    try:
        sport = free_port()
        service = subprocess.Popen(
            [sys.executable, str(SERVICE), "--port", str(sport), "--version", "v1", "--latency", spec["latency"]]
            + ["--jitter", str(spec["jitter"]), "--error-rate", "0%", "--seed", "1"],
            env=ENV,
        )
        procs.append(service)
        config = tmp / f"{name}.router.json"
        ready = tmp / f"{name}.ready.json"
        config.write_text(json.dumps({"stable": {"version": "v1", "port": sport}, "canary": None, "weight": 0}))
        router = subprocess.Popen(
            [sys.executable, "-m", "rollout.backends.local.router", "--port", "0", "--admin-port", "0"]
            + ["--config", str(config), "--ready-file", str(ready)],
            cwd=REPO,
            env=ENV,
        )
        procs.append(router)
        wait_http(sport, "/healthz", service)
        deadline = time.monotonic() + 20
        while not ready.exists():
            if router.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the router did not start")
            time.sleep(0.05)
        rport = json.loads(ready.read_text())["port"]
        wait_http(rport, "/healthz", router)

        path = "/api/answer?q=bench"
        phases: dict[str, list[dict]] = {"direct": [], "router": []}
        for r in range(rounds):
            for kind, port in (("direct", sport), ("router", rport)):
                cpu0, scpu0 = cpu_seconds(router.pid), cpu_seconds(service.pid)
                res = run_phase(f"http://127.0.0.1:{port}{path}", spec["users"], warmup, duration)
                cpu, scpu = cpu_seconds(router.pid) - cpu0, cpu_seconds(service.pid) - scpu0
                # CPU time over warmup + phase, per request (warmup requests estimated at the same rate)
                total = res["requests"] * (warmup + duration) / duration
                res["service_cpu_us_per_req"] = scpu / total * 1e6 if total else float("nan")
                if kind == "router":
                    res["router_cpu_us_per_req"] = cpu / total * 1e6 if total else float("nan")
                res["round"] = r + 1
                phases[kind].append(res)
                print(
                    f"  {name:<10} round {r + 1} {kind:<6} {res['rps']:8.0f} req/s  "
                    f"p50 {res['p50_ms']:6.2f} ms  p99 {res['p99_ms']:6.2f} ms  errors {res['errors']}",
                    flush=True,
                )
        return {"service": spec, "users": spec["users"], "phases": phases, "summary": summarize(phases)}
    finally:
        for proc in reversed(procs):
            stop(proc)


def summarize(phases: dict[str, list[dict]]) -> dict:
    def med(kind: str, key: str) -> float:
        return statistics.median(p[key] for p in phases[kind])

    out = {}
    for kind in ("direct", "router"):
        out[kind] = {k: round(med(kind, k), 3) for k in ("rps", "p50_ms", "p99_ms")}
        out[kind]["errors"] = sum(p["errors"] for p in phases[kind])
        out[kind]["requests"] = sum(p["requests"] for p in phases[kind])
    out["router"]["cpu_us_per_req"] = round(med("router", "router_cpu_us_per_req"), 1)
    for kind in ("direct", "router"):
        out[kind]["service_cpu_us_per_req"] = round(med(kind, "service_cpu_us_per_req"), 1)
    d, r = out["direct"], out["router"]
    out["overhead"] = {
        "rps_change_pct": round((r["rps"] / d["rps"] - 1) * 100, 1) if d["rps"] else None,
        "p50_added_ms": round(r["p50_ms"] - d["p50_ms"], 3),
        "p99_added_ms": round(r["p99_ms"] - d["p99_ms"], 3),
    }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--phase", type=float, default=5.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), action="append", help="default: all")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--loadgen", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--users", type=int, default=50, help=argparse.SUPPRESS)
    p.add_argument("--max-requests", type=int, default=MAX_REQUESTS_PER_PHASE, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.loadgen:
        print(json.dumps(loadgen(args.loadgen, args.users, args.warmup, args.phase, args.max_requests)))
        return 0

    names = args.scenario or list(SCENARIOS)
    results = {
        "bench": "router",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_generator": "gevent + geventhttpclient closed loop, one keep-alive connection per user, no think time",
        "rounds": args.rounds,
        "phase_s": args.phase,
        "warmup_s": args.warmup,
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        for name in names:
            print(f"{name}: {SCENARIOS[name]}", flush=True)
            results["scenarios"][name] = run_scenario(
                name, SCENARIOS[name], args.rounds, args.warmup, args.phase, Path(tmp)
            )

    print()
    header = (
        f"{'scenario':<11}{'path':<8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'router CPU/req':>16}{'service CPU/req':>17}"
    )
    print(header)
    print("-" * len(header))
    for name, res in results["scenarios"].items():
        s = res["summary"]
        for kind in ("direct", "router"):
            row = s[kind]
            cpu = f"{row['cpu_us_per_req']:.0f} µs" if kind == "router" else ""
            print(
                f"{name:<11}{kind:<8}{row['rps']:>9.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
                f"{row['errors']:>8}{cpu:>16}{row['service_cpu_us_per_req']:>14.0f} µs"
            )
        o = s["overhead"]
        print(
            f"{'':<11}{'Δ':<8}{o['rps_change_pct']:>8.1f}%{o['p50_added_ms']:>+9.2f}{o['p99_added_ms']:>+9.2f}"
        )
    print("(medians over rounds)")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.output.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp_out, args.output)
    print(f"wrote {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

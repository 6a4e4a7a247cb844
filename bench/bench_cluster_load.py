"""In-cluster load (`load.runner: kubernetes`): how old the gates' per-version numbers are, and what they cost on the wire.

The fake API server with its kubelet (rollout.testing.kubelet) runs the load pods as local processes from the
templates' command lines (`rollout load-master`, N x `rollout load-worker`); the CLI side (`ClusterLoad`, in this
process) reads the master's statistics through the API server's service proxy once a second, as `rollout run`
does. The target is a counting server in this process (answers alternately as v1 and v2).

Measured per tick: the **lag** — how many seconds of traffic the gates had not seen yet when they judged
(requests the server had answered minus requests in the statistics, over the request rate); the size of each
`/rollout/stats` answer (compact JSON, the timeline sent from where the CLI left off) — the CLI's traffic through
the API server. Baseline in the same script, alternating rounds: local workers (`load.workers: N`, the master in
this process), where the same deltas arrive without the proxy poll. Every load goes to 127.0.0.1, bounded in time.

    python bench/bench_cluster_load.py [--rounds 2] [--seconds 12] [--workers 2]
"""

from __future__ import annotations

import rollout.load.runner  # noqa: F401,I001  (first: locust must patch before ssl is imported)

import argparse
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save  # noqa: E402

LOCUSTFILE = """
from locust import HttpUser, constant, task

class U(HttpUser):
    wait_time = constant(0.02)

    @task
    def t(self):
        self.client.get("/api")
"""


class Counting(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.served = 0


class Handler(BaseHTTPRequestHandler):
    server: Counting
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        with self.server.lock:
            self.server.served += 1
            v = "v1" if self.server.served % 2 else "v2"
        self.send_response(200)
        self.send_header("X-Version", v)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a: object) -> None:
        pass


def one_round(kind: str, srv: Counting, lf: Path, seconds: float, workers: int, fake: Any = None, kc: str = "") -> dict[str, Any]:
    from rollout.load.runner import LoadSpec

    spec = LoadSpec(locustfile=lf, host=f"http://127.0.0.1:{srv.server_address[1]}", users=8, spawn_rate=8, duration=seconds,
                    roles={"v1": "stable", "v2": "canary"}, workers=workers)
    lags: list[float] = []
    rates: list[float] = []
    prev = [0, time.monotonic()]

    def on_tick(stats: Any) -> bool:
        now = time.monotonic()
        with srv.lock:
            served = srv.served
        rate = (served - prev[0]) / max(1e-6, now - prev[1])
        prev[0], prev[1] = served, now
        if stats.requests > 0 and rate > 0 and stats.elapsed > 2:
            lags.append(max(0.0, served - stats.requests) / rate)
            rates.append(rate)
        return False

    sizes: list[int] = []
    if kind == "cluster":
        from rollout.load.cluster import ClusterLoad
        from rollout.plan.model import Load

        settings = Load.Cluster(kubeconfig=kc, namespace="bench", workers=workers, ready_timeout=60)
        runner = ClusterLoad(settings)
        t0 = time.monotonic()
        try:
            real_master = None

            def spy(*a: Any, **kw: Any) -> Any:
                out = real_master(*a, **kw)
                if a[1].startswith("rollout/stats"):
                    import json

                    sizes.append(len(json.dumps(out, separators=(",", ":"))))
                return out

            orig_ensure = runner._ensure

            def ensure(*a: Any, **kw: Any) -> Any:
                nonlocal real_master
                cl = orig_ensure(*a, **kw)
                if real_master is None:
                    real_master = cl.master
                    cl.master = spy
                return cl

            runner._ensure = ensure  # type: ignore[method-assign]
            stats = runner(spec, on_tick)
        finally:
            runner.close()
        took = time.monotonic() - t0
    else:
        from rollout.load.distributed import run_load_distributed
        from rollout.load.session import close_all

        t0 = time.monotonic()
        try:
            stats = run_load_distributed(spec, on_tick, workers)
        finally:
            close_all()
        took = time.monotonic() - t0
    with srv.lock:
        served = srv.served
    return {"kind": kind, "lag_median_s": statistics.median(lags) if lags else None, "lag_max_s": max(lags) if lags else None,
            "rps": statistics.median(rates) if rates else None, "requests": stats.requests, "served": served,
            "stats_bytes_median": statistics.median(sizes) if sizes else None, "stats_gets": len(sizes), "took_s": round(took, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=12)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from rollout.testing.apiserver import FakeApiServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    lf = tmp / "load.py"
    lf.write_text(LOCUSTFILE)
    results = []
    with FakeApiServer(controller_delay=0, kubelet=tmp / "pods") as fake:
        kc = fake.write_kubeconfig(namespace="bench")
        for r in range(args.rounds):
            for kind in ("local-workers", "cluster") if r % 2 == 0 else ("cluster", "local-workers"):
                srv = Counting()
                t = threading.Thread(target=srv.serve_forever, daemon=True)
                t.start()
                try:
                    res = one_round(kind, srv, lf, args.seconds, args.workers, fake, kc)
                finally:
                    srv.shutdown()
                    srv.server_close()
                res["round"] = r
                print(res, flush=True)
                results.append(res)
    for kind in ("local-workers", "cluster"):
        rs = [x for x in results if x["kind"] == kind and x["lag_median_s"] is not None]
        if rs:
            print(f"{kind}: lag median {statistics.median(x['lag_median_s'] for x in rs):.2f}s, max {max(x['lag_max_s'] for x in rs):.2f}s; "
                  f"rps {statistics.median(x['rps'] for x in rs):.0f}; stats answer {statistics.median(x['stats_bytes_median'] or 0 for x in rs):.0f} B")
    save("bench_cluster_load", {"workers": args.workers, "seconds": args.seconds, "rounds": results})


if __name__ == "__main__":
    main()

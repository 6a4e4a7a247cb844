"""Kubernetes: how fast a running driver picks up an operator's request (issue #8, "honoured within a second").

The driver (`rollout run`, a real process with real Locust load through the test gateway) watches its request
mailbox, ConfigMap `rollout-<plan>-requests`, while a stage's load runs, and its load loop asks every 0.1 s
whether the watch saw a change. Before, it read the mailbox once per 1 s load tick. This script measures both,
in alternating trials, against the fake API server (in this process, so its request log gives the server-side
time of every request):

  * request  — the bench posts a `revert` straight into the mailbox (the operator's read + write; the clock
               starts when that write has landed at the server, so Python start-up of an operator's command is
               not in it: bench_revert_live.py measures the whole command);
  * acknowledged — the driver's claim (its first write to the mailbox after the request) has landed;
  * stable   — the driver's patch of the HTTPRoute putting all traffic on stable has landed (the router);
  * done     — the driver's final answer (done) has landed;
  * last canary answer — the last answer from v2 a user of the gateway got (a probe, one request every ~10 ms).

Each trial waits a random 0–1 s after the stage started before posting, so the request falls anywhere in the
load's 1 s tick. Baseline ("tick"): the same driver with the watch switched off in its process (KubeMailbox
without `watching`), i.e. the read at each load tick alone.

    .venv/bin/python bench/bench_request_pickup.py [--trials 20]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_revert_live import Probe  # noqa: E402
from bench.common import ROOT, save, start_service  # noqa: E402
from rollout.backends.kubernetes.client import connect  # noqa: E402
from rollout.backends.kubernetes.mailbox import KubeMailbox  # noqa: E402
from rollout.engine import requests as rq  # noqa: E402
from rollout.testing.apiserver import FakeApiServer  # noqa: E402
from rollout.testing.gateway import ClusterGateway  # noqa: E402

NS = "shop"
MAILBOX = "rollout-answer-requests"
# The driver with the watch switched off: the baseline, the read at every 1 s load tick alone.
TICK_ONLY = (
    "import sys, locust  # locust before anything importing ssl (see rollout/cli.py)\n"
    "from rollout.backends.kubernetes import mailbox; mailbox.KubeMailbox.watching = None\n"
    "from rollout.cli import main; sys.argv[0] = 'rollout'; sys.exit(main())\n"
)


def write_plan(d: Path, entry: str) -> Path:
    (d / "load.py").write_text("from locust import FastHttpUser, constant, task\n\nclass U(FastHttpUser):\n    wait_time = constant(0.02)\n\n"
                               "    @task\n    def t(self):\n        self.client.get('/api/answer?q=x')\n")
    data = {
        "name": "answer", "owner": {"name": "bench", "contact": "bench@example.com"},
        "target": {"backend": "kubernetes", "namespace": NS, "stable": "v1",
                   "versions": {v: {"image": f"registry.example.com/answer:{v[1]}.0"} for v in ("v1", "v2")},
                   "deployments": {"stable": "answer", "canary": "answer-canary"},
                   "services": {"stable": "answer-stable", "canary": "answer-canary"},
                   "router": "gateway-api", "httproute": "answer", "port": 8080, "progress_deadline": "20s", "entry_url": entry},
        "load": {"locustfile": "load.py", "users": 4, "spawn_rate": 4},
        "gates": {},
        "stages": [{"name": "ten", "weight": "10%", "duration": "120s"}],
    }
    path = d / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def stage_running(fake: FakeApiServer) -> bool:
    import json

    cm = fake.get("configmaps", NS, "rollout-answer")
    if not cm:
        return False
    st = json.loads(cm["data"]["state.json"])
    return bool(st["stages"]) and st["stages"][-1]["status"] == "running" and st["split"]["weight"] > 0


def landed(rec: Any) -> float:
    return float(rec.started + rec.duration)


def trial(fake: FakeApiServer, env: dict[str, str], plan: Path, gw_url: str, mode: str, operator: KubeMailbox, rng: random.Random) -> dict[str, Any]:
    cmd = [sys.executable, "-c", TICK_ONLY] if mode == "tick" else [sys.executable, "-m", "rollout"]
    driver = subprocess.Popen([*cmd, "run", str(plan), "--version", "v2"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    probe = None
    try:
        deadline = time.monotonic() + 90
        while not stage_running(fake):
            if driver.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stage did not start: {driver.stderr.read() if driver.stderr else ''}")
            time.sleep(0.05)
        probe = Probe(gw_url)
        probe.wait_for("v2")
        time.sleep(rng.uniform(0.0, 1.0))  # anywhere in the load's 1 s tick
        fake.reset_requests()
        req = rq.Request.new("revert", "bench@pager", "bench", 30)
        t0_wall = time.time()
        rq.post(operator, req)
        t_req = time.monotonic()
        driver.wait(timeout=60)
        assert driver.returncode == 1, driver.stderr.read() if driver.stderr else ""
        time.sleep(0.3)
    finally:
        if probe is not None:
            probe.stop()
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    log = [r for r in fake.requests if r.started + r.duration > t_req and r.status < 400]
    box_writes = [r for r in log if r.verb == "update" and r.resource == "configmaps" and r.name == MAILBOX]
    patches = [r for r in log if r.verb == "patch" and r.resource == "httproutes"]
    ack = operator.read().ack_of(req.id)
    assert ack is not None and ack.outcome == rq.DONE, ack
    assert patches, "the driver never patched the route"
    canary_after = [at - t0_wall for at, v in (probe.seen if probe else []) if at >= t0_wall and v == "v2"]
    return {"mode": mode, "acknowledged_s": round(landed(box_writes[0]) - t_req, 3), "stable_s": round(landed(patches[0]) - t_req, 3),
            "done_s": round(landed(box_writes[-1]) - t_req, 3),
            "last_canary_answer_s": round(max(canary_after), 3) if canary_after else 0.0}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"trials": len(rows)}
    for key in ("acknowledged_s", "stable_s", "done_s", "last_canary_answer_s"):
        xs = sorted(r[key] for r in rows)
        out[key] = {"median": round(statistics.median(xs), 3), "p90": round(xs[min(len(xs) - 1, int(0.9 * len(xs)))], 3),
                    "max": round(max(xs), 3), "min": round(min(xs), 3)}
    return out


def reads_per_second(fake: FakeApiServer, env: dict[str, str], plan: Path, mode: str, seconds: float = 6.0) -> dict[str, float]:
    """API requests per second the driver spends on its mailbox while a stage runs and nobody asks anything."""
    cmd = [sys.executable, "-c", TICK_ONLY] if mode == "tick" else [sys.executable, "-m", "rollout"]
    driver = subprocess.Popen([*cmd, "run", str(plan), "--version", "v2"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not stage_running(fake):
            assert driver.poll() is None and time.monotonic() < deadline, "the stage did not start"
            time.sleep(0.05)
        time.sleep(1.0)
        fake.reset_requests()
        time.sleep(seconds)
        log = [r for r in fake.requests if r.name == MAILBOX]
        return {"gets_per_s": round(sum(r.verb == "get" for r in log) / seconds, 2)}  # (a watch is logged when it ends: one per 60 s)
    finally:
        operator_kc = env["KUBECONFIG"]
        subprocess.run([sys.executable, "-m", "rollout", "revert", str(plan), "--reason", "bench"], cwd=ROOT,
                       env={**env, "KUBECONFIG": operator_kc}, capture_output=True, timeout=60)
        driver.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="trials per mode (watch, tick), alternating")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    results: dict[str, Any] = {"trials": args.trials, "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()}
    procs = []
    with FakeApiServer(controller_delay=0) as fake, tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for f in ("app.yaml", "httproute.yaml"):
            for doc in yaml.safe_load_all((ROOT / "manifests" / f).read_text()):
                fake.create(doc)
        gw = None
        try:
            ports = {}
            for v in ("v1", "v2"):
                proc, port = start_service(v, latency="3ms")
                procs.append(proc)
                ports[v] = port
            gw = ClusterGateway(fake.write_kubeconfig(str(d / "gateway-kubeconfig"), namespace=NS), NS, route_name="answer", backends={"answer-stable": ports["v1"], "answer-canary": ports["v2"]}).start()
            plan = write_plan(d, gw.url)
            driver_kc = fake.write_kubeconfig(str(d / "driver-kubeconfig"), namespace=NS)
            env = {**os.environ, "KUBECONFIG": driver_kc, "ROLLOUT_ACTOR": "ci-job", "PYTHONUNBUFFERED": "1"}
            operator = KubeMailbox(connect(kubeconfig=fake.write_kubeconfig(str(d / "operator-kubeconfig"), namespace=NS)), "answer")
            rows: list[dict[str, Any]] = []
            for i in range(args.trials):
                for mode in (("watch", "tick") if i % 2 == 0 else ("tick", "watch")):
                    row = trial(fake, env, plan, gw.url, mode, operator, rng)
                    print(f"trial {i + 1} {mode}: {row}", flush=True)
                    rows.append(row)
            results["watch"] = summary([r for r in rows if r["mode"] == "watch"])
            results["tick"] = summary([r for r in rows if r["mode"] == "tick"])
            results["idle_mailbox_requests"] = {mode: reads_per_second(fake, env, plan, mode) for mode in ("watch", "tick")}
            results["rows"] = rows
        finally:
            if gw is not None:
                gw.stop()
            for p in procs:
                p.terminate()
                p.wait(timeout=10)
    results["loadavg_at_end"] = os.getloadavg()
    w, t = results["watch"], results["tick"]
    results["ratio_watch_over_tick_stable_median"] = round(w["stable_s"]["median"] / t["stable_s"]["median"], 2)
    for key in ("acknowledged_s", "stable_s", "done_s", "last_canary_answer_s"):
        print(f"{key:22} watch median {w[key]['median']:.3f} p90 {w[key]['p90']:.3f} max {w[key]['max']:.3f} | "
              f"tick median {t[key]['median']:.3f} p90 {t[key]['p90']:.3f} max {t[key]['max']:.3f}")
    print("idle mailbox requests per second:", results["idle_mailbox_requests"])
    print(f"saved to {save('request_pickup', results)}")


if __name__ == "__main__":
    main()

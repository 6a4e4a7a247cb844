"""Time from the operator's `rollout revert` (command start) to all traffic on stable, while `rollout run` drives.

Issue #8: revert must work whatever is running. Each round starts a real `rollout run` (one stage at 10 %
for 120 s, real Locust load), waits until a probe through the entry point has seen the canary answer, then
runs `rollout revert` as a second process and measures, from that command's start:

  * request    — the request is in the mailbox (the operator's process started and found the driver);
  * acted      — the driver recorded the revert (it read the mailbox at a load tick and stopped the load);
  * stable     — the state records all traffic on stable (the router / HTTPRoute read back);
  * last canary answer — the last request a "user" (the probe, one request every ~10 ms) got from the canary.

Baseline in the same script: the same revert when no driver runs (after `rollout advance`: traffic at 10 %,
lock free), so the ratio says what the live path adds (the driver's tick, stopping Locust) over the command's
own cost (starting Python, the plan, the store; on Kubernetes the client and the API calls).

Both backends: local (processes behind the asyncio router) and fake Kubernetes (`rollout.testing.apiserver`
in its own process, `rollout.testing.gateway` carrying the traffic to real service processes).

    .venv/bin/python bench/bench_revert_live.py [--rounds 10] [--backend local|kubernetes|both]
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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, save  # noqa: E402

SERVICE = ROOT / "examples" / "service.py"
LIVE_STAGES = [{"name": "ten", "weight": 10, "duration": "120s"}]
DIRECT_STAGES = [{"name": "ten", "weight": 10, "duration": "1s"}, {"name": "rest", "weight": 50, "duration": "120s"}]


class Probe:
    """A user: one request at a time through the entry point, (wall time, version) of each answer."""

    def __init__(self, url: str) -> None:
        self.seen: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, args=(url,), daemon=True)
        self._t.start()

    def _loop(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=5, trust_env=False) as c:
            deadline = time.monotonic() + 600
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    v = c.get("/api/answer", params={"q": "x"}).headers.get("x-version", "?")
                except httpx.HTTPError:
                    v = "error"
                self.seen.append((time.time(), v))
                time.sleep(0.01)

    def wait_for(self, version: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(v == version for _, v in self.seen):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the probe never saw {version}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=10)


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollout", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def wait_stage(read_state: Callable[[], dict[str, Any] | None], name: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = read_state()
        except Exception:
            st = None
        if st and st["stages"] and st["stages"][-1]["name"] == name and st["stages"][-1]["status"] == "running" and st["split"]["weight"] > 0:
            return st
        time.sleep(0.1)
    raise RuntimeError("the stage did not start")


def one_round(env: dict[str, str], plan: Path, entry: Callable[[dict[str, Any]], str], read_state: Callable[[], dict[str, Any] | None],
              read_mailbox: Callable[[], dict[str, Any]], live: bool) -> dict[str, Any]:
    if live:
        driver = subprocess.Popen([sys.executable, "-m", "rollout", "run", str(plan), "--version", "v2"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        st = wait_stage(read_state, "ten")
    else:
        driver = None
        r = cli(env, "advance", str(plan), "--version", "v2")
        assert r.returncode == 0, r.stdout + r.stderr
        st = read_state()
        assert st is not None
    probe = Probe(entry(st))
    try:
        probe.wait_for("v2")
        t0 = time.time()
        r = cli(env, "revert", str(plan), "--reason", "bench")
        t_cmd = time.time() - t0
        assert r.returncode == 0, r.stdout + r.stderr
        if driver is not None:
            driver.wait(timeout=60)
            assert driver.returncode == 1, driver.stderr.read() if driver.stderr else ""
        time.sleep(0.5)
    finally:
        probe.stop()
        if driver is not None and driver.poll() is None:
            driver.kill()
    st = read_state()
    assert st is not None and st["phase"] == "rolled-back"
    hist = [h for h in st["history"] if h["at"] >= t0]
    acted = next(h["at"] for h in hist if h["action"] == "revert") - t0
    stable = next(h["at"] for h in hist if h["action"] == "stable") - t0
    canary_after = [at - t0 for at, v in probe.seen if at >= t0 and v == "v2"]
    request = None
    if live:
        reqs = [q for q in read_mailbox().get("requests", []) if q["at"] >= t0]
        request = reqs[-1]["at"] - t0 if reqs else None
    return {"request_s": request, "acted_s": round(acted, 3), "stable_s": round(stable, 3), "command_s": round(t_cmd, 3),
            "last_canary_answer_s": round(max(canary_after), 3) if canary_after else 0.0,
            "probe_requests_after": len([1 for at, _ in probe.seen if at >= t0])}


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": len(rounds)}
    for key in ("request_s", "acted_s", "stable_s", "last_canary_answer_s", "command_s"):
        xs = [r[key] for r in rounds if r.get(key) is not None]
        if xs:
            out[key] = {"median": round(statistics.median(xs), 3), "max": round(max(xs), 3), "min": round(min(xs), 3)}
    return out


def local_plan(d: Path, stages: list[dict[str, Any]]) -> Path:
    p = {"name": "bench-revert", "owner": {"name": "bench", "contact": "bench@example.com"},
         "target": {"backend": "local", "stable": "v1", "versions": {
             v: {"command": f"{{python}} {SERVICE} --port {{port}} --version {v} --latency 5ms --error-rate 0%"} for v in ("v1", "v2")}},
         "load": {"locustfile": str(ROOT / "locustfiles" / "answer.py"), "users": 10, "spawn_rate": 10, "max_requests": 200000},
         "gates": {}, "stages": stages}
    path = d / "plan.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def bench_local(rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, stages in (("live", LIVE_STAGES), ("direct", DIRECT_STAGES)):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            plan = local_plan(d, stages)
            env = {**os.environ, "ROLLOUT_STATE_DIR": str(d / "state"), "ROLLOUT_ACTOR": "bench", "PYTHONUNBUFFERED": "1"}
            sdir = d / "state" / "bench-revert"

            def read_state() -> dict[str, Any] | None:
                try:
                    return json.loads((sdir / "state.json").read_text())  # type: ignore[no-any-return]
                except (OSError, ValueError):
                    return None

            def read_mailbox() -> dict[str, Any]:
                try:
                    return json.loads((sdir / "requests.json").read_text())  # type: ignore[no-any-return]
                except (OSError, ValueError):
                    return {}

            results = []
            try:
                for i in range(rounds):
                    res = one_round(env, plan, lambda st: f"http://127.0.0.1:{st['backend']['router']['port']}", read_state, read_mailbox,
                                    live=mode == "live")
                    print(f"local {mode} round {i + 1}: {res}", flush=True)
                    results.append(res)
            finally:
                cli(env, "down", str(plan))
            out[mode] = {"summary": summary(results), "rounds": results}
    return out


def bench_kubernetes(rounds: int) -> dict[str, Any]:
    from rollout.testing.gateway import ClusterGateway
    from tests.test_k8s_traffic_e2e import Fake, write_plan

    out: dict[str, Any] = {}
    for mode, stages in (("live", LIVE_STAGES), ("direct", DIRECT_STAGES)):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            fake = Fake(d)
            procs: list[subprocess.Popen[bytes]] = []
            gw = None
            try:
                ports = {}
                for v in ("v1", "v2"):
                    from bench.common import start_service

                    proc, port = start_service(v, latency="3ms")
                    procs.append(proc)
                    ports[v] = port
                gw = ClusterGateway(fake.kubeconfig, "shop", route_name="answer",
                                    backends={"answer-stable": ports["v1"], "answer-canary": ports["v2"]}).start()
                plan = write_plan(d, "gateway-api", gw.url, [{**s, "weight": f"{s['weight']}%"} for s in stages])
                data = yaml.safe_load(plan.read_text())
                data["gates"] = {}  # no gate: the 1 s stage of the direct mode passes instead of awaiting review
                plan.write_text(yaml.safe_dump(data, sort_keys=False))
                driver_kc, operator_kc = d / "driver-kubeconfig", d / "operator-kubeconfig"
                shutil.copy(fake.kubeconfig, driver_kc)
                shutil.copy(fake.kubeconfig, operator_kc)
                env = {**os.environ, "KUBECONFIG": str(operator_kc), "ROLLOUT_ACTOR": "bench", "PYTHONUNBUFFERED": "1"}

                def read_mailbox() -> dict[str, Any]:
                    try:
                        cm = fake.call("GET", "/api/v1/namespaces/shop/configmaps/rollout-answer-requests")
                        return json.loads(cm["data"]["requests.json"])  # type: ignore[no-any-return]
                    except Exception:
                        return {}

                def read_state() -> dict[str, Any] | None:
                    try:
                        return fake.state()
                    except Exception:
                        return None

                results = []
                for i in range(rounds):
                    res = one_round(env, plan, lambda st: gw.url, read_state, read_mailbox, live=mode == "live")  # type: ignore[union-attr]
                    print(f"kubernetes {mode} round {i + 1}: {res}", flush=True)
                    results.append(res)
                out[mode] = {"summary": summary(results), "rounds": results}
            finally:
                if gw is not None:
                    gw.stop()
                for p in procs:
                    p.terminate()
                    p.wait(timeout=10)
                fake.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--backend", choices=("local", "kubernetes", "both"), default="both")
    args = ap.parse_args()
    results: dict[str, Any] = {"rounds": args.rounds, "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()}
    if args.backend in ("local", "both"):
        results["local"] = bench_local(args.rounds)
    if args.backend in ("kubernetes", "both"):
        results["kubernetes"] = bench_kubernetes(args.rounds)
    results["loadavg_at_end"] = os.getloadavg()
    for backend in ("local", "kubernetes"):
        if backend not in results:
            continue
        live, direct = results[backend]["live"]["summary"], results[backend]["direct"]["summary"]
        results[backend]["ratio_live_over_direct_stable_median"] = round(live["stable_s"]["median"] / direct["stable_s"]["median"], 2)
        print(f"\n{backend}: revert → all traffic on stable (state), median/max: live {live['stable_s']['median']}/{live['stable_s']['max']} s, "
              f"direct {direct['stable_s']['median']}/{direct['stable_s']['max']} s; last canary answer seen by a user: "
              f"live {live['last_canary_answer_s']['median']}/{live['last_canary_answer_s']['max']} s")
    print(f"saved to {save('revert_live', results)}")


if __name__ == "__main__":
    main()

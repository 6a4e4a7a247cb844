"""Time from an operator's `rollout pause/resume --watch` to the running watch's acknowledgement (issue #11 (a)).

A real `rollout watch` process runs (`every: 5s`, its Prometheus deliberately unreachable: the watch is blind,
which keeps its checks short and never reverts — the mailbox handling is what is measured). Each round runs
`rollout pause PLAN --watch`, then `rollout resume PLAN --watch`, as separate processes, and records:

  * ack      — the watch's answer minus the request's post, both as recorded in the mailbox (what the watch adds);
  * command  — the requesting command's wall time, from its start to its exit (what the operator waits).

Baseline in the same script: the same commands when no watch runs (they change the watch record directly), so
the ratio says what asking a live watch adds over the command's own cost (Python, the plan, the store; on
Kubernetes the client and its API calls).

Both backends: local (`requests.json` beside the state, mtime looked at every 0.1 s) and fake Kubernetes
(`rollout.testing.apiserver` in its own process, ConfigMap rollout-<plan>-requests read every 0.25 s).

    .venv/bin/python bench/bench_watch_requests.py [--rounds 10] [--backend local|kubernetes|both]
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, save  # noqa: E402

WATCH = {"every": "5s", "false_alarm_every": "1h", "blind_after": "1h",
         "gates": {"errors": {"max": "1%", "prometheus": {"url": "http://127.0.0.1:9", "bad": "a", "total": "b", "timeout": "1s"}}}}


def cli(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "rollout", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return r, time.monotonic() - t


def rounds_of(env: dict[str, str], plan: Path, read_mailbox: Callable[[], dict[str, Any]], rounds: int, live: bool) -> list[dict[str, Any]]:
    out = []
    for i in range(rounds):
        res: dict[str, Any] = {}
        for verb in ("pause", "resume"):
            r, wall = cli(env, verb, str(plan), "--watch")
            if r.returncode != 0:
                raise RuntimeError(f"{verb}: {r.stdout}{r.stderr}")
            res[f"{verb}_command_s"] = round(wall, 3)
            if live:
                box = read_mailbox()
                req = [q for q in box["requests"] if q["verb"] == verb][-1]
                ack = next(a for a in box["acks"] if a["id"] == req["id"])
                assert ack["outcome"] == "done" and ack["by"].startswith("rollout watch"), ack
                res[f"{verb}_ack_s"] = round(ack["at"] - req["at"], 3)
        print(f"{'live' if live else 'direct'} round {i + 1}: {res}", flush=True)
        out.append(res)
    return out


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = sorted({k for r in results for k in r})
    return {k: {"median": round(statistics.median(r[k] for r in results), 3), "max": round(max(r[k] for r in results), 3)} for k in keys}


def with_watch(env: dict[str, str], plan: Path, read_record: Callable[[], dict[str, Any]], body: Callable[[], Any]) -> Any:
    watch = subprocess.Popen([sys.executable, "-m", "rollout", "watch", str(plan)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (read_record().get("watcher") or {}).get("beat"):
            if time.monotonic() > deadline or watch.poll() is not None:
                raise RuntimeError("the watch did not start")
            time.sleep(0.2)
        return body()
    finally:
        watch.terminate()
        watch.wait(30)


def bench_local(rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "load.py").write_text("")
        plan = d / "plan.yaml"
        plan.write_text(yaml.safe_dump({
            "name": "watched", "owner": {"name": "Bench", "contact": "bench@example.com"},
            "target": {"backend": "local", "stable": "v1", "versions": {"v1": {"command": "{python} -c pass --port {port}"}}},
            "load": {"locustfile": "load.py", "users": 1}, "gates": {"errors": {"metric": "error_rate", "max": "5%"}},
            "stages": [{"name": "all", "weight": 100, "duration": "1s"}], "watch": WATCH}))
        env = {**os.environ, "ROLLOUT_STATE_DIR": str(d / "state"), "ROLLOUT_ACTOR": "bench", "PYTHONUNBUFFERED": "1"}
        where = d / "state" / "watched"

        def read(name: str) -> dict[str, Any]:
            try:
                return json.loads((where / name).read_text())  # type: ignore[no-any-return]
            except (OSError, ValueError):
                return {}

        live = with_watch(env, plan, lambda: read("watch.json"), lambda: rounds_of(env, plan, lambda: read("requests.json"), rounds, True))
        direct = rounds_of(env, plan, lambda: read("requests.json"), rounds, False)  # the watch ended: on the record itself
    return {"live": {"summary": summary(live), "rounds": live}, "direct": {"summary": summary(direct), "rounds": direct}}


def bench_kubernetes(rounds: int) -> dict[str, Any]:
    from tests.test_k8s_traffic_e2e import Fake, write_plan

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        fake = Fake(d)
        try:
            plan = write_plan(d, "gateway-api", "http://127.0.0.1:9", [{"name": "half", "weight": "50%", "duration": "1s"}])
            data = yaml.safe_load(plan.read_text())
            data["watch"] = WATCH
            plan.write_text(yaml.safe_dump(data, sort_keys=False))
            watch_kc = d / "watch-kubeconfig"
            shutil.copy(fake.kubeconfig, watch_kc)
            env = {**os.environ, "KUBECONFIG": fake.kubeconfig, "ROLLOUT_ACTOR": "bench", "PYTHONUNBUFFERED": "1"}

            def read(name: str, key: str) -> dict[str, Any]:
                try:
                    return json.loads(fake.call("GET", f"/api/v1/namespaces/shop/configmaps/{name}")["data"][key])  # type: ignore[no-any-return]
                except Exception:
                    return {}

            def read_mailbox() -> dict[str, Any]:
                return read("rollout-answer-requests", "requests.json")

            live = with_watch({**env, "KUBECONFIG": str(watch_kc)}, plan, lambda: read("rollout-answer-watch", "watch.json"),
                              lambda: rounds_of(env, plan, read_mailbox, rounds, True))
            direct = rounds_of(env, plan, read_mailbox, rounds, False)
        finally:
            fake.stop()
    return {"live": {"summary": summary(live), "rounds": live}, "direct": {"summary": summary(direct), "rounds": direct}}


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
        results[backend]["ratio_live_over_direct_pause_command_median"] = round(
            live["pause_command_s"]["median"] / direct["pause_command_s"]["median"], 2)
        print(f"\n{backend}: acknowledgement after the post, median/max: pause {live['pause_ack_s']['median']}/{live['pause_ack_s']['max']} s, "
              f"resume {live['resume_ack_s']['median']}/{live['resume_ack_s']['max']} s; `rollout pause --watch` command: "
              f"live {live['pause_command_s']['median']} s, direct {direct['pause_command_s']['median']} s "
              f"(×{results[backend]['ratio_live_over_direct_pause_command_median']})")
    print(f"saved to {save('watch_requests', results)}")


if __name__ == "__main__":
    main()

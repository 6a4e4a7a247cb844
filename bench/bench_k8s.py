"""Kubernetes backend: API requests per step, and the time from a failing gate to all traffic on stable.

Against the fake API server (`rollout.testing.apiserver`, in this process, over HTTP through the official
client) with its Deployment controller reacting at once (delay 0), so what is measured is rollout's own
work: requests it sends and waits it makes. For each router (replicas, gateway-api, nginx):

  * one good rollout, driven by the real engine with a stub load (fixed numbers, no Locust), the
    fake's request log read and reset at every step: take the Lease, start (canary deployed), each
    stage, the promotion, release — counted at the server per verb and resource;
  * `--rounds` bad rollouts whose first stage's gate fails on its first tick: the clock starts when the
    failing numbers are handed to the gate and stops when the router's read-back says all traffic is on
    stable (and, second figure, when the canary is scaled to 0 and that has taken effect).

    .venv/bin/python bench/bench_k8s.py [--rounds 20] [--poll 0.5]

Waits poll every `--poll` seconds (the backend's default, 0.5 s), so with a controller that reacts at once
a wait costs 0 or one poll interval depending on whether the first read-back already sees the change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, save  # noqa: E402
from rollout.backends.kubernetes.backend import KubernetesBackend  # noqa: E402
from rollout.backends.kubernetes.client import RetryPolicy, connect  # noqa: E402
from rollout.backends.kubernetes.store import ConfigMapStore  # noqa: E402
from rollout.engine.executor import Engine  # noqa: E402
from rollout.engine.state import StageRecord  # noqa: E402
from rollout.load.stats import StageStats  # noqa: E402
from rollout.plan.loader import load_plan  # noqa: E402
from rollout.testing.apiserver import FakeApiServer  # noqa: E402

NS = "shop"
IMAGE = "registry.example.com/answer:{}"
ROUTERS = ("replicas", "gateway-api", "nginx")


def write_plan(d: Path, kubeconfig: str, router: str) -> Path:
    (d / "load.py").write_text("from locust import HttpUser, task\n\nclass U(HttpUser):\n    @task\n    def t(self):\n        self.client.get('/')\n")
    stages: list[dict[str, Any]] = [{"name": "ten", "weight": "10%", "duration": "5s"}, {"name": "half", "weight": "50%", "duration": "5s"}]
    if router != "replicas":
        stages.insert(0, {"name": "payments", "cohort": {"x-team": "payments"}, "weight": 0, "duration": "5s"})
    data = {
        "name": "answer", "owner": {"name": "Answers team", "contact": "answers@example.com"},
        "target": {"backend": "kubernetes", "kubeconfig": kubeconfig, "namespace": NS, "stable": "v1",
                   "versions": {v: {"image": IMAGE.format(f"{v[1]}.0")} for v in ("v1", "v2")},
                   "deployments": {"stable": "answer", "canary": "answer-canary"},
                   "services": {"stable": "answer-stable", "canary": "answer-canary"},
                   "router": router, "httproute": "answer", "ingress": "answer-canary", "port": 8080,
                   "progress_deadline": "60s", "entry_url": "http://answer.shop.example.com"},
        "load": {"locustfile": "load.py", "users": 5},
        "gates": {"errors": {"metric": "error_rate", "max": "2%", "min_requests": 100}},
        "stages": stages,
    }
    path = d / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Quiet:
    def event(self, message: str) -> None:
        pass

    def progress(self, *args: Any) -> None:
        pass

    def stage_done(self, record: StageRecord) -> None:
        pass


class Marks:
    """Counts at the fake between marks: {label: Counter("verb resource")}."""

    def __init__(self, fake: FakeApiServer) -> None:
        self.fake = fake
        self.steps: list[tuple[str, Counter[str]]] = []
        fake.reset_requests()

    def mark(self, label: str) -> None:
        self.steps.append((label, Counter(self.fake.request_counts())))
        self.fake.reset_requests()


class BenchEngine(Engine):
    marks: Marks | None = None

    def _load_spec(self, i: int) -> Any:  # no Locust: the stub load runner needs no spec
        return None

    def _start(self, version: str) -> None:
        super()._start(version)
        if self.marks:
            self.marks.mark("start: canary deployed")

    def _run_stage(self, i: int) -> str:
        result = super()._run_stage(i)
        if self.marks:
            self.marks.mark(f"stage {i + 1} `{self.plan.stages[i].name}`")
        return result

    def _promote(self) -> None:
        super()._promote()
        if self.marks:
            self.marks.mark("promote")


def stub_load(bad: bool, clock: dict[str, float], at_gate: Any = None) -> Any:
    def run(spec: Any, on_tick: Any) -> StageStats:
        stats = StageStats(elapsed=1.0, users=5)
        for role, every in (("stable", 0), ("canary", 5 if bad else 0)):
            for j in range(1000):
                stats.role(role).add(20.0 + j % 7, failed=bool(every) and j % every == 0)
        if at_gate:
            at_gate()
        clock["gate"] = time.perf_counter()
        on_tick(stats)
        return stats
    return run


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def bench_router(router: str, rounds: int, poll: float) -> dict[str, Any]:
    with FakeApiServer(controller_delay=0) as fake, tempfile.TemporaryDirectory() as tmp:
        for f in ("app.yaml", "httproute.yaml", "ingress-nginx.yaml"):
            for doc in yaml.safe_load_all((ROOT / "manifests" / f).read_text()):
                fake.create(doc)
        kube = connect(kubeconfig=fake.write_kubeconfig(namespace=NS), retry=RetryPolicy(tries=4, base=0.01, max_total=0.5))
        loaded = load_plan(write_plan(Path(tmp), fake.write_kubeconfig(namespace=NS), router))
        backend = KubernetesBackend(loaded, kube, poll=poll)
        clock: dict[str, float] = {}

        # one good rollout, counted step by step
        marks = Marks(fake)
        store = ConfigMapStore(kube, "answer")
        with store.lock("run"):
            marks.mark("lock: Lease taken")
            engine = BenchEngine(loaded, backend, store, Quiet(), "bench", stub_load(False, clock))
            engine.marks = marks
            outcome = engine.drive("v2", from_cli=True, one_stage=False)
            assert outcome.kind == "promoted", outcome
        marks.mark("unlock: Lease released")
        steps = [{"step": label, "requests": sum(c.values()), "counts": dict(sorted(c.items()))} for label, c in marks.steps]

        # bad rollouts: failing gate -> all traffic on stable
        to_stable: list[float] = []
        to_stopped: list[float] = []
        rollback_counts: Counter[str] = Counter()
        real_apply, real_stop = backend.apply_split, backend.stop_canary

        def apply_split(state: Any, split: Any) -> None:
            real_apply(state, split)
            if split.all_stable and "gate" in clock and "stable" not in clock:
                clock["stable"] = time.perf_counter()

        def stop_canary(state: Any) -> None:
            real_stop(state)
            if "gate" in clock and "stopped" not in clock:
                clock["stopped"] = time.perf_counter()

        backend.apply_split, backend.stop_canary = apply_split, stop_canary  # type: ignore[method-assign]
        for _ in range(rounds):
            store = ConfigMapStore(kube, "answer")
            with store.lock("run"):
                engine = BenchEngine(loaded, backend, store, Quiet(), "bench", stub_load(True, clock, fake.reset_requests))
                target = "v1" if engine.state.stable_version == "v2" else "v2"  # the canary is never the stable version
                clock.clear()
                outcome = engine.drive(target, from_cli=True, one_stage=False)
                assert outcome.kind == "rolled-back", outcome
                rollback_counts.update(fake.request_counts())  # from the failing gate to the end of the rollback
            to_stable.append((clock["stable"] - clock["gate"]) * 1000)
            to_stopped.append((clock["stopped"] - clock["gate"]) * 1000)
        kube.api.close()
    summary = lambda xs: {"median_ms": round(statistics.median(xs), 1), "p95_ms": round(pct(xs, 0.95), 1), "max_ms": round(max(xs), 1)}  # noqa: E731
    return {"steps": steps, "rounds": rounds, "gate_to_all_stable": summary(to_stable), "gate_to_canary_stopped": summary(to_stopped),
            "requests_gate_to_rollback_done": {k: round(v / rounds, 1) for k, v in sorted(rollback_counts.items())}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between read-backs while waiting (the backend's default: 0.5)")
    args = ap.parse_args()
    results = {"controller_delay_s": 0, "poll_s": args.poll,
               "routers": {router: bench_router(router, args.rounds, args.poll) for router in ROUTERS}}
    for router, res in results["routers"].items():
        print(f"\n{router}: Kubernetes API requests per step (counted at the fake)")
        for s in res["steps"]:
            detail = ", ".join(f"{k} {v}" for k, v in s["counts"].items())
            print(f"  {s['step']:<28} {s['requests']:>4}   {detail}")
        a, b = res["gate_to_all_stable"], res["gate_to_canary_stopped"]
        print(f"  failing gate -> all traffic on stable: median {a['median_ms']} ms, p95 {a['p95_ms']} ms, max {a['max_ms']} ms"
              f"; -> canary at 0 pods: median {b['median_ms']} ms ({res['rounds']} rounds)")
    path = save("k8s", results)
    print(f"\nwritten {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

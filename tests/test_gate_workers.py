"""`rollout gate --workers N`: Locust's master/worker mode, the master in the CLI's process, N worker processes.

Every request is still attributed to the version that served it (the workers' recorders ship per-version
histograms to the master), nothing is lost at the end (the merged count equals Locust's own count of the
workers' requests), and the same gates pass or fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.test_gate import LOCUSTFILE, gate, start_service

PROBE = r"""
import rollout.load.runner as r, json, sys
from pathlib import Path
from rollout.load.distributed import run_load_distributed
import locust.env

envs = []
orig = locust.env.Environment.create_master_runner
def spy(self, *a, **kw):
    envs.append(self)
    return orig(self, *a, **kw)
locust.env.Environment.create_master_runner = spy
spec = r.LoadSpec(locustfile=Path(sys.argv[1]), host=sys.argv[2], users=6, spawn_rate=6, duration=3, roles={"v-a": "canary"})
ticks = []
stats = run_load_distributed(spec, lambda s: ticks.append(s.requests) and False, workers=2)
print(json.dumps({"by_role": {k: v.requests for k, v in stats.by_role.items()}, "locust": envs[0].stats.total.num_requests,
                  "ticks": ticks, "timeline": len(stats.timeline)}))
"""


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    proc, url = start_service("v-a")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_two_workers_attribute_every_request_and_lose_none(service: str) -> None:
    r = subprocess.run([sys.executable, "-c", PROBE, str(LOCUSTFILE), service], cwd=ROOT, check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["by_role"]["canary"] > 50 and out["by_role"].get("unknown", 0) == 0, out
    # Nothing lost: at least every request Locust's own worker statistics counted reached the gates. (Usually equal;
    # Locust's count can only lag: its workers report every 3 s plus once at quit, ours arrive before `client_stopped`.)
    assert sum(out["by_role"].values()) >= out["locust"] > 0, out
    assert out["ticks"][-1] > 0 and out["timeline"] >= 3


def test_gate_with_workers_fails_like_in_process(service: str, tmp_path: Path) -> None:
    # passing with workers is shown by the tests around this one; here: a gate fails as soon as the evidence is in
    r = gate("--host", service, "--locustfile", str(LOCUSTFILE), "--users", "6", "--duration", "20s", "--min-requests", "20",
             "--workers", "2", "--gate", "p50<0.01ms", "--gate", "errors<5%", "--json", str(tmp_path / "r.json"))
    assert r.returncode == 1 and "gate `p50<0.01ms` failed" in r.stderr, r.stdout + r.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    stage = doc["stages"][0]
    assert stage["workers"] == 2 and stage["stats"]["v-a"]["requests"] >= 20 and stage["decisive"]["gate"] == "p50<0.01ms"
    assert {v["gate"]: v["status"] for v in stage["verdicts"]}["errors<5%"] in ("pending", "pass")


def test_a_negative_number_of_workers_is_bad_input(service: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from locust import HttpUser, task\nclass U(HttpUser):\n    @task\n    def t(self):\n        self.client.get('/')\n")
    r = gate("--host", service, "--locustfile", str(bad), "--duration", "3s", "--workers", "-1", "--gate", "p95<1s")
    assert r.returncode == 2 and "--workers -1" in r.stderr


def test_run_with_workers_routes_and_attributes_a_cohort_stage(tmp_path: Path) -> None:
    """`rollout run --workers 2` on the local backend: the cohort users exist in the workers too, and every
    cohort request is counted for the canary, every other request for stable."""
    from tests.test_local_e2e import Rollout, make_plan

    ro = Rollout(make_plan(tmp_path, [{"name": "payments", "cohort": {"x-team": "payments"}, "weight": 0, "duration": "4s"}], gates={}), tmp_path / "state")
    try:
        r = run_cli("run", str(ro.plan), "--version", "v2", "--workers", "2", "--json", str(tmp_path / "r.json"),
                    env={**ro.env, "GITHUB_STEP_SUMMARY": ""}, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        stage = json.loads((tmp_path / "r.json").read_text())["stages"][0]
        routing = stage["stats"]["cohort_routing"]
        assert routing.get("cohort->canary", 0) >= 10 and routing.get("other->stable", 0) >= 30, routing
        assert routing.get("cohort->stable", 0) == 0 and routing.get("other->canary", 0) == 0, routing
        assert stage["timeline"]
    finally:
        ro("down")

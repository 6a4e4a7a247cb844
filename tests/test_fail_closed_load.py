"""Fail closed in the load recorder, with real Locust against tests/faulty_service.py (no router in between).

- Load that goes to one version alone (a `load_to: canary` stage, a canary URL):
  an answer without the version header, failed or not, is that version's.
- A plan that declares a json metric: a 200 whose body is not JSON is a failure
  of the version that sent it; a JSON body without the field is no value, not a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_router import ENV, faulty_canaries

PLAIN = "from locust import FastHttpUser, between, task\n\nclass U(FastHttpUser):\n    wait_time = between(0.02, 0.05)\n\n" \
        "    @task\n    def ask(self):\n        self.client.get('/api/answer?q=x')\n"

# Locust monkey-patches the process (gevent): the load runs in a child, as in the CLI, and prints what it recorded.
LOAD = r"""
import locust  # first
import json, sys
from pathlib import Path
from rollout.load.runner import LoadSpec, run_load
from rollout.plan.model import MetricSource

a = json.loads(sys.argv[1])
metrics = {n: MetricSource.model_validate({"json": f}) for n, f in a["metrics"].items()}
spec = LoadSpec(locustfile=Path(a["locustfile"]), host=a["host"], users=2, spawn_rate=2, duration=1.5,
                roles={"v1": "stable", "v2": "canary"}, max_requests=2000, metrics=metrics, only_role=a["only_role"])
stats = run_load(spec, lambda s: False)
print(json.dumps({"roles": {r: [v.requests, v.failures] for r, v in stats.by_role.items()},
                  "last_failure": stats.last_failure,
                  "values": {n: stats.metric(n, "all").count for n in a["metrics"]}}))
"""


@pytest.fixture(scope="module")
def canaries() -> Any:
    yield from faulty_canaries(("noheader", "garbage", "unlabelled"), version="v2")


def load(tmp_path: Path, port: int, only_role: str | None = None, metrics: dict[str, str] | None = None) -> dict[str, Any]:
    locustfile = tmp_path / "plain.py"
    locustfile.write_text(PLAIN)
    args = {"locustfile": str(locustfile), "host": f"http://127.0.0.1:{port}", "only_role": only_role, "metrics": metrics or {}}
    r = subprocess.run([sys.executable, "-c", LOAD, json.dumps(args)], env=ENV, cwd=Path(__file__).resolve().parent.parent,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["roles"] = {role: tuple(v) for role, v in out["roles"].items()}
    return out


def test_unlabelled_answers_of_one_version_alone_are_that_versions(tmp_path: Path, canaries: dict[str, int]) -> None:
    got = load(tmp_path, canaries["noheader"], only_role="canary")
    requests, failures = got["roles"]["canary"]
    assert requests >= 10 and failures == requests and got["roles"]["unknown"] == (0, 0)
    assert "500" in got["last_failure"]["canary"]
    got = load(tmp_path, canaries["unlabelled"], only_role="canary")
    assert got["roles"]["canary"][0] >= 10 and got["roles"]["canary"][1] == 0
    got = load(tmp_path, canaries["noheader"])  # load through an entry point: nobody can tell whose they are
    assert got["roles"]["unknown"][0] >= 10 and got["roles"]["canary"] == (0, 0)


def test_a_non_json_answer_fails_when_a_json_metric_is_declared(tmp_path: Path, canaries: dict[str, int]) -> None:
    got = load(tmp_path, canaries["garbage"], metrics={"confidence": "confidence"})
    requests, failures = got["roles"]["canary"]
    assert requests >= 10 and failures == requests
    assert "the answer is not JSON" in got["last_failure"]["canary"]
    got = load(tmp_path, canaries["garbage"])  # no json metric: the body is the locustfile's business
    assert got["roles"]["canary"][0] >= 10 and got["roles"]["canary"][1] == 0
    got = load(tmp_path, canaries["unlabelled"], only_role="canary", metrics={"missing": "no.such.field"})
    assert got["roles"]["canary"][0] >= 10 and got["roles"]["canary"][1] == 0  # a missing field is no value
    assert got["values"] == {"missing": 0}

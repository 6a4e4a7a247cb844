"""Fail closed in the load recorder, with real Locust against tests/faulty_service.py (no router in between).

- Load that goes to one version alone (a `load_to: canary` stage, a canary URL):
  an answer without the version header, failed or not, is that version's.
- A plan that declares a json metric: a 200 whose body is not JSON is a failure
  of the version that sent it; a JSON body without the field is no value, not a failure.
"""

from __future__ import annotations

import locust  # noqa: F401  (first: gevent monkey-patching, as in the CLI's load commands)

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rollout.load.runner import LoadSpec, run_load
from rollout.plan.model import MetricSource
from tests.test_router import ENV, free_port, stop, wait_http

FAULTY = Path(__file__).resolve().parent / "faulty_service.py"
PLAIN = "from locust import FastHttpUser, between, task\n\nclass U(FastHttpUser):\n    wait_time = between(0.02, 0.05)\n\n" \
        "    @task\n    def ask(self):\n        self.client.get('/api/answer?q=x')\n"


@pytest.fixture(scope="module")
def canaries() -> Any:
    started: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    try:
        for mode in ("noheader", "garbage", "unlabelled"):
            port = free_port()
            started.append(subprocess.Popen([sys.executable, str(FAULTY), "--port", str(port), "--version", "v2", "--fault", mode, "--latency", "0"],
                                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            ports[mode] = port
        for proc, port in zip(started, ports.values()):
            wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        yield ports
    finally:
        for proc in started:
            stop(proc)


def load(tmp_path: Path, port: int, **kw: Any) -> Any:
    locustfile = tmp_path / "plain.py"
    locustfile.write_text(PLAIN)
    spec = LoadSpec(locustfile=locustfile, host=f"http://127.0.0.1:{port}", users=2, spawn_rate=2, duration=1.5,
                    roles={"v1": "stable", "v2": "canary"}, max_requests=2000, **kw)
    return run_load(spec, lambda stats: False)


def test_unlabelled_answers_of_one_version_alone_are_that_versions(tmp_path: Path, canaries: dict[str, int]) -> None:
    stats = load(tmp_path, canaries["noheader"], only_role="canary")
    canary = stats.role("canary")
    assert canary.requests >= 10 and canary.failures == canary.requests and stats.role("unknown").requests == 0
    assert "500" in stats.last_failure["canary"]
    stats = load(tmp_path, canaries["unlabelled"], only_role="canary")
    assert stats.role("canary").requests >= 10 and stats.role("canary").failures == 0
    stats = load(tmp_path, canaries["noheader"])  # load through an entry point: nobody can tell whose they are
    assert stats.role("unknown").requests >= 10 and stats.role("canary").requests == 0


def test_a_non_json_answer_fails_when_a_json_metric_is_declared(tmp_path: Path, canaries: dict[str, int]) -> None:
    metrics = {"confidence": MetricSource.model_validate({"json": "confidence"})}
    stats = load(tmp_path, canaries["garbage"], metrics=metrics)
    canary = stats.role("canary")
    assert canary.requests >= 10 and canary.failures == canary.requests
    assert "the answer is not JSON" in stats.last_failure["canary"]
    stats = load(tmp_path, canaries["garbage"])  # no json metric: the body is the locustfile's business
    assert stats.role("canary").requests >= 10 and stats.role("canary").failures == 0
    stats = load(tmp_path, canaries["unlabelled"], metrics={"missing": MetricSource.model_validate({"json": "no.such.field"})},
                 only_role="canary")
    assert stats.role("canary").requests >= 10 and stats.role("canary").failures == 0  # a missing field is no value
    assert stats.metric("missing", "canary").count == 0 and stats.metric("missing", "all").count == 0

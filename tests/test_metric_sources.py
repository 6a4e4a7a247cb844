"""Metric sources beyond errors and latency, end to end: response content, custom metrics from a
locustfile, and Prometheus — each judged by a gate during a real rollout on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from tests.test_local_e2e import SERVICE, rollout_env  # noqa: F401  (fixture)


def conf_service(version: str, confidence: float) -> dict[str, Any]:
    return {"command": f"{{python}} {SERVICE} --port {{port}} --version {version} --latency 5ms --error-rate 0% --confidence {confidence} --seed 5"}


def test_confidence_gate_fails_a_canary_whose_answers_are_200_ok(rollout_env: Any) -> None:  # noqa: F811
    ro = rollout_env(
        [{"name": "half", "weight": 50, "duration": "40s"}],
        gates={"low-confidence": {"metric": "confidence", "stat": "share_below", "below": 0.6, "max": "5%", "min_requests": 50},
               "errors": {"metric": "error_rate", "max": "1%", "min_requests": 50}},
        versions={"v1": conf_service("v1", 0.9), "v2": conf_service("v2", 0.45)},
        metrics={"confidence": {"json": "confidence"}},
    )
    r = ro("run", "--version", "v2")
    assert r.returncode == 1, r.stdout + r.stderr
    st = ro.status()["state"]
    stage = st["stages"][0]
    fail = next(v for v in stage["verdicts"] if v["status"] == "fail")
    assert fail["gate"] == "low-confidence" and "canary share of confidence ≤ 0.6" in fail["message"]
    errors = next(v for v in stage["verdicts"] if v["gate"] == "errors")
    assert errors["status"] != "fail"  # every answer was 200 OK: only the content gave it away
    conf = stage["stats"]["metrics"]["confidence"]
    assert conf["canary"]["mean"] < 0.6 < conf["stable"]["mean"]


CUSTOM_LOCUSTFILE = '''
from locust import FastHttpUser, constant, task
from rollout.metrics import record

class U(FastHttpUser):
    wait_time = constant(0.05)

    @task
    def ask(self):
        with self.client.get("/api/answer", catch_response=True) as r:
            record("answer_chars", len(r.json().get("answer", "")), r)
'''


def test_custom_metric_fired_from_the_locustfile(rollout_env: Any, tmp_path: Path) -> None:  # noqa: F811
    lf = tmp_path / "custom.py"
    lf.write_text(CUSTOM_LOCUSTFILE)
    ro = rollout_env(
        [{"name": "half", "weight": 50, "duration": "3s"}],
        gates={"answers-not-empty": {"metric": "answer_chars", "min": 1, "min_requests": 20}},
        metrics={"answer_chars": {"custom": True}},
        locustfile=str(lf),
    )
    r = ro("run", "--version", "v2")
    assert r.returncode == 0, r.stdout + r.stderr
    stage = ro.status()["state"]["stages"][0]
    v = stage["verdicts"][0]
    assert v["status"] == "pass" and "canary answer_chars mean" in v["message"] and "≥ 1" in v["message"]
    assert stage["stats"]["metrics"]["answer_chars"]["canary"]["count"] >= 20


class FakePrometheus:
    """/api/v1/query answering a per-version value, as Prometheus' instant query API does."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values, self.queries = values, []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                q = parse_qs(urlparse(self.path).query)["query"][0]
                outer.queries.append(q)
                version = q.split('version="')[1].split('"')[0]
                body = {"status": "success", "data": {"resultType": "vector", "result": [
                    {"metric": {"version": version}, "value": [0, str(outer.values[version])]}]}}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    p = FakePrometheus({"v1": 0.001, "v2": 0.2})
    yield p
    p.server.shutdown()


def test_prometheus_gate_reads_a_query_per_version(rollout_env: Any, prometheus: FakePrometheus) -> None:  # noqa: F811
    ro = rollout_env(
        [{"name": "half", "weight": 50, "duration": "40s"}],
        gates={"server-errors": {"metric": "server_errors", "stat": "last", "max": 0.05, "min_requests": 1}},
        metrics={"server_errors": {"prometheus": {"url": prometheus.url, "query": 'sum(rate(errors_total{version="{version}"}[1m]))', "every": "1s"}}},
    )
    r = ro("run", "--version", "v2")
    assert r.returncode == 1, r.stdout + r.stderr
    fail = next(v for v in ro.status()["state"]["stages"][0]["verdicts"] if v["status"] == "fail")
    assert fail["gate"] == "server-errors" and "canary server_errors last 0.2 > 0.05" in fail["message"]
    assert 'sum(rate(errors_total{version="v2"}[1m]))' in prometheus.queries
    assert 'sum(rate(errors_total{version="v1"}[1m]))' in prometheus.queries


def test_answer_metrics_with_locust_workers_are_refused_before_any_traffic_moves(rollout_env: Any) -> None:  # noqa: F811
    """Workers do not carry json/header/custom values to the master: a gate on them would see nothing and send a
    low-confidence canary to review. Refused at validation (plan) and at the command (--workers), exit 2."""
    ro = rollout_env(
        [{"name": "half", "weight": 50, "duration": "5s"}],
        gates={"low-confidence": {"metric": "confidence", "stat": "share_below", "below": 0.6, "max": "5%", "min_requests": 50}},
        versions={"v1": conf_service("v1", 0.9), "v2": conf_service("v2", 0.45)},
        metrics={"confidence": {"json": "confidence"}},
    )
    r = ro("run", "--version", "v2", "--workers", "2")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "confidence" in r.stderr and "--workers 2" in r.stderr and "in-process" in r.stderr, r.stderr
    assert ro.status()["state"] is None  # nothing started, nothing recorded

    valid = ro.plan.read_text()
    doc = yaml.safe_load(valid)
    doc["load"]["workers"] = 2
    ro.plan.write_text(yaml.safe_dump(doc, sort_keys=False))
    v = ro("validate")
    ro.plan.write_text(valid)  # the fixture's clean-up reads the plan
    assert v.returncode == 2 and "plan.yaml:" in v.stderr and "load:" in v.stderr, v.stdout + v.stderr
    assert "confidence" in v.stderr and "workers: 2" in v.stderr, v.stdout + v.stderr

"""Prometheus gates against a real Prometheus: it scrapes the sample service's /metrics of both versions
while a real rollout runs, and the gates query it with real PromQL (`rate`, `histogram_quantile`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.prom import _free_port, prometheus
from tests.test_local_e2e import SERVICE, rollout_env  # noqa: F401  (fixture)

ERROR_SHARE = ('sum(rate(http_requests_total{{version="{{version}}",status="500"}}[{w}])) or vector(0)) / '
               'sum(rate(http_requests_total{{version="{{version}}"}}[{w}]))')
P95 = 'histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{version="{{version}}"}}[{w}])))'


def test_prometheus_gates_judge_real_promql_over_scraped_metrics(rollout_env: Any, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "prom").mkdir()
    tool_port = _free_port()  # the tool's own /metrics (--metrics-port), scraped by the same Prometheus
    tool_job = {"job_name": "rollout", "static_configs": [{"targets": [f"127.0.0.1:{tool_port}"]}]}
    with prometheus(tmp_path / "prom", extra_scrape=[tool_job]) as prom:
        ro = rollout_env(
            [{"name": "half", "weight": 50, "duration": "60s"}],
            gates={"server-errors": {"metric": "server_errors", "stat": "last", "max": 0.05, "min_requests": 1},
                   "prom-p95": {"metric": "prom_p95", "stat": "last", "max": 1.0, "min_requests": 1, "critical": False}},
            versions={v: {"command": f"{{python}} {SERVICE} --port {{port}} --version {v} --latency 5ms --error-rate {e} --seed 3"}
                      for v, e in (("v1", "0%"), ("v2", "30%"))},
            metrics={"server_errors": {"prometheus": {"url": prom.url, "query": "(" + ERROR_SHARE.format(w="5s"), "every": "1s"}},
                     "prom_p95": {"prometheus": {"url": prom.url, "query": P95.format(w="5s"), "every": "1s"}}},
        )
        proc = ro.popen("run", "--version", "v2", "--metrics-port", str(tool_port))
        try:
            deadline = time.monotonic() + 60
            ports: dict[str, int] = {}
            while len(ports) < 2 and time.monotonic() < deadline and proc.poll() is None:
                backend = (ro.status()["state"] or {}).get("backend", {})
                ports = {backend[r]["version"]: backend[r]["port"] for r in ("stable", "canary") if backend.get(r)}
                time.sleep(0.2)
            assert len(ports) == 2, ports
            prom.set_targets([(f"127.0.0.1:{p}", {"role": v}) for v, p in ports.items()])
            # the tool's own metrics, as Prometheus scraped them while the stage ran
            weight = prom.wait_for('rollout_canary_weight{plan="e2e"} == 0.5', timeout=40)
            canary_requests = prom.wait_for('rollout_stage_requests{plan="e2e",role="canary",version="v2"} > 0', timeout=40)
            phase = prom.query('rollout_phase{plan="e2e",phase="progressing"}')
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 1, out + err
        stage = ro.status()["state"]["stages"][0]
        fail = next(v for v in stage["verdicts"] if v["status"] == "fail")
        assert fail["gate"] == "server-errors" and "canary server_errors last" in fail["message"], fail
        # what the gate read is what Prometheus says: the canary's 500 share is about 30 %, stable's 0
        share = stage["stats"]["gauges"]["server_errors"]
        # (stable's value may not be in yet when the canary fails: Prometheus needs two scrapes in the window)
        assert 0.1 < share["canary"] < 0.6 and share.get("stable", 0.0) == 0.0, json.dumps(share)
        p95 = stage["stats"]["gauges"]["prom_p95"]
        assert p95 and all(0.0 < v < 1.0 for v in p95.values()), json.dumps(p95)  # histogram_quantile over real buckets, s
        assert weight and canary_requests, (weight, canary_requests)
        assert phase and phase[0]["value"][1] == "1"
        scraped = prom.query('count by (version) (count_over_time(http_requests_total[5m]))')  # v2 is stopped by now
        assert {r["metric"]["version"] for r in scraped} == {"v1", "v2"}

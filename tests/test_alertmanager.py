"""Alerts to a real Alertmanager (Debian's prometheus-alertmanager on 127.0.0.1): fire, re-send, resolve.

The `alertmanager` notify format posts to the server's v2 API; the alert is read back from the same API
with the labels a team routes on (plan, version, gate, severity, owner) and the numbers in its annotations.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rollout.notify import Notifier, Webhook
from tests.conftest import require_tool
from tests.helpers import wait_until_up
from tests.prom import _free_port


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = require_tool("prometheus-alertmanager", "prometheus-alertmanager")
    config = tmp_path / "am.yml"
    config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    port = _free_port()
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "am.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(lambda: httpx.get(f"{url}/api/v2/status", timeout=1).status_code == 200, proc, tmp_path / "am.log", "alertmanager", 30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _active(url: str, name: str) -> list[dict]:
    alerts = httpx.get(f"{url}/api/v2/alerts", params={"filter": f'alertname="{name}"'}, timeout=5).json()
    return [a for a in alerts if a["status"]["state"] == "active"]


def _wait_for(cond, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_a_watch_breach_fires_in_alertmanager_with_labels_and_numbers_then_resolves(alertmanager: str) -> None:
    hook = Webhook(url=alertmanager, format="alertmanager")
    n = Notifier([hook], "answer", {"name": "Answers team", "contact": "answers-oncall@example.com"})
    since = time.time() - 120
    details = {"version": "v2", "gate": "errors", "rate": 0.021, "requests": 4120, "limit": 0.01, "since": since, "ttl": 600}
    try:
        n.emit("watch-breach", "error rate 2.1% over the last 4,120 requests (limit 1%), since 06:12", details)
        assert n.flush(10)
        (alert,) = _wait_for(lambda: _active(alertmanager, "RolloutWatchBreach"))
        assert alert["labels"] == {"alertname": "RolloutWatchBreach", "plan": "answer", "severity": "critical",
                                   "owner": "Answers team", "version": "v2", "gate": "errors"}
        assert "2.1%" in alert["annotations"]["summary"] and '"requests": 4120' in alert["annotations"]["description"]
        assert alert["annotations"]["hint"] == "rollout status answer"
        assert abs(_parse(alert["startsAt"]) - since) < 1.0  # the evidence's start, not the send time
        # re-sent while firing: still one alert (same labels), its end pushed forward
        first_end = _parse(alert["endsAt"])
        time.sleep(1.1)
        n.emit("watch-breach", "error rate 2.3% over the last 5,000 requests (limit 1%), since 06:12", details)
        assert n.flush(10)
        (again,) = _wait_for(lambda: [a for a in _active(alertmanager, "RolloutWatchBreach") if _parse(a["endsAt"]) > first_end])
        assert "2.3%" in again["annotations"]["summary"]
        # a different gate is a different alert
        n.emit("watch-breach", "p95 above limit", {**details, "gate": "p95"})
        assert n.flush(10)
        assert len(_wait_for(lambda: len(_active(alertmanager, "RolloutWatchBreach")) == 2 and _active(alertmanager, "RolloutWatchBreach"))) == 2
        # resolved: the errors alert ends, the p95 one stays
        n.emit("watch-resolved", "error rate back under the limit", details)
        assert n.flush(10)
        left = _wait_for(lambda: [a for a in _active(alertmanager, "RolloutWatchBreach")] if len(_active(alertmanager, "RolloutWatchBreach")) == 1 else [])
        assert [a["labels"]["gate"] for a in left] == ["p95"]
        assert all(d.status == "ok" for d in n.results()), [d.describe() for d in n.results()]
    finally:
        n.close()


def test_rollout_events_reach_alertmanager_and_a_dead_one_is_a_recorded_failure(alertmanager: str) -> None:
    ok = Webhook(url=alertmanager + "/", format="alertmanager", events=["gate-failed", "rolled-back"])
    dead = Webhook(url=f"http://127.0.0.1:{_free_port()}", format="alertmanager", retries=0, timeout=2)
    n = Notifier([ok, dead], "answer", {"name": "Answers team", "contact": "x@example.com"})
    try:
        n.emit("gate-failed", "stage 2/4 `ten` failed: canary error rate 6% > 2% (412 requests)", {"canary": "v3", "gate": "errors"})
        n.emit("stage-started", "not wanted by the first target", {})
        assert n.flush(15)
        (alert,) = _wait_for(lambda: _active(alertmanager, "RolloutGateFailed"))
        assert alert["labels"]["version"] == "v3" and alert["labels"]["severity"] == "critical"
        assert _active(alertmanager, "RolloutStageStarted") == []
        failed = [d for d in n.results() if d.status == "failed"]
        assert failed and all("could not connect" in d.reason for d in failed)
    finally:
        n.close()


def _parse(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()

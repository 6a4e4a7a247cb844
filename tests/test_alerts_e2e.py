"""Alerts in a real rollout: a hanging webhook never delays the rollback, its failure shows in status."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from tests.test_local_e2e import rollout_env, service  # noqa: F401  (fixture)


class Receiver:
    def __init__(self, hang: float = 0.0) -> None:
        self.events: list[dict[str, Any]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if hang:
                    time.sleep(hang)
                outer.events.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    ok, hanging = Receiver(), Receiver(hang=30)
    yield ok, hanging
    ok.server.shutdown()
    hanging.server.shutdown()


def test_hanging_webhook_does_not_delay_the_rollback(rollout_env: Any, receivers: tuple[Receiver, Receiver]) -> None:  # noqa: F811
    ok, hanging = receivers
    ro = rollout_env([{"name": "half", "weight": 50, "duration": "60s"}])
    data = __import__("yaml").safe_load(ro.plan.read_text())
    data["notify"] = [
        {"url": ok.url + "/hooks/T0123/B0456/s3cr3tt0k3n", "format": "json"},
        {"url": hanging.url + "/hooks/T9/B9/an0th3rs3cr3t", "format": "slack", "timeout": 1, "retries": 1},
    ]
    ro.plan.write_text(__import__("yaml").safe_dump(data))
    r = ro("run", "--version", "v3")
    assert r.returncode == 1, r.stdout + r.stderr
    st = ro.status()["state"]
    hist = {h["action"]: h["at"] for h in st["history"]}
    assert hist["stable"] - st["stages"][0]["ended_at"] < 5.0  # the hanging receiver did not hold up the rollback
    kinds = [e["event"] for e in ok.events]
    assert kinds[:1] == ["stage-started"] and "gate-failed" in kinds and "rolled-back" in kinds
    assert all(e["plan"] == "e2e" and e["owner"]["contact"] == "test@example.com" for e in ok.events)
    text = ro("status").stdout + r.stdout + r.stderr + json.dumps(st)
    assert "could not be delivered" in text or "alert-failed" in text
    assert "s3cr3tt0k3n" not in text and "an0th3rs3cr3t" not in text

"""Alerts (rollout.notify): real HTTP receivers on 127.0.0.1, one gevent-patched subprocess.

Timing assertions are one-sided and generous: what is measured in milliseconds
(emit) is bounded in tenths of seconds; what would take ≥ 15 s if a hang were
waited out is bounded well below that.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from rollout.notify import EMOJI, EVENTS, Notifier, Webhook, redact

ROOT = Path(__file__).resolve().parent.parent
OWNER = {"name": "Answers team", "contact": "answers-oncall@example.com"}
FAST = {"backoff": 0.01}  # tests need no real backoff

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


class Receiver:
    """A webhook receiver on 127.0.0.1. `script` gives the status of each request in turn
    (the last one repeats); "hang" holds the request open for `hang` seconds (released at teardown)."""

    def __init__(self, script: list[int | str], hang: float = 5.0, body: bytes = b"ok") -> None:
        self.script, self.hang, self.body = list(script), hang, body
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    n = len(outer.requests)
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "raw": raw, "at": time.monotonic()})
                    step = outer.script[min(n, len(outer.script) - 1)]
                if step == "hang":
                    outer.release.wait(outer.hang)
                    step = 200
                try:
                    self.send_response(int(step))
                    self.send_header("Content-Length", str(len(outer.body)))
                    self.end_headers()
                    self.wfile.write(outer.body)
                except OSError:  # the client gave up (it timed out): expected
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self) -> list[dict]:
        with self.lock:
            return [json.loads(r["raw"]) for r in self.requests]

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(script: list[int | str] | None = None, **kw: object) -> Receiver:
        r = Receiver(script or [200], **kw)  # type: ignore[arg-type]
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


@pytest.fixture
def notifiers():
    made: list[Notifier] = []

    def make(webhooks: list[Webhook], **kw: object) -> Notifier:
        n = Notifier(webhooks, "answer", OWNER, **{**FAST, **kw})  # type: ignore[arg-type]
        made.append(n)
        return n

    yield make
    for n in made:
        n.close(timeout=0.5)


# -- the model -----------------------------------------------------------------------------


def test_webhook_defaults_units_and_strictness() -> None:
    w = Webhook(url="https://example.com/hook")
    assert (w.format, w.events, w.timeout, w.retries, w.headers) == ("json", list(EVENTS), 5.0, 3, {})
    assert Webhook(url="https://example.com/h", timeout="500ms").timeout == 0.5
    assert Webhook(url="https://example.com/h", events=["promoted", "promoted"]).events == ["promoted"]
    with pytest.raises(ValidationError, match="extra"):
        Webhook(url="https://example.com/h", channel="#x")
    with pytest.raises(ValidationError):
        w.retries = 5  # type: ignore[misc]  # frozen, like the plan
    for bad in ({"url": "ftp://example.com/x"}, {"url": "example.com/x"}, {"url": "https://h/x", "events": []},
                {"url": "https://h/x", "events": ["deployed"]}, {"url": "https://h/x", "format": "teams"},
                {"url": "https://h/x", "timeout": 0}, {"url": "https://h/x", "retries": -1},
                {"url": "https://h/x", "headers": {"X-Key": "a\r\nInjected: yes"}}, {"url": "https://h/x", "headers": {"bad name": "v"}}):
        with pytest.raises(ValidationError):
            Webhook(**bad)
    schema = Webhook.model_json_schema()
    assert schema["additionalProperties"] is False and schema["properties"]["url"]["type"] == "string"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T0123ABCD/B0456EFGH/xoxbSecretToken123456", "https://hooks.slack.com/services/***/***/***"),
        ("https://bot:pa55word@alerts.example.com/api/v2/notify?token=abc123secret&channel=ops",
         "https://***@alerts.example.com/api/v2/notify?token=***&channel=***"),
        ("https://discord.com/api/webhooks/123456789012345678/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
         "https://discord.com/api/webhooks/***/***"),
        ("http://127.0.0.1:8080/hook", "http://127.0.0.1:8080/hook"),
        ("https://example.com/incoming-webhooks/alerts#s3cr3t-fragment", "https://example.com/incoming-webhooks/alerts#***"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_redact_never_raises_on_garbage() -> None:
    for junk in ("", "::::", "http://[::1", "https://a@b@c/d?e&&=f#", "\x00" * 5):
        assert isinstance(redact(junk), str)


# -- payloads ------------------------------------------------------------------------------


def test_json_payload_is_delivered_with_its_documented_shape(receiver, notifiers) -> None:
    r = receiver()
    n = notifiers([Webhook(url=r.url)])
    n.emit("stage-started", "stage 2/4 `payments-team`: 30 users", {"stage": 2, "name": "payments-team", "split": {"weight": 0.0}})
    assert n.flush(10)
    (body,) = r.bodies()
    assert set(body) == {"event", "plan", "owner", "message", "details", "at"}
    assert body["event"] == "stage-started" and body["plan"] == "answer" and body["owner"] == OWNER
    assert body["message"] == "stage 2/4 `payments-team`: 30 users"
    assert body["details"] == {"stage": 2, "name": "payments-team", "split": {"weight": 0.0}}
    assert abs(datetime.fromisoformat(body["at"].replace("Z", "+00:00")).timestamp() - time.time()) < 60
    assert r.requests[0]["headers"]["Content-Type"].startswith("application/json")
    (d,) = n.results()
    assert (d.status, d.event, d.attempts, d.reason, d.url) == ("ok", "stage-started", 1, "HTTP 200", r.url)


def test_slack_payload_is_readable_with_emoji_and_mentionable_owner(receiver) -> None:
    r = receiver()
    n = Notifier([Webhook(url=r.url, format="slack")], "answer", {"name": "Answers team", "contact": "<@U024BE7LH>"}, backoff=0.01)
    try:
        n.emit("gate-failed", "stage 3/4 `ten-percent` failed: errors: canary error rate 3.1% > 2% <rolling back>",
               {"gate": "errors", "canary": "v3", "observed": 0.031})
        assert n.flush(10)
    finally:
        n.close()
    (body,) = r.bodies()
    assert set(body) == {"text", "blocks"}
    text = body["text"]
    assert text.startswith(EMOJI["gate-failed"]) and "Gate failed" in text and "answer" in text
    assert "canary error rate 3.1% &gt; 2% &lt;rolling back&gt;" in text  # Slack escaping of the message
    assert "<@U024BE7LH>" in text  # a Slack mention stays a mention: the owner is pinged
    assert [b["type"] for b in body["blocks"]] == ["section", "section", "context"]
    assert body["blocks"][0]["text"]["type"] == "mrkdwn" and "*Gate failed*" in body["blocks"][0]["text"]["text"]
    fields = [f["text"] for f in body["blocks"][1]["fields"]]
    assert "*gate*\nerrors" in fields and "*canary*\nv3" in fields
    assert "Answers team (<@U024BE7LH>)" in body["blocks"][2]["elements"][0]["text"]
    assert len({e for e in EMOJI.values()}) == len(EVENTS) == len(EMOJI)


# -- delivery --------------------------------------------------------------------------------


def test_retries_then_success(receiver, notifiers) -> None:
    r = receiver([503, 502, 200])
    n = notifiers([Webhook(url=r.url, retries=3)])
    n.emit("promoted", "v2 is now stable (was v1)", {})
    assert n.flush(10)
    (d,) = n.results()
    assert (d.status, d.attempts) == ("ok", 3)
    raws = [q["raw"] for q in r.requests]
    assert len(raws) == 3 and len(set(raws)) == 1  # the same alert, resent


def test_a_permanent_refusal_is_not_retried_and_says_why(receiver, notifiers) -> None:
    r = receiver([404], body=b"no_service")
    n = notifiers([Webhook(url=r.url, retries=3)])
    n.emit("promoted", "v2 promoted", {})
    assert n.flush(10)
    (d,) = n.results()
    assert (d.status, d.attempts) == ("failed", 1) and "HTTP 404" in d.reason and "no_service" in d.reason
    assert len(r.requests) == 1


def test_retries_are_bounded_and_end_failed(receiver, notifiers) -> None:
    r = receiver([500])
    n = notifiers([Webhook(url=r.url, retries=2)])
    n.emit("aborted", "aborted by alice", {})
    assert n.flush(10)
    (d,) = n.results()
    assert (d.status, d.attempts) == ("failed", 3) and d.reason.startswith("HTTP 500") and "3 attempts" in d.reason
    assert len(r.requests) == 3


def test_a_dead_webhook_is_not_retried_until_it_answers_again(receiver, notifiers) -> None:
    """Alerts queued behind a failing receiver are not held up by retries of each one."""
    r = receiver([500, 500, 500, 200, 500, 200])
    n = notifiers([Webhook(url=r.url, retries=2)])
    for event in ("stage-started", "gate-failed", "rolled-back"):
        n.emit(event, event, {})
    assert n.flush(10)
    first, second, third = n.results()
    assert (first.status, first.attempts) == ("failed", 3)
    assert (second.status, second.attempts) == ("ok", 1)  # one try only: it answered, so retries are back
    assert (third.status, third.attempts) == ("ok", 2)
    assert len(r.requests) == 6


def test_a_hanging_receiver_delays_neither_emit_nor_other_webhooks(receiver, notifiers) -> None:
    hanging = receiver(["hang"], hang=5.0)
    healthy = receiver()
    n = notifiers([Webhook(url=hanging.url, timeout=1, retries=2), Webhook(url=healthy.url)])

    t0 = time.perf_counter()
    n.emit("rolled-back", "stage 3/4 failed: all traffic back on v1", {"canary": "v3"})
    emit_s = time.perf_counter() - t0
    assert emit_s < 0.5, f"emit took {emit_s:.3f}s: it must not wait for a receiver"

    assert not n.flush(0.2)  # bounded: returns False while the hanging receiver holds the alert
    assert time.perf_counter() - t0 < 3.0
    assert n.results()[0].status == "pending"

    assert n.flush(15)
    total = time.perf_counter() - t0
    bad, good = n.results()
    assert good.status == "ok" and good.finished_at is not None and bad.finished_at is not None
    assert good.finished_at < bad.finished_at  # the healthy receiver did not wait behind the hanging one
    assert (bad.status, bad.attempts) == ("failed", 3) and "timed out after 1s" in bad.reason
    assert len(hanging.requests) == 3
    # three 1 s timeouts and two tiny backoffs; waiting out the receiver's 5 s hangs would take ≥ 15 s
    assert total < 10.0, f"took {total:.1f}s"


def test_connection_refused_fails_with_a_reason(notifiers) -> None:
    with socket.socket() as sock:  # bound, not listening: connections are refused, no one can take the port
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
        n = notifiers([Webhook(url=url, retries=1, timeout=2)])
        t0 = time.perf_counter()
        n.emit("reverted", "reverted by alice", {})
        n.emit("aborted", "aborted by alice", {})
        assert time.perf_counter() - t0 < 0.5
        assert n.flush(10)
    d, then = n.results()
    assert (d.status, d.attempts) == ("failed", 2)
    assert "could not connect" in d.reason and "refused" in d.reason.lower()
    assert (then.status, then.attempts) == ("failed", 1) and "not retried" in then.reason


def test_event_filtering(receiver, notifiers) -> None:
    only_promoted, everything = receiver(), receiver()
    n = notifiers([Webhook(url=only_promoted.url, events=["promoted", "rolled-back"]), Webhook(url=everything.url)])
    for event in ("stage-started", "awaiting-review", "promoted"):
        n.emit(event, f"{event} happened", {})
    n.emit("not-an-event", "ignored, without raising", {})
    assert n.flush(10)
    assert [b["event"] for b in only_promoted.bodies()] == ["promoted"]
    assert [b["event"] for b in everything.bodies()] == ["stage-started", "awaiting-review", "promoted"]  # in order
    assert [(d.webhook, d.event, d.status) for d in n.results()] == [
        (1, "stage-started", "ok"), (1, "awaiting-review", "ok"), (0, "promoted", "ok"), (1, "promoted", "ok")]


def test_emit_never_raises(receiver, notifiers) -> None:
    r = receiver()
    n = notifiers([Webhook(url=r.url)])
    loop: dict = {}
    loop["self"] = loop
    n.emit("promoted", "odd details", {"obj": object(), "when": datetime(2026, 1, 1)})
    n.emit("promoted", "circular details", loop)
    n.emit("promoted", None, None)  # type: ignore[arg-type]
    assert n.flush(10)
    assert [d.status for d in n.results()] == ["ok", "ok", "ok"]
    assert r.bodies()[0]["details"]["when"] == "2026-01-01 00:00:00"
    n.close()
    n.emit("promoted", "after close: dropped quietly", {})
    nothing = Notifier([], "answer", OWNER)
    nothing.emit("promoted", "no webhooks", {})
    assert nothing.flush(0) and nothing.results() == []


def test_secrets_never_appear_in_reprs_results_or_logs(receiver, notifiers, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # everything, including httpx's own request log (it prints URLs)
    r = receiver()
    token_path = "/services/T0123ABCD/B0456EFGH/xoxbSecretToken123456"
    ok = Webhook(url=f"{r.url.removesuffix('/hook')}{token_path}?token=abc123secret", headers={"X-Api-Key": "sekrit-value-xyz"})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        refused = Webhook(url=f"http://bot:pa55word@127.0.0.1:{sock.getsockname()[1]}{token_path}?token=abc123secret",
                          headers={"Authorization": "Bearer sekrit-bearer-xyz"}, retries=0, format="slack")
        n = notifiers([ok, refused])
        n.emit("rolled-back", "rolled back", {})
        assert n.flush(10)
    # the secrets were really used...
    assert r.requests[0]["path"] == f"{token_path}?token=abc123secret" and r.requests[0]["headers"]["X-Api-Key"] == "sekrit-value-xyz"
    good, bad = n.results()
    assert good.status == "ok" and bad.status == "failed"
    assert "HTTP Request" in caplog.text  # httpx did log its request line: redacted
    try:
        Webhook(url="ftp://bot:pa55word@x/services/T0123ABCD/B0456EFGH/xoxbSecretToken123456")
    except ValidationError as exc:
        invalid = f"{exc} {exc.errors(include_url=False)}"
    # ...and shown nowhere
    shown = "\n".join([
        repr(ok), str(ok), repr(ok.model_dump()), ok.model_dump_json(), repr(refused), str(refused), refused.model_dump_json(),
        json.dumps(refused.model_dump(mode="json")), repr(n), repr(n.results()), json.dumps([d.as_dict() for d in n.results()]),
        "\n".join(d.describe() for d in n.results()), caplog.text, invalid,
    ])
    for secret in ("T0123ABCD", "B0456EFGH", "xoxbSecretToken123456", "abc123secret", "sekrit-value-xyz", "sekrit-bearer-xyz", "pa55word"):
        assert secret not in shown, f"{secret} leaked"
    assert "/services/***/***/***" in bad.url and "could not connect" in bad.reason


def test_importing_the_package_does_not_import_httpx_or_ssl() -> None:
    """The plan model imports rollout.notify; ssl must not be loaded before locust's gevent patch."""
    code = "import sys, rollout.notify; print(sorted(m for m in ('httpx', 'ssl', 'gevent') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


GEVENT_SCRIPT = r"""
import locust  # first, as in the CLI's load commands: gevent monkey-patches threading, socket, time
import json, sys, threading, time
from gevent import monkey
from rollout.notify import Notifier, Webhook

n = Notifier([Webhook(url=sys.argv[1], timeout=3, retries=0)], "answer", {"name": "T", "contact": "t@example.com"})
t0 = time.perf_counter()
n.emit("rolled-back", "all traffic back on v1", {})
emit_s = time.perf_counter() - t0
start = prev = time.perf_counter()
max_gap = 0.0
for _ in range(20):  # the rollback / load loop going on meanwhile: 20 ticks of 50 ms
    time.sleep(0.05)
    now = time.perf_counter()
    max_gap, prev = max(max_gap, now - prev), now
loop_s = prev - start
during = n.results()[0]
flushed = n.flush(20)
print(json.dumps({
    "patched": monkey.is_module_patched("threading") and monkey.is_module_patched("socket"),
    "emit_s": emit_s, "loop_s": loop_s, "max_gap": max_gap,
    "during": [during.status, during.attempts], "flushed": flushed, "final": n.results()[0].as_dict(),
}))
"""


def test_under_gevent_a_hanging_receiver_does_not_stall_the_process(receiver, tmp_path: Path) -> None:
    hanging = receiver(["hang"], hang=10.0)
    script = tmp_path / "gevent_notify.py"
    script.write_text(GEVENT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    out = subprocess.run([sys.executable, str(script), hanging.url], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**env, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["patched"] is True
    assert res["emit_s"] < 0.5
    # the send was in flight during the loop (attempt 1 started, not finished: it lasts 3 s) ...
    assert res["during"] == ["pending", 1] and len(hanging.requests) == 1
    # ... and the loop ran at its own pace: blocked by the send it would take ≥ 3 s
    assert res["loop_s"] < 2.5 and res["max_gap"] < 1.0, res
    assert res["flushed"] is True
    assert res["final"]["status"] == "failed" and "timed out after 3s" in res["final"]["reason"]

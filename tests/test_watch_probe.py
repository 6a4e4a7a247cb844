"""The watch's probe and content gates without processes: plan validation of the new fields (file, line,
field path), the evidence sampler (bounded, keeps the worst, redacts), the content gate's numbers, and the
evidence as a real Alertmanager stores it."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from rollout.errors import PlanInvalid
from rollout.notify import Notifier, Webhook
from rollout.notify.payload import alertmanager as am_payload
from rollout.plan import load_plan
from rollout.plan.watch import Watch
from rollout.watch.evidence import EvidenceSampler, exchange
from rollout.watch.monitor import Monitor
from tests.conftest import write_plan
from tests.test_alertmanager import _active, _wait_for, alertmanager  # noqa: F401  (fixture)

SECRET = "Bearer tok-0123456789abcdefXYZ"


def _with_watch(plan: dict[str, Any], watch: dict[str, Any]) -> dict[str, Any]:
    return {**plan, "watch": watch}


def _issues(tmp_path: Path, data: dict[str, Any]) -> list[Any]:
    path = write_plan(tmp_path, data)
    with pytest.raises(PlanInvalid) as exc:
        load_plan(path)
    return list(exc.value.issues)


def _line_of(tmp_path: Path, needle: str) -> int:
    """The line holding `needle` (a key alone, such as `c:`, must be the whole line)."""
    text = (tmp_path / "plan.yaml").read_text().splitlines()
    return next(n for n, line in enumerate(text, 1) if (line.strip() == needle if needle.endswith(":") else needle in line))


# -- plan validation ----------------------------------------------------------------------


def test_a_valid_probe_and_content_gates_load(tmp_path: Path, base_plan: dict) -> None:
    base_plan["load"]["metrics"] = {"confidence": {"json": "confidence"}}
    data = _with_watch(base_plan, {"probe": {"users": 3, "redact_headers": ["X-Tenant"]},
                                   "gates": {"conf": {"metric": "confidence", "below": 0.7, "max": "5%"},
                                             "conf2": {"json": "answer.score", "below": 0.5, "max": "2%"},
                                             "errors": {"probe": "errors", "max": "1%"}}})
    plan = load_plan(write_plan(tmp_path, data)).plan
    assert plan.watch is not None and plan.watch.probe is not None
    assert plan.watch.probe.users == 3 and plan.watch.probe.evidence == 20 and plan.watch.probe.locustfile is None
    g = plan.watch.gates
    assert g["conf"].content and g["conf"].source == "probe" and g["conf"].below == 0.7 and g["conf"].max == 0.05
    assert g["conf2"].json_field == "answer.score" and not g["errors"].content and g["errors"].source == "probe"


@pytest.mark.parametrize("watch, needle, path, expected", [
    ({"probe": {"users": 9}, "gates": {"e": {"probe": "errors", "max": "1%"}}}, "users: 9", "watch.probe.users", "≤ 5"),
    ({"probe": {"locustfile": "missing.py"}, "gates": {"e": {"probe": "errors", "max": "1%"}}}, "missing.py",
     "watch.probe.locustfile", "an existing locustfile"),
    ({"probe": {"redact_headers": ["a b"]}, "gates": {"e": {"probe": "errors", "max": "1%"}}}, "a b",
     "watch.probe.redact_headers[0]", "header name"),
    ({"probe": {"evidence": 200, "evidence_bytes": 4096}, "gates": {"e": {"probe": "errors", "max": "1%"}}}, "probe:",
     "watch.probe", "at most 64 KiB"),
    ({"gates": {"e": {"probe": "errors", "max": "1%"}}}, "probe: errors", "watch.gates.e.probe", "a `watch.probe` section"),
    ({"probe": {}, "gates": {"c": {"metric": "confidence", "below": 0.7, "max": "5%"}}}, "metric: confidence",
     "watch.gates.c.metric", "declared under load.metrics"),
    ({"probe": {}, "gates": {"c": {"json": "confidence", "max": "5%"}}}, "c:", "watch.gates.c", "`below: VALUE`"),
    ({"probe": {}, "gates": {"c": {"json": "confidence", "below": 0.7, "probe": "errors", "max": "5%"}}}, "c:",
     "watch.gates.c", "exactly one source"),
    ({"probe": {}, "gates": {"c": {"probe": "latency", "max": "5%"}}}, "probe: latency", "watch.gates.c.probe", "errors"),
])
def test_bad_probe_fields_are_named_with_file_line_and_field(tmp_path: Path, base_plan: dict, watch: dict, needle: str,
                                                           path: str, expected: str) -> None:
    issues = _issues(tmp_path, _with_watch(base_plan, watch))
    issue = next((i for i in issues if i.path == path), None)
    assert issue is not None, [i.render() for i in issues]
    assert expected in issue.expected, issue.render()
    assert issue.file.endswith("plan.yaml") and issue.line == _line_of(tmp_path, needle), issue.render()


# -- the evidence sampler -----------------------------------------------------------------


def _build(value: float, big: bool = False) -> Any:
    def build(listed: frozenset[str], max_bytes: int) -> dict[str, Any]:
        body = json.dumps({"confidence": value, "answer": "x" * (10_000 if big else 10), "session_token": "sess-0123456789ab",
                           "echo": SECRET})
        return exchange("POST", f"http://user:pw-9876543210@127.0.0.1:8000/api/answer?q=why+so+unsure&token=abcdef123456&n=3",
                        {"Authorization": SECRET, "X-Tenant": "acme-7731", "Accept": "application/json"},
                        json.dumps({"q": "why", "password": "hunter22"}), 200,
                        {"Content-Type": "application/json", "Set-Cookie": "sid=s3cr3tcookie"}, body.encode(), listed, max_bytes)
    return build


def test_the_sampler_keeps_the_worst_within_its_bound() -> None:
    s = EvidenceSampler(keep=20, max_bytes=256)
    rng = random.Random(7)
    values = [rng.random() * 0.7 for _ in range(2000)]
    built = 0

    def counting(v: float) -> Any:
        def build(listed: frozenset[str], max_bytes: int) -> dict[str, Any]:
            nonlocal built
            built += 1
            return _build(v)(listed, max_bytes)
        return build

    for i, v in enumerate(values):
        s.offer(v, 1000.0 + i, counting(v))
    worst = s.worst()
    assert len(worst) == 20 and s.offered == 2000
    assert [w["value"] for w in worst] == sorted(values)[:20]  # exactly the 20 lowest, lowest first
    assert built < 2000 / 4, built  # only answers that get in are copied and redacted
    # bounded bytes: each body cut to max_bytes (plus the note of its size)
    big = EvidenceSampler(keep=3, max_bytes=256)
    for v in (0.1, 0.2, 0.3, 0.4):
        big.offer(v, 0.0, _build(v, big=True))
    assert len(big) == 3 and [w["value"] for w in big.worst()] == [0.1, 0.2, 0.3]
    for item in big.worst():
        body = item["answer"]["body"]
        assert len(body.split("… (")[0].encode()) <= 256 and body.endswith("bytes)"), body[-40:]
    # nothing kept with keep: 0, but still counted
    none = EvidenceSampler(keep=0)
    none.offer(0.1, 0.0, _build(0.1))
    assert len(none) == 0 and none.offered == 1


def test_the_sampler_redacts_secrets_and_listed_headers() -> None:
    s = EvidenceSampler(keep=5, max_bytes=4096, redact=("X-Tenant",))
    s.offer(0.3, 0.0, _build(0.3))
    item = s.worst()[0]
    text = json.dumps(item)
    for secret in ("tok-0123456789abcdefXYZ", "acme-7731", "pw-9876543210", "abcdef123456", "hunter22", "s3cr3tcookie",
                   "sess-0123456789ab"):
        assert secret not in text, secret
    req, ans = item["request"], item["answer"]
    assert req["headers"] == {"Authorization": "***", "X-Tenant": "***", "Accept": "application/json"}
    assert ans["headers"]["Set-Cookie"] == "***" and ans["headers"]["Content-Type"] == "application/json"
    assert req["url"] == "http://***@127.0.0.1:8000/api/answer?q=why+so+unsure&token=***&n=3"  # the question stays readable
    assert json.loads(req["body"]) == {"q": "why", "password": "***"}
    body = json.loads(ans["body"])
    assert body["confidence"] == 0.3 and body["session_token"] == "***" and "***" in body["echo"]  # an echoed token too
    # the record round trip keeps the order and the bound
    again = EvidenceSampler(keep=5)
    again.restore(s.to_dict())
    assert again.worst() == s.worst() and again.offered == 1


# -- the content gate's numbers, and the evidence in a real Alertmanager -------------------


def test_a_content_gate_says_answers_and_baseline() -> None:
    w = Watch.model_validate({"every": "1s", "false_alarm_every": "1h", "probe": {},
                              "gates": {"low": {"json": "confidence", "below": 0.7, "max": "5%"}}})
    m = Monitor(w)
    m.observe(1000.0, "v2", {"low": (0.0, 0.0)})
    events = []
    bad = total = 0.0
    for t in range(1, 20):
        bad, total = bad + 8, total + 10
        events += m.observe(1000.0 + t, "v2", {"low": (bad, total)})
        if events:
            break
    assert events and events[0].kind == "breach", events
    msg = events[0].message
    assert msg.startswith("v2: answers with confidence < 0.7: 80.00% over the last ") and " answers, baseline 5%, since " in msg, msg


def test_alertmanager_keeps_the_evidence_of_a_content_breach(alertmanager: str) -> None:  # noqa: F811
    s = EvidenceSampler(keep=20, max_bytes=2048)
    for i in range(40):
        s.offer(0.3 + i / 100, 0.0, _build(0.3 + i / 100, big=True))
    details = {"version": "v2", "gate": "low-confidence", "rate": 0.41, "requests": 320, "limit": 0.05,
               "since": time.time() - 60, "ttl": 600, "evidence": s.worst()}
    (alert,) = am_payload("watch-breach", "answer", {"name": "T"}, "answers with confidence < 0.7: 41%", details, time.time())
    kept = json.loads(alert["annotations"]["evidence"])  # valid JSON, however much the sample holds
    assert 1 <= len(kept) < 20 and len(alert["annotations"]["evidence"]) <= 4000
    assert [k["value"] for k in kept] == [w["value"] for w in s.worst()][: len(kept)]  # the worst first
    n = Notifier([Webhook(url=alertmanager, format="alertmanager")], "answer", {"name": "T", "contact": "t@example.com"})
    try:
        n.emit("watch-breach", "answers with confidence < 0.7: 41.00% over the last 320 answers, baseline 5%", details)
        assert n.flush(10)
        (got,) = _wait_for(lambda: _active(alertmanager, "RolloutWatchBreach"))
        stored = json.loads(got["annotations"]["evidence"])
        assert stored[0]["value"] == 0.3 and stored[0]["request"]["headers"]["Authorization"] == "***"
        assert "tok-0123456789" not in json.dumps(got)
    finally:
        n.close(0)


# -- the bake's verdict when the probe saw nothing ---------------------------------------------


class _Counts:
    """A stand-in for the probe's counters (rollout.watch.synthetic.ProbeSource.read): fixed answers per check."""

    def __init__(self, per_check: int, bad_share: float) -> None:
        self.per_check, self.bad_share, self.n = per_check, bad_share, 0
        self.last_error: dict[str, str] = {}
        self.closed = False

    def read(self, name: str, gate: Any, version: str) -> tuple[float, float] | None:
        self.n += self.per_check
        return (self.n * self.bad_share, float(self.n)) if self.per_check else None

    def evidence(self, gate: str, version: str) -> dict[str, Any] | None:
        return {"version": version, "offered": 3, "worst": [{"value": 0.1}]}

    def close(self) -> None:
        self.closed = True


def _bake(probe: Any) -> Any:
    from types import SimpleNamespace

    from rollout.engine.bake import bake

    w = Watch.model_validate({"every": "1s", "false_alarm_every": "1h", "probe": {},
                              "gates": {"low": {"json": "confidence", "below": 0.7, "max": "5%"}}})
    plan = SimpleNamespace(watch=w, bake=SimpleNamespace(duration=10.0))
    t = [1000.0]

    def sleep(s: float) -> None:
        t[0] += max(s, 0.5)

    return bake(plan, "v2", lambda: None, lambda text: None, clock=lambda: t[0], sleep=sleep, probe=probe)


def test_a_bake_whose_probe_saw_nothing_is_not_clean_and_a_content_breach_carries_evidence() -> None:
    assert _bake(None).verdict == "no-evidence"  # the probe could not start: fail closed
    silent = _Counts(0, 0.0)
    r = _bake(silent)
    assert r.verdict == "no-evidence" and silent.closed, r
    assert _bake(_Counts(20, 0.0)).verdict == "clean"
    r = _bake(_Counts(20, 0.8))
    assert r.verdict == "breach" and r.details["evidence"] == [{"value": 0.1}] and r.details["evidence_offending"] == 3, r

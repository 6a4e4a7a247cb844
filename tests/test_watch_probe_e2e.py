"""`rollout watch` with its synthetic probe and a content gate, end to end with real processes: the sample
service's versions behind the local router, the probe's Locust users in the watch's process going through
the router, and a webhook receiver on 127.0.0.1 that records every alert as posted.

- the live version's mean confidence drops 0.9 → 0.6 (every answer still 200 OK): the content gate
  ("answers with confidence < 0.7", baseline 5 %) breaches, the watch reverts to v1, the alert carries the
  worst answers (bounded, secrets and listed headers redacted), and `rollout status` shows them;
- an unchanged version watched for the test's span raises nothing, though the probe counted its answers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, stop_all
from tests.test_alerts_e2e import Receiver
from tests.test_local_e2e import alive
from tests.test_watch_e2e import Env, promote_v2, wait_until

TOKEN = "s3cr3t-probe-token-0123456789"
API_KEY = "K3Y0123456789abcdef"
TENANT = "acme-tenant-7731"
PROBE = f'''
from locust import FastHttpUser, constant, task


class Probe(FastHttpUser):
    wait_time = constant(0.02)  # the watch paces it to probe.rate
    default_headers = {{"Authorization": "Bearer {TOKEN}", "X-Tenant": "{TENANT}"}}

    @task
    def ask(self) -> None:
        self.client.get("/api/answer?q=is+the+model+sure&api_key={API_KEY}", name="/api/answer")
'''


def probe_env(tmp: Path, hook: str, on_breach: str = "revert") -> Env:
    e = Env(tmp, "http://127.0.0.1:9", "http://127.0.0.1:9", on_breach)
    (tmp / "probe.py").write_text(PROBE)
    plan = yaml.safe_load(e.plan.read_text())
    plan["notify"] = [{"url": hook, "format": "json", "retries": 1, "timeout": 3}]
    plan["watch"] = {
        "every": "1s", "false_alarm_every": "1h", "blind_after": "5s", "resend": "5s", "on_breach": on_breach,
        "probe": {"locustfile": "probe.py", "users": 2, "rate": 20, "max_requests": 5000, "evidence": 5,
                  "evidence_bytes": 300, "redact_headers": ["X-Tenant"]},
        "gates": {"low-confidence": {"json": "confidence", "below": 0.7, "max": "5%"},
                  "probe-errors": {"probe": "errors", "max": "5%"}},
    }
    e.plan.write_text(yaml.safe_dump(plan, sort_keys=False))
    return e


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Any]:
    hook = Receiver()
    made: list[Env] = []

    def make(on_breach: str = "revert") -> tuple[Env, Receiver]:
        e = probe_env(tmp_path, hook.url + "/hooks/watch", on_breach)
        made.append(e)
        return e, hook

    try:
        yield make
    finally:
        hook.server.shutdown()
        for e in made:
            stop_all([p for p in e.procs if p.poll() is None])
            pids = [p["pid"] for k in ("stable", "canary") if (p := (e.state_doc().get("backend") or {}).get(k))]
            e.cli("down")
            deadline = time.monotonic() + 15
            while any(alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not [p for p in pids if alive(p)], "processes left after `rollout down`"


def watch(e: Env, *extra: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-m", "rollout", "watch", str(e.plan), *extra], cwd=ROOT,
                         env={**os.environ, **e.env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    e.procs.append(p)
    return p


def record(e: Env) -> dict[str, Any]:
    path = e.state / "watched" / "watch.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def counted(e: Env, gate: str) -> int:
    return int(((record(e).get("gates") or {}).get(gate) or {}).get("detector", {}).get("total_n", 0))


def test_a_confidence_drop_seen_by_the_probe_is_reverted_with_the_worst_answers_as_evidence(setup: Any) -> None:
    e, hook = setup("revert")
    promote_v2(e)
    w = watch(e, "--for", "60s")
    try:
        # the probe reads v2's answers: the gate has evidence of normal answers before anything changes
        assert wait_until(lambda: counted(e, "low-confidence") >= 30, 30), record(e)
        assert e.state_doc()["stable_version"] == "v2"
        degraded_at = time.time()
        e.degrade("v2", confidence=0.6)
        assert wait_until(lambda: e.state_doc()["stable_version"] == "v1", 30), "not reverted"
        reverted_at = time.time()
        breach = wait_until(lambda: [ev for ev in hook.events if ev["event"] == "watch-breach"], 10)
        assert breach, hook.events
        # the revert is done (the canary stopped, said) once the watch judges v1: only then is it stopped
        assert wait_until(lambda: record(e).get("version") == "v1", 30), record(e)
    finally:
        w.send_signal(signal.SIGTERM)
        out, _ = w.communicate(timeout=30)
    alert = breach[0]
    print(f"\nconfidence 0.9 → 0.6: reverted {reverted_at - degraded_at:.1f}s after the change; "
          f"{alert['message']}")
    assert w.returncode == 1, out  # it reverted
    assert out.count("reverted to revision") == 1, out
    d = alert["details"]
    assert d["gate"] == "low-confidence" and d["version"] == "v2"
    assert "answers with confidence < 0.7:" in alert["message"] and "over the last" in alert["message"]
    assert "answers, baseline 5%" in alert["message"], alert["message"]
    # the evidence: at most probe.evidence answers, the lowest first, all offending, secrets redacted
    evidence = d["evidence"]
    assert 1 <= len(evidence) <= 5 and d["evidence_offending"] >= len(evidence), d
    values = [item["value"] for item in evidence]
    assert values == sorted(values) and all(v < 0.7 for v in values), values
    item = evidence[0]
    assert item["request"]["headers"]["Authorization"] == "***" and item["request"]["headers"]["X-Tenant"] == "***"
    assert "api_key=***" in item["request"]["url"] and "q=is+the+model+sure" in item["request"]["url"]
    assert '"confidence":' in item["answer"]["body"] and item["answer"]["status"] == 200
    posted = json.dumps(hook.events)
    assert TOKEN not in posted and API_KEY not in posted and TENANT not in posted
    # the revert is recorded with who = the watch and why = the numbers
    st = e.state_doc()
    rev = [h for h in st["history"] if h["action"] == "revert"]
    assert len(rev) == 1 and rev[0]["who"].startswith("rollout watch") and "confidence < 0.7" in rev[0]["detail"], rev
    # `rollout status` shows the evidence of the reverted version, from the watch's record
    shown = e.cli("status")
    assert shown.returncode == 0, shown.stderr
    assert "Evidence: low-confidence" in shown.stdout and "of v2" in shown.stdout, shown.stdout
    assert "api_key=***" in shown.stdout and TOKEN not in shown.stdout and API_KEY not in shown.stdout
    doc = json.loads(e.cli("status", "-o", "json").stdout)
    kept = doc["watch"]["evidence"]["low-confidence"]
    assert kept["version"] == "v2" and "breach" in kept and len(kept["worst"]) <= 5
    assert TOKEN not in (e.state / "watched" / "watch.json").read_text()


def test_an_unchanged_version_under_the_probe_raises_nothing(setup: Any) -> None:
    e, hook = setup("revert")
    promote_v2(e)
    w = watch(e, "--for", "12s")
    out, _ = w.communicate(timeout=60)
    assert w.returncode == 0, out
    assert "BREACH" not in out and "BLIND:" not in out, out
    assert "probe: 2 user(s) of probe.py" in out, out
    assert counted(e, "low-confidence") >= 60 and counted(e, "probe-errors") >= 60, record(e)  # it did look
    assert not [ev for ev in hook.events if ev["event"].startswith("watch-")], hook.events
    assert e.state_doc()["stable_version"] == "v2"
    assert not (record(e).get("evidence") or {}), "an unchanged version has no offending answers to show"


def test_a_bake_judged_by_the_probe_rolls_back_a_less_confident_version_with_its_evidence(setup: Any) -> None:
    e, hook = setup("revert")
    plan = yaml.safe_load(e.plan.read_text())
    plan["bake"] = {"duration": "40s"}
    e.plan.write_text(yaml.safe_dump(plan, sort_keys=False))
    e.degrade("v2", confidence=0.6)  # every answer 200 OK: the stage's error gate passes, the bake's content gate does not
    started = time.monotonic()
    report_json, report_md = e.plan.parent / "bake-report.json", e.plan.parent / "bake-report.md"
    r = e.cli("run", "--version", "v2", "--json", str(report_json), "--markdown", str(report_md), timeout=120)
    took = time.monotonic() - started
    assert r.returncode == 1, r.stdout + r.stderr
    # the reports carry the bake's ending and its evidence, redacted
    baked = json.loads(report_json.read_text())["bake"]
    assert baked["result"] == "breached" and "answers with confidence < 0.7:" in baked["message"], baked
    assert 1 <= len(baked["evidence"]["answers"]) <= 5 and "offending answers" in baked["evidence"]["summary"], baked
    md = report_md.read_text()
    assert "### Bake" in md and "**breached**" in md and "api_key=***" in md and API_KEY not in md and TOKEN not in md, md
    said = r.stdout + r.stderr  # events go to stderr, the outcome to stdout
    assert "probe: 2 user(s) of probe.py" in said and "bake evidence:" in said and TOKEN not in said, said
    st = e.state_doc()
    assert st["phase"] == "rolled-back" and st["stable_version"] == "v1"
    assert "bake:" in st["reason"] and "answers with confidence < 0.7:" in st["reason"], st["reason"]
    kept = [h for h in st["history"] if h["action"] == "bake-evidence"]
    assert len(kept) == 1 and "api_key=***" in kept[0]["detail"] and API_KEY not in kept[0]["detail"], kept
    failed = wait_until(lambda: [ev for ev in hook.events if ev["event"] == "gate-failed"], 10)
    assert failed and failed[0]["details"]["gate"] == "low-confidence", hook.events
    evidence = failed[0]["details"]["evidence"]
    assert 1 <= len(evidence) <= 5 and all(item["value"] < 0.7 for item in evidence)
    assert TOKEN not in json.dumps(hook.events)
    assert took < 40 + 30, f"the breach ended the bake early ({took:.0f}s)"  # not the whole 40 s bake and then some
    print(f"\nbake: rolled back {took:.1f}s after `rollout run` started (stage 2s + bake until the breach)")

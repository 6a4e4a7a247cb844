"""`rollout watch` end to end with real components: the local backend's versions as processes, a real
Prometheus scraping them (file_sd from the backend's prometheus-targets.json), a real Alertmanager
receiving the alerts, real HTTP traffic through the router, and the CLI as users run it.

Scenarios: a promoted version that starts failing is reverted and its alert fires and resolves; the same
under `on_breach: alert` only alerts (and resolves when the rate is back); an unchanged version raises
nothing; Prometheus down → "blind", never a revert; a SIGKILLed watch goes on from its record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, run_cli, stop_all
from tests.prom import _free_port, prometheus
from tests.test_alertmanager import _active, alertmanager  # noqa: F401  (fixture)
from tests.test_local_e2e import LOCUSTFILE, SERVICE, alive

pytestmark = pytest.mark.slow

LOW_CONFIDENCE = {"bad": 'sum(answer_confidence_bucket{version="{version}",le="0.7"})',
                  "total": 'sum(answer_confidence_count{version="{version}"})'}
ERRORS = {"bad": 'sum(http_requests_total{version="{version}",status="500"})', "total": 'sum(http_requests_total{version="{version}"})'}


class Env:
    def __init__(self, tmp: Path, prom_url: str, am_url: str, on_breach: str = "revert", bake: str | None = None) -> None:
        self.tmp, self.state = tmp, tmp / "state"
        self.control = {v: tmp / f"{v}.control.json" for v in ("v1", "v2")}
        versions = {v: {"command": f"{{python}} {SERVICE} --port {{port}} --version {v} --latency 2ms --error-rate 0% "
                                   f"--seed 4 --control-file {self.control[v]}"} for v in ("v1", "v2")}
        plan = {
            "name": "watched", "owner": {"name": "Watch team", "contact": "watch@example.com"},
            "target": {"backend": "local", "stable": "v1", "versions": versions},
            "load": {"locustfile": str(LOCUSTFILE), "users": 4, "spawn_rate": 4, "max_requests": 20000},
            "gates": {"errors": {"metric": "error_rate", "max": "50%", "min_requests": 10, "method": "threshold"}},
            "stages": [{"name": "half", "weight": 50, "duration": "2s"}],
            "notify": [{"url": am_url, "format": "alertmanager", "retries": 1, "timeout": 3}],
            "watch": {"every": "1s", "false_alarm_every": "1h", "blind_after": "3s", "resend": "5s", "on_breach": on_breach,
                      "gates": {"errors": {"max": "0.5%", "what": "error rate", "prometheus": {"url": prom_url, **ERRORS}},
                                "low-confidence": {"max": "5%", "what": "share of answers below 0.7 confidence",
                                                   "prometheus": {"url": prom_url, **LOW_CONFIDENCE}}}},
        }
        if bake:
            plan["bake"] = {"duration": bake}
        self.plan = tmp / "plan.yaml"
        self.plan.write_text(yaml.safe_dump(plan, sort_keys=False))
        self.env = {"ROLLOUT_STATE_DIR": str(self.state), "ROLLOUT_ACTOR": "pytest"}
        self.procs: list[subprocess.Popen[str]] = []

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_cli(args[0], str(self.plan), *args[1:], env=self.env, timeout=timeout)

    def watch(self, *extra: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, "-m", "rollout", "watch", str(self.plan), *extra], cwd=ROOT,
                             env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        self.procs.append(p)
        return p

    def state_doc(self) -> dict[str, Any]:
        r = self.cli("status", "-o", "json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["state"] or {}

    def entry(self) -> str:
        return f"http://127.0.0.1:{self.state_doc()['backend']['router']['port']}"

    def degrade(self, version: str, **over: float) -> None:
        self.control[version].write_text(json.dumps(over))


class Traffic:
    """Users' traffic through the router: 3 keep-alive clients, bounded in time and count; counts versions seen."""

    def __init__(self, url: str, seconds: float = 150, limit: int = 60_000) -> None:
        self.url, self.deadline, self.limit = url, time.monotonic() + seconds, limit
        self.sent = 0
        self.versions: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(3)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as c:
            while not self.stop.is_set() and time.monotonic() < self.deadline and self.sent < self.limit:
                self.sent += 1
                try:
                    r = c.get("/api/answer", params={"q": "x"})
                    self.versions.append((time.time(), r.headers.get("x-version", "?")))
                except httpx.HTTPError:
                    time.sleep(0.01)
                time.sleep(0.004)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


@pytest.fixture
def env(tmp_path: Path, alertmanager: str) -> Iterator[Any]:  # noqa: F811
    made: list[Env] = []
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()

    def make(on_breach: str = "revert", prom_url: str | None = None, bake: str | None = None) -> Env:
        e = Env(tmp_path, prom_url or make.prom.url, alertmanager, on_breach, bake)
        made.append(e)
        return e

    make.tool_port = _free_port()  # type: ignore[attr-defined]  # a watch's own /metrics, scraped too
    tool_job = {"job_name": "rollout", "static_configs": [{"targets": [f"127.0.0.1:{make.tool_port}"]}]}  # type: ignore[attr-defined]
    with prometheus(prom_dir, targets_file=tmp_path / "state" / "watched" / "prometheus-targets.json", extra_scrape=[tool_job]) as prom:
        make.prom = prom  # type: ignore[attr-defined]
        make.am = alertmanager  # type: ignore[attr-defined]
        yield make
    for e in made:
        stop_all([p for p in e.procs if p.poll() is None])
        pids = [p["pid"] for k in ("stable", "canary") if (p := (e.state_doc().get("backend") or {}).get(k))]
        e.cli("down")
        deadline = time.monotonic() + 15
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if alive(p)], "processes left after `rollout down`"


def wait_until(cond: Any, timeout: float, step: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)


def promote_v2(e: Env) -> None:
    r = e.cli("run", "--version", "v2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert e.state_doc()["stable_version"] == "v2"


def test_a_degrading_promoted_version_is_reverted_and_its_alert_fires_then_resolves(env: Any) -> None:
    e = env("revert")
    promote_v2(e)
    traffic = Traffic(e.entry())
    watch = e.watch("--for", "90s", "--metrics-port", str(env.tool_port))
    try:
        # unchanged: the watch sees v2 and raises nothing
        assert wait_until(lambda: env.prom.query('sum(http_requests_total{version="v2"})'), 30)
        time.sleep(6)
        assert _active(env.am, "RolloutWatchBreach") == []
        assert e.state_doc()["stable_version"] == "v2"
        degraded_at = time.time()
        e.degrade("v2", error_rate=0.02)  # the case: a promoted version starts failing 2 %
        fired = wait_until(lambda: _active(env.am, "RolloutWatchBreach"), 60)
        assert fired, "no breach alert reached Alertmanager"
        labels = fired[0]["labels"]
        assert labels["version"] == "v2" and labels["gate"] == "errors" and labels["plan"] == "watched"
        assert "over the last" in fired[0]["annotations"]["summary"]
        assert wait_until(lambda: e.state_doc()["stable_version"] == "v1", 30), "not reverted"
        reverted_at = time.time()
        # all users on v1 now, and the alert resolved
        assert wait_until(lambda: not _active(env.am, "RolloutWatchBreach"), 20), "the alert did not resolve"
        time.sleep(1.0)
        after = [v for t, v in traffic.versions if t > reverted_at + 0.5]
        assert after and set(after) == {"v1"}, set(after)
        # the watch's own metrics, scraped by the same Prometheus
        assert env.prom.wait_for('rollout_watch_reverts_total{plan="watched"} >= 1', timeout=20)
        assert env.prom.query('rollout_watch_threshold{plan="watched",gate="errors"} > 0')
    finally:
        traffic.close()
        watch.send_signal(signal.SIGTERM)
        out, _ = watch.communicate(timeout=30)
    assert watch.returncode == 1, out  # it reverted
    assert "BREACH" in out and out.count("reverted to revision") == 1, out
    shown = e.cli("status")
    assert "Watch:    watching v1" in shown.stdout, shown.stdout  # the reverted version, judged from scratch
    st = e.state_doc()
    reverts = [h for h in st["history"] if h["action"] == "revert"]
    assert len(reverts) == 1, reverts  # one breach, one revert: not one per gate or per loop over what fires
    rev = reverts[-1]
    assert rev["who"].startswith("rollout watch") and "error rate" in rev["detail"] and "requests" in rev["detail"]
    assert reverted_at - degraded_at < 60


def test_on_breach_alert_only_alerts_and_resolves_when_back_to_normal(env: Any) -> None:
    """The model got worse though every answer is 200 OK: mean confidence 0.9 → 0.6."""
    e = env("alert")
    promote_v2(e)
    traffic = Traffic(e.entry())
    watch = e.watch("--for", "150s")
    try:
        assert wait_until(lambda: env.prom.query('sum(answer_confidence_count{version="v2"})'), 30)
        time.sleep(3)
        e.degrade("v2", confidence=0.6)
        fired = wait_until(lambda: _active(env.am, "RolloutWatchBreach"), 60)
        assert fired and fired[0]["labels"]["gate"] == "low-confidence", fired
        assert "confidence" in fired[0]["annotations"]["summary"]
        assert e.state_doc()["stable_version"] == "v2"  # alert only: nothing reverted
        e.degrade("v2", confidence=0.9)
        assert wait_until(lambda: not _active(env.am, "RolloutWatchBreach"), 110), "the alert did not resolve"
    finally:
        traffic.close()
        watch.send_signal(signal.SIGTERM)
        out, _ = watch.communicate(timeout=30)
    assert "BREACH" in out and "RESOLVED" in out, out
    doc = json.loads(e.cli("status", "-o", "json").stdout)
    assert doc["watch"]["record"]["version"] == "v2" and doc["watch"]["firing"] == []
    assert e.state_doc()["stable_version"] == "v2"
    assert watch.returncode == 0, out  # nothing firing at the end, nothing reverted


def test_a_blind_watch_alerts_and_never_reverts_and_a_killed_watch_goes_on(env: Any) -> None:
    down = f"http://127.0.0.1:{_free_port()}"  # nothing listens: Prometheus is down for this watch
    e = env("revert", prom_url=down)
    promote_v2(e)
    traffic = Traffic(e.entry(), seconds=60)
    try:
        blind = e.watch("--for", "8s")
        out, _ = blind.communicate(timeout=60)
        assert "BLIND" in out and "never reverts" in out, out
        assert wait_until(lambda: _active(env.am, "RolloutWatchBlind"), 10)
        assert e.state_doc()["stable_version"] == "v2" and blind.returncode == 0
        # the same plan against the real Prometheus: a watch SIGKILLed goes on from its record
        e2 = env("revert")
        w = e2.watch()
        record = e2.state / "watched" / "watch.json"
        assert wait_until(lambda: record.exists() and json.loads(record.read_text()).get("checks", 0) >= 6
                          and json.loads(record.read_text())["gates"]["errors"]["detector"]["total_n"] > 0, 60)
        w.kill()
        w.wait(10)
        before = json.loads(record.read_text())
        again = e2.watch("--for", "4s")
        out2, _ = again.communicate(timeout=60)
        after = json.loads(record.read_text())
        assert again.returncode == 0, out2
        assert after["version"] == before["version"] == "v2"
        assert after["checks"] > before["checks"]
        assert after["gates"]["errors"]["detector"]["total_n"] > before["gates"]["errors"]["detector"]["total_n"]
        # "seeing again": the blind alert resolves once a watch (the restarted one, same record) reads its data
        assert "SEEING" in out2 or "SEEING" in (w.stdout.read() if w.stdout else ""), out2
        assert wait_until(lambda: not _active(env.am, "RolloutWatchBlind"), 15), "the blind alert did not resolve"
    finally:
        traffic.close()


def _run_with_traffic(e: Env, *extra: str) -> tuple[subprocess.CompletedProcess[str], Traffic | None, dict[str, int]]:
    """`rollout run --version v2` in the background, users' traffic through the router once it exists;
    returns the run, the traffic, and the pids of both versions seen while the bake ran."""
    proc = subprocess.Popen([sys.executable, "-m", "rollout", "run", str(e.plan), "--version", "v2", *extra], cwd=ROOT,
                            env={**os.environ, **e.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    traffic = None
    pids: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 60
        while traffic is None and time.monotonic() < deadline and proc.poll() is None:
            router = (e.state_doc().get("backend") or {}).get("router") or {}
            if router.get("port"):
                traffic = Traffic(f"http://127.0.0.1:{router['port']}", seconds=120)
            time.sleep(0.2)
        while proc.poll() is None and time.monotonic() < deadline + 60:
            st = e.state_doc()
            history = st.get("history") or [{}]
            baking = history[-1].get("action") == "bake-started"  # not the promotion that follows it
            if baking and st.get("split", {}).get("weight") == 1.0:  # both processes must be alive
                b = st.get("backend") or {}
                pids = {r: b[r]["pid"] for r in ("stable", "canary") if b.get(r)}
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if traffic is not None:
            traffic.close()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, ""), traffic, pids


def test_a_clean_bake_promotes_and_releases_the_previous_version(env: Any) -> None:
    e = env("revert", bake="8s")
    report = e.plan.parent / "clean-bake.json"
    r, traffic, pids = _run_with_traffic(e, "--json", str(report))
    assert r.returncode == 0, r.stdout
    assert "bake of v2 clean" in r.stdout, r.stdout
    baked = json.loads(report.read_text())["bake"]
    assert baked["result"] == "clean" and "bake of v2 clean" in baked["message"] and "evidence" not in baked, baked
    assert set(pids) == {"stable", "canary"}, "during the bake the previous version is kept running"
    st = e.state_doc()
    assert st["stable_version"] == "v2" and st["phase"] == "promoted"
    assert not alive(pids["stable"]), "after a clean bake the previous version is released"
    assert [h["action"] for h in st["history"] if h["action"].startswith("bake")] == ["bake-started", "bake-clean"]


def test_a_breach_during_the_bake_rolls_back_to_the_version_kept_ready(env: Any) -> None:
    e = env("revert", bake="40s")
    e.degrade("v2", error_rate=0.02)  # 2 %: passes the stage's lax gate (50 %), not the watch's 0.5 %
    r, traffic, pids = _run_with_traffic(e)
    assert r.returncode == 1, r.stdout
    st = e.state_doc()
    assert st["phase"] == "rolled-back" and st["stable_version"] == "v1"
    assert "bake:" in st["reason"] and "over the last" in st["reason"], st["reason"]
    assert pids and alive(pids["stable"]), "the version kept ready serves again: the same process, not a restart"
    assert traffic is not None and traffic.versions[-1][1] == "v1"
    assert wait_until(lambda: _active(env.am, "RolloutGateFailed"), 15)

"""Requests to a live rollout on Kubernetes (issue #8): the fake API server, the test gateway carrying
real traffic to real service processes, the driver (`rollout run`) and the operator's command as
separate processes with separate kubeconfig files. The mailbox is ConfigMap rollout-<plan>-requests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.test_k8s_traffic_e2e import ROOT, Fake, fake, gateway, services, through, write_plan  # noqa: F401

LONG = [{"name": "ten", "weight": "10%", "duration": "120s", "min_duration": "2s"}]


def env_for(kubeconfig: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "KUBECONFIG": kubeconfig, "ROLLOUT_ACTOR": "ops@pager"}


class Driver:
    def __init__(self, tmp: Path, fake: Fake, plan: Path) -> None:
        self.kubeconfig = str(tmp / "driver-kubeconfig")
        shutil.copy(fake.kubeconfig, self.kubeconfig)
        env = {**env_for(self.kubeconfig), "ROLLOUT_ACTOR": "ci-job"}
        self.proc = subprocess.Popen([sys.executable, "-m", "rollout", "run", str(plan), "--version", "v2"], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self) -> tuple[str, str]:
        try:
            return self.proc.communicate(timeout=120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def operator(tmp: Path, fake: Fake, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    kc = tmp / "operator-kubeconfig"
    if not kc.exists():
        shutil.copy(fake.kubeconfig, kc)
    return subprocess.run([sys.executable, "-m", "rollout", *args], cwd=ROOT, env=env_for(str(kc)), capture_output=True, text=True,
                          timeout=timeout)


def wait_running(fake: Fake, name: str = "ten", timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = fake.state()
            if st["stages"] and st["stages"][-1]["name"] == name and st["stages"][-1]["status"] == "running":
                return
        except Exception:  # not created yet
            pass
        time.sleep(0.3)
    raise AssertionError("the stage did not start")


class Watcher:
    def __init__(self, url: str) -> None:
        self.seen: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, args=(url,), daemon=True)
        self._t.start()

    def _loop(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=5, trust_env=False) as c:
            deadline = time.monotonic() + 300
            while not self._stop.is_set() and time.monotonic() < deadline:
                sent = time.time()  # when the request left: an answer that is slow to come back was routed before
                try:
                    v = c.get("/api/answer", params={"q": "x"}).headers.get("x-version", "?")
                except httpx.HTTPError:
                    v = "error"
                self.seen.append((sent, v))
                time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=10)


def setup(tmp_path: Path, services: Any, gateway: Any, stages: list[dict[str, Any]], lease: str | None = None) -> tuple[Any, Path]:
    ports = services(v1="0%", v2="0%")
    gw = gateway(route_name="answer", backends={"answer-stable": ports["v1"], "answer-canary": ports["v2"]})
    plan = write_plan(tmp_path, "gateway-api", gw.url, stages)
    if lease:
        data = yaml.safe_load(plan.read_text())
        data["target"]["lease_duration"] = lease
        plan.write_text(yaml.safe_dump(data, sort_keys=False))
    return gw, plan


def test_revert_while_a_driver_runs_on_kubernetes(tmp_path: Path, fake: Fake, services: Any, gateway: Any) -> None:
    gw, plan = setup(tmp_path, services, gateway, LONG)
    drv = Driver(tmp_path, fake, plan)
    w = Watcher(gw.url)
    try:
        wait_running(fake)
        deadline = time.monotonic() + 30
        while not any(v == "v2" for _, v in w.seen):  # the canary really serves its share through the gateway
            assert time.monotonic() < deadline, "no request reached the canary"
            time.sleep(0.1)
        t0 = time.time()
        r = operator(tmp_path, fake, "revert", str(plan), "--reason", "errors in the logs")
        out, err = drv.finish()
        time.sleep(0.5)
    finally:
        w.stop()
        if drv.proc.poll() is None:
            drv.proc.kill()
    assert r.returncode == 0 and "asked it to revert" in r.stderr and "reverted by ops@pager" in r.stdout, r.stdout + r.stderr
    assert drv.proc.returncode == 1 and "reverted by ops@pager" in out, out + err
    # from the request reaching the mailbox: the driver's next tick (<= 1 s), stopping Locust, the HTTPRoute patch, the
    # gateway's watch; from the command's start add Python and the Kubernetes client starting, seconds on a busy 2-core
    # machine (bench/bench_revert_live.py measures command start -> stable); so the bounds here are wide
    posted = next(q["at"] for q in json.loads(fake.call("GET", "/api/v1/namespaces/shop/configmaps/rollout-answer-requests")
                                              ["data"]["requests.json"])["requests"] if q["verb"] == "revert")
    # 10 s: far below the stage's 120 s (a request honoured only at the stage's end fails), wide enough for a starved machine
    late = [at - posted for at, v in w.seen if at > posted + 10.0 and v == "v2"]
    assert not late, f"{len(late)} requests sent to the canary more than 10 s after the revert request was made"
    assert not [at for at, v in w.seen if at > t0 + 20.0 and v == "v2"]
    state = fake.state()
    assert state["phase"] == "rolled-back" and state["split"]["weight"] == 0 and state["driver"] is None
    assert any(h["action"] == "revert" and h["who"] == "ops@pager" and h["reason"] == "errors in the logs" for h in state["history"])
    cm = fake.call("GET", "/api/v1/namespaces/shop/configmaps/rollout-answer-requests")
    assert "revert" in cm["data"]["requests.json"] and '"done"' in cm["data"]["requests.json"]
    assert gw.settle()["weight"] == 0.0 and through(gw, 30) == {"v1": 30}


def test_pause_then_resume_on_kubernetes(tmp_path: Path, fake: Fake, services: Any, gateway: Any) -> None:
    gw, plan = setup(tmp_path, services, gateway, LONG)
    data = yaml.safe_load(plan.read_text())  # a sequential gate passes once credible: the resumed stage ends early
    data["gates"] = {"errors": {"metric": "error_rate", "max": "5%"}}
    plan.write_text(yaml.safe_dump(data, sort_keys=False))
    drv = Driver(tmp_path, fake, plan)
    try:
        wait_running(fake)
        r = operator(tmp_path, fake, "pause", str(plan), "--reason", "checking")
        out, err = drv.finish()
    finally:
        if drv.proc.poll() is None:
            drv.proc.kill()
    assert r.returncode == 0, r.stdout + r.stderr
    assert drv.proc.returncode == 4 and "paused by ops@pager" in out, out + err
    state = fake.state()
    assert state["phase"] == "paused" and state["pause"]["who"] == "ops@pager" and state["split"]["weight"] == 0.1
    assert gw.settle()["weight"] == 0.1  # the split stays while paused
    r = operator(tmp_path, fake, "resume", str(plan), timeout=180)
    assert r.returncode == 0 and "promoted" in r.stdout, r.stdout + r.stderr
    state = fake.state()
    assert state["phase"] == "promoted" and state["stable_version"] == "v2"
    assert [s["status"] for s in state["past"][-1]["stages"]] == ["interrupted", "passed"]


def test_sigkilled_driver_then_revert_acts_after_the_lease_expires(tmp_path: Path, fake: Fake, services: Any, gateway: Any) -> None:
    gw, plan = setup(tmp_path, services, gateway, LONG, lease="3s")
    drv = Driver(tmp_path, fake, plan)
    try:
        wait_running(fake)
        os.kill(drv.proc.pid, signal.SIGKILL)
        drv.proc.wait(timeout=10)
    finally:
        if drv.proc.poll() is None:
            drv.proc.kill()
        drv.finish()
    st = operator(tmp_path, fake, "status", str(plan))
    assert "stopped at" in st.stdout and "without finishing stage 1" in st.stdout, st.stdout
    r = operator(tmp_path, fake, "revert", str(plan), "--timeout", "20")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reverted by ops@pager" in r.stdout
    state = fake.state()
    assert state["phase"] == "rolled-back" and state["split"]["weight"] == 0
    assert gw.settle()["weight"] == 0.0 and through(gw, 20) == {"v1": 20}

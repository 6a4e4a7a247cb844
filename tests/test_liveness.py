"""The canary-alive check (rollout.gates.liveness) on hand-made ticks, and the router counters it reads.

The pure part feeds the check what the engine feeds it every second (the
stage's statistics and a backend probe) and asserts when it fails and why.
The router part runs the real router in front of tests/faulty_service.py and
checks that every request sent to a version is counted for it, answered or not.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollout.backends.local import router_client
from rollout.gates.liveness import CanaryLiveness, CanaryProbe
from rollout.gates.verdict import Status
from rollout.load.stats import StageStats
from tests.test_router import ENV, cfg, faulty_canaries, free_port, start_router, stop, wait_http  # noqa: F401

FAULTY = Path(__file__).resolve().parent / "faulty_service.py"


def counters(routed: int = 0, answered: int = 0, in_flight: int = 0, **kinds: int) -> dict[str, int]:
    return {"routed": routed, "answered": answered, "in_flight": in_flight, **kinds}


class Feed:
    """Drives one CanaryLiveness the way the engine does: a snapshot at 0 s, then one per tick."""

    def __init__(self) -> None:
        self.check = CanaryLiveness("v2", "v1")
        self.stats = StageStats()
        self.check.observe(0.0, self.stats, CanaryProbe("v2", None, {"v1": counters(), "v2": counters()}))

    def tick(self, t: float, canary: dict[str, int], stable: dict[str, int] | None = None, down: str | None = None,
             ok: int = 0, failed: int = 0, stable_ok: int = 0, stable_failed: int = 0) -> Any:
        for role, good, bad in (("canary", ok, failed), ("stable", stable_ok, stable_failed)):
            vs = self.stats.role(role)
            for _ in range(good):
                vs.add(5.0, False)
            for _ in range(bad):
                vs.add(5.0, True)
        probe = CanaryProbe("v2", down, {"v1": stable or counters(), "v2": canary})
        return self.check.observe(t, self.stats, probe)


def test_a_hung_canary_fails_once_a_full_window_has_passed_without_an_answer() -> None:
    f = Feed()
    assert f.tick(1.0, counters(routed=10, in_flight=10)).status is Status.PENDING
    assert f.tick(2.0, counters(routed=10, in_flight=10)).status is Status.PENDING  # not 3 s yet
    v = f.tick(3.02, counters(routed=10, in_flight=10))
    assert v.status is Status.FAIL and v.gate == "canary-alive"
    assert v.message == "canary v2 stopped answering: 0 of 10 requests routed to it answered in 3 s (10 still waiting)"
    assert f.tick(4.0, counters(routed=10, answered=10)).status is Status.FAIL  # a failed canary stays failed


def test_refused_and_reset_requests_are_named_in_the_reason() -> None:
    f = Feed()
    f.tick(1.0, counters(routed=40, refused=40))
    f.tick(2.0, counters(routed=80, refused=60, reset=20))
    v = f.tick(3.0, counters(routed=120, refused=90, reset=30))
    assert v.status is Status.FAIL and "0 of 120 requests routed to it answered in 3 s (90 refused, 30 reset)" in v.message


def test_one_answer_in_the_window_keeps_it_alive_and_old_silence_does_not_count() -> None:
    f = Feed()
    f.tick(1.0, counters(routed=10, answered=1, in_flight=9))
    f.tick(2.0, counters(routed=10, answered=1, in_flight=9))
    assert f.tick(3.0, counters(routed=10, answered=1, in_flight=9)).status is Status.PENDING  # answered at 1 s
    v = f.tick(4.0, counters(routed=10, answered=1, in_flight=9))  # window 1..4 s: nothing answered
    assert v.status is Status.FAIL and "0 of 9 requests" in v.message


def test_too_few_requests_are_no_evidence_and_a_slow_healthy_canary_is_not_failed() -> None:
    f = Feed()
    for t in (1.0, 2.0, 3.0, 4.0):
        assert f.tick(t, counters(routed=2, in_flight=2)).status is Status.PENDING  # below MIN_ROUTED
    g = Feed()  # 400 ms answers: each second some come back
    for t in range(1, 11):
        v = g.tick(float(t), counters(routed=30 * t, answered=30 * t - 12, in_flight=12), ok=30)
        assert v.status is Status.PENDING, v.message
    final = g.check.observe(10.5, g.stats, CanaryProbe("v2", None, {"v1": counters(), "v2": counters(routed=300, answered=300)}), final=True)
    assert final.status is Status.PASS


def test_stable_silent_too_is_not_the_canarys_fault() -> None:
    f = Feed()
    for t in (1.0, 2.0, 3.0):
        v = f.tick(t, counters(routed=10 * t, in_flight=10 * t), stable=counters(routed=90 * t, in_flight=90 * t))
    assert v.status is Status.PENDING


def test_every_request_failing_at_the_client_fails_it_unless_stable_fails_as_much() -> None:
    f = Feed()
    f.stats.last_failure["canary"] = "CatchResponseError: the answer is not JSON"
    for t in (1.0, 2.0):
        f.tick(t, counters(routed=20 * t, answered=20 * t), failed=20, stable_ok=100)
    v = f.tick(3.0, counters(routed=60, answered=60), failed=20, stable_ok=100)
    assert v.status is Status.FAIL
    assert v.message == "canary v2 stopped serving: 0 of 60 requests to it succeeded in 3 s; last failure: CatchResponseError: the answer is not JSON"
    g = Feed()
    for t in (1.0, 2.0, 3.0):
        v = g.tick(t, counters(routed=20 * t, answered=20 * t), failed=20, stable_failed=50)
    assert v.status is Status.PENDING  # everything fails: a shared dependency, not the canary (gates and review say so)
    h = Feed()
    for t in (1.0, 2.0, 3.0):
        v = h.tick(t, counters(routed=20 * t, answered=20 * t), failed=19, ok=1, stable_ok=100)
    assert v.status is Status.PENDING  # one success in the window: evidence for the gates, not for this check


def test_a_canary_reported_down_fails_at_once_with_the_backends_words() -> None:
    f = Feed()
    v = f.tick(1.0, counters(routed=30, answered=20, refused=10), down="process 1234 exited with -9 (killed by SIGKILL)")
    assert v.status is Status.FAIL
    assert v.message == "canary v2 is down: process 1234 exited with -9 (killed by SIGKILL); 20 of 30 requests routed to it answered in 1 s (10 refused)"


def test_without_router_counters_only_the_client_view_and_down_count() -> None:
    check = CanaryLiveness("v2", "v1")
    stats = StageStats()
    check.observe(0.0, stats, None)
    for t in (1.0, 2.0, 3.0):
        v = check.observe(t, stats, CanaryProbe("v2"))  # no traffic seen: nothing to say
    assert v.status is Status.PENDING
    v = check.observe(4.0, stats, CanaryProbe("v2", "Deployment apps/answer-canary has 0 of 2 pods ready"))
    assert v.status is Status.FAIL and "Deployment apps/answer-canary has 0 of 2 pods ready" in v.message


EXIT_DESCRIPTION_SCRIPT = """
import sys, time
from pathlib import Path
from rollout.backends.local import processes as procs
marker = f"rollout-test-liveness-{time.time_ns()}"
log = Path("/tmp") / f"{marker}.log"
proc = procs.spawn([sys.executable, "-c", "import time; time.sleep(60)"], Path.cwd(), log, {}, marker)
rec = procs.record(proc, 0, "v2", "sleep", log, marker)
assert procs.is_alive(rec)
proc.kill()
deadline = time.monotonic() + 10
while procs.is_alive(rec) and time.monotonic() < deadline:
    time.sleep(0.02)
assert not procs.is_alive(rec)
print(proc.pid)
print(procs.exit_description(rec))
stranger = procs.ProcRecord(pid=proc.pid + 10_000_000, start_ticks=1, port=0, version="v2", command="x", log="", marker=marker)
print(procs.exit_description(stranger))
"""


def test_exit_description_of_a_child_killed_by_sigkill() -> None:
    """In a fresh interpreter, as the CLI runs it: in the test process, a library that reaps every child
    (gevent's child watcher, once another test imported locust) can take the exit status first."""
    r = subprocess.run([sys.executable, "-c", EXIT_DESCRIPTION_SCRIPT], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr
    pid, mine, stranger = r.stdout.strip().splitlines()
    assert mine == f"process {pid} exited with -9 (killed by SIGKILL)"
    assert "exit status unknown" in stranger


# --------------------------------------------------------------------------- the router's per-version counters


@pytest.fixture(scope="module")
def faulty_services() -> Any:
    """One faulty canary per mode; yields {mode: port}."""
    yield from faulty_canaries(("hang", "reset", "raw", "unlabelled"))


def test_the_router_counts_every_request_for_its_version_answered_or_not(start_router: Any, faulty_services: dict[str, int]) -> None:
    closed = free_port()
    r = start_router(cfg(faulty_services["unlabelled"], closed, weight=0.0), "--canary-port", "0", "--upstream-timeout", "1.5")
    canary_url = f"http://127.0.0.1:{r.ready['canary_port']}"
    versions = lambda: router_client.get_config(r.admin)["versions"]  # noqa: E731

    def through_canary_listener(mode: str, port: int, n: int = 2) -> list[httpx.Response]:
        router_client.put_config(r.admin, {**cfg(faulty_services["unlabelled"]), "canary": {"version": mode, "port": port}})
        with httpx.Client(base_url=canary_url, timeout=10, trust_env=False) as c:
            return [c.get("/api/answer") for _ in range(n)]

    for resp in through_canary_listener("refusing", closed):
        assert resp.status_code == 502 and resp.headers["x-version"] == "refusing"
    for mode in ("reset", "raw"):
        for resp in through_canary_listener(mode, faulty_services[mode]):
            assert resp.status_code == 502 and resp.headers["x-version"] == mode
    for resp in through_canary_listener("unlabelled", faulty_services["unlabelled"]):
        assert resp.status_code == 200 and resp.headers["x-version"] == "unlabelled"  # labelled by the router

    # a hung request is in flight (routed, not answered) until the upstream timeout
    router_client.put_config(r.admin, {**cfg(faulty_services["unlabelled"]), "canary": {"version": "hang", "port": faulty_services["hang"]}})
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(httpx.get(canary_url + "/api/answer", timeout=10, trust_env=False).status_code))
    t.start()
    deadline = time.monotonic() + 5
    while versions().get("hang", {}).get("in_flight") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    hung = versions()["hang"]
    assert hung == {**hung, "routed": 1, "answered": 0, "in_flight": 1}
    t.join(15)
    assert got == [504]

    v = versions()
    assert v["refusing"]["routed"] == 2 and v["refusing"]["refused"] == 2 and v["refusing"]["answered"] == 0
    assert v["reset"]["routed"] == 2 and v["reset"]["reset"] == 2 and v["reset"]["answered"] == 0
    assert v["raw"]["routed"] == 2 and v["raw"]["malformed"] + v["raw"]["reset"] == 2 and v["raw"]["answered"] == 0
    assert v["hang"] == {**v["hang"], "routed": 1, "timeout": 1, "in_flight": 0, "answered": 0}
    assert v["unlabelled"]["answered"] == 2 and v["unlabelled"]["no_header"] == 2
    cfg_now = router_client.get_config(r.admin)
    assert cfg_now["pinned_requests"] == 9 and cfg_now["requests"] == {"stable": 0, "canary": 0}  # outside the split


def test_the_canary_listener_without_a_canary_answers_503(start_router: Any, faulty_services: dict[str, int]) -> None:
    r = start_router(cfg(faulty_services["unlabelled"]), "--canary-port", "0")
    resp = httpx.get(f"http://127.0.0.1:{r.ready['canary_port']}/api/answer", timeout=10, trust_env=False)
    assert resp.status_code == 503 and "no canary" in resp.text
    assert router_client.get_config(r.admin)["errors"]["no_canary"] == 1


# --------------------------------------------------------------------------- hanging some requests (partial hang)


def hanging(due: int, stuck: int, answered: int, **gauges: int) -> dict[str, int]:
    """Router counters of a version whose answers came due `due` times, `stuck` of them unanswered then
    (and, unless said otherwise, still waiting now: `stuck_now`, as hung requests are)."""
    return counters(routed=due + 10, answered=answered, in_flight=stuck, due=due, stuck=stuck, **{"stuck_now": stuck, **gauges})


def test_a_canary_hanging_a_third_of_its_requests_fails_naming_the_numbers() -> None:
    f = Feed()
    assert f.tick(1.0, hanging(0, 0, 8), stable=hanging(0, 0, 80)).status is Status.PENDING
    assert f.tick(2.0, hanging(0, 0, 14), stable=hanging(0, 0, 160)).status is Status.PENDING  # nothing due yet
    v = f.tick(3.0, hanging(9, 3, 20), stable=hanging(80, 0, 240))
    assert v.status is Status.PENDING, v.message  # 3 stuck: too few to blame anyone
    v = f.tick(4.0, hanging(18, 6, 26, oldest_wait_ms=3900), stable=hanging(160, 0, 320))
    assert v.status is Status.PENDING, v.message  # enough stuck, but waiting for 1 s only: a slow tail looks the same
    v = f.tick(5.0, hanging(27, 9, 32, oldest_wait_ms=4900), stable=hanging(240, 0, 400))
    assert v.status is Status.PENDING, v.message  # still waiting at 2 ticks: not yet the 2 s HUNG_PERSIST
    v = f.tick(6.0, hanging(36, 12, 38, oldest_wait_ms=5900), stable=hanging(320, 0, 480))
    assert v.status is Status.FAIL and v.gate == "canary-alive"
    assert v.message == ("canary v2 leaves requests unanswered: 12 of 36 requests routed to it in 6 s still unanswered after 2 s; "
                         "stable v1: 0 of 320 (12 waiting now, the oldest for 5.9 s)")
    assert v.observed == pytest.approx(12 / 36) and v.requests == 36
    assert f.tick(7.0, hanging(36, 12, 40), stable=hanging(400, 0, 560)).status is Status.FAIL  # stays failed
    assert "unanswered after 2 s" in f.check.describe(f.stats)


def test_the_routers_stuck_after_is_named() -> None:
    f = Feed()
    for t in (1, 2, 3):  # still waiting at every tick of HUNG_PERSIST (2 s)
        probe = CanaryProbe("v2", None, {"v1": hanging(300 * t, 0, 300 * t), "v2": hanging(30 * t, 10 * t, 20 * t)}, stuck_after=0.5)
        v = f.check.observe(float(t), f.stats, probe)
    assert v.status is Status.FAIL and "30 of 90 requests routed to it in 3 s still unanswered after 0.5 s; stable v1: 0 of 900" in v.message


def test_stable_as_stuck_is_a_shared_slowness_not_the_canarys() -> None:
    f = Feed()  # a dependency both use stalls: a third of everyone's requests wait past 2 s
    for t in range(1, 8):
        v = f.tick(float(t), hanging(10 * t, 3 * t, 7 * t), stable=hanging(90 * t, 30 * t, 60 * t))
        assert v.status is Status.PENDING, v.message
    g = Feed()  # stable stalls a little too, but far less than the canary: still the canary's fault
    for t in range(1, 5):
        v = g.tick(float(t), hanging(10 * t, 4 * t, 6 * t), stable=hanging(90 * t, t, 89 * t))
        if v.status is Status.FAIL:
            break
    assert v.status is Status.FAIL and "12 of 30 requests routed to it in 3 s still unanswered after 2 s; stable v1: 3 of 270" in v.message


def test_a_slow_but_healthy_canary_and_a_rare_stuck_request_are_not_failed() -> None:
    f = Feed()  # 1.5 s answers: slow, yet none waits past 2 s
    for t in range(1, 11):
        assert f.tick(float(t), counters(routed=10 * t + 15, answered=10 * t, in_flight=15, due=10 * t, stuck=0), stable=hanging(90 * t, 0, 90 * t)).status is Status.PENDING
    g = Feed()  # 1 in 50 of the canary's requests stuck: under the 10 % share this check is about (the gates judge it)
    for t in range(1, 11):
        v = g.tick(float(t), hanging(50 * t, t, 49 * t), stable=hanging(450 * t, 0, 450 * t))
        assert v.status is Status.PENDING, v.message


def test_a_slow_tail_answered_late_is_not_a_hang() -> None:
    """Many canary requests pass 2 s without an answer (stuck, far more than stable's), but each is answered a
    moment later: never MIN_STUCK of them still waiting at every tick of HUNG_PERSIST s — slow, not hung."""
    f = Feed()
    for t in range(1, 31):
        waiting = 4 if t % 2 else 1  # the gauge dips between ticks: the stuck ones were answered
        v = f.tick(float(t), hanging(20 * t, 3 * t, 17 * t, stuck_now=waiting), stable=hanging(180 * t, 0, 180 * t))
        assert v.status is Status.PENDING, (t, v.message)
    g = Feed()  # the same counters with the stuck requests still waiting: a hang, failed
    for t in range(1, 31):
        v = g.tick(float(t), hanging(20 * t, 3 * t, 17 * t), stable=hanging(180 * t, 0, 180 * t))
        if v.status is Status.FAIL:
            break
    assert v.status is Status.FAIL and "leaves requests unanswered" in v.message


def test_no_stable_traffic_to_compare_with_is_no_verdict() -> None:
    f = Feed()  # a `load_to: canary` stage: nothing tells a hanging canary from a stalled shared dependency
    for t in range(1, 6):
        v = f.tick(float(t), hanging(10 * t, 4 * t, 6 * t), stable=hanging(0, 0, 0))
    assert v.status is Status.PENDING
    final = f.check.observe(6.0, f.stats, CanaryProbe("v2", None, {"v1": hanging(0, 0, 0), "v2": hanging(60, 24, 36)}), final=True)
    assert final.status is Status.PASS


def test_stuck_requests_older_than_the_window_do_not_count() -> None:
    f = Feed()  # 3 stuck every 4 s: 9 of 45 (20 %) over the stage, never more than 3 in a 3 s window
    f.check.stuck_window = 3.0
    for t in range(1, 10):
        v = f.tick(float(t), hanging(5 * t, 3 * (1 + (t - 1) // 4), 5 * t), stable=hanging(90 * t, 0, 90 * t))
        assert v.status is Status.PENDING, v.message


def test_stuck_test_is_a_one_sided_fisher_test() -> None:
    from rollout.gates.liveness import stuck_test

    from math import comb

    assert stuck_test(4, 13, 0, 140) == pytest.approx(comb(13, 4) / comb(153, 4))  # all 4 stuck ones among the canary's 13
    assert stuck_test(5, 20, 1, 180) == pytest.approx(sum(comb(20, k) * comb(180, 6 - k) for k in (5, 6)) / comb(200, 6))
    assert stuck_test(4, 13, 0, 140) < 1e-4 < stuck_test(3, 13, 0, 140)
    assert stuck_test(0, 10, 5, 90) == 1.0
    assert stuck_test(5, 50, 45, 450) > 0.4  # the same share on both sides is no evidence


def test_the_router_counts_requests_stuck_past_its_threshold_per_version(start_router: Any) -> None:
    """A canary leaving 3 of every 10 requests unanswered, a healthy stable, half the traffic each, 20 requests
    at once: both versions' answers come due, the canary's 3 hung ones are stuck (and waiting), stable's none."""
    services: list[subprocess.Popen[bytes]] = []
    ports = []
    try:
        for version, fault in (("v1", "ok"), ("v2", "partial-hang")):
            port = free_port()
            services.append(subprocess.Popen([sys.executable, str(FAULTY), "--port", str(port), "--version", version, "--fault", fault,
                                              "--latency", "0", "--hang-share", "0.3"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            ports.append(port)
        for proc, port in zip(services, ports):
            wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        r = start_router(cfg(ports[0], ports[1], weight=0.5), "--stuck-after", "0.5", "--upstream-timeout", "4")
        url = f"http://127.0.0.1:{r.ready['port']}/api/answer"
        got: list[int] = []
        threads = [threading.Thread(target=lambda: got.append(httpx.get(url, timeout=15, trust_env=False).status_code)) for _ in range(20)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cfg_now = router_client.get_config(r.admin)
            v = cfg_now["versions"]
            if v.get("v1", {}).get("due") == 10 and v.get("v2", {}).get("due") == 10 and v["v2"]["stuck"] == 3:
                break
            time.sleep(0.05)
        assert cfg_now["router"]["stuck_after_s"] == 0.5
        assert v["v1"] == {**v["v1"], "routed": 10, "answered": 10, "due": 10, "stuck": 0, "stuck_now": 0, "in_flight": 0}
        assert v["v2"] == {**v["v2"], "routed": 10, "answered": 7, "due": 10, "stuck": 3, "stuck_now": 3, "in_flight": 3}
        assert 500 <= v["v2"]["oldest_wait_ms"] < 4500
        for t in threads:
            t.join(20)
        assert sorted(got) == [200] * 17 + [504] * 3  # the hung ones end at the upstream timeout
        v = router_client.get_config(r.admin)["versions"]
        assert v["v2"] == {**v["v2"], "stuck": 3, "stuck_now": 0, "timeout": 3, "in_flight": 0, "oldest_wait_ms": 0}  # stuck stays counted
    finally:
        for proc in services:
            stop(proc)


def test_the_router_refuses_a_stuck_after_that_is_not_a_positive_number(tmp_path: Path) -> None:
    config = tmp_path / "r.json"
    config.write_text('{"stable": {"version": "v1", "port": 9}}')
    for bad in ("0", "-1", "nan", "inf"):
        r = subprocess.run([sys.executable, "-m", "rollout.backends.local.router", "--port", "0", "--admin-port", "0",
                            "--config", str(config), "--stuck-after", bad], env=ENV, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "--stuck-after must be a positive number" in r.stderr, (bad, r.stderr)


def test_a_plan_that_accepts_slow_answers_turns_the_partial_hang_rule_off() -> None:
    """A p95 limit of 1.5 s accepts a tail past 2 s: a canary slower than stable yet within it is not failed here."""
    for slowest_ms, expected in ((1500.0, Status.PENDING), (1000.0, Status.PENDING), (250.0, Status.FAIL), (None, Status.FAIL)):
        check = CanaryLiveness("v2", "v1", slowest_ms=slowest_ms)
        stats = StageStats()
        check.observe(0.0, stats, CanaryProbe("v2", None, {"v1": counters(), "v2": counters()}))
        for t in (1, 2, 3):  # the stuck ones still waiting at every tick of HUNG_PERSIST
            v = check.observe(float(t), stats, CanaryProbe("v2", None, {"v1": hanging(300 * t, 0, 300 * t), "v2": hanging(30 * t, 10 * t, 20 * t)}))
        assert v.status is expected, (slowest_ms, v.message)

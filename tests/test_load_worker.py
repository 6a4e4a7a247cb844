"""`rollout load-worker`: Locust workers started on their own (as on other machines) join a `rollout gate` master.

The master is `rollout gate --expect-workers N --master-bind HOST:PORT`; it starts no worker and waits for N
`rollout load-worker --master HOST:PORT` processes. A small server on 127.0.0.1 answers alternately as v1 and v2
and counts what it served, per version and per worker process (the locustfile sends its pid): the gate's
per-version totals must equal the server's counts exactly, and both workers must have sent load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, stop_all, write_plan
from tests.test_gate import free_port

LOCUSTFILE = """
import os
from locust import HttpUser, constant, task

class Worker(HttpUser):
    wait_time = constant(0.05)

    @task
    def work(self):
        self.client.get("/work", headers={"X-Worker-Pid": str(os.getpid())})
"""


class Counting(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.served = 0
        self.by_version: Counter[str] = Counter()
        self.by_worker: Counter[str] = Counter()


class Handler(BaseHTTPRequestHandler):
    server: Counting

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        with self.server.lock:
            version = "v1" if self.server.served % 2 == 0 else "v2"
            self.server.served += 1
            if self.path == "/work":  # the load; the gate's own probe (GET /) is not counted
                self.server.by_version[version] += 1
                self.server.by_worker[self.headers.get("X-Worker-Pid", "?")] += 1
        body = b"ok"
        self.send_response(200)
        self.send_header("X-Version", version)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Counting]:
    srv = Counting()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def plan_for(tmp_path: Path) -> Path:
    (tmp_path / "load.py").write_text(LOCUSTFILE)
    return write_plan(tmp_path, {
        "name": "svc",
        "owner": {"name": "Team", "contact": "team@example.com"},
        "target": {"backend": "local", "stable": "v1",
                   "versions": {"v1": {"command": "{python} s.py --port {port}"}, "v2": {"command": "{python} s.py --port {port}"}}},
        "load": {"locustfile": "load.py", "users": 4},
        "gates": {"errors": {"metric": "error_rate", "max": "5%"}},
        "stages": [{"name": "ten", "weight": 10, "duration": "4s"}],
    })


def load_worker(master: str, locustfile: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "rollout", "load-worker", "--master", master, "--locustfile", str(locustfile)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_separately_started_workers_join_the_gate_and_every_request_is_counted_for_its_version(server: Counting, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}"
    plan = plan_for(tmp_path)
    port = free_port()
    master = subprocess.Popen([sys.executable, "-m", "rollout", "gate", str(plan), "--host", url, "--quiet", "--expect-workers", "2",
                               "--master-bind", f"127.0.0.1:{port}", "--ready-timeout", "60", "--json", str(tmp_path / "r.json")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**_env(), "GITHUB_STEP_SUMMARY": ""})
    workers: list[subprocess.Popen[str]] = []
    try:
        time.sleep(0.5)  # either order works; workers retry until the master listens
        workers = [load_worker(f"127.0.0.1:{port}", tmp_path / "load.py") for _ in range(2)]
        out, err = master.communicate(timeout=120)
        assert master.returncode == 0, out + err
        # the master's quit ends the workers (as a Locust master ends its workers)
        codes = [w.wait(timeout=30) for w in workers]
        assert codes == [0, 0], [w.stdout.read() if w.stdout else "" for w in workers]
    finally:
        stop_all([p for p in (master, *workers) if p.poll() is None])
    stage = json.loads((tmp_path / "r.json").read_text())["stages"][0]
    stats = stage["stats"]
    assert stage["workers"] == 2, stage["workers"]
    assert_totals_match_the_service(stats, server)
    assert stats["v1"]["requests"] > 20 and stats["v2"]["requests"] > 20, stats
    assert len(server.by_worker) == 2 and min(server.by_worker.values()) > 10, server.by_worker  # both workers sent load


def test_too_few_workers_is_exit_3_naming_how_many_joined(server: Counting, tmp_path: Path) -> None:
    plan = plan_for(tmp_path)
    port = free_port()
    master = subprocess.Popen([sys.executable, "-m", "rollout", "gate", str(plan), "--host", f"http://127.0.0.1:{server.server_address[1]}", "--quiet", "--expect-workers", "2",
                               "--master-bind", f"127.0.0.1:{port}", "--ready-timeout", "8"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**_env(), "GITHUB_STEP_SUMMARY": ""})
    worker = load_worker(f"127.0.0.1:{port}", tmp_path / "load.py")
    try:
        out, err = master.communicate(timeout=90)
        assert master.returncode == 3, out + err
        assert f"1 of 2 external Locust worker(s) joined the master at 127.0.0.1:{port} within 8s" in err, err
        assert "Traceback" not in err
        assert worker.wait(timeout=30) == 0  # told to quit by the master that gave up
    finally:
        stop_all([p for p in (master, worker) if p.poll() is None])
    assert server.by_version == Counter()  # no load was run


@pytest.mark.parametrize("args, message", [
    (["gate", "--master-bind", "127.0.0.1:5557"], "--master-bind is for external workers"),
    (["gate", "--expect-workers", "2", "--workers", "2"], "either local worker processes or external ones"),
    (["gate", "--expect-workers", "2", "--master-bind", "127.0.0.1:notaport"], "expected HOST:PORT"),
    (["load-worker", "--master", "127.0.0.1"], "--master '127.0.0.1': expected HOST:PORT"),
    (["load-worker", "--master", "127.0.0.1:5557", "--locustfile", "/nonexistent/load.py"], "locustfile /nonexistent/load.py does not exist"),
])
def test_bad_worker_options_are_exit_2(server: Counting, tmp_path: Path, args: list[str], message: str) -> None:
    if args[0] == "gate":
        args = [args[0], str(plan_for(tmp_path)), "--host", f"http://127.0.0.1:{server.server_address[1]}", *args[1:]]
    r = run_cli(*args, timeout=60)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert server.by_version == Counter()


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_run_with_external_workers_routes_and_attributes_a_cohort_stage(tmp_path: Path) -> None:
    """`rollout run --expect-workers 2` on the local backend: workers started with no plan get the cohort stage's
    settings from the master (cohort user classes, version header, roles), so every cohort request is counted
    for the canary and every other for stable, as with local workers (tests/test_gate_workers.py)."""
    from tests.test_local_e2e import LOCUSTFILE as E2E_LOCUSTFILE
    from tests.test_local_e2e import Rollout, make_plan

    ro = Rollout(make_plan(tmp_path, [{"name": "payments", "cohort": {"x-team": "payments"}, "weight": 0, "duration": "4s"}], gates={}),
                 tmp_path / "state")
    port = free_port()
    master = subprocess.Popen([sys.executable, "-m", "rollout", "run", str(ro.plan), "--version", "v2", "--expect-workers", "2",
                               "--master-bind", f"127.0.0.1:{port}", "--ready-timeout", "90", "--json", str(tmp_path / "r.json")],
                              cwd=ROOT, env={**_env(), **ro.env, "GITHUB_STEP_SUMMARY": ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [load_worker(f"127.0.0.1:{port}", Path(E2E_LOCUSTFILE)) for _ in range(2)]
    try:
        out, err = master.communicate(timeout=180)
        assert master.returncode == 0, out + err
        assert [w.wait(timeout=30) for w in workers] == [0, 0]
        stage = json.loads((tmp_path / "r.json").read_text())["stages"][0]
        routing = stage["stats"]["cohort_routing"]
        assert routing.get("cohort->canary", 0) >= 10 and routing.get("other->stable", 0) >= 30, routing
        assert routing.get("cohort->stable", 0) == 0 and routing.get("other->canary", 0) == 0, routing
        assert stage["stats"].get("unknown", {}).get("requests", 0) == 0, stage["stats"]
    finally:
        stop_all([p for p in (master, *workers) if p.poll() is None])
        ro("down")


def test_a_worker_that_joins_late_gets_the_stage_and_its_requests_are_attributed(server: Counting, tmp_path: Path) -> None:
    """`--expect-workers 1`, a second worker joins once the load runs: Locust gives it users, and the master has
    sent it the stage's settings first (on `worker_connect`), so its requests are counted per version too."""
    url = f"http://127.0.0.1:{server.server_address[1]}"
    plan = plan_for(tmp_path)
    port = free_port()
    master = subprocess.Popen([sys.executable, "-m", "rollout", "gate", str(plan), "--host", url, "--quiet", "--expect-workers", "1",
                               "--master-bind", f"127.0.0.1:{port}", "--ready-timeout", "60", "--duration", "12s", "--json", str(tmp_path / "r.json")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**_env(), "GITHUB_STEP_SUMMARY": ""})
    workers = [load_worker(f"127.0.0.1:{port}", tmp_path / "load.py")]
    try:
        deadline = time.monotonic() + 60
        while not server.by_worker and time.monotonic() < deadline:  # the stage runs on the first worker
            time.sleep(0.1)
        assert server.by_worker, "the first worker sent nothing"
        workers.append(load_worker(f"127.0.0.1:{port}", tmp_path / "load.py"))
        out, err = master.communicate(timeout=120)
        assert master.returncode == 0, out + err
        assert [w.wait(timeout=30) for w in workers] == [0, 0]
    finally:
        stop_all([p for p in (master, *workers) if p.poll() is None])
    stats = json.loads((tmp_path / "r.json").read_text())["stages"][0]["stats"]
    assert len(server.by_worker) == 2 and min(server.by_worker.values()) > 5, server.by_worker  # the late one got users
    assert_totals_match_the_service(stats, server)


def assert_totals_match_the_service(stats: dict, server: Counting) -> None:
    """The gate's per-version totals are what the service served, short by at most the requests Locust cut off.

    A user killed in the middle of a task (at the stage's end or when a rebalance takes it away: Locust's
    stop_timeout 0) may have had a request on the wire that the service counted and that fired no request event;
    the report counts those users (`cut_mid_task`). So: never more than the service served, every request
    attributed to its version, and the shortfall no larger than the cut count (0 when nobody was cut)."""
    counted = {v: stats.get(v, {}).get("requests", 0) for v in ("v1", "v2", "unknown")}
    cut = int(stats.get("cut_mid_task", 0))
    assert counted["unknown"] == 0, counted  # every request attributed (the late worker had the roles)
    for v in ("v1", "v2"):
        assert counted[v] <= server.by_version[v], (counted, server.by_version)
    short = sum(server.by_version[v] - counted[v] for v in ("v1", "v2"))
    assert short <= cut, f"the gate counted {counted}, the service served {dict(server.by_version)}: {short} short, only {cut} users cut mid-task"
    print(f"gate counted {counted}, service served {dict(server.by_version)}, per worker {dict(server.by_worker)}, "
          f"{short} short, {cut} users cut mid-task")


def test_workers_joining_mid_stage_are_counted_exactly(server: Counting, tmp_path: Path) -> None:
    """2 `rollout load-worker`s at the start, a third joins mid-stage (Locust rebalances users onto it): the gate's
    per-version totals equal what the service counted, less at most the users cut off mid-request.

    Before the fix the late worker's first users (spawned before its `init`, of the locustfile's own class) could
    not be stopped once the stage's classes replaced it: they ran past the stage's end, and 1-4 % of the requests
    per version the service served never reached the gate."""
    url = f"http://127.0.0.1:{server.server_address[1]}"
    plan = plan_for(tmp_path)
    port = free_port()
    master = subprocess.Popen([sys.executable, "-m", "rollout", "gate", str(plan), "--host", url, "--quiet", "--expect-workers", "2",
                               "--master-bind", f"127.0.0.1:{port}", "--ready-timeout", "60", "--duration", "10s", "--users", "6",
                               "--json", str(tmp_path / "r.json")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**_env(), "GITHUB_STEP_SUMMARY": ""})
    workers = [load_worker(f"127.0.0.1:{port}", tmp_path / "load.py") for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while len(server.by_worker) < 2 and time.monotonic() < deadline:  # the stage runs on both first workers
            time.sleep(0.1)
        assert len(server.by_worker) == 2, f"the first workers did not both send load: {dict(server.by_worker)}"
        workers.append(load_worker(f"127.0.0.1:{port}", tmp_path / "load.py"))
        out, err = master.communicate(timeout=120)
        assert master.returncode == 0, out + err
        assert [w.wait(timeout=30) for w in workers] == [0, 0, 0]
    finally:
        stop_all([p for p in (master, *workers) if p.poll() is None])
    stats = json.loads((tmp_path / "r.json").read_text())["stages"][0]["stats"]
    assert len(server.by_worker) == 3 and min(server.by_worker.values()) > 5, server.by_worker  # the late one got users
    assert_totals_match_the_service(stats, server)
    assert stats["v1"]["requests"] > 50 and stats["v2"]["requests"] > 50, stats


def test_a_master_address_in_use_is_exit_3(server: Counting, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("gate", str(plan_for(tmp_path)), "--host", f"http://127.0.0.1:{server.server_address[1]}", "--quiet",
                    "--expect-workers", "1", "--master-bind", f"127.0.0.1:{port}", env={"GITHUB_STEP_SUMMARY": ""}, timeout=60)
    assert r.returncode == 3 and f"the Locust master cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert server.by_version == Counter()


ADOPT = """
import locust  # first: gevent's monkey-patching
import json, sys
import gevent
from locust import HttpUser, constant, task
from locust.env import Environment
from rollout.load.runner import LoadSpec, user_classes_for
from rollout.load.worker_plugin import adopt_running_users
from pathlib import Path

host, adopt = sys.argv[1], sys.argv[2] == "adopt"

class Worker(HttpUser):  # the locustfile's class, as a late worker's first users have it
    wait_time = constant(0.02)
    host = sys.argv[1]

    @task
    def work(self):
        self.client.get("/work")

env = Environment(user_classes=[Worker])
runner = env.create_local_runner()
runner.start(4, spawn_rate=100)
gevent.sleep(0.5)
# the stage's settings arrive: same-named subclasses replace the locustfile's class (worker_plugin.set_classes)
env.user_classes = user_classes_for(LoadSpec(locustfile=Path("-"), host=host, users=0, spawn_rate=1, duration=0), [Worker])
changed = adopt_running_users(runner, env.user_classes) if adopt else 0
runner.stop()
left = sum(1 for g in runner.user_greenlets if not g.dead)
runner.user_greenlets.kill(block=True)  # bounded: whatever is left ends here
print(json.dumps({"changed": changed, "left": left}))
"""


@pytest.mark.parametrize("adopt", [True, False])
def test_users_spawned_before_the_stage_classes_are_stopped_with_the_stage(server: Counting, adopt: bool) -> None:
    """Locust stops users by class identity: users of the locustfile's own class (a late worker's first ones) are
    left running by a stop once same-named stage classes replace it -- unless `adopt_running_users` gives them the
    new class. Without it (the control) they survive the stop: the bug behind the short totals of a late join."""
    r = subprocess.run([sys.executable, "-c", ADOPT, f"http://127.0.0.1:{server.server_address[1]}", "adopt" if adopt else "plain"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert sum(server.by_version.values()) > 0  # the users did run
    if adopt:
        assert out == {"changed": 4, "left": 0}, out
    else:
        assert out == {"changed": 0, "left": 4}, out


def test_a_worker_joining_a_cohort_stage_runs_the_cohort_users(tmp_path: Path) -> None:
    """`rollout run --expect-workers 1`, a cohort stage, a second worker joins mid-stage. Locust tells it to spawn
    `<User>Cohort` users while it connects, before the stage's settings have defined that class there: it used to
    die on the unknown name (KeyError, exit 2, its load lost). Now its spawn waits for the stage's classes: both
    workers exit 0 and every cohort request went to the canary, every other one to stable."""
    from tests.test_local_e2e import LOCUSTFILE as E2E_LOCUSTFILE
    from tests.test_local_e2e import Rollout, make_plan

    ro = Rollout(make_plan(tmp_path, [{"name": "payments", "cohort": {"x-team": "payments"}, "weight": 0, "duration": "15s"}], gates={}),
                 tmp_path / "state")
    port = free_port()
    master = subprocess.Popen([sys.executable, "-m", "rollout", "run", str(ro.plan), "--version", "v2", "--expect-workers", "1",
                               "--master-bind", f"127.0.0.1:{port}", "--ready-timeout", "90", "--json", str(tmp_path / "r.json")],
                              cwd=ROOT, env={**_env(), **ro.env, "GITHUB_STEP_SUMMARY": ""}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [load_worker(f"127.0.0.1:{port}", Path(E2E_LOCUSTFILE))]
    try:
        deadline = time.monotonic() + 90
        state = tmp_path / "state"
        while time.monotonic() < deadline and master.poll() is None:  # the stage has started (its load waits for worker 1)
            if any("stage-started" in p.read_text(errors="replace") for p in state.rglob("*.json")):
                break
            time.sleep(0.2)
        time.sleep(5)  # worker 1 has joined and runs the users, well inside the 15 s stage
        workers.append(load_worker(f"127.0.0.1:{port}", Path(E2E_LOCUSTFILE)))
        out, err = master.communicate(timeout=180)
        assert master.returncode == 0, out + err
        codes = [w.wait(timeout=30) for w in workers]
        assert codes == [0, 0], [(w.stdout.read() if w.stdout else "")[-2000:] for w in workers]
        stage = json.loads((tmp_path / "r.json").read_text())["stages"][0]
        routing = stage["stats"]["cohort_routing"]
        assert routing.get("cohort->canary", 0) >= 10 and routing.get("other->stable", 0) >= 30, routing
        assert routing.get("cohort->stable", 0) == 0 and routing.get("other->canary", 0) == 0, routing
        assert stage["stats"].get("unknown", {}).get("requests", 0) == 0, stage["stats"]
    finally:
        stop_all([p for p in (master, *workers) if p.poll() is None])
        ro("down")

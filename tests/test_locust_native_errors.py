"""A broken load says so plainly (#9): bad locustfiles are bad input (exit 2, also from `rollout validate`,
which imports the locustfile in a subprocess with a timeout); a locustfile that makes no request is exit 3
with the reason; listener exceptions are reported; a failing endpoint and its error message appear in every
report format (console, JSON, Markdown, HTML, JUnit)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli, stop_all
from tests.test_gate import free_port, start_service

OK = "from locust import HttpUser, task, constant\n\nclass U(HttpUser):\n    wait_time = constant(0.05)\n\n    @task\n    def t(self):\n        self.client.get('/api/answer')\n"


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    proc, url = start_service("v1", latency="2ms")
    try:
        yield url
    finally:
        stop_all([proc])


def gate(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return run_cli("gate", "--quiet", *args, env={"GITHUB_STEP_SUMMARY": "", **(env or {})}, timeout=120)


@pytest.mark.parametrize("source,extra,message", [
    ("def broken(:\n", [], "failed to import: SyntaxError"),
    ("import locust\nX = 1\n", [], "defines no User class"),
    (OK, ["--shape", "Ramp"], "has no LoadTestShape class `Ramp` (it has: none)"),
    (OK, ["--tags", "checkout"], "checkout tag no task of"),
])
def test_a_bad_locustfile_is_bad_input_before_any_load(tmp_path: Path, source: str, extra: list[str], message: str) -> None:
    lf = tmp_path / "lf.py"
    lf.write_text(source)
    r = gate("--host", f"http://127.0.0.1:{free_port()}", "-f", str(lf), "-t", "2s", "--gate", "errors<1%", *extra)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_locustfile_that_makes_no_request_is_exit_3_with_the_reason(service: str, tmp_path: Path) -> None:
    lf = tmp_path / "idle.py"
    lf.write_text("from locust import HttpUser, task, constant\n\nclass U(HttpUser):\n    wait_time = constant(0.5)\n\n    @task\n    def t(self):\n        pass\n")
    r = gate("--host", service, "-f", str(lf), "-t", "3s", "--gate", "errors<1%", "--json", str(tmp_path / "r.json"))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "the locustfile made no requests in 3 s" in r.stderr and "check its tasks, wait_time and event listeners" in r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["outcome"]["exit_code"] == 3


def test_listener_exceptions_are_reported_and_an_init_failure_stops_the_load(service: str, tmp_path: Path) -> None:
    lf = tmp_path / "raises.py"
    lf.write_text(OK + "\nfrom locust import events\n\n@events.test_start.add_listener\ndef boom(environment, **kw):\n    raise ValueError('boom in test_start')\n")
    r = gate("--host", service, "-f", str(lf), "-t", "2s", "--gate", "errors<1%", "--min-requests", "5", "--json", str(tmp_path / "r.json"),
             "--markdown", str(tmp_path / "r.md"))
    assert r.returncode == 0, r.stdout + r.stderr  # Locust carries on after a listener error; so does the load
    assert "a listener of the locustfile raised: ValueError: boom in test_start" in r.stderr
    ep = json.loads((tmp_path / "r.json").read_text())["stages"][0]["stats"]["endpoints"]
    assert any("boom in test_start" in e for e in ep["listener_errors"])
    assert "boom in test_start" in (tmp_path / "r.md").read_text()
    lf.write_text(OK + "\nfrom locust import events\n\n@events.init.add_listener\ndef boom(environment, **kw):\n    raise RuntimeError('no test data')\n")
    r = gate("--host", service, "-f", str(lf), "-t", "2s", "--gate", "errors<1%")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "an `init` listener of raises.py raised: RuntimeError: no test data" in r.stderr


def test_a_failing_endpoint_and_its_error_appear_in_every_report_format(service: str, tmp_path: Path) -> None:
    lf = tmp_path / "two.py"
    lf.write_text(OK.replace("    def t(self):\n        self.client.get('/api/answer')\n",
                             "    def t(self):\n        self.client.get('/api/answer')\n\n    @task\n    def login(self):\n"
                             "        self.client.post('/authenticate', name='/authenticate')\n"))
    out = {k: tmp_path / f"r.{k}" for k in ("json", "xml", "md", "html")}
    r = run_cli("gate", "--host", service, "-f", str(lf), "-u", "3", "-t", "3s", "--gate", "errors<5%", "--min-requests", "20",
                "--json", str(out["json"]), "--junit", str(out["xml"]), "--markdown", str(out["md"]), "--html", str(out["html"]),
                env={"GITHUB_STEP_SUMMARY": ""}, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    error = "404 Client Error: Not Found for url: /authenticate"
    # console
    assert "/authenticate" in r.stdout and "404 Client Error" in r.stdout and "/api/answer" in r.stdout
    # JSON: per-endpoint rows (requests, failures, percentiles) and the failures table, per version
    ep = json.loads(out["json"].read_text())["stages"][0]["stats"]["endpoints"]
    rows = {(e["method"], e["name"]): e for e in ep["endpoints"]}
    assert rows[("POST", "/authenticate")]["failures"] == rows[("POST", "/authenticate")]["requests"] > 0
    assert rows[("GET", "/api/answer")]["failures"] == 0 and rows[("GET", "/api/answer")]["p95_ms"] > 0
    fail = ep["failures"][0]
    assert (fail["method"], fail["name"], fail["version"]) == ("POST", "/authenticate", "v1") and "404 Client Error" in fail["error"]
    assert fail["count"] == rows[("POST", "/authenticate")]["failures"]
    # Markdown and HTML: both tables
    for fmt in ("md", "html"):
        text = out[fmt].read_text()
        assert "/authenticate" in text and "404 Client Error" in text and "/api/answer" in text, fmt
    # JUnit: the failing gate's message names the top failing endpoint and its error
    failure = ET.parse(out["xml"]).getroot().find(".//failure")
    assert failure is not None and "POST /authenticate (v1)" in failure.get("message", "") and "404 Client Error" in failure.get("message", "")
    assert error.split(":")[0] in failure.get("message", "")


def write_plan(tmp: Path, load: dict, lf_source: str = OK) -> Path:
    (tmp / "lf.py").write_text(lf_source)
    plan = {"name": "p", "owner": {"name": "T", "contact": "t@example.com"},
            "target": {"backend": "local", "stable": "v1", "versions": {"v1": {"command": "x {port}"}, "v2": {"command": "x {port}"}}},
            "load": {"locustfile": "lf.py", "users": 2, **load}, "stages": [{"name": "s", "weight": 10, "duration": "5s"}]}
    p = tmp / "plan.yaml"
    p.write_text(yaml.safe_dump(plan, sort_keys=False))
    return p


@pytest.mark.parametrize("load,source,expected", [
    ({"shape": "Ramp"}, OK, "load.shape: found 'Ramp'; expected a LoadTestShape class of the locustfile (it has none)"),
    ({"tags": ["checkout"]}, OK, "load.tags: found 'checkout'"),
    ({"options": {"no-such-option": "1"}}, OK, "load.options: found Locust's parser refused the options: unrecognized arguments: --no-such-option"),
    ({}, "def broken(:\n", "load.locustfile: found locustfile"),
    ({}, "import os\nos._exit(0)\n", "importing it ended the process, exit 0"),
    ({}, "import time\ntime.sleep(60)\n", "importing it took more than 3 s"),
])
def test_validate_imports_the_locustfile_in_a_subprocess_with_a_timeout(tmp_path: Path, load: dict, source: str, expected: str) -> None:
    plan = write_plan(tmp_path, load, source)
    r = run_cli("validate", str(plan), env={"ROLLOUT_VALIDATE_TIMEOUT": "3"}, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert expected in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert f"{plan}:" in r.stderr  # file (and line) of the field


def test_validate_accepts_a_good_locustfile_and_says_when_a_shape_drives(tmp_path: Path) -> None:
    src = OK + "\nfrom locust import LoadTestShape\n\nclass Ramp(LoadTestShape):\n    def tick(self):\n        return (1, 1) if self.get_run_time() < 2 else None\n"
    r = run_cli("validate", str(write_plan(tmp_path, {"shape": "Ramp"}, src)), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "shape Ramp" in r.stdout and "a LoadTestShape drives the users" in r.stdout


def test_gate_without_a_plan_follows_the_locustfiles_shape_as_locust_does(service: str, tmp_path: Path) -> None:
    lf = tmp_path / "ramp.py"
    lf.write_text(OK + "\nfrom locust import LoadTestShape\n\nclass Ramp(LoadTestShape):\n    def tick(self):\n        return (2, 10) if self.get_run_time() < 3 else None\n")
    r = gate("--host", service, "-f", str(lf), "-t", "30s", "--gate", "errors<5%", "--min-requests", "5", "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    stats = json.loads((tmp_path / "r.json").read_text())["stages"][0]["stats"]
    assert stats["endpoints"]["shape"] == "Ramp" and stats["elapsed_s"] < 15  # the shape's end ended the run, not -t 30s
    assert max(n for _, n in stats["users_timeline"]) == 2  # the shape's users, not --users' default 10
    r = gate("--host", service, "-f", str(lf), "-t", "2s", "-u", "3", "--shape", "none", "--gate", "errors<5%", "--min-requests", "5",
             "--json", str(tmp_path / "flat.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    stats = json.loads((tmp_path / "flat.json").read_text())["stages"][0]["stats"]
    assert "shape" not in stats["endpoints"] and max(n for _, n in stats["users_timeline"]) == 3


RESCHEDULE = """from locust import HttpUser, task, constant, events
from locust.exception import RescheduleTask


class U(HttpUser):
    wait_time = constant(0.05)

    @task
    def t(self):
        self.client.get('/api/answer')
        self.client.post('/nope')   # 404: the listener below ends the task here
        self.client.get('/never')   # so this is never requested


@events.init.add_listener
def _(environment, **kw):
    @events.request.add_listener
    def stop_task_on_failure(exception, **kw):
        if exception:
            raise RescheduleTask()
"""


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_failed_request_is_counted_when_a_listener_reschedules_the_task(service: str, tmp_path: Path, workers: str) -> None:
    """A `request` listener added in `init` that raises RescheduleTask (Locust re-raises it) must not hide the
    failure from the gates: the stage's recorder runs before the locustfile's listeners, as Locust's stats do."""
    lf = tmp_path / "reschedule.py"
    lf.write_text(RESCHEDULE)
    r = gate("--host", service, "-f", str(lf), "-u", "2", "-t", "3s", "--gate", "errors<100%", "--min-requests", "5",
             "--workers", workers, "--json", str(tmp_path / "r.json"))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    st = json.loads((tmp_path / "r.json").read_text())["stages"][0]["stats"]
    rows = {e["name"]: e for e in st["endpoints"]["endpoints"]}
    assert "/never" not in rows  # the listener did end each task at the failure
    assert rows["/nope"]["failures"] == rows["/nope"]["requests"] > 0
    assert st["all"]["failures"] == rows["/nope"]["failures"]
    # each iteration: one success then one failure (a task cut by the stop may miss its failure)
    assert abs(rows["/api/answer"]["requests"] - rows["/nope"]["requests"]) <= 4

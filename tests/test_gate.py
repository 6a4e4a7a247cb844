"""`rollout gate` as CI runs it: a subprocess against real local servers (examples/service.py), real Locust.

Pass against a healthy server; exit 1 with the failing gate and its numbers (on stderr and in a JUnit file
valid against the JUnit XSD) against an erroring or slow one; exit 3 within seconds against a closed port;
exit 2 with an exact message for bad input. Loads are short (2-4 s, a few users) and limits generous, so a
busy 2-core machine cannot flip a verdict.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest
import xmlschema

from rollout.report import json_report
from tests.conftest import ROOT, run_cli, write_plan, stop_all
from tests.test_report import JUNIT_XSD

LOCUSTFILE = ROOT / "locustfiles" / "answer.py"
NO_SUMMARY = {"GITHUB_STEP_SUMMARY": ""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(version: str, latency: str = "2ms", errors: str = "0%") -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "service.py"), "--port", str(port), "--version", version,
                             "--latency", latency, "--error-rate", errors, "--seed", "3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the sample service did not start")


@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, str]]:
    procs, urls = [], {}
    try:
        for name, kw in (("healthy", {}), ("erroring", {"errors": "40%"}), ("slow", {"latency": "250ms"})):
            proc, url = start_service(f"v-{name}", **kw)
            procs.append(proc)
            urls[name] = url
        yield urls
    finally:
        stop_all(procs)


def gate(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("gate", "--quiet", *args, env={**NO_SUMMARY, **(env or {})}, timeout=timeout)


def oneoff(url: str, *gates: str, duration: str = "3s", users: int = 5) -> list[str]:
    out = ["--host", url, "--locustfile", str(LOCUSTFILE), "--users", str(users), "--duration", duration, "--min-requests", "20"]
    for g in gates:
        out += ["--gate", g]
    return out


def test_gate_passes_against_a_healthy_server(services: dict[str, str], tmp_path: Path) -> None:
    junit, js = tmp_path / "junit.xml", tmp_path / "report.json"
    r = gate(*oneoff(services["healthy"], "p95<2s", "errors<5%"), "--junit", str(junit), "--json", str(js))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gate passed" in r.stdout and "p95<2s: pass" in r.stdout
    root = ET.fromstring(junit.read_text())
    xmlschema.XMLSchema(JUNIT_XSD).validate(str(junit))
    assert root.get("tests") == "2" and root.get("failures") == "0"
    doc = json.loads(js.read_text())
    jsonschema.validate(doc, json.loads(json_report.SCHEMA_FILE.read_text()))
    stage = doc["stages"][0]
    assert doc["outcome"] == {"result": "passed", "exit_code": 0, "message": doc["outcome"]["message"]}
    assert stage["stats"]["v-healthy"]["requests"] > 20  # named after the version the server reports
    assert sum(1 for e in stage["timeline"] if "v-healthy" in e) >= 2  # one entry a second, per version


def test_gate_fails_against_an_erroring_server_with_the_gate_and_its_numbers(services: dict[str, str], tmp_path: Path) -> None:
    junit, html = tmp_path / "junit.xml", tmp_path / "report.html"
    t0 = time.monotonic()
    r = gate(*oneoff(services["erroring"], "errors<5%", "p95<2s", duration="30s"), "--junit", str(junit), "--html", str(html))
    assert r.returncode == 1, r.stdout + r.stderr
    assert time.monotonic() - t0 < 25, "a failing gate ends the load at once, not at --duration"
    assert "gate `errors<5%` failed" in r.stderr and "error rate" in r.stderr and "> 5%" in r.stderr
    xmlschema.XMLSchema(JUNIT_XSD).validate(str(junit))
    root = ET.fromstring(junit.read_text())
    assert root.get("failures") == "1"
    fail = root.find(".//testcase[@name='errors<5%']/failure")
    assert fail is not None and "errors<5%" in fail.get("message", "") and "> 5%" in fail.get("message", "")
    assert "observed" in (fail.text or "") and "limit 5%" in (fail.text or "")
    assert root.find(".//testcase[@name='p95<2s']/failure") is None
    assert 'class="decisive"' in html.read_text() and 'data-gate="errors&lt;5%"' in html.read_text()


def test_gate_fails_against_a_slow_server(services: dict[str, str], tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    r = gate(*oneoff(services["slow"], "p95<100ms", duration="20s", users=10), "--junit", str(junit))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "gate `p95<100ms` failed" in r.stderr and "p95" in r.stderr and "> 100 ms" in r.stderr
    fail = ET.fromstring(junit.read_text()).find(".//testcase[@name='p95<100ms']/failure")
    assert fail is not None and "> 100 ms" in fail.get("message", "")


def test_closed_port_is_exit_3_within_seconds_with_an_error_report(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    t0 = time.monotonic()
    r = gate(*oneoff(f"http://127.0.0.1:{free_port()}", "p95<300ms", duration="60s"), "--junit", str(junit))
    took = time.monotonic() - t0
    assert r.returncode == 3, r.stdout + r.stderr
    assert took < 15, took  # interpreter start-up and imports included; the probe itself is bounded at 3 s
    assert "is unreachable" in r.stderr and "Connection refused" in r.stderr and "Traceback" not in r.stderr
    xmlschema.XMLSchema(JUNIT_XSD).validate(str(junit))
    err = ET.fromstring(junit.read_text()).find(".//testcase/error")
    assert err is not None and "unreachable" in err.get("message", "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gate", "p95<<300ms"], "--gate 'p95<<300ms': limit `<300ms` is not valid for p95: expected a latency such as 300ms or 1.5s"),
        (["--gate", "p96<300ms"], "--gate 'p96<300ms': unknown metric `p96` — expected one of errors, p50, p90, p95, p99"),
        (["--gate", "errors<1"], "--gate 'errors<1': limit `1` is not valid for errors: expected a percentage such as 1% or 0.5%"),
        (["--gate", "p95 300ms"], "--gate 'p95 300ms' is not a gate expression: expected METRIC<LIMIT, such as 'p95<300ms' or 'errors<1%'"),
        (["--gate", "p95>300ms"], "--gate 'p95>300ms' is not a gate expression"),
        (["--gate", "p95<1s", "--gate", "p95<1s"], "--gate 'p95<1s' is given twice"),
        ([], "no gate to judge: give at least one --gate"),
        (["--gate", "p95<1s", "--duration", "soon"], "--duration 'soon' is not a duration"),
        (["--gate", "p95<1s", "--host", "127.0.0.1:80"], "--host '127.0.0.1:80' is not an http(s) URL"),
    ],
)
def test_bad_input_is_exit_2_with_an_exact_message(args: list[str], message: str) -> None:
    from rollout.errors import EXIT_BAD_INPUT, RolloutError
    from rollout.gate import resolve

    opts = {"--host": "http://127.0.0.1:9", "--locustfile": str(LOCUSTFILE), "--duration": "3s"}
    gates = []
    for flag, value in zip(args[::2], args[1::2]):
        if flag == "--gate":
            gates.append(value)
        else:
            opts[flag] = value
    with pytest.raises(RolloutError) as exc:  # in-process: the same resolution the CLI does first
        resolve(None, opts["--host"], opts["--locustfile"], None, opts["--duration"], gates, 100, None, None)
    assert exc.value.exit_code == EXIT_BAD_INPUT
    assert message in exc.value.render()


def test_bad_gate_on_the_command_line_is_exit_2_on_stderr() -> None:
    r = gate("--host", "http://127.0.0.1:9", "--locustfile", str(LOCUSTFILE), "--duration", "3s", "--gate", "p95<<300ms", timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("Error: --gate 'p95<<300ms': limit `<300ms` is not valid for p95: expected a latency such as 300ms or 1.5s")
    assert "Traceback" not in r.stderr


def test_gate_without_plan_needs_host_locustfile_and_duration() -> None:
    r = gate("--gate", "p95<1s", timeout=60)
    assert r.returncode == 2 and "without a PLAN, `rollout gate` needs --host, --locustfile, --duration" in r.stderr


def test_gate_with_a_plan_uses_its_load_and_absolute_gates(services: dict[str, str], tmp_path: Path) -> None:
    plan = {
        "name": "answer",
        "owner": {"name": "Answers team", "contact": "answers@example.com"},
        "target": {"backend": "local", "stable": "v1", "versions": {"v1": {"command": "x"}, "v-healthy": {"command": "x"}}},
        "load": {"locustfile": str(LOCUSTFILE), "users": 5},  # the local backend refuses load.host: --host gives it
        "gates": {
            # the naive rule, so that 3 s of 5 users suffice (a sequential p99 ≤ 2 s needs ~600 requests to pass)
            "errors": {"metric": "error_rate", "max": "5%", "min_requests": 20, "method": "threshold"},
            "p99-slo": {"metric": "p99", "version": "all", "max": "2s", "min_requests": 20, "method": "threshold"},
            "p95-vs-stable": {"metric": "p95", "compare": "stable", "max_increase": "50%"},
        },
        "stages": [{"name": "preflight", "weight": 0, "load_to": "canary", "duration": "3s", "gates": {"p95-vs-stable": None}},
                   {"name": "half", "weight": 50, "duration": "1m"}],
    }
    path = write_plan(tmp_path, plan)
    junit, md = tmp_path / "junit.xml", tmp_path / "summary.md"
    r = gate(str(path), timeout=60)
    assert r.returncode == 2 and "the plan has no load.host and no --host was given" in r.stderr, r.stderr
    t0 = time.monotonic()
    r = gate(str(path), "--host", services["healthy"], "--junit", str(junit), env={"GITHUB_STEP_SUMMARY": str(md)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - t0 < 40  # the pre-flight's 3 s, not the 1 m stage
    assert "p95-vs-stable: skipped" in r.stdout
    root = ET.fromstring(junit.read_text())
    xmlschema.XMLSchema(JUNIT_XSD).validate(str(junit))
    assert {c.get("name") for c in root.iter("testcase")} == {"errors", "p99-slo", "p95-vs-stable"}
    assert root.find(".//testcase[@name='p95-vs-stable']/skipped") is not None
    assert "## ✅ rollout gate passed" in md.read_text()  # $GITHUB_STEP_SUMMARY picked up by itself
    # --host overrides load.host: the erroring server fails the plan's errors gate
    r = gate(str(path), "--host", services["erroring"], "--duration", "20s")
    assert r.returncode == 1 and "gate `errors` failed" in r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize("example", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_examples_call_rollout_gate_with_flags_that_exist(example: str, tmp_path: Path) -> None:
    import shlex

    import yaml

    def strings(node: object) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)

    doc = yaml.safe_load((ROOT / "examples" / "ci" / example).read_text())
    script = next(s for s in strings(doc) if "rollout gate --host" in s).replace("\\\n", " ")
    line = next(ln for ln in script.splitlines() if "rollout gate --host" in ln)
    args = shlex.split(line[line.index("rollout gate"):], comments=True)[2:]
    assert "--junit" in args and "--html" in args
    # the same flags, aimed at a closed port: parsed (not exit 2), probed, and the JUnit error written
    for i, a in enumerate(args):
        if a == "--host":
            args[i + 1] = f"http://127.0.0.1:{free_port()}"
        elif a in ("--junit", "--json", "--markdown", "--html"):
            args[i + 1] = str(tmp_path / Path(args[i + 1]).name)
        elif a == "--locustfile":
            args[i + 1] = str(ROOT / args[i + 1])
    r = gate(*args, timeout=60)
    assert r.returncode == 3, r.stdout + r.stderr
    assert (tmp_path / "load-gate.xml").is_file() and (tmp_path / "load-gate.html").is_file()


def test_a_latency_only_gate_does_not_pass_when_every_request_fails(tmp_path: Path) -> None:
    import socketserver
    import threading

    class Refuse(socketserver.BaseRequestHandler):  # accepts the connection (the probe passes), answers nothing
        def handle(self) -> None:
            self.request.close()

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Refuse) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        r = gate("--host", f"http://127.0.0.1:{srv.server_address[1]}", "--locustfile", str(LOCUSTFILE), "--users", "2",
                 "--duration", "2s", "--min-requests", "1", "--gate", "p95<10s")
        srv.shutdown()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "every one of the" in r.stderr and "requests failed" in r.stderr

"""CLI contract: fast help with no heavy imports, documented exit codes, one error format."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import run_cli

PROBE = """
import sys
from rollout.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("locust", "kubernetes", "gevent", "httpx", "pydantic") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def test_help_imports_neither_locust_nor_kubernetes() -> None:
    r = subprocess.run([sys.executable, "-c", PROBE, "--help"], capture_output=True, text=True)
    assert "Usage:" in r.stdout
    heavy = r.stdout.split("HEAVY=")[1].strip().split(",")
    assert "locust" not in heavy and "kubernetes" not in heavy and "gevent" not in heavy, heavy


def test_help_documents_every_exit_code() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for code in ("0 success", "1 a gate failed", "2 bad input", "3 infrastructure", "4 paused", "130 interrupted"):
        assert code in text, code


def test_unknown_command_and_missing_argument_are_bad_input() -> None:
    r = run_cli("frobnicate")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run_cli("run")
    assert r.returncode == 2 and "PLAN" in r.stderr


def test_status_of_a_plan_never_run(tmp_path, base_plan) -> None:
    from tests.conftest import write_plan

    path = write_plan(tmp_path, base_plan)
    r = run_cli("status", str(path), env={"ROLLOUT_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode == 0 and "nothing recorded yet" in r.stdout


def test_approve_with_nothing_waiting_is_bad_input(tmp_path, base_plan) -> None:
    from tests.conftest import write_plan

    path = write_plan(tmp_path, base_plan)
    r = run_cli("approve", str(path), env={"ROLLOUT_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode == 2
    assert r.stderr.startswith("Error: nothing is waiting for approval") and " — " in r.stderr


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise() -> None:
    import io

    from rollout.gates.verdict import Status, Verdict
    from rollout.load.stats import StageStats
    from rollout.plan.model import Stage
    from rollout.report.console import ConsoleReporter

    stage = Stage(name="ten", weight=10, duration=10)
    stats = StageStats()
    for _ in range(90):
        stats.role("stable").add(20.0, False)
    for _ in range(10):
        stats.role("canary").add(30.0, True)
    stats.elapsed, stats.users = 5.0, 7
    stats.timeline.append({"t": 5.0, "stable": {"requests": 90}, "canary": {"requests": 10}})
    fail = [Verdict("errors", Status.FAIL, "x", "canary")]
    tty, plain = io.StringIO(), io.StringIO()
    ConsoleReporter(tty, tty=True).progress(stage, 0, 3, stats, [], 10)
    ConsoleReporter(plain, tty=False).progress(stage, 0, 3, stats, fail, 10)
    assert tty.getvalue().startswith("\r\x1b[2K  ten [" + "█" * 10 + "░" * 10 + "]") and "\n" not in tty.getvalue()
    line = plain.getvalue()
    assert line.endswith("\n") and "\x1b" not in line and "█" not in line
    assert "users 7" in line and "rps 100" in line and "canary 10 rps err 100% p95 30" in line and "5s left" in line and "FAIL errors" in line

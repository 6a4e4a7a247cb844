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

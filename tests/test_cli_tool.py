"""Installed like a tool (#8 item 6): `rollout --version`, the console script, `gate --version-header`,
`approve --reason`, and the README's install and `{python}` instructions."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from rollout.backends.local.store import LocalStore
from rollout.engine.state import Phase, Split, StageRecord, StageStatus, new_state
from tests.conftest import ROOT, run_cli, write_plan
from tests.test_cli_basics import PROBE


def test_rollout_version_prints_the_package_version_without_heavy_imports() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    r = subprocess.run([sys.executable, "-c", PROBE, "--version"], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.splitlines()[0] == f"rollout {project['version']}", r.stdout + r.stderr
    heavy = r.stdout.split("HEAVY=")[1].strip().split(",")
    assert "locust" not in heavy and "kubernetes" not in heavy
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout == f"rollout {project['version']}\n"
    # the console script pip/pipx put on PATH calls the same entry point
    module, _, func = project["scripts"]["rollout"].partition(":")
    assert (module, func) == ("rollout.cli", "main")
    r = run_cli("run", "--help")  # -v/--version on a command stays the version to roll out
    assert "-v, --version" in r.stdout and "the version to roll out" in r.stdout


def test_readme_says_how_to_install_and_what_python_means() -> None:
    text = (ROOT / "README.md").read_text()
    for needle in ("pipx install .", "python3 -m pip install .", ".venv/bin/rollout", "rollout --version", "`{python}` the Python interpreter running `rollout`"):
        assert needle in text, needle
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q -e '.[test]'" in makefile  # what README says `make venv` leaves: an editable install in .venv


def test_gate_version_header_overrides_the_plans(tmp_path: Path) -> None:
    from tests.test_gate import LOCUSTFILE, start_service

    proc, url = start_service("v-served")
    try:
        plan = write_plan(tmp_path, {
            "name": "g", "owner": {"name": "T", "contact": "t@example.com"},
            "target": {"backend": "local", "stable": "v1", "versions": {"v1": {"command": "x {port}"}}},
            "load": {"locustfile": str(LOCUSTFILE), "users": 3, "version_header": "X-Not-Sent"},
            "gates": {"errors": {"metric": "error_rate", "max": "5%", "min_requests": 20, "method": "threshold"}},
            "stages": [{"name": "s", "weight": 10, "duration": "3s"}],
        })
        env = {"GITHUB_STEP_SUMMARY": ""}
        plain, flagged = tmp_path / "plain.json", tmp_path / "flagged.json"
        r = run_cli("gate", str(plan), "--host", url, "-q", "--json", str(plain), env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        r = run_cli("gate", str(plan), "--host", url, "-q", "--version-header", "X-Version", "--json", str(flagged), env=env)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "v-served" not in json.loads(plain.read_text())["stages"][0]["stats"]  # the plan's header is not sent: unattributed
    assert json.loads(flagged.read_text())["stages"][0]["stats"]["v-served"]["requests"] > 20  # the flag's header names it
    r = run_cli("gate", str(plan), "--host", url, "--version-header", "X Version")
    assert r.returncode == 2 and "is not an HTTP header name" in r.stderr


def test_approve_reason_is_in_the_audit_trail(tmp_path: Path, base_plan: dict) -> None:
    base_plan["stages"] = [{"name": "ten", "weight": 10, "duration": "5s"},
                           {"name": "half", "weight": 50, "duration": "5s", "approval": "manual"}]
    plan = write_plan(tmp_path, base_plan)
    st = new_state("svc", "v1", now=1_000.0)
    st.phase, st.canary_version, st.stage_index, st.split, st.started_at = Phase.PAUSED, "v2", 1, Split(0.1), 1_001.0
    st.stages = [StageRecord(index=0, name="ten", status=StageStatus.PASSED, started_at=1_002.0, ended_at=1_007.0)]
    LocalStore(tmp_path / "state" / "svc").save(st)
    env = {"ROLLOUT_STATE_DIR": str(tmp_path / "state"), "ROLLOUT_ACTOR": "carol"}
    r = run_cli("approve", str(plan), "--reason", "dashboards look fine", env=env)
    assert r.returncode == 0, r.stderr
    state = json.loads((tmp_path / "state" / "svc" / "state.json").read_text())
    last = state["history"][-1]
    assert (last["who"], last["action"]) == ("carol", "approve")
    assert last["detail"] == "stage 2 `half` approved by carol: dashboards look fine"
    assert state["plan_info"] == {"owner": "Team", "contact": "team@example.com", "stages": ["ten", "half"], "backend": "local"}

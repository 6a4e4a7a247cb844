"""Shared fixtures: a valid plan to mutate, and helpers to run the CLI as users do."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def write_plan(tmp: Path, data: dict, name: str = "plan.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def base_plan(tmp_path: Path) -> dict:
    """A small valid local plan whose locustfile exists in tmp_path."""
    (tmp_path / "load.py").write_text("from locust import HttpUser, task\n\nclass U(HttpUser):\n    @task\n    def t(self):\n        self.client.get('/')\n")
    return {
        "name": "svc",
        "owner": {"name": "Team", "contact": "team@example.com"},
        "target": {
            "backend": "local",
            "stable": "v1",
            "versions": {"v1": {"command": "{python} s.py --port {port}"}, "v2": {"command": "{python} s.py --port {port}"}},
        },
        "load": {"locustfile": "load.py", "users": 5},
        "gates": {"errors": {"metric": "error_rate", "max": "1%"}},
        "stages": [{"name": "ten", "weight": 10, "duration": "5s"}],
    }


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollout", *args],
        cwd=cwd or ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop_all(procs: list[subprocess.Popen]) -> None:  # type: ignore[type-arg]
    """Terminate every process, then wait for each (killing any that ignores SIGTERM for 10 s)."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def require_tool(binary: str, package: str) -> str:
    """The path of a real component a test needs (Prometheus, Alertmanager, Chromium).

    `.ci/run` installs it; under CI (CI=true) a missing one FAILS the test, so a broken install
    step cannot turn into silently skipped tests. Locally the test skips, saying how to install it."""
    import shutil

    path = shutil.which(binary)
    if path:
        return path
    message = f"`{binary}` is not installed (apt-get install {package}; `.ci/run` installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " — under CI it is required")
    pytest.skip(message)


@pytest.fixture
def site() -> Iterator[str]:
    """A small HTTP server in this process that answers 200 "ok" to every GET: the load's target where the
    service behind the entry URL is not what the test is about."""
    from tests.helpers import AnswerOk

    server = ThreadingHTTPServer(("127.0.0.1", 0), AnswerOk)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()

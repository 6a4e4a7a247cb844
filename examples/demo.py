"""`make demo`: two staged rollouts of the sample service, back to back, on the local backend.

v1 → v2 (a good version) ends promoted; v2 → v3 (errors and slower answers)
ends rolled back by a failed gate. Each step is the real `rollout` CLI, as a
release engineer would type it. The state lives in a temporary directory and
every process is stopped at the end, whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLAN = HERE / "plan.yaml"


def rollout(*args: str, env: dict[str, str]) -> int:
    cmd = [sys.executable, "-m", "rollout", *args]
    print(f"\n$ rollout {' '.join(args)}", flush=True)
    return subprocess.run(cmd, env=env).returncode


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rollout-demo-") as state_dir:
        env = {**os.environ, "ROLLOUT_STATE_DIR": state_dir, "ROLLOUT_ACTOR": os.environ.get("ROLLOUT_ACTOR", "demo")}
        plan = str(PLAN.relative_to(Path.cwd())) if PLAN.is_relative_to(Path.cwd()) else str(PLAN)
        try:
            if rollout("validate", plan, env=env) != 0:
                return 1
            print("\n=== Rollout 1: v1 → v2 (a good version) ===", flush=True)
            first = rollout("run", plan, "--version", "v2", env=env)
            print("\n=== Rollout 2: v2 → v3 (errors and slower answers) ===", flush=True)
            second = rollout("run", plan, "--version", "v3", env=env)
            print("\n=== What happened ===", flush=True)
            rollout("history", plan, env=env)
        finally:
            rollout("down", plan, env=env)
        ok = first == 0 and second == 1
        print(f"\n{'✔' if ok else '✘'} demo {'as expected' if ok else 'did NOT go as expected'}: "
              f"v2 {'promoted' if first == 0 else f'exit {first}'}, v3 {'rolled back' if second == 1 else f'exit {second}'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

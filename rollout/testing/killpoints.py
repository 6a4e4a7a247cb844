"""Named instants at which a test can SIGKILL the running command (test-only; inert unless asked).

The crash-recovery tests need to kill the driver at exact places — right after
a process is spawned and before it is recorded, between a traffic change and
its record — which a timer cannot hit reliably. Code marks those places with
``kill_point("name")``. With ``ROLLOUT_TEST_KILL_AT=name`` (or ``name#n`` for
its n-th occurrence) in the environment, the process sends itself SIGKILL
there; with ``ROLLOUT_TEST_KILL_TRACE=/path`` each point reached is appended
to that file (how the sweep test enumerates them). Without either variable a
point costs one dictionary lookup. Never set these outside tests.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "ROLLOUT_TEST_KILL_AT"
TRACE_ENV = "ROLLOUT_TEST_KILL_TRACE"

_seen: dict[str, int] = {}


def kill_point(name: str) -> None:
    want = os.environ.get(KILL_ENV)
    trace = os.environ.get(TRACE_ENV)
    if not want and not trace:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(f"{name}#{_seen[name]}\n")
    if want:
        target, _, nth = want.partition("#")
        if target == name and _seen[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)

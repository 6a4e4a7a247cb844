"""`rollout validate`'s look at the locustfile: imported in a subprocess, bounded in time.

A locustfile is code: importing it may fetch data, open sockets, loop or crash. `rollout validate` must
neither hang nor die on that, and must not import locust into its own process (start-up speed, gevent's
patching). So it runs `python -m rollout.load.check` with the plan's load settings on stdin and a timeout;
the child imports the locustfile the way the load does (`rollout.load.session`) and answers with the
problems it found, each naming the plan field to fix: load.locustfile (does not import, no User class),
load.shape / stages[i].shape (no such LoadTestShape class), load.tags / load.exclude_tags (no task has the
tag), load.options (Locust's parser, with the locustfile's own options, refuses them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CHECK_TIMEOUT = float(os.environ.get("ROLLOUT_VALIDATE_TIMEOUT", "30"))  # seconds the import may take


def problems(loaded: Any, timeout: float | None = None) -> list[tuple[tuple[str | int, ...], str, str]]:
    """[(field path, found, expected)] for the plan's locustfile; empty when it is usable."""
    timeout = CHECK_TIMEOUT if timeout is None else timeout
    plan = loaded.plan
    load = plan.load
    request = {
        "locustfile": str(loaded.resolve(load.locustfile)),
        "shapes": [[["stages", i, "shape"] if s.shape else ["load", "shape"], plan.stage_shape(i)] for i, s in enumerate(plan.stages)],
        "tags": load.tags, "exclude_tags": load.exclude_tags, "options": dict(load.options),
        "users": load.users, "duration": plan.stages[0].duration,
    }
    pkg_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH", "")) if p)}
    try:
        r = subprocess.run([sys.executable, "-m", "rollout.load.check"], input=json.dumps(request), capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return [(("load", "locustfile"), f"{load.locustfile!r} (importing it took more than {timeout:.0f} s)",
                 "a locustfile that imports quickly (move slow setup into an `init` or `test_start` listener)")]
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return [(("load", "locustfile"), f"{load.locustfile!r} (importing it ended the process, exit {r.returncode}: {tail})",
                 "a locustfile that imports without exiting")]
    return [(tuple(p["field"]), p["found"], p["expected"]) for p in json.loads(lines[-1])["problems"]]


def _main() -> None:  # the child: python -m rollout.load.check < request.json
    from rollout.load import session
    from rollout.load.runner import LoadSpec

    req = json.loads(sys.stdin.read())
    out: list[dict[str, Any]] = []

    def add(field: list[Any], exc: Exception) -> None:
        out.append({"field": field, "found": getattr(exc, "what", str(exc)), "expected": getattr(exc, "hint", "") or "a usable value"})

    try:
        lf = session.load(Path(req["locustfile"]))
    except session.LocustfileInvalid as exc:
        add(["load", "locustfile"], exc)
        print(json.dumps({"problems": out}))
        return
    for field, shape in req["shapes"]:
        if shape and shape not in lf.shapes:
            out.append({"field": field, "found": repr(shape), "expected": f"a LoadTestShape class of the locustfile ({', '.join(lf.shapes) or 'it has none'}) or none"})
    known = lf.tags
    for name in ("tags", "exclude_tags"):
        missing = sorted(set(req.get(name) or ()) - known)
        if missing:
            out.append({"field": ["load", name], "found": ", ".join(map(repr, missing)),
                        "expected": f"tags that tasks of the locustfile carry ({', '.join(sorted(known)) or 'it has none'})"})
    spec = LoadSpec(locustfile=lf.path, host="http://127.0.0.1", users=int(req["users"]), spawn_rate=1.0, duration=float(req["duration"]),
                    options=tuple((req.get("options") or {}).items()))
    try:
        session.parse_options(session.locust_args(spec))
    except session.LocustfileInvalid as exc:
        add(["load", "options"], exc)
    print(json.dumps({"problems": out}))


if __name__ == "__main__":
    _main()

"""Finding local rollouts on disk for `rollout list`: plan files and state directories.

Each path given is a plan file, a state file, or a directory searched (at most
MAX_DEPTH levels deep) for both: YAML files that look like plans (`target:`
and `stages:` at the top) and `state.json` files of the local store (a plan's
`.rollout/<plan>/state.json`, or anything under $ROLLOUT_STATE_DIR). A plan and
its own state file make one entry; a state without a plan file is listed from
the state alone. Hidden directories other than `.rollout`, virtualenvs and
`node_modules` are not searched. Plans of other backends are counted, not read
(their state is in a cluster: `rollout list -k`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from rollout.engine.state import State, from_dict
from rollout.errors import PlanInvalid, UsageError

MAX_DEPTH = 6
SKIP_DIRS = {"node_modules", "__pycache__", "venv", "site-packages"}
PLAN_SUFFIXES = (".yaml", ".yml")


@dataclass
class Found:
    state_file: Path | None
    state: State | None
    plan_path: Path | None = None
    plan: object | None = None  # rollout.plan.model.Plan
    problem: str = ""


@dataclass
class Search:
    found: list[Found]
    other_backends: list[Path]  # plans whose state is not on this disk
    invalid: list[str]  # plan-looking files that are not valid plans (file: first problem)


def _looks_like_plan(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    heads = {line.split(":", 1)[0] for line in text.splitlines() if line and not line[0].isspace() and ":" in line}
    return "target" in heads and "stages" in heads


def _read_state(path: Path) -> tuple[State | None, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({exc})"
    if not isinstance(data, dict) or "plan" not in data or "stable_version" not in data:
        return None, "not a rollout state"
    try:
        return from_dict(data), ""
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {exc})"


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    plans: list[Path] = []
    states: list[Path] = []
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if len(here.parts) - base_depth >= MAX_DEPTH:
            dirnames[:] = []
        dirnames[:] = sorted(d for d in dirnames if (d == ".rollout" or not d.startswith(".")) and d not in SKIP_DIRS)
        for f in sorted(filenames):
            p = here / f
            if f == "state.json":
                states.append(p)
            elif f.endswith(PLAN_SUFFIXES) and _looks_like_plan(p):
                plans.append(p)
    return plans, states


def search(paths: list[str], state_dir: str | None = None) -> Search:
    """Every local rollout under `paths`; a plan file named explicitly must be valid (PlanInvalid otherwise)."""
    from rollout.backends import factory
    from rollout.plan.loader import load_plan

    plan_files: list[tuple[Path, bool]] = []  # (path, named explicitly)
    state_files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            plans, states = _walk(p)
            plan_files += [(x, False) for x in plans]
            state_files += states
        elif p.name == "state.json" or p.suffix == ".json":
            state_files.append(p)
        elif p.exists():
            plan_files.append((p, True))
        else:
            raise UsageError(f"{raw} does not exist", "name plan files, state files or directories to search")
    out: dict[Path, Found] = {}
    result = Search([], [], [])
    for path, explicit in plan_files:
        try:
            loaded = load_plan(path)
        except PlanInvalid as exc:
            if explicit:
                raise
            result.invalid.append(f"{path}: {exc.issues[0].render() if exc.issues else exc.what}")
            continue
        if loaded.plan.target.backend != "local":
            result.other_backends.append(path)
            continue
        sf = (factory.state_dir(loaded, state_dir) / "state.json").resolve()
        if sf in out:
            continue
        state, problem = _read_state(sf) if sf.exists() else (None, "")
        out[sf] = Found(sf if sf.exists() else None, state, path, loaded.plan, problem)
    for sf in state_files:
        key = sf.resolve()
        if key in out:
            continue
        state, problem = _read_state(sf)
        if state is None and problem == "not a rollout state":
            continue
        out[key] = Found(sf, state, None, None, problem)
    result.found = list(out.values())
    return result


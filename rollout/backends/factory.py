"""Choosing the backend and state store a plan names (imports stay lazy)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rollout.plan.loader import LoadedPlan


def state_dir(loaded: LoadedPlan, override: str | None = None) -> Path:
    """Where the local backend keeps a plan's state: --state-dir, $ROLLOUT_STATE_DIR, or .rollout beside the plan."""
    root = override or os.environ.get("ROLLOUT_STATE_DIR")
    base = Path(root) if root else loaded.base_dir / ".rollout"
    if root:  # `--state-dir /dev/null`: a flag's mistake (exit 2), found before anything reads or starts
        from rollout.errors import UsageError
        from rollout.plan.names import printable

        flag = "--state-dir" if override else "$ROLLOUT_STATE_DIR"
        try:
            for p in (base, *base.parents):  # the nearest existing ancestor must be a directory
                if p.exists():
                    if not p.is_dir():
                        raise UsageError(f"{flag} {printable(root)}: {printable(p)} exists and is not a directory",
                                         "give a directory (it is created when missing)")
                    break
        except (OSError, ValueError) as exc:
            raise UsageError(f"{flag} {printable(root)} cannot be used: {printable(exc)}", "give a directory") from None
    return base / loaded.plan.name


def plan_info(loaded: LoadedPlan) -> dict[str, Any]:
    """What `rollout list` shows of a plan when only its state is found (a ConfigMap, a bare state directory)."""
    p = loaded.plan
    return {"owner": p.owner.name, "contact": p.owner.contact, "stages": [s.name for s in p.stages], "backend": p.target.backend}


def make(loaded: LoadedPlan, state_dir_override: str | None = None, *, kubeconfig: str | None = None,
         context: str | None = None, namespace: str | None = None, step_timeout: float | None = None,
         request_timeout: float | None = None) -> tuple[Any, Any]:
    """(backend, store) for the plan's target; kubeconfig/context/namespace and the step/request
    timeouts (the command line's) override the plan's for the kubernetes backend and mean nothing
    to the local one."""
    if loaded.plan.target.backend == "local":
        from rollout.backends.local.backend import LocalBackend
        from rollout.backends.local.store import LocalStore

        d = state_dir(loaded, state_dir_override)
        return LocalBackend(loaded, d), LocalStore(d)
    if loaded.plan.target.backend == "kubernetes":
        from rollout.backends.kubernetes import wiring

        return wiring.make(loaded, step_timeout=step_timeout, request_timeout=request_timeout,
                           kubeconfig=kubeconfig, context=context, namespace=namespace)
    raise NotImplementedError(loaded.plan.target.backend)


def make_store(loaded: LoadedPlan, state_dir_override: str | None = None, *, kubeconfig: str | None = None,
               context: str | None = None, namespace: str | None = None, step_timeout: float | None = None,
               request_timeout: float | None = None) -> Any:
    """The store alone (read-only commands need no backend, and must not start anything)."""
    if loaded.plan.target.backend == "local":
        from rollout.backends.local.store import LocalStore

        return LocalStore(state_dir(loaded, state_dir_override))
    if loaded.plan.target.backend == "kubernetes":
        from rollout.backends.kubernetes import wiring

        return wiring.make_store(loaded, request_timeout=request_timeout, kubeconfig=kubeconfig, context=context, namespace=namespace)
    raise NotImplementedError(loaded.plan.target.backend)

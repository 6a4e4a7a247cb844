"""Who holds a rollout's lock right now, read without taking it (for `rollout status --watch`).

A watcher must never take the lock (it would refuse the driver it watches), so
it reads what the lock leaves behind: locally the lock file's JSON (pid and
command; emptied on release, and a killed holder's pid is gone), on Kubernetes
the Lease (holder and renewal time; expired after leaseDurationSeconds). The
answer is a description of the holder, or None when nobody holds it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists (any owner); False for no pid."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _local_holder(directory: Any) -> str | None:
    try:
        text = (directory / "lock").read_text(encoding="utf-8")
        info = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return None
    pid = info.get("pid") if isinstance(info, dict) else None
    if not isinstance(pid, int) or not pid_alive(pid):
        return None
    return f"`rollout {info.get('command', '?')}` (pid {pid})"


def _lease_holder(store: Any) -> str | None:
    from rollout.backends.kubernetes.client import LEASES
    from rollout.backends.kubernetes.store import parse_time

    kube = store.kube
    lease = kube.call("get", LEASES, store.name, kube.coord.read_namespaced_lease, store.name, kube.namespace, missing_ok=True)
    spec = (lease or {}).get("spec") or {}
    holder = spec.get("holderIdentity")
    renewed = parse_time(spec.get("renewTime")) or 0.0
    if not holder or time.time() > renewed + float(spec.get("leaseDurationSeconds") or 15):
        return None
    cmd = (((lease or {}).get("metadata") or {}).get("annotations") or {}).get("rollout.dev/command")
    return f"`rollout {cmd}` by {holder}" if cmd else str(holder)


def lock_holder(store: Any) -> str | None:
    """The command holding `store`'s lock (a LocalStore or a ConfigMapStore), None when it is free or its holder is gone."""
    if hasattr(store, "kube"):
        return _lease_holder(store)
    holder = getattr(store, "holder", None)
    if callable(holder):  # a store that names its lock's holder itself (pid checked with its start time)
        info = holder()
        return f"`rollout {info.get('command', '?')}` (pid {info.get('pid', '?')})" if info else None
    directory = getattr(store, "dir", None)
    return _local_holder(directory) if directory is not None else None

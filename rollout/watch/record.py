"""Where a watch keeps its statistics between checks, so a killed watch goes on where it stopped.

Beside the rollout's own state but not in it: the watch writes every check without taking the rollout's
lock (a driver may hold it), so it must never write the state a driver owns. Local backend: `watch.json`
in the plan's state directory (atomic replace, owner-only). Kubernetes: ConfigMap `rollout-<plan>-watch`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rollout.errors import StateError


class LocalWatchRecord:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "watch.json"

    def location(self) -> str:
        return str(self.path)

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable: start afresh (the statistics are evidence, not the rollout's state)
        return data if isinstance(data, dict) else None

    def save(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp.{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StateError(f"cannot write the watch record {self.path}: {exc}", "check free disk space and permissions") from None


class ConfigMapWatchRecord:
    KEY = "watch.json"

    def __init__(self, kube: Any, plan: str) -> None:
        from rollout.backends.kubernetes.client import CONFIGMAPS

        self.kube, self.res = kube, CONFIGMAPS
        self.name = f"rollout-{plan}-watch"
        self.plan = plan

    def location(self) -> str:
        return f"ConfigMap {self.kube.namespace}/{self.name}"

    def _get(self) -> dict[str, Any] | None:
        return self.kube.call("get", self.res, self.name, self.kube.core.read_namespaced_config_map, self.name,
                              self.kube.namespace, missing_ok=True)

    def load(self) -> dict[str, Any] | None:
        cm = self._get()
        try:
            data = json.loads(((cm or {}).get("data") or {}).get(self.KEY) or "null")
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def save(self, record: dict[str, Any]) -> None:
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.name, "labels": {"app.kubernetes.io/managed-by": "rollout", "rollout.dev/plan": self.plan,
                                                           "rollout.dev/part": "watch"}},
                "data": {self.KEY: json.dumps(record, sort_keys=True)}}
        if self._get() is None:
            self.kube.call("create", self.res, self.name, self.kube.core.create_namespaced_config_map, self.kube.namespace, body)
        else:  # the watch is this ConfigMap's only writer: no compare-and-swap needed
            self.kube.call("update", self.res, self.name, self.kube.core.replace_namespaced_config_map, self.name, self.kube.namespace, body)


def for_store(store: Any, plan: str) -> LocalWatchRecord | ConfigMapWatchRecord:
    if hasattr(store, "kube"):
        return ConfigMapWatchRecord(store.kube, plan)
    return LocalWatchRecord(Path(store.dir))

"""Every rollout recorded in a namespace (or all of them): the state ConfigMaps, found by their labels.

`ConfigMapStore` labels each state ConfigMap `app.kubernetes.io/managed-by=rollout`
and `rollout.dev/plan=<plan>`; the Locust objects of the in-cluster load runner
carry the first label but not the second, so the selector needs both; the plan's
request mailbox and watch record carry both and are left out by name. No plan
file is needed: the state carries what `rollout list` shows (`plan_info`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rollout.backends.kubernetes.client import CONFIGMAPS, Kube
from rollout.backends.kubernetes.store import DATA_KEY, object_name, parse_state
from rollout.engine.state import State, StateShapeError

SELECTOR = "app.kubernetes.io/managed-by=rollout,rollout.dev/plan"


@dataclass(frozen=True)
class Found:
    namespace: str
    name: str  # the ConfigMap's
    plan: str  # its rollout.dev/plan label
    state: State | None
    problem: str = ""  # why the state could not be read

    @property
    def location(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"


def _parse(cm: dict[str, Any]) -> Found:
    meta = cm.get("metadata") or {}
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    plan = str((meta.get("labels") or {}).get("rollout.dev/plan") or name)
    text = (cm.get("data") or {}).get(DATA_KEY)
    if text is None:
        return Found(ns, name, plan, None, f"no {DATA_KEY} in it")
    try:
        return Found(ns, name, plan, parse_state(text))
    except StateShapeError as exc:
        return Found(ns, name, plan, None, f"malformed state: field `{exc.field or '(the whole state)'}`: {exc.message}")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        return Found(ns, name, plan, None, f"unreadable state ({type(exc).__name__}: {str(exc)[:200]})")


def list_states(kube: Kube, all_namespaces: bool = False) -> list[Found]:
    """The rollout states in kube's namespace, or in every namespace the credentials may list."""
    if all_namespaces:
        got = kube.call("list", CONFIGMAPS, None, kube.core.list_config_map_for_all_namespaces, label_selector=SELECTOR)
    else:
        got = kube.call("list", CONFIGMAPS, None, kube.core.list_namespaced_config_map, kube.namespace, label_selector=SELECTOR)
    return [_parse(cm) for cm in (got or {}).get("items") or [] if _is_state(cm)]


def _is_state(cm: dict[str, Any]) -> bool:
    """The state ConfigMap is `rollout-<plan>` exactly; the plan's other ConfigMaps carry the same labels (the
    request mailbox `rollout-<plan>-requests`, the watch record `rollout-<plan>-watch`) and are not rollouts."""
    meta = cm.get("metadata") or {}
    plan = (meta.get("labels") or {}).get("rollout.dev/plan")
    return not plan or meta.get("name") == object_name(str(plan))

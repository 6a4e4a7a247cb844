"""The rollout plan: typed models, a YAML loader that keeps line numbers, validation.

The names below are imported on first use (PEP 562), so that the CLI can import
the light modules of this package (`rollout.plan.names`, `rollout.plan.limits`)
without pulling in pydantic and PyYAML: `rollout --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "LoadedPlan": "loader", "json_schema": "loader", "load_plan": "loader",
    "Gate": "model", "Load": "model", "LocalTarget": "model", "LocalVersion": "model", "Owner": "model", "Plan": "model", "Stage": "model",
}

__all__ = ["Gate", "Load", "LoadedPlan", "LocalTarget", "LocalVersion", "Owner", "Plan", "Stage", "json_schema", "load_plan"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"rollout.plan.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'rollout.plan' has no attribute {name!r}")

"""The rollout plan: typed models, a YAML loader that keeps line numbers, validation."""

from rollout.plan.loader import LoadedPlan, json_schema, load_plan
from rollout.plan.model import Gate, Load, LocalTarget, LocalVersion, Owner, Plan, Stage

__all__ = ["Gate", "Load", "LoadedPlan", "LocalTarget", "LocalVersion", "Owner", "Plan", "Stage", "json_schema", "load_plan"]

"""Plans with `target.backend: kubernetes`: the example validates, and the cluster-specific rules are reported with their paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import write_plan
from rollout.errors import PlanInvalid
from rollout.plan.loader import load_plan
from rollout.plan.model import KubernetesTarget

ROOT = Path(__file__).resolve().parent.parent


def test_the_example_plan_is_valid() -> None:
    loaded = load_plan(ROOT / "examples" / "k8s-plan.yaml")
    t = loaded.plan.target
    assert isinstance(t, KubernetesTarget)
    assert t.router == "gateway-api" and t.versions["v2"].image == "registry.example.com/answer:2.0"
    assert t.progress_deadline == 300.0


@pytest.fixture
def k8s_plan(base_plan: dict[str, Any]) -> dict[str, Any]:
    base_plan["target"] = {
        "backend": "kubernetes", "stable": "v1",
        "versions": {"v1": {"image": "app:1"}, "v2": {"images": {"app": "app:2", "sidecar": "proxy:2"}}},
        "deployments": {"stable": "web", "canary": "web-canary"},
        "router": "gateway-api", "httproute": "web", "services": {"stable": "web-stable", "canary": "web-canary"},
        "entry_url": "http://web.example",
    }
    return base_plan


def problems(tmp_path: Path, data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(PlanInvalid) as err:
        load_plan(write_plan(tmp_path, data))
    return {i.path: i.expected for i in err.value.issues}


def test_a_minimal_kubernetes_plan_is_valid(tmp_path: Path, k8s_plan: dict[str, Any]) -> None:
    assert load_plan(write_plan(tmp_path, k8s_plan)).plan.target.backend == "kubernetes"


def test_router_fields_and_versions_are_checked(tmp_path: Path, k8s_plan: dict[str, Any]) -> None:
    t = k8s_plan["target"]
    t["router"], t["canary"] = "nginx", "v7"
    found = problems(tmp_path, k8s_plan)
    assert "ingress" in found["target"]
    assert "one of the versions" in found["target.canary"]
    t["router"], t["ingress"], t["canary"] = "nginx", "web-canary", "v2"
    t["versions"]["v1"] = {"image": "app:1", "images": {"app": "app:1"}}
    assert "either `image`" in problems(tmp_path, k8s_plan)["target.versions.v1"]


def test_replicas_router_refuses_cohorts_and_canary_only_load(tmp_path: Path, k8s_plan: dict[str, Any]) -> None:
    k8s_plan["target"]["router"] = "replicas"
    k8s_plan["stages"] = [
        {"name": "pre", "weight": 0, "load_to": "canary", "duration": "5s"},
        {"name": "team", "cohort": {"x-team": "a"}, "weight": 0, "duration": "5s"},
    ]
    found = problems(tmp_path, k8s_plan)
    assert "router `replicas`" in found["stages[1].cohort"]
    assert "router `replicas`" in found["stages[0].load_to"]


def test_canary_url_and_entry_point_are_required_where_used(tmp_path: Path, k8s_plan: dict[str, Any]) -> None:
    del k8s_plan["target"]["entry_url"]
    k8s_plan["stages"] = [{"name": "pre", "weight": 0, "load_to": "canary", "duration": "5s"},
                          {"name": "ten", "weight": 10, "duration": "5s"}]
    found = problems(tmp_path, k8s_plan)
    assert "canary_url" in found["stages[0].load_to"]
    assert "entry_url" in found["stages[1].name"]

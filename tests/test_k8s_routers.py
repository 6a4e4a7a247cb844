"""The routers' pure halves: replica counts, HTTPRoute rules (validated against the CRD schema), nginx annotations."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from rollout.backends.kubernetes.routers import (
    COHORT_RULE,
    NGINX,
    RouteBackends,
    httproute_live,
    httproute_rejection,
    httproute_rules,
    integer_weights,
    nginx_annotations,
    nginx_live,
    replica_counts,
)
from rollout.engine.state import Split

CRD = Path("/work/shared/k8s-schemas/gateway-api-v1.6.1-httproutes.crd.yaml")
B = RouteBackends("web-stable", "web-canary", 8080, "X-Version", "v1", "v2")


def _closed(node: Any) -> Any:
    """The schema with unknown fields refused: the API server would silently prune them (structural schema)."""
    if isinstance(node, dict):
        out = {k: _closed(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_closed(v) for v in node]
    return node


@lru_cache(maxsize=1)
def httproute_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    return _closed(next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"])


def test_the_schema_refuses_what_the_api_server_would_refuse_or_prune() -> None:
    bad_weight = httproute_rules(BASE_RULES, B, Split(weight=0.1))
    bad_weight[1]["backendRefs"][0]["weight"] = 2_000_000
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(route(bad_weight), httproute_schema())
    unknown = httproute_rules(BASE_RULES, B, Split(weight=0.1))
    unknown[1]["backendRefs"][0]["wieght"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(route(unknown), httproute_schema())


def route(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "web"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["web.example"], "rules": rules}}


BASE_RULES = [
    {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}], "backendRefs": [{"name": "admin", "port": 80}]},
    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": "web-stable", "port": 8080}],
     "timeouts": {"request": "10s"}},
]


@pytest.mark.parametrize(("total", "weight", "stable", "canary", "coarse"), [
    (10, 0.0, 10, 0, False),
    (10, 0.1, 9, 1, False),
    (10, 0.05, 9, 1, True),   # 5 % impossible with 10 pods: 1 pod = 10 %
    (4, 0.5, 2, 2, False),
    (4, 0.3, 2, 2, True),     # ceil(1.2) = 2
    (3, 1.0, 0, 3, False),
    (1, 0.01, 0, 1, True),
])
def test_replica_counts(total: int, weight: float, stable: int, canary: int, coarse: bool) -> None:
    r = replica_counts(total, weight)
    assert (r.stable, r.canary) == (stable, canary)
    assert (r.note is not None) == coarse
    if coarse:
        assert f"{total} pods" in (r.note or "")


def test_integer_weights() -> None:
    assert integer_weights(0.1) == (90, 10, 100)
    assert integer_weights(0.0) == (100, 0, 100)
    assert integer_weights(0.125) == (8750, 1250, 10000)


def test_httproute_weights_cohort_and_version_headers_validate_against_the_crd() -> None:
    rules = httproute_rules(BASE_RULES, B, Split(weight=0.1, cohort=("x-team", "payments")))
    obj = route(rules)
    jsonschema.validate(obj, httproute_schema())
    assert rules[0] == BASE_RULES[0]  # not ours: untouched
    cohort, main = rules[1], rules[2]
    assert cohort["name"] == COHORT_RULE
    assert cohort["matches"] == [{"path": {"type": "PathPrefix", "value": "/"},
                                  "headers": [{"type": "Exact", "name": "x-team", "value": "payments"}]}]
    assert [r["name"] for r in cohort["backendRefs"]] == ["web-canary"]
    assert main["timeouts"] == {"request": "10s"}  # the user's fields stay
    assert [(r["name"], r["port"], r["weight"]) for r in main["backendRefs"]] == [("web-stable", 8080, 90), ("web-canary", 8080, 10)]
    marks = [r["filters"][0]["responseHeaderModifier"]["set"][0] for r in main["backendRefs"]]
    assert marks == [{"name": "X-Version", "value": "v1"}, {"name": "X-Version", "value": "v2"}]
    assert httproute_live(obj, B).matches(Split(weight=0.1, cohort=("x-team", "payments")))


def test_httproute_back_to_stable_drops_the_cohort_rule_and_is_idempotent() -> None:
    shifted = httproute_rules(BASE_RULES, B, Split(weight=0.5, cohort=("x-team", "payments")))
    back = httproute_rules(shifted, B, Split())
    jsonschema.validate(route(back), httproute_schema())
    assert [r.get("name") for r in back] == [None, None]
    assert [(r["name"], r["weight"]) for r in back[1]["backendRefs"]] == [("web-stable", 100), ("web-canary", 0)]
    assert httproute_rules(back, B, Split()) == back
    no_canary = RouteBackends(**{**B.__dict__, "canary_version": None})
    alone = httproute_rules(shifted, no_canary, Split(weight=0.5))
    jsonschema.validate(route(alone), httproute_schema())
    assert [(r["name"], r["weight"]) for r in alone[1]["backendRefs"]] == [("web-stable", 100)]
    assert httproute_live(route(alone), no_canary).matches(Split())


def test_httproute_without_our_services_is_refused() -> None:
    with pytest.raises(ValueError, match="web-stable"):
        httproute_rules([BASE_RULES[0]], B, Split(weight=0.1))


def test_httproute_live_reads_api_defaults_and_rejections() -> None:
    live = route([{"backendRefs": [{"name": "web-stable", "port": 8080}, {"name": "web-canary", "port": 8080}]}])
    assert httproute_live(live, B).weight == 0.5  # default weight 1 each
    rejected = copy.deepcopy(live)
    rejected["metadata"]["generation"] = 2
    rejected["status"] = {"parents": [{"parentRef": {"name": "gw"}, "controllerName": "x/y", "conditions": [
        {"type": "Accepted", "status": "True", "observedGeneration": 2},
        {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound", "message": "no web-canary", "observedGeneration": 2}]}]}
    assert "ResolvedRefs=False (BackendNotFound" in (httproute_rejection(rejected) or "")
    rejected["metadata"]["generation"] = 3  # the gateway has not looked at the new generation yet
    assert httproute_rejection(rejected) is None


def test_nginx_annotations() -> None:
    ann = nginx_annotations(Split(weight=0.25, cohort=("x-team", "payments")), canary_present=True)
    assert ann == {NGINX + "canary": "true", NGINX + "canary-weight": "25", NGINX + "canary-weight-total": "100",
                   NGINX + "canary-by-header": "x-team", NGINX + "canary-by-header-value": "payments"}
    assert all(isinstance(v, str) for v in ann.values())  # annotation values are strings
    off = nginx_annotations(Split(weight=0.25), canary_present=False)
    assert off[NGINX + "canary-weight"] == "0" and off[NGINX + "canary-by-header"] is None
    live = nginx_live({"metadata": {"annotations": {k: v for k, v in ann.items() if v is not None}}})
    assert live.matches(Split(weight=0.25, cohort=("x-team", "payments")))
    assert nginx_live({"metadata": {}}).weight == 0.0

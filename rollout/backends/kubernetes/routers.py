"""The three traffic routers as pure functions: desired object changes for a split, and what a live object does.

No I/O here, so every rule of /work/shared/reference/traffic-routers.md is
unit-tested on plain dicts. Each router has two halves:
  * a *builder* turning a `Split` into the change to send (replica counts,
    HTTPRoute `rules`, Ingress annotations), keeping whatever of the user's
    object it does not own (matches, filters, other rules, other annotations);
  * a *reader* turning the live object back into (canary share, cohort), so the
    backend's read-back compares meaning, not bytes (the API server defaults
    fields, e.g. a backendRef's weight or a match's path).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from rollout.engine.state import Split

COHORT_RULE = "rollout-cohort"  # rules[].name of the rule this tool adds for a cohort
NGINX = "nginx.ingress.kubernetes.io/"
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Live:
    """What a router really does: the canary's share of non-cohort traffic and the cohort sent to it."""

    weight: float
    cohort: tuple[str, str] | None

    def matches(self, split: Split) -> bool:
        return abs(self.weight - split.weight) < 1e-4 and self.cohort == split.cohort


def integer_weights(weight: float) -> tuple[int, int, int]:
    """(stable, canary, total) as integers: out of 100 when the percentage is whole, else out of 10000."""
    total = 100 if abs(weight * 100 - round(weight * 100)) < TOLERANCE else 10000
    canary = round(weight * total)
    return total - canary, canary, total


# -- replicas ------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaSplit:
    stable: int
    canary: int
    note: str | None  # set when the pod count cannot express the weight exactly

    @property
    def effective(self) -> float:
        total = self.stable + self.canary
        return self.canary / total if total else 0.0


def replica_counts(total: int, weight: float) -> ReplicaSplit:
    """Canary pods = ceil(total × weight), at least 1 for any weight > 0; stable gets the rest.

    kube-proxy spreads connections over ready endpoints, so the share is the pod ratio
    and its resolution is 1/total: rounding up errs towards proving the canary."""
    if total < 1:
        raise ValueError("the replicas router needs at least one pod")
    if weight <= 0:
        return ReplicaSplit(total, 0, None)
    canary = min(total, max(1, math.ceil(total * weight - TOLERANCE)))
    out = ReplicaSplit(total - canary, canary, None)
    if abs(out.effective - weight) > TOLERANCE:
        note = (f"with {total} pods {weight * 100:g}% is not possible: {canary} of {total} pods "
                f"= {out.effective * 100:.4g}% (resolution {100 / total:.4g}%)")
        out = ReplicaSplit(out.stable, out.canary, note)
    return out


# -- Gateway API HTTPRoute -------------------------------------------------------


@dataclass(frozen=True)
class RouteBackends:
    """The two Services an HTTPRoute splits between, and how responses are marked."""

    stable_service: str
    canary_service: str
    port: int
    version_header: str
    stable_version: str
    canary_version: str | None  # None: no canary deployed, stable alone


def _ref(existing: dict[str, Any] | None, service: str, port: int, weight: int, header: str, version: str) -> dict[str, Any]:
    ref = copy.deepcopy(existing) if existing else {}
    ref.update(name=service, port=ref.get("port", port), weight=weight)
    mark = {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": header, "value": version}]}}
    others = [f for f in ref.get("filters") or [] if f.get("type") != "ResponseHeaderModifier"]
    ref["filters"] = [*others, mark]
    return ref


def _main_rule_index(rules: list[dict[str, Any]], b: RouteBackends) -> int:
    ours = {b.stable_service, b.canary_service}
    for i, rule in enumerate(rules):
        if rule.get("name") != COHORT_RULE and any(r.get("name") in ours for r in rule.get("backendRefs") or []):
            return i
    raise ValueError(f"no rule of the HTTPRoute sends traffic to Service {b.stable_service} or {b.canary_service}")


def httproute_rules(rules: list[dict[str, Any]], b: RouteBackends, split: Split) -> list[dict[str, Any]]:
    """The whole new `spec.rules` (merge patch replaces lists whole).

    The first rule routing to our Services carries the weights; a cohort becomes a
    rule named `rollout-cohort` before it, matching the same paths plus the header
    (more header matches win precedence). Other rules stay as they are."""
    out = [copy.deepcopy(r) for r in rules if r.get("name") != COHORT_RULE]
    i = _main_rule_index(out, b)
    main = out[i]
    refs = {r.get("name"): r for r in main.get("backendRefs") or []}
    canary = b.canary_version is not None
    ws, wc, _ = integer_weights(split.weight if canary else 0.0)
    new_refs = [_ref(refs.get(b.stable_service), b.stable_service, b.port, ws, b.version_header, b.stable_version)]
    if canary:
        assert b.canary_version is not None
        new_refs.append(_ref(refs.get(b.canary_service), b.canary_service, b.port, wc, b.version_header, b.canary_version))
    main["backendRefs"] = new_refs
    if split.cohort and canary:
        assert b.canary_version is not None
        header = {"type": "Exact", "name": split.cohort[0], "value": split.cohort[1]}
        matches = [{**copy.deepcopy(m), "headers": [*(m.get("headers") or []), header]} for m in main.get("matches") or [{}]]
        cohort_rule = {"name": COHORT_RULE, "matches": matches,
                       "backendRefs": [_ref(refs.get(b.canary_service), b.canary_service, b.port, 1, b.version_header, b.canary_version)]}
        out.insert(i, cohort_rule)
    return out


def httproute_live(route: dict[str, Any], b: RouteBackends) -> Live:
    rules = (route.get("spec") or {}).get("rules") or []
    main = rules[_main_rule_index(rules, b)]
    weights = {r.get("name"): int(r.get("weight", 1)) for r in main.get("backendRefs") or []}
    total = sum(weights.values())
    weight = weights.get(b.canary_service, 0) / total if total else 0.0
    cohort = None
    for rule in rules:
        if rule.get("name") == COHORT_RULE and any(r.get("name") == b.canary_service for r in rule.get("backendRefs") or []):
            headers = ((rule.get("matches") or [{}])[0].get("headers")) or []
            if headers:
                cohort = (str(headers[-1]["name"]), str(headers[-1]["value"]))
    return Live(weight, cohort)


def httproute_rejection(route: dict[str, Any]) -> str | None:
    """Why a gateway refused the route's current generation (status.parents conditions), if one did."""
    gen = (route.get("metadata") or {}).get("generation")
    for parent in ((route.get("status") or {}).get("parents")) or []:
        for cond in parent.get("conditions") or []:
            if cond.get("type") in ("Accepted", "ResolvedRefs") and cond.get("status") == "False" \
                    and (gen is None or cond.get("observedGeneration", gen) >= gen):
                ref = (parent.get("parentRef") or {}).get("name", "?")
                return f"gateway {ref}: {cond['type']}=False ({cond.get('reason')}: {cond.get('message', '')})"
    return None


# -- ingress-nginx canary Ingress --------------------------------------------------


def nginx_annotations(split: Split, canary_present: bool) -> dict[str, str | None]:
    """Annotations for the canary Ingress; None deletes one (merge patch).

    canary-by-header with a value sends exactly that cohort; the weight applies to
    the rest (header first, then weight, is ingress-nginx's own precedence)."""
    _, wc, total = integer_weights(split.weight if canary_present else 0.0)
    cohort = split.cohort if canary_present else None
    return {
        NGINX + "canary": "true",
        NGINX + "canary-weight": str(wc),
        NGINX + "canary-weight-total": str(total),
        NGINX + "canary-by-header": cohort[0] if cohort else None,
        NGINX + "canary-by-header-value": cohort[1] if cohort else None,
    }


def nginx_live(ingress: dict[str, Any]) -> Live:
    ann = (ingress.get("metadata") or {}).get("annotations") or {}
    if ann.get(NGINX + "canary") != "true":
        return Live(0.0, None)
    try:
        weight = int(ann.get(NGINX + "canary-weight", "0")) / int(ann.get(NGINX + "canary-weight-total", "100"))
    except (ValueError, ZeroDivisionError):
        weight = 0.0
    header, value = ann.get(NGINX + "canary-by-header"), ann.get(NGINX + "canary-by-header-value")
    return Live(weight, (header, value) if header and value else None)

"""`rollout plan` on Kubernetes: every patch a rollout would send, computed and never sent.

`steps()` is pure: from the live objects (read with `get` only, by `read_objects`)
it replays what the backend does — prepare (route to stable, canary image),
each stage's split, the promotion — on in-memory copies, with the same body
builders and router functions the backend uses (`routers`), and lists a patch
only where the backend would send one (it skips writes that change nothing).

Without the cluster there is no dry run: a patch that replaces an HTTPRoute's
whole `rules` list, or a container's image by name, can only be exact when
computed from the live object, so `rollout plan` needs `get` on the objects
(the Role in manifests/rbac.yaml has it) and exits 3 when the cluster cannot be
read; `rollout validate` checks a plan without a cluster.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from rollout.backends.kubernetes import routers
from rollout.engine.decide import stage_split
from rollout.engine.state import ALL_STABLE, Split
from rollout.plan.model import KubernetesTarget, Plan

STRATEGIC, MERGE, UPDATE = "strategic-merge", "merge", "update"
VERSION_ANNOTATION = "rollout.dev/version"


@dataclass(frozen=True)
class Patch:
    kind: str
    name: str
    namespace: str
    type: str  # strategic-merge | merge | update (PUT of the whole object, this part changed)
    body: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "namespace": self.namespace, "type": self.type, "body": self.body}


@dataclass
class Step:
    name: str  # "prepare" | "stage N <name>" | "promote"
    split: Split | None
    patches: list[Patch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.name, "split": None if self.split is None else
                {"weight": self.split.weight, "cohort": list(self.split.cohort) if self.split.cohort else None},
                "patches": [p.as_dict() for p in self.patches], "notes": self.notes}


def containers(dep: dict[str, Any]) -> list[dict[str, Any]]:
    return ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []


def image_body(version: str, images: dict[str, str], replicas: int | None) -> dict[str, Any]:
    """The strategic merge patch giving a Deployment a version's images (containers merge by name)."""
    body: dict[str, Any] = {"metadata": {"annotations": {VERSION_ANNOTATION: version}},
                            "spec": {"template": {"spec": {"containers": [{"name": c, "image": i} for c, i in images.items()]}}}}
    if replicas is not None:
        body["spec"]["replicas"] = replicas
    return body


def scale_body(replicas: int) -> dict[str, Any]:
    return {"spec": {"replicas": replicas}}


def promoted_template(stable: dict[str, Any], canary: dict[str, Any]) -> dict[str, Any]:
    """The stable Deployment's new pod template: the canary's spec, the stable's own labels (the selector is immutable)."""
    template = stable["spec"]["template"]
    ctemplate = canary["spec"]["template"]
    return {"metadata": {**(template.get("metadata") or {}),
                         "annotations": {**((template.get("metadata") or {}).get("annotations") or {}),
                                         **((ctemplate.get("metadata") or {}).get("annotations") or {})}},
            "spec": ctemplate["spec"]}


def _has_images(dep: dict[str, Any], images: dict[str, str]) -> bool:
    current = {c["name"]: c.get("image") for c in containers(dep)}
    return all(current.get(c) == i for c, i in images.items())


def _set_images(dep: dict[str, Any], version: str, images: dict[str, str]) -> None:
    dep.setdefault("metadata", {}).setdefault("annotations", {})[VERSION_ANNOTATION] = version
    for c in containers(dep):
        if c["name"] in images:
            c["image"] = images[c["name"]]


class _Sim:
    """The objects as the rollout would leave them, patch by patch."""

    def __init__(self, plan: Plan, objects: dict[str, Any], ns: str, stable_version: str, version: str,
                 images: dict[str, str], stable_images: dict[str, str]) -> None:
        t = plan.target
        assert isinstance(t, KubernetesTarget)
        self.plan, self.t, self.ns = plan, t, ns
        self.o = copy.deepcopy(objects)
        self.stable_version, self.version, self.images, self.stable_images = stable_version, version, images, stable_images
        self.total = t.replicas or int(self.o["stable"]["spec"].get("replicas", 1))

    def backends(self, canary: bool) -> routers.RouteBackends:
        assert self.t.services is not None
        return routers.RouteBackends(self.t.services.stable, self.t.services.canary, self.t.port,
                                     self.plan.load.version_header, self.stable_version, self.version if canary else None)

    def promoted(self) -> None:
        """From promotion on, the stable Deployment runs the promoted version: its backendRef says so."""
        self.stable_version = self.version

    def scale(self, step: Step, role: str, n: int) -> None:
        dep = self.o[role]
        if int(dep["spec"].get("replicas", 1)) != n:
            dep["spec"]["replicas"] = n
            step.patches.append(Patch("Deployment", dep["metadata"]["name"], self.ns, MERGE, scale_body(n)))

    def route(self, step: Step, split: Split, canary: bool) -> None:
        want = split if canary else ALL_STABLE
        if self.t.router == "replicas":
            rs = routers.replica_counts(self.total, want.weight)
            if rs.note:
                step.notes.append(f"coarse weight: {rs.note}")
            order = [("canary", rs.canary), ("stable", rs.stable)]  # grow before shrinking
            if rs.canary < int(self.o["canary"]["spec"].get("replicas", 0)):
                order.reverse()
            for role, n in order:
                self.scale(step, role, n)
        elif self.t.router == "gateway-api":
            route = self.o["route"]
            rules = routers.httproute_rules((route.get("spec") or {}).get("rules") or [], self.backends(canary), want)
            if rules != (route.get("spec") or {}).get("rules"):
                route.setdefault("spec", {})["rules"] = rules
                # sent with metadata.resourceVersion as read just before (compare-and-swap)
                step.patches.append(Patch("HTTPRoute", route["metadata"]["name"], self.ns, MERGE, {"spec": {"rules": rules}}))
        else:
            ing = self.o["ingress"]
            want_ann = routers.nginx_annotations(want, canary)
            current = ing.setdefault("metadata", {}).get("annotations") or {}
            if any(current.get(k) != v for k, v in want_ann.items()):
                ing["metadata"]["annotations"] = {k: v for k, v in {**current, **want_ann}.items() if v is not None}
                step.patches.append(Patch("Ingress", ing["metadata"]["name"], self.ns, MERGE, {"metadata": {"annotations": want_ann}}))

    def prepare(self) -> Step:
        step = Step("prepare: stable as recorded, all traffic on it, canary deployed (no users yet)", ALL_STABLE)
        stable, canary = self.o["stable"], self.o["canary"]
        if not _has_images(stable, self.stable_images):
            step.patches.append(Patch("Deployment", stable["metadata"]["name"], self.ns, STRATEGIC,
                                      image_body(self.stable_version, self.stable_images, None)))
            _set_images(stable, self.stable_version, self.stable_images)
        self.route(step, ALL_STABLE, canary=False)
        replicas = 0 if self.t.router == "replicas" else self.t.canary_replicas
        if not (_has_images(canary, self.images) and canary["spec"].get("replicas") == replicas):
            step.patches.append(Patch("Deployment", canary["metadata"]["name"], self.ns, STRATEGIC,
                                      image_body(self.version, self.images, replicas)))
            _set_images(canary, self.version, self.images)
            canary["spec"]["replicas"] = replicas
        return step

    def stage(self, i: int) -> Step:
        s = self.plan.stages[i]
        split = stage_split(self.plan, i)
        step = Step(f"stage {i + 1} `{s.name}`", split)
        self.route(step, split, canary=True)
        if s.load_to == "canary":
            step.notes.append("load goes to the canary alone (target.canary_url)")
        if s.approval == "manual":
            step.notes.append("waits for `rollout approve` before it starts")
        return step

    def promote(self) -> Step:
        step = Step(f"promote {self.version}: the stable Deployment gets the canary's pod template", ALL_STABLE)
        stable, canary = self.o["stable"], self.o["canary"]
        template = promoted_template(stable, canary)
        if template != stable["spec"]["template"]:
            stable["spec"]["template"] = template
            step.patches.append(Patch("Deployment", stable["metadata"]["name"], self.ns, UPDATE,
                                      {"metadata": {"annotations": {VERSION_ANNOTATION: self.version}}, "spec": {"template": template}}))
        if self.t.router == "replicas":
            self.scale(step, "stable", self.total)
        self.promoted()
        self.route(step, ALL_STABLE, canary=False)
        self.scale(step, "canary", 0)
        return step


def steps(plan: Plan, objects: dict[str, Any], namespace: str, stable_version: str, version: str,
          images: dict[str, str], stable_images: dict[str, str]) -> list[Step]:
    """Every step of a new rollout of `version` (its `images`) from `objects`
    ({"stable", "canary": Deployment, "route": HTTPRoute | None, "ingress": Ingress | None})."""
    sim = _Sim(plan, objects, namespace, stable_version, version, images, stable_images)
    return [sim.prepare(), *(sim.stage(i) for i in range(len(plan.stages))), sim.promote()]


def attribution_notes(plan: Plan) -> list[str]:
    """Fail closed (#10): which failed requests the load can charge to a version on this router, and
    what the plan should add where it cannot. A failure charged to no version cannot fail the canary."""
    t = plan.target
    assert isinstance(t, KubernetesTarget)
    header = plan.load.version_header
    entry = [s.name for s in plan.stages if s.load_to == "entry"]
    alone = [s.name for s in plan.stages if s.load_to == "canary"]
    notes = ["a canary Deployment left with no ready pod fails the stage at once (checked every second)"]
    if not entry:
        return notes + ["every stage loads the canary alone: a failed request without a version header is the canary's"]
    if t.router == "gateway-api":
        who = (f"the HTTPRoute sets `{header}` per backendRef, so every answer from a version is charged to it; "
               "a request the gateway itself fails (refused, reset, timed out: its own 5xx) may come back without it")
    elif t.router == "nginx":
        who = (f"ingress-nginx sets no header per version: `{header}` must come from the service itself, and a "
               "request nginx fails (its own 502/503/504) comes back without it")
    else:
        who = (f"one Service spreads requests over both Deployments: `{header}` must come from the service itself, "
               "and a connection refused or reset by a pod comes back without it")
    notes.append(f"unattributed failures: {who}; in stage(s) {', '.join(entry)} (load to the entry point) such a "
                 "failure is charged to no version, so it cannot fail the canary")
    if alone and t.canary_url:
        notes.append(f"stage(s) {', '.join(alone)} load target.canary_url alone: there every failure is the canary's")
    elif t.router == "replicas":  # no canary-only stage is possible: any canary pod serves users
        notes.append("to charge them: use router: gateway-api, whose backendRefs add the header and which allows a first "
                     "stage with `load_to: canary` on target.canary_url, where every failure is the canary's")
    else:
        notes.append("to charge them: add a first stage with `load_to: canary` and set target.canary_url (the canary "
                     "Service's address), where every failure, header or not, is the canary's"
                     + ("" if t.router == "gateway-api" else "; or use router: gateway-api, whose backendRefs add the header"))
    return notes


def local_steps(plan: Plan) -> list[dict[str, Any]]:
    """The local backend: what its router is told per stage (smooth weighted round-robin: exactly `weight` of requests)."""
    out = []
    for i, s in enumerate(plan.stages):
        split = stage_split(plan, i)
        out.append({"step": f"stage {i + 1} `{s.name}`", "load_to": s.load_to,
                    "router": {"weight": split.weight, "cohort": {"header": split.cohort[0], "value": split.cohort[1]} if split.cohort else None}})
    return out


def _describe(split: dict[str, Any] | None) -> str:
    if split is None:
        return ""
    s = Split(split["weight"], tuple(split["cohort"]) if split.get("cohort") else None)  # type: ignore[arg-type]
    return s.describe()


def render(doc: dict[str, Any]) -> str:
    """Text for people, from the same document `-o json` prints."""
    import json

    if doc["backend"] == "local":
        lines = [f"Plan `{doc['plan']}` — dry run on the local backend: what its router is told per stage "
                 "(smooth weighted round-robin: exactly that share of requests); nothing is started", ""]
        for st in doc["steps"]:
            r = st["router"]
            cohort = f", cohort {r['cohort']['header']}: {r['cohort']['value']} to canary" if r["cohort"] else ""
            lines.append(f"  {st['step']}: router weight {r['weight'] * 100:g}% to canary{cohort}; load to {st['load_to']}")
        return "\n".join(lines)
    head = (f"Plan `{doc['plan']}` — dry run on kubernetes, router {doc['router']}, namespace {doc['namespace']}: "
            f"{doc['version']} over {doc['stable']} (images {', '.join(f'{c}={i}' for c, i in doc['images'].items())}); "
            f"computed from the live objects, nothing applied")
    lines = [head]
    lines += [f"Note: {n}" for n in doc["notes"]]
    for st in doc["steps"]:
        split = _describe(st["split"])
        lines += ["", f"{st['step']}" + (f" — {split}" if split and st["step"].startswith("stage") else "")]
        if not st["patches"]:
            lines.append("  (no change)")
        for p in st["patches"]:
            verb = "PUT (the whole object, with this part changed)" if p["type"] == UPDATE else f"PATCH {p['type']}"
            guard = " (with the resourceVersion read just before)" if p["kind"] == "HTTPRoute" else ""
            lines.append(f"  {p['kind']} {p['namespace']}/{p['name']}: {verb}{guard}")
            lines.append("    " + json.dumps(p["body"], separators=(", ", ": ")))
        lines += [f"  note: {n}" for n in st["notes"]]
    return "\n".join(lines)

"""The Kubernetes backend: two Deployments (stable, canary) and one of three traffic routers.

The objects are the user's (created beforehand, see manifests/); this backend
only changes what a rollout changes: the canary Deployment's images and
replicas, the router (pod counts, HTTPRoute rules or canary-Ingress
annotations) and, at promotion, the stable Deployment's pod template.

Versions are images: `target.versions: {v2: {image: registry/app:2.0}}` sets
the pod's only container, `{images: {app: ..., sidecar: ...}}` sets several by
name (strategic merge patch, so other containers and fields stay).

Runtime facts in `state.backend`:
    {"canary": {"version", "deployment"} | None, "total": int (replicas router),
     "note": str | None (a weight the pod count cannot express)}
Every change in the cluster is followed by `checkpoint()`. Each step waits
until it has taken effect: Deployments until observedGeneration ≥ generation
and updated == available == spec.replicas (a new ReplicaSet whose pods never
become ready fails with the Deployment's conditions, within
`target.progress_deadline`), routers until a read-back says the split is live.

Each step the engine asks for (ensure, deploy the canary, shift, stop the
canary, promote) runs under one deadline, `step_timeout` (`target.step_timeout`
or `--step-timeout`; default 2 × progress_deadline + 60 s, as a promotion waits
for two Deployments): every request, retry and poll in it is cut to what is
left, and past it the step stops with `StepTimeout` (exit 3). The engine saved
the transition before the step began, so `status` says what may be half done
and `run`/`revert` finish or undo it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from rollout.backends.kubernetes import dryrun, routers
from rollout.backends.kubernetes.client import (
    DEPLOYMENTS,
    EVENTS,
    HTTPROUTES,
    INGRESSES,
    MERGE_PATCH,
    Conflict,
    Kube,
)
from rollout.backends.kubernetes.store import micro_time
from rollout.engine.state import ALL_STABLE, Split, State
from rollout.errors import BackendError, RolloutError, UsageError
from rollout.gates.liveness import CanaryProbe
from rollout.plan.loader import LoadedPlan
from rollout.plan.model import KubernetesTarget

STRATEGIC = "application/strategic-merge-patch+json"
VERSION_ANNOTATION = "rollout.dev/version"
GW = ("gateway.networking.k8s.io", "v1")
MAX_TEMPLATES = 20  # pod templates kept for `revert --to-revision` (as many as state.revisions)
PROBE_TIMEOUT = 3.0  # the per-tick canary probe (fail closed): a slow API server skips a tick, it does not stall the stage
REVERT_HINT = "`rollout revert` puts all traffic back on stable"
STEP_MARGIN = 60.0  # seconds beyond two progress deadlines in the default step deadline

F = TypeVar("F", bound=Callable[..., Any])


def default_step_timeout(target: KubernetesTarget) -> float:
    """A promotion waits for two Deployments (stable, then the canary scaled down): 2 × progress_deadline + 60 s."""
    return 2 * target.progress_deadline + STEP_MARGIN


def step(name: str) -> Callable[[F], F]:
    """Run a Backend method under the step deadline (a step calling another keeps the outer, earlier end)."""
    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: "KubernetesBackend", *args: Any, **kw: Any) -> Any:
            with self.kube.deadline(name, self.step_timeout):
                return fn(self, *args, **kw)
        return wrapper  # type: ignore[return-value]
    return deco


class KubernetesBackend:
    name = "kubernetes"

    def __init__(self, loaded: LoadedPlan, kube: Kube, poll: float = 0.5, sleep: Callable[[float], None] = time.sleep,
                 step_timeout: float | None = None) -> None:
        assert isinstance(loaded.plan.target, KubernetesTarget)
        self.loaded = loaded
        self.target: KubernetesTarget = loaded.plan.target
        self.kube = kube
        self.ns = kube.namespace
        self.poll = poll
        self.sleep = sleep
        # the deadline of each step: --step-timeout, else target.step_timeout, else 2 × progress_deadline + 60 s
        self.step_timeout: float = step_timeout or self.target.step_timeout or default_step_timeout(self.target)
        self.checkpoint: Callable[[], None] = lambda: None
        self.cli_images: tuple[str, dict[str, str]] | None = None  # `--image NAME=REF`: (version, images)

    def set_images(self, version: str, images: dict[str, str]) -> None:
        """The canary's images from the command line (`--image`), recorded in the state when it is deployed."""
        self.cli_images = (version, dict(images))

    # -- Deployments -------------------------------------------------------

    def _get(self, name: str) -> dict[str, Any]:
        return self.kube.call("get", DEPLOYMENTS, name, self.kube.apps.read_namespaced_deployment, name, self.ns)

    def _patch(self, name: str, body: dict[str, Any], content_type: str = STRATEGIC) -> dict[str, Any]:
        return self.kube.call("patch", DEPLOYMENTS, name, self.kube.apps.patch_namespaced_deployment, name, self.ns,
                              body, _content_type=content_type)

    @staticmethod
    def _containers(dep: dict[str, Any]) -> list[dict[str, Any]]:
        return ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []

    def recorded_images(self, version: str, state: State | None) -> dict[str, str] | None:
        """Images given with --image: on this command line, or recorded in the state by an earlier one."""
        if self.cli_images and self.cli_images[0] == version:
            return dict(self.cli_images[1])
        got = (state.backend.get("images") or {}).get(version) if state is not None else None
        return dict(got) if got else None

    def images_for(self, version: str, dep: dict[str, Any], state: State | None = None) -> dict[str, str]:
        """container name -> image for `version` in Deployment `dep`: --image (given or recorded) first,
        then the plan's target.versions, then the kept pod template of a promoted revision."""
        recorded = self.recorded_images(version, state)
        spec = self.target.versions.get(version)
        name = dep["metadata"]["name"]
        names = [c["name"] for c in self._containers(dep)]
        if recorded is None and spec is None and state is not None:
            tpl = self.template_of(state, version)
            recorded = {c["name"]: c.get("image") for c in dryrun.containers({"spec": {"template": tpl}})} if tpl else None
        if recorded is not None:
            unknown = sorted(set(recorded) - set(names))
            if unknown:
                error = UsageError if self.cli_images and self.cli_images[0] == version else BackendError  # a bad flag is bad input
                raise error(f"version {version} names containers {', '.join(unknown)} that Deployment {self.ns}/{name} does not have ({', '.join(names)})",
                            "give --image with one of those container names")
            return recorded
        if spec is None:
            raise BackendError(f"version {version} is not in the plan's target.versions ({', '.join(self.target.versions)}) "
                               "nor recorded for this rollout", "add it to the plan, give its images with --image, or name one of those")
        if spec.image is not None:
            if len(names) != 1:
                raise BackendError(f"version {version} gives one `image`, but Deployment {self.ns}/{name} has containers {', '.join(names)}",
                                   "give `images:` with a container name for each image")
            return {names[0]: spec.image}
        unknown = sorted(set(spec.images) - set(names))
        if unknown:
            raise BackendError(f"version {version} names containers {', '.join(unknown)} that Deployment {self.ns}/{name} does not have ({', '.join(names)})",
                               "fix target.versions in the plan")
        return dict(spec.images)

    def _has_images(self, dep: dict[str, Any], images: dict[str, str]) -> bool:
        current = {c["name"]: c.get("image") for c in self._containers(dep)}
        return all(current.get(c) == i for c, i in images.items())

    def _set_version(self, name: str, version: str, replicas: int | None, state: State | None = None) -> dict[str, Any]:
        dep = self._get(name)
        images = self.images_for(version, dep, state)
        body = dryrun.image_body(version, images, replicas)
        if self._has_images(dep, images) and (replicas is None or dep["spec"].get("replicas") == replicas):
            return dep
        out = self._patch(name, body)
        self.checkpoint()
        return out

    def _scale(self, name: str, replicas: int) -> None:
        dep = self._get(name)
        if dep["spec"].get("replicas", 1) != replicas:
            self._patch(name, {"spec": {"replicas": replicas}}, MERGE_PATCH)
            self.checkpoint()

    def wait_ready(self, name: str) -> dict[str, Any]:
        """Until the Deployment's controller has seen the latest spec and every wanted pod is updated and available."""
        deadline = time.monotonic() + self.target.progress_deadline
        while True:
            dep = self._get(name)
            want = int(dep["spec"].get("replicas", 1))
            st = dep.get("status") or {}
            conds = {c.get("type"): c for c in st.get("conditions") or []}
            observed = int(st.get("observedGeneration", 0)) >= int(dep["metadata"].get("generation", 1))
            counts = (int(st.get("updatedReplicas", 0)), int(st.get("availableReplicas", 0)), int(st.get("replicas", 0)))
            if observed and counts == (want, want, want):
                return dep
            # a condition from before the controller saw this generation says nothing about it
            stuck = observed and (conds.get("Progressing") or {}).get("reason") == "ProgressDeadlineExceeded"
            if stuck or time.monotonic() >= deadline:
                described = "; ".join(f"{t}={c.get('status')} ({c.get('reason')}: {c.get('message', '')})" for t, c in conds.items()) or "no conditions yet"
                when = "before its progressDeadlineSeconds" if stuck else f"within {self.target.progress_deadline:g}s"
                raise BackendError(
                    f"Deployment {self.ns}/{name} did not become ready {when}: "
                    f"{counts[0]}/{want} updated, {counts[1]}/{want} available; {described}",
                    f"see `kubectl -n {self.ns} describe deployment {name}` and its pods' events; {REVERT_HINT}")
            dl = self.kube.current_deadline()
            if dl is not None and dl.remaining() <= self.poll:  # the step ends before the next look
                raise dl.expired(f"see Deployment {self.ns}/{name} ready ({counts[1]}/{want} available)")
            self.sleep(self.poll)

    def _event(self, reason: str, message: str, warning: bool = False) -> None:
        """A Kubernetes Event on the canary Deployment, for `kubectl describe`; best effort (RBAC may lack it)."""
        name = self.target.deployments.canary
        now = micro_time()
        body = {"metadata": {"generateName": f"{name}.rollout-"},
                "involvedObject": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "namespace": self.ns},
                "reason": reason, "message": message, "type": "Warning" if warning else "Normal",
                "source": {"component": "rollout"}, "reportingComponent": "rollout", "reportingInstance": "rollout",
                "firstTimestamp": now, "lastTimestamp": now, "count": 1}
        try:
            self.kube.call("create", EVENTS, None, self.kube.core.create_namespaced_event, self.ns, body)
        except (RolloutError, Conflict):
            pass

    # -- routers -----------------------------------------------------------

    def _total(self, state: State) -> int:
        if "total" not in state.backend:
            state.backend["total"] = self.target.replicas or int(self._get(self.target.deployments.stable)["spec"].get("replicas", 1))
            self.checkpoint()
        return int(state.backend["total"])

    def _route_backends(self, state: State, canary: bool, stable_as: str | None = None) -> routers.RouteBackends:
        assert self.target.services is not None
        rec = state.backend.get("canary") if canary else None
        return routers.RouteBackends(self.target.services.stable, self.target.services.canary, self.target.port,
                                     self.loaded.plan.load.version_header, stable_as or state.stable_version,
                                     rec["version"] if rec else None)

    def _route(self, state: State, split: Split, canary: bool, stable_as: str | None = None) -> None:
        """Make traffic follow `split` (all on stable when there is no `canary`), and read it back.
        `stable_as`: the version the stable backend runs, when it is not yet the recorded one (promotion)."""
        want = split if canary else ALL_STABLE
        if self.target.router == "replicas":
            self._route_replicas(state, want)
        elif self.target.router == "gateway-api":
            self._route_gateway(state, want, canary, stable_as)
        else:
            self._route_nginx(want, canary)

    def _route_replicas(self, state: State, split: Split) -> None:
        if split.cohort:
            raise BackendError("the replicas router cannot send a cohort to the canary (one Service, no header routing)",
                               "use router gateway-api or nginx, or remove the stage's cohort")
        rs = routers.replica_counts(self._total(state), split.weight)
        if state.backend.get("note") != rs.note:
            state.backend["note"] = rs.note
            self.checkpoint()
        d = self.target.deployments
        # grow before shrinking, so capacity never dips below the total
        order = [(d.canary, rs.canary), (d.stable, rs.stable)]
        if rs.canary < int(self._get(d.canary)["spec"].get("replicas", 0)):
            order.reverse()
        for name, n in order:
            self._scale(name, n)
            self.wait_ready(name)

    def _route_gateway(self, state: State, split: Split, canary: bool, stable_as: str | None = None) -> None:
        b = self._route_backends(state, canary, stable_as)
        name = self.target.httproute
        assert name is not None
        get = lambda: self.kube.call("get", HTTPROUTES, name, self.kube.custom.get_namespaced_custom_object, *GW, self.ns, "httproutes", name)  # noqa: E731
        for _ in range(5):
            route = get()
            try:
                rules = routers.httproute_rules((route.get("spec") or {}).get("rules") or [], b, split)
            except ValueError as exc:
                raise BackendError(f"HTTPRoute {self.ns}/{name}: {exc}", "add a rule with a backendRef to the stable Service") from None
            if rules == (route.get("spec") or {}).get("rules"):
                break
            # merge patch (CRs refuse strategic merge), whole `rules` list, guarded by resourceVersion
            body = {"metadata": {"resourceVersion": route["metadata"]["resourceVersion"]}, "spec": {"rules": rules}}
            try:
                self.kube.call("patch", HTTPROUTES, name, self.kube.custom.patch_namespaced_custom_object, *GW, self.ns,
                               "httproutes", name, body, _content_type=MERGE_PATCH)
                self.checkpoint()
                break
            except Conflict:
                continue
        else:
            raise BackendError(f"HTTPRoute {self.ns}/{name} kept changing while the split was applied", "run the command again")
        live = get()
        if not routers.httproute_live(live, b).matches(split):
            raise BackendError(f"HTTPRoute {self.ns}/{name} does not route {split.describe()} after the patch", REVERT_HINT)
        rejected = routers.httproute_rejection(live)
        if rejected:
            raise BackendError(f"HTTPRoute {self.ns}/{name} was not accepted: {rejected}", f"fix the route or its Services; {REVERT_HINT}")

    def _route_nginx(self, split: Split, canary: bool) -> None:
        name = self.target.ingress
        assert name is not None
        get = lambda: self.kube.call("get", INGRESSES, name, self.kube.net.read_namespaced_ingress, name, self.ns)  # noqa: E731
        want = routers.nginx_annotations(split, canary)
        current = (get()["metadata"].get("annotations")) or {}
        if any(current.get(k) != v for k, v in want.items()):
            self.kube.call("patch", INGRESSES, name, self.kube.net.patch_namespaced_ingress, name, self.ns,
                           {"metadata": {"annotations": want}}, _content_type=MERGE_PATCH)
            self.checkpoint()
        if not routers.nginx_live(get()).matches(split):
            raise BackendError(f"Ingress {self.ns}/{name} does not route {split.describe()} after the patch", REVERT_HINT)

    # -- Backend protocol --------------------------------------------------

    # -- revision history: the pod template of every known-good version ------

    @staticmethod
    def template_of(state: State, version: str) -> dict[str, Any] | None:
        for entry in reversed(state.backend.get("templates") or []):
            if entry.get("version") == version:
                return entry.get("template")
        return None

    def _remember(self, state: State, version: str, template: dict[str, Any]) -> None:
        """Keep `version`'s pod template (the latest per version; bounded like state.revisions)."""
        keep = [e for e in state.backend.get("templates") or [] if e.get("version") != version]
        keep.append({"version": version, "template": template})
        wanted = {r.version for r in state.revisions} | {version}
        state.backend["templates"] = [e for e in keep if e["version"] in wanted][-MAX_TEMPLATES:]
        images = state.backend.get("images") or {}
        if images:  # --image records: only for versions still in the history or rolling out
            live = wanted | {state.canary_version}
            state.backend["images"] = {v: i for v, i in images.items() if v in live}

    def _replace_template(self, name: str, make: Callable[[dict[str, Any]], dict[str, Any]], version: str) -> dict[str, Any]:
        """PUT the Deployment with the pod template `make(current)`, guarded by resourceVersion; returns it as stored."""
        for _ in range(5):
            dep = self._get(name)
            template = make(dep)
            if template == dep["spec"]["template"]:
                return dep
            dep["spec"]["template"] = template
            dep["metadata"].setdefault("annotations", {})[VERSION_ANNOTATION] = version
            try:
                out = self.kube.call("update", DEPLOYMENTS, name, self.kube.apps.replace_namespaced_deployment, name, self.ns, dep)
                self.checkpoint()
                return out
            except Conflict:
                continue
        raise BackendError(f"Deployment {self.ns}/{name} kept changing while its pod template was replaced", "run the command again")

    def _restore(self, state: State, stable: dict[str, Any]) -> None:
        """The stable Deployment runs the recorded stable version: its kept template if there is one, else its images."""
        d = self.target.deployments
        version = state.stable_version
        kept = self.template_of(state, version)
        reverting = state.transition is not None and state.transition.action == "revert"
        drifted = not self._has_images(stable, self.images_for(version, stable, state))
        if kept is not None and (drifted or reverting) and kept.get("spec") != stable["spec"]["template"].get("spec"):
            own = stable["spec"]["template"].get("metadata") or {}
            self._replace_template(d.stable, lambda cur: {
                "metadata": {**((cur["spec"]["template"].get("metadata")) or {}),
                             "annotations": {**(own.get("annotations") or {}), **((kept.get("metadata") or {}).get("annotations") or {})}},
                "spec": kept["spec"]}, version)
            self.wait_ready(d.stable)
        elif drifted:  # e.g. a promotion abandoned halfway: the stable Deployment must run the known-good version
            self._set_version(d.stable, version, None, state)
            self.wait_ready(d.stable)
        elif kept is None:  # first sight of the known-good version: keep its template for `revert --to-revision`
            self._remember(state, version, stable["spec"]["template"])

    @step("the check of the cluster against the recorded state")
    def ensure(self, state: State, canary: bool = True) -> None:
        d = self.target.deployments
        if canary and self.cli_images and state.phase.active and self.cli_images[0] == state.canary_version:
            recorded = (state.backend.get("images") or {}).get(state.canary_version)
            if recorded is not None and recorded != self.cli_images[1]:
                raise UsageError(f"{state.canary_version} is being rolled out with other images "
                                 f"({', '.join(f'{c}={i}' for c, i in recorded.items())})",
                                 "leave --image out to go on with them, or `rollout abort` first; name a new version with --version")
        self._restore(state, self._get(d.stable))
        if self.target.router == "replicas":
            self._total(state)
        if not canary:
            return  # a rollback follows at once (split to stable, canary stopped): nothing of the canary may block it
        rec = state.backend.get("canary")
        if rec and state.phase.active and state.canary_version:
            dep = self._get(d.canary)
            if rec["version"] != state.canary_version or not self._has_images(dep, self.images_for(state.canary_version, dep, state)):
                self.deploy_canary(state, state.canary_version)
            self._route(state, state.split, canary=True)
        else:
            self._route(state, ALL_STABLE, canary=False)

    @step("deploying the canary")
    def deploy_canary(self, state: State, version: str) -> None:
        d = self.target.deployments
        rec = state.backend.get("canary")
        if rec and rec["version"] != version:
            self._route(state, ALL_STABLE, canary=False)  # the old canary must serve nobody while it changes
        # the replicas router gets the canary's pods at the first shift: any pod of it serves users
        replicas = 0 if self.target.router == "replicas" else self.target.canary_replicas
        state.backend["canary"] = {"version": version, "deployment": d.canary}
        if self.cli_images and self.cli_images[0] == version:  # later commands (and revert) need them
            state.backend.setdefault("images", {})[version] = dict(self.cli_images[1])
        self.checkpoint()
        self._set_version(d.canary, version, replicas, state)
        self._event("CanaryDeploying", f"rollout: deploying {version} as the canary ({replicas} pods)")
        try:
            self.wait_ready(d.canary)
        except BackendError as exc:
            self._event("CanaryNotReady", exc.what, warning=True)
            raise
        self._event("CanaryReady", f"rollout: canary {version} is ready, serving no users yet")

    @step("the traffic shift")
    def apply_split(self, state: State, split: Split) -> None:
        self._route(state, split, canary=state.backend.get("canary") is not None)
        self._event("TrafficShifted", f"rollout: {split.describe()}")

    @step("stopping the canary")
    def stop_canary(self, state: State) -> None:
        d = self.target.deployments
        if state.backend.get("canary") is None and int(self._get(d.canary)["spec"].get("replicas", 0)) == 0:
            return
        self._route(state, ALL_STABLE, canary=False)
        self._scale(d.canary, 0)
        self.wait_ready(d.canary)
        state.backend["canary"] = None
        self.checkpoint()
        self._event("CanaryStopped", "rollout: canary scaled to 0, all traffic on stable")

    @step("the promotion")
    def promote(self, state: State) -> None:
        d = self.target.deployments
        rec = state.backend.get("canary")
        version = state.canary_version
        stable = self._get(d.stable)
        if rec is None:
            if version and self._has_images(stable, self.images_for(version, stable, state)):
                if self.template_of(state, version) is None:
                    self._remember(state, version, stable["spec"]["template"])
                return  # already promoted (a killed command is finishing)
            raise BackendError(f"cannot promote: no canary of {version} is deployed", "run `rollout revert`, then roll it out again")
        canary = self._get(d.canary)
        # the stable Deployment gets the canary's pod template (its own labels: the selector is immutable)
        promoted = self._replace_template(d.stable, lambda cur: dryrun.promoted_template(cur, canary), rec["version"])
        self._remember(state, rec["version"], promoted["spec"]["template"])  # the revision history
        self.checkpoint()
        if self.target.router == "replicas":
            self._scale(d.stable, self._total(state))
        self.wait_ready(d.stable)
        self._route(state, ALL_STABLE, canary=False, stable_as=rec["version"])  # its pods now run the promoted version
        self._scale(d.canary, 0)
        self.wait_ready(d.canary)
        state.backend["canary"] = None
        self.checkpoint()
        self._event("Promoted", f"rollout: {rec['version']} promoted: Deployment {d.stable} runs it and serves all traffic")

    def entry_url(self, state: State) -> str:
        url = self.target.entry_url or self.loaded.plan.load.host
        if not url:
            raise BackendError("the plan gives no entry point for the load", "set target.entry_url (or load.host) to where users' traffic enters")
        return url

    def canary_url(self, state: State) -> str:
        if not self.target.canary_url:
            raise BackendError("the plan gives no URL for the canary alone (a `load_to: canary` stage needs one)",
                               "set target.canary_url, e.g. the canary Service's address")
        return self.target.canary_url

    def canary_probe(self, state: State) -> CanaryProbe | None:
        """Fail closed, every tick: a canary Deployment that should run pods and has none ready is down.
        No per-version request counters: the cluster's routers do not count for us."""
        rec = state.backend.get("canary")
        if not rec:
            return CanaryProbe(state.canary_version)
        name = self.target.deployments.canary
        with self.kube.deadline("checking the canary's ready pods", PROBE_TIMEOUT):  # never holds up the tick for long
            dep = self._get(name)
        want = int((dep.get("spec") or {}).get("replicas", 1) or 0)
        ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
        down = None
        if want > 0 and ready == 0:
            down = f"Deployment {self.ns}/{name} has 0 of {want} pods ready"
        return CanaryProbe(rec.get("version") or state.canary_version, down, None)

    @step("reading the live objects")
    def inspect(self, state: State) -> dict[str, Any]:
        """Live facts for `status -o json`: {"deployments": {role: ...}, "traffic": {router, weight, cohort, note}}.

        (Keys differ from the local backend's stable/canary/router on purpose: those are process records.)"""
        deployments: dict[str, Any] = {}
        for role, name in (("stable", self.target.deployments.stable), ("canary", self.target.deployments.canary)):
            try:
                dep = self._get(name)
                st = dep.get("status") or {}
                deployments[role] = {"deployment": name, "images": {c["name"]: c.get("image") for c in self._containers(dep)},
                                     "replicas": dep["spec"].get("replicas", 1), "available": st.get("availableReplicas", 0),
                                     "ready": st.get("readyReplicas", 0)}
            except BackendError as exc:
                deployments[role] = {"deployment": name, "error": exc.what}
        traffic: dict[str, Any] = {"router": self.target.router, "note": state.backend.get("note")}
        try:
            if self.target.router == "gateway-api":
                assert self.target.httproute is not None
                route = self.kube.call("get", HTTPROUTES, self.target.httproute, self.kube.custom.get_namespaced_custom_object,
                                       *GW, self.ns, "httproutes", self.target.httproute)
                live = routers.httproute_live(route, self._route_backends(state, True))
            elif self.target.router == "nginx":
                assert self.target.ingress is not None
                live = routers.nginx_live(self.kube.call("get", INGRESSES, self.target.ingress, self.kube.net.read_namespaced_ingress,
                                                         self.target.ingress, self.ns))
            else:
                up = {role: int(d.get("available", 0)) for role, d in deployments.items()}
                total = sum(up.values())
                live = routers.Live(up.get("canary", 0) / total if total else 0.0, None)
            traffic.update(weight=live.weight, cohort=list(live.cohort) if live.cohort else None)
        except (BackendError, ValueError) as exc:
            traffic["error"] = str(exc)
        return {"backend": self.name, "namespace": self.ns, "deployments": deployments, "traffic": traffic}

    @step("reading the objects for the plan")
    def dry_run(self, state: State | None, version: str) -> dict[str, Any]:
        """`rollout plan`: every patch a new rollout of `version` would send, from the live objects (get only)."""
        d = self.target.deployments
        objects: dict[str, Any] = {"stable": self._get(d.stable), "canary": self._get(d.canary), "route": None, "ingress": None}
        if self.target.router == "gateway-api":
            assert self.target.httproute is not None
            objects["route"] = self.kube.call("get", HTTPROUTES, self.target.httproute, self.kube.custom.get_namespaced_custom_object,
                                              *GW, self.ns, "httproutes", self.target.httproute)
        elif self.target.router == "nginx":
            assert self.target.ingress is not None
            objects["ingress"] = self.kube.call("get", INGRESSES, self.target.ingress, self.kube.net.read_namespaced_ingress,
                                                self.target.ingress, self.ns)
        stable_version = state.stable_version if state else self.target.stable
        images = self.images_for(version, objects["canary"], state)
        notes: list[str] = []
        if state is not None and state.phase.active:
            notes.append(f"a rollout of {state.canary_version} is in progress ({state.phase.value}, traffic {state.split.describe()}); "
                         "this is what a new rollout would do from the objects as they are now")
        if version == stable_version:
            notes.append(f"{version} is already the stable version: `rollout run` would do nothing")
        notes += dryrun.attribution_notes(self.loaded.plan)
        try:
            steps = dryrun.steps(self.loaded.plan, objects, self.ns, stable_version, version, images,
                                 self.images_for(stable_version, objects["stable"], state))
        except ValueError as exc:
            raise BackendError(f"cannot compute the patches: {exc}", "fix the objects (see manifests/) or the plan") from None
        return {"plan": self.loaded.plan.name, "backend": self.name, "router": self.target.router, "namespace": self.ns,
                "version": version, "stable": stable_version, "images": images, "applied": False, "notes": notes,
                "steps": [s.as_dict() for s in steps]}

    @step("`rollout down`")
    def down(self, state: State) -> None:
        """Nothing here was started by this tool but the canary's pods: traffic to stable, canary to 0."""
        self.stop_canary(state)

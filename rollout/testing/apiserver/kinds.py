"""Per-kind behaviour of the built-in types: defaulting, validation and the
bits of update strategy that differ between kinds.

The real server applies defaults (so a Deployment read back has
`strategy`, `revisionHistoryLimit`, container `imagePullPolicy`...), and
rejects invalid objects with 422 before storing them. Code under test that
round-trips objects, or compares what it wrote with what it reads, only
behaves as in production when both happen here too. Only the rules a
rollout tool can plausibly trip over are reproduced; each keeps upstream's
field path and wording.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .errors import FieldError
from .resources import ResourceType
from .selectors import selector_from_label_selector_object

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                  "'-' or '.', and must start and end with an alphanumeric character (e.g. "
                  "'example.com', regex used for validation is "
                  "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
              "'-', and must start and end with an alphanumeric character (e.g. 'my-name',  or "
              "'123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
_DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start "
                "with an alphabetic character, and end with an alphanumeric character (e.g. "
                "'my-name',  or 'abc-123', regex used for validation is "
                "'[a-z]([-a-z0-9]*[a-z0-9])?')")
_LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, "
                    "'-', '_' or '.', and must start and end with an alphanumeric character (e.g. "
                    "'MyValue',  or 'my_value',  or '12345', regex used for validation is "
                    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")


def _d(obj: dict, *keys: str) -> dict:
    """obj[k1][k2]... creating dicts on the way."""
    cur = obj
    for k in keys:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[k] = nxt
        cur = nxt
    return cur


# ------------------------------- defaults -----------------------------------

def default_pod_spec(spec: dict) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if not isinstance(c, dict):
            continue
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("resources", {})
        image = c.get("image") or ""
        if "imagePullPolicy" not in c:
            tail = image.rsplit("/", 1)[-1]
            tagged = ":" in tail and not tail.endswith(":latest")
            c["imagePullPolicy"] = "IfNotPresent" if (tagged or "@" in image) else "Always"
        for p in c.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")


def default_deployment(obj: dict, _ctx: Any) -> None:
    spec = _d(obj, "spec")
    spec.setdefault("replicas", 1)
    strategy = _d(spec, "strategy")
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        ru = _d(strategy, "rollingUpdate")
        ru.setdefault("maxUnavailable", "25%")
        ru.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    default_pod_spec(_d(obj, "spec", "template", "spec"))


def default_service(obj: dict, ctx: Any) -> None:
    spec = _d(obj, "spec")
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        if not spec.get("clusterIP") and ctx is not None:
            spec["clusterIP"] = ctx.allocate_cluster_ip()
        if spec.get("clusterIP"):
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for p in spec.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
            if "port" in p:
                p.setdefault("targetPort", p["port"])
            if spec["type"] in ("NodePort", "LoadBalancer") and not p.get("nodePort") and ctx is not None:
                p["nodePort"] = ctx.allocate_node_port()
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def default_namespace(obj: dict, _ctx: Any) -> None:
    name = obj.get("metadata", {}).get("name", "")
    _d(obj, "metadata", "labels").setdefault("kubernetes.io/metadata.name", name)
    _d(obj, "spec").setdefault("finalizers", ["kubernetes"])
    _d(obj, "status").setdefault("phase", "Active")


def default_ingress(obj: dict, _ctx: Any) -> None:
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def default_event(obj: dict, _ctx: Any) -> None:
    obj.setdefault("reportingComponent", "")
    obj.setdefault("reportingInstance", "")


def default_job(obj: dict, _ctx: Any) -> None:
    """What the Job strategy and defaults add: counts, the selector the controller owns, pod defaults
    (but not restartPolicy, which a Job must state: OnFailure or Never)."""
    spec = _d(obj, "spec")
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("manualSelector", False)
    uid = (obj.get("metadata") or {}).get("uid") or ""
    name = (obj.get("metadata") or {}).get("name") or ""
    tmpl = _d(spec, "template")
    labels = _d(tmpl, "metadata", "labels")
    if uid and not spec.get("selector"):
        labels.setdefault("batch.kubernetes.io/controller-uid", uid)
        labels.setdefault("batch.kubernetes.io/job-name", name)
        labels.setdefault("controller-uid", uid)
        labels.setdefault("job-name", name)
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    pod = _d(tmpl, "spec")
    had_policy = "restartPolicy" in pod
    default_pod_spec(pod)
    if not had_policy:
        pod.pop("restartPolicy", None)


def default_secret(obj: dict, _ctx: Any) -> None:
    obj.setdefault("type", "Opaque")


DEFAULTERS: dict[tuple[str, str], Callable[[dict, Any], None]] = {
    ("batch", "Job"): default_job,
    ("", "Secret"): default_secret,
    ("apps", "Deployment"): default_deployment,
    ("", "Service"): default_service,
    ("", "Namespace"): default_namespace,
    ("networking.k8s.io", "Ingress"): default_ingress,
    ("", "Event"): default_event,
}


# ------------------------------ validation ----------------------------------

def validate_meta(rt: ResourceType, obj: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    if rt.kind == "Service":
        rx, msg = DNS1035_LABEL, _DNS1035_MSG
    elif rt.kind == "Namespace":
        rx, msg = DNS1123_LABEL, _LABEL_MSG
    else:
        rx, msg = DNS1123_SUBDOMAIN, _SUBDOMAIN_MSG
    if name and (not rx.match(name) or len(name) > 253):
        errs.append(FieldError("Invalid", "metadata.name", name, msg))
    for k, v in (meta.get("labels") or {}).items():
        keyname = k.split("/")[-1]
        if not _LABEL_NAME.match(keyname) or len(keyname) > 63 or k.count("/") > 1:
            errs.append(FieldError("Invalid", "metadata.labels", k,
                                   "name part must consist of alphanumeric characters, '-', '_' or "
                                   "'.', and must start and end with an alphanumeric character"))
        if not isinstance(v, str) or len(v) > 63 or not _LABEL_VALUE.match(v):
            errs.append(FieldError("Invalid", "metadata.labels", v, _LABEL_VALUE_MSG))
    return errs


def _intstr_zero(v: Any) -> bool:
    return v in (0, "0", "0%")


def validate_deployment(obj: dict, old: dict | None) -> list[FieldError]:
    errs: list[FieldError] = []
    spec = obj.get("spec") or {}
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        errs.append(FieldError("Invalid", "spec.replicas", replicas, "must be greater than or equal to 0"))
    sel = spec.get("selector")
    if not sel:
        errs.append(FieldError("Required", "spec.selector"))
    elif not (sel.get("matchLabels") or sel.get("matchExpressions")):
        errs.append(FieldError("Invalid", "spec.selector", sel,
                               "empty selector is invalid for deployment"))
    tmpl = spec.get("template") or {}
    labels = (tmpl.get("metadata") or {}).get("labels") or {}
    if sel and (sel.get("matchLabels") or sel.get("matchExpressions")):
        if not selector_from_label_selector_object(sel).matches(labels):
            errs.append(FieldError("Invalid", "spec.template.metadata.labels", labels,
                                   "`selector` does not match template `labels`"))
    pod = tmpl.get("spec") or {}
    containers = pod.get("containers") or []
    if not containers:
        errs.append(FieldError("Required", "spec.template.spec.containers"))
    seen: set[str] = set()
    for i, c in enumerate(containers):
        p = f"spec.template.spec.containers[{i}]"
        cname = (c or {}).get("name") or ""
        if not cname:
            errs.append(FieldError("Required", f"{p}.name"))
        elif not DNS1123_LABEL.match(cname):
            errs.append(FieldError("Invalid", f"{p}.name", cname, _LABEL_MSG))
        elif cname in seen:
            errs.append(FieldError("Duplicate", f"{p}.name", cname))
        seen.add(cname)
        if not (c or {}).get("image"):
            errs.append(FieldError("Required", f"{p}.image"))
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate" and strategy.get("rollingUpdate"):
        errs.append(FieldError("Forbidden", "spec.strategy.rollingUpdate",
                               detail="may not be specified when strategy `type` is 'Recreate'"))
    ru = strategy.get("rollingUpdate") or {}
    if strategy.get("type") == "RollingUpdate" and _intstr_zero(ru.get("maxSurge")) \
            and _intstr_zero(ru.get("maxUnavailable")):
        errs.append(FieldError("Invalid", "spec.strategy.rollingUpdate.maxUnavailable",
                               ru.get("maxUnavailable"), "may not be 0 when `maxSurge` is 0"))
    if old is not None:
        old_sel = (old.get("spec") or {}).get("selector")
        if old_sel is not None and sel != old_sel:
            errs.append(FieldError("Invalid", "spec.selector", sel, "field is immutable"))
    return errs


def validate_service(obj: dict, old: dict | None) -> list[FieldError]:
    errs: list[FieldError] = []
    spec = obj.get("spec") or {}
    stype = spec.get("type", "ClusterIP")
    if stype not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        errs.append(FieldError("NotSupported", "spec.type", stype,
                               'supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"'))
    ports = spec.get("ports") or []
    if not ports and stype != "ExternalName" and spec.get("clusterIP") != "None":
        errs.append(FieldError("Required", "spec.ports"))
    for i, p in enumerate(ports):
        if len(ports) > 1 and not p.get("name"):
            errs.append(FieldError("Required", f"spec.ports[{i}].name"))
        port = p.get("port")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            errs.append(FieldError("Invalid", f"spec.ports[{i}].port", port,
                                   "must be between 1 and 65535, inclusive"))
    if old is not None:
        old_ip = (old.get("spec") or {}).get("clusterIP")
        if old_ip and spec.get("clusterIP") and spec.get("clusterIP") != old_ip:
            errs.append(FieldError("Invalid", "spec.clusterIP", spec.get("clusterIP"), "field is immutable"))
    return errs


def validate_configmap(obj: dict, old: dict | None) -> list[FieldError]:
    errs: list[FieldError] = []
    for k in list((obj.get("data") or {})) + list((obj.get("binaryData") or {})):
        if not re.match(r"^[-._a-zA-Z0-9]+$", k) or len(k) > 253:
            errs.append(FieldError("Invalid", "data", k,
                                   "a valid config key must consist of alphanumeric characters, "
                                   "'-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or "
                                   "'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"))
    if old is not None and old.get("immutable"):
        if not obj.get("immutable"):
            errs.append(FieldError("Forbidden", "immutable",
                                   detail="field is immutable when `immutable` is set"))
        if obj.get("data") != old.get("data") or obj.get("binaryData") != old.get("binaryData"):
            errs.append(FieldError("Forbidden", "data",
                                   detail="field is immutable when `immutable` is set"))
    return errs


def validate_ingress(obj: dict, old: dict | None) -> list[FieldError]:
    errs: list[FieldError] = []
    for i, rule in enumerate((obj.get("spec") or {}).get("rules") or []):
        for j, path in enumerate(((rule or {}).get("http") or {}).get("paths") or []):
            if not path.get("pathType"):
                errs.append(FieldError("Required", f"spec.rules[{i}].http.paths[{j}].pathType",
                                       detail="pathType must be specified"))
    return errs


def validate_job(obj: dict, old: dict | None) -> list[FieldError]:
    errs: list[FieldError] = []
    spec = obj.get("spec") or {}
    pod = ((spec.get("template") or {}).get("spec")) or {}
    policy = pod.get("restartPolicy")
    if policy is None:
        errs.append(FieldError("Required", "spec.template.spec.restartPolicy", detail='valid values: "OnFailure", "Never"'))
    elif policy not in ("OnFailure", "Never"):
        errs.append(FieldError("NotSupported", "spec.template.spec.restartPolicy", policy, 'supported values: "OnFailure", "Never"'))
    containers = pod.get("containers") or []
    if not containers:
        errs.append(FieldError("Required", "spec.template.spec.containers"))
    for i, c in enumerate(containers):
        if not (c or {}).get("name"):
            errs.append(FieldError("Required", f"spec.template.spec.containers[{i}].name"))
        if not (c or {}).get("image"):
            errs.append(FieldError("Required", f"spec.template.spec.containers[{i}].image"))
    for key in ("backoffLimit", "parallelism", "completions", "activeDeadlineSeconds"):
        v = spec.get(key)
        if isinstance(v, int) and v < (1 if key == "activeDeadlineSeconds" else 0):
            errs.append(FieldError("Invalid", f"spec.{key}", v, "must be greater than or equal to "
                                   + ("1" if key == "activeDeadlineSeconds" else "0")))
    if old is not None:
        if spec.get("template") != (old.get("spec") or {}).get("template"):
            errs.append(FieldError("Invalid", "spec.template", spec.get("template"), "field is immutable"))
        if spec.get("selector") != (old.get("spec") or {}).get("selector"):
            errs.append(FieldError("Invalid", "spec.selector", spec.get("selector"), "field is immutable"))
    return errs


def validate_role(obj: dict, old: dict | None) -> list[FieldError]:
    errs: list[FieldError] = []
    for i, rule in enumerate(obj.get("rules") or []):
        if not (rule or {}).get("verbs"):
            errs.append(FieldError("Required", f"rules[{i}].verbs", detail="verbs must contain at least one value"))
        if not (rule or {}).get("nonResourceURLs") and not (rule or {}).get("resources"):
            errs.append(FieldError("Required", f"rules[{i}].resources", detail="resource rules must supply at least one resource"))
        if (rule or {}).get("resources") and "apiGroups" not in (rule or {}):
            errs.append(FieldError("Required", f"rules[{i}].apiGroups",
                                   detail="resource rules must supply at least one api group"))
    return errs


def validate_role_binding(obj: dict, old: dict | None) -> list[FieldError]:
    errs: list[FieldError] = []
    ref = obj.get("roleRef") or {}
    if not ref.get("name"):
        errs.append(FieldError("Required", "roleRef.name"))
    if ref.get("kind") not in ("Role", "ClusterRole"):
        errs.append(FieldError("NotSupported", "roleRef.kind", ref.get("kind"), 'supported values: "Role", "ClusterRole"'))
    if ref.get("apiGroup") != "rbac.authorization.k8s.io":
        errs.append(FieldError("NotSupported", "roleRef.apiGroup", ref.get("apiGroup"), 'supported values: "rbac.authorization.k8s.io"'))
    for i, sub in enumerate(obj.get("subjects") or []):
        kind = (sub or {}).get("kind")
        if kind not in ("ServiceAccount", "User", "Group"):
            errs.append(FieldError("NotSupported", f"subjects[{i}].kind", kind, 'supported values: "Group", "ServiceAccount", "User"'))
        if not (sub or {}).get("name"):
            errs.append(FieldError("Required", f"subjects[{i}].name"))
    if old is not None and ref != (old.get("roleRef") or {}):
        errs.append(FieldError("Invalid", "roleRef", ref, "cannot change roleRef"))
    return errs


VALIDATORS: dict[tuple[str, str], Callable[[dict, dict | None], list[FieldError]]] = {
    ("batch", "Job"): validate_job,
    ("rbac.authorization.k8s.io", "Role"): validate_role,
    ("rbac.authorization.k8s.io", "ClusterRole"): validate_role,
    ("rbac.authorization.k8s.io", "RoleBinding"): validate_role_binding,
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): validate_role_binding,
    ("apps", "Deployment"): validate_deployment,
    ("", "Service"): validate_service,
    ("", "ConfigMap"): validate_configmap,
    ("networking.k8s.io", "Ingress"): validate_ingress,
}


def prepare_for_update(rt: ResourceType, new: dict, old: dict) -> None:
    """Strategy tweaks applied before validation on update."""
    if rt.kind == "Service" and rt.group == "":
        # Allocated values survive an update that does not mention them.
        ns, os_ = _d(new, "spec"), old.get("spec") or {}
        for k in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if k in os_ and not ns.get(k):
                ns[k] = os_[k]
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                     for p in os_.get("ports") or [] if isinstance(p, dict)}
        for p in ns.get("ports") or []:
            if isinstance(p, dict) and not p.get("nodePort"):
                np = old_ports.get((p.get("port"), p.get("protocol", "TCP")))
                if np:
                    p["nodePort"] = np


def spec_changed(rt: ResourceType, new: dict, old: dict) -> bool:
    """Whether `metadata.generation` must be bumped."""
    if rt.custom:
        skip = {"metadata", "status", "kind", "apiVersion"}
        return {k: v for k, v in new.items() if k not in skip} != \
            {k: v for k, v in old.items() if k not in skip}
    return new.get("spec") != old.get("spec")


# ----------------------- events.k8s.io <-> core/v1 --------------------------

_EVENT_RENAMES = [
    ("regarding", "involvedObject"), ("note", "message"),
    ("reportingController", "reportingComponent"), ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"), ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
]


def event_to_storage(obj: dict) -> dict:
    """events.k8s.io/v1 Event -> the core/v1 form both APIs share in storage."""
    out = {k: v for k, v in obj.items()}
    for new, core in _EVENT_RENAMES:
        if new in out:
            out[core] = out.pop(new)
    out["apiVersion"], out["kind"] = "v1", "Event"
    return out


def event_from_storage(obj: dict) -> dict:
    out = {k: v for k, v in obj.items()}
    for new, core in _EVENT_RENAMES:
        if core in out:
            val = out.pop(core)
            if val not in ("", None) or new in ("regarding", "note"):
                out[new] = val
    out["apiVersion"], out["kind"] = "events.k8s.io/v1", "Event"
    return out

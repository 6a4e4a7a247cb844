"""Which resources the fake serves, and how each behaves.

One `ResourceType` per (group, resource) carries the traits the real server
gets from the type's registry strategy: whether it is namespaced, tracks
`metadata.generation`, has `/status` or `/scale`, allows create-on-update,
which field selectors it supports, and whether it is a custom resource (CRD
semantics: no strategic merge patch, `resourceVersion` required on PUT,
DELETE returns the object, list items carry kind/apiVersion).

`ResourceRegistry` resolves URL segments and user spellings
("deployments", "deployments.apps", "Deployment", "deploy") to a type, and
renders discovery documents from the same table so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_META_FIELDS = ("metadata.name", "metadata.namespace")
_EVENT_FIELDS = _META_FIELDS + (
    "involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
    "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
    "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type",
)

VERBS_NAMESPACED = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    extra_versions: tuple[str, ...] = ()
    custom: bool = False
    generation: bool = False
    status_subresource: bool = False
    scale_subresource: bool = False
    allow_create_on_update: bool = False
    field_labels: tuple[str, ...] = _META_FIELDS
    storage: str = ""
    categories: tuple[str, ...] = ()

    @property
    def versions(self) -> tuple[str, ...]:
        return (self.version,) + self.extra_versions

    def api_version(self, version: str | None = None) -> str:
        v = version or self.version
        return f"{self.group}/{v}" if self.group else v

    @property
    def qualified(self) -> str:
        """`deployments.apps`, `configmaps` — how messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def storage_key(self) -> str:
        return self.storage or self.qualified

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def known_field_style(self) -> bool:
        # Types without their own field-label conversion get the generic
        # "... is not a known field selector" message.
        return self.field_labels == _META_FIELDS

    @property
    def allow_unconditional_update(self) -> bool:
        # CRD strategy: AllowUnconditionalUpdate() == false.
        return not self.custom


BUILTIN_TYPES: list[ResourceType] = [
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, singular="namespace",
                 short_names=("ns",), status_subresource=True),
    ResourceType("", "v1", "configmaps", "ConfigMap", singular="configmap", short_names=("cm",)),
    ResourceType("", "v1", "services", "Service", singular="service", short_names=("svc",),
                 status_subresource=True, categories=("all",)),
    ResourceType("", "v1", "events", "Event", singular="event", short_names=("ev",),
                 allow_create_on_update=True, field_labels=_EVENT_FIELDS, storage="events"),
    ResourceType("apps", "v1", "deployments", "Deployment", singular="deployment",
                 short_names=("deploy",), generation=True, status_subresource=True,
                 scale_subresource=True, categories=("all",)),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", singular="lease"),
    ResourceType("networking.k8s.io", "v1", "ingresses", "Ingress", singular="ingress",
                 short_names=("ing",), generation=True, status_subresource=True),
    ResourceType("events.k8s.io", "v1", "events", "Event", singular="event", short_names=("ev",),
                 allow_create_on_update=True, field_labels=_EVENT_FIELDS, storage="events"),
    # every other kind manifests/ holds, so `kubectl apply -f manifests/` works against the fake (#13):
    # stored, listed, watched and discovered like the rest, with the defaults and checks in kinds.py
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", singular="serviceaccount", short_names=("sa",)),
    ResourceType("", "v1", "secrets", "Secret", singular="secret"),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role", singular="role"),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", singular="rolebinding"),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", singular="clusterrole",
                 namespaced=False),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
                 singular="clusterrolebinding", namespaced=False),
    ResourceType("batch", "v1", "jobs", "Job", singular="job", generation=True, status_subresource=True,
                 categories=("all",)),
    ResourceType("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", singular="httproute",
                 extra_versions=("v1beta1",), custom=True, generation=True, status_subresource=True,
                 categories=("gateway-api",)),
    ResourceType("gateway.networking.k8s.io", "v1", "gateways", "Gateway", singular="gateway",
                 short_names=("gtw",), extra_versions=("v1beta1",), custom=True, generation=True,
                 status_subresource=True, categories=("gateway-api",)),
    ResourceType("gateway.networking.k8s.io", "v1", "gatewayclasses", "GatewayClass",
                 singular="gatewayclass", short_names=("gc",), namespaced=False,
                 extra_versions=("v1beta1",), custom=True, generation=True,
                 status_subresource=True, categories=("gateway-api",)),
]


@dataclass
class ResourceRegistry:
    types: list[ResourceType] = field(default_factory=lambda: list(BUILTIN_TYPES))

    def add(self, rt: ResourceType) -> ResourceType:
        self.types = [t for t in self.types if (t.group, t.plural) != (rt.group, rt.plural)]
        self.types.append(rt)
        return rt

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        for t in self.types:
            if t.group == group and t.plural == plural and version in t.versions:
                return t
        return None

    def resolve(self, spec: str) -> ResourceType:
        """'deployments', 'deployments.apps', 'Deployment', 'deploy' -> type.

        An unqualified name prefers the core/legacy group (so 'events' is v1
        Events), the way kubectl resolves it."""
        s = spec.strip()
        cands = []
        for t in self.types:
            names = {t.plural, t.singular, t.kind.lower(), *t.short_names}
            if s.lower() in names or s == t.kind:
                cands.append(t)
            elif "." in s:
                name, _, grp = s.partition(".")
                if grp == t.group and name.lower() in names:
                    return t
        if not cands:
            raise KeyError(f"unknown resource {spec!r}")
        cands.sort(key=lambda t: (t.group != "", t.group))
        return cands[0]

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t in self.types:
            if t.group:
                vs = out.setdefault(t.group, [])
                for v in t.versions:
                    if v not in vs:
                        vs.append(v)
        return out

    # ------------------------------ discovery -------------------------------

    def api_versions(self, address: str) -> dict:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]}

    def _group_doc(self, group: str, versions: list[str]) -> dict:
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    def api_group_list(self) -> dict:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self._group_doc(g, vs) for g, vs in self.groups().items()]}

    def api_group(self, group: str) -> dict | None:
        vs = self.groups().get(group)
        if not vs:
            return None
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group, vs)}

    def api_resource_list(self, group: str, version: str) -> dict | None:
        rts = [t for t in self.types if t.group == group and version in t.versions]
        if not rts:
            return None
        resources = []
        for t in rts:
            entry = {"name": t.plural, "singularName": t.singular or t.kind.lower(),
                     "namespaced": t.namespaced, "kind": t.kind, "verbs": VERBS_NAMESPACED}
            if t.short_names:
                entry["shortNames"] = list(t.short_names)
            if t.categories:
                entry["categories"] = list(t.categories)
            resources.append(entry)
            if t.status_subresource:
                resources.append({"name": f"{t.plural}/status", "singularName": "",
                                  "namespaced": t.namespaced, "kind": t.kind,
                                  "verbs": ["get", "patch", "update"]})
            if t.scale_subresource:
                resources.append({"name": f"{t.plural}/scale", "singularName": "",
                                  "namespaced": t.namespaced, "group": "autoscaling",
                                  "version": "v1", "kind": "Scale",
                                  "verbs": ["get", "patch", "update"]})
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

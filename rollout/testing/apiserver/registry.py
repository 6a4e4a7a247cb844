"""REST semantics on top of the store: what GET/LIST/POST/PUT/PATCH/DELETE
and the /status and /scale subresources do to objects.

This is the generic registry (k8s.io/apiserver/pkg/registry/generic) in
miniature: system metadata (uid, creationTimestamp, generation,
resourceVersion), optimistic concurrency (409 on a stale resourceVersion),
status/spec separation, no-op updates that do not bump resourceVersion,
defaulting and validation, finalizers, and the response each verb returns.
It knows nothing about HTTP; `handler.py` maps requests onto it.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import threading
import uuid
from datetime import datetime, timezone
from typing import Any

from . import errors as E
from .errors import FieldError, GoLiteral
from .kinds import (DEFAULTERS, VALIDATORS, event_from_storage, event_to_storage,
                    prepare_for_update, spec_changed, validate_meta)
from .patch import (JsonPatchError, PatchFormatError, json_patch, merge_patch,
                    strategic_merge_patch)
from .resources import ResourceRegistry, ResourceType
from .selectors import (FieldSelector, LabelSelector, get_path, label_selector_string,
                        parse_field_selector, parse_label_selector)
from .store import Store

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(n: int = 5) -> str:
    return "".join(random.choice(_NAME_ALPHABET) for _ in range(n))


def _field_value(obj: dict, label: str) -> Any:
    if label == "source":
        return get_path(obj, "source.component")
    return get_path(obj, label)


class Registry:
    def __init__(self, store: Store, types: ResourceRegistry, *, implicit_namespaces: bool = True):
        self.store = store
        self.types = types
        self.implicit_namespaces = implicit_namespaces
        self._ip_lock = threading.Lock()
        self._next_ip = 10
        self._next_node_port = 0

    # ------------------------------------------------------------ helpers
    def allocate_node_port(self) -> int:
        with self._ip_lock:
            self._next_node_port += 1
            return 30000 + self._next_node_port % 2768

    def allocate_cluster_ip(self) -> str:
        with self._ip_lock:
            n = self._next_ip
            self._next_ip += 1
        return f"10.96.{n // 256}.{n % 256}"

    def to_output(self, rt: ResourceType, obj: dict, version: str | None = None,
                  in_list: bool = False) -> dict:
        out = copy.deepcopy(obj)
        if rt.group == "events.k8s.io":
            out = event_from_storage(out)
        else:
            out = {"apiVersion": rt.api_version(version), "kind": rt.kind,
                   **{k: v for k, v in out.items() if k not in ("apiVersion", "kind")}}
        if in_list and not rt.custom:
            out.pop("apiVersion", None)
            out.pop("kind", None)
        return out

    def to_storage(self, rt: ResourceType, obj: dict) -> dict:
        if rt.group == "events.k8s.io":
            return event_to_storage(obj)
        out = {"apiVersion": rt.api_version(), "kind": rt.kind}
        out.update({k: v for k, v in obj.items() if k not in ("apiVersion", "kind")})
        return out

    def _check_type(self, rt: ResourceType, body: dict, version: str | None) -> None:
        want = rt.api_version(version)
        got_v, got_k = body.get("apiVersion"), body.get("kind")
        if got_v and got_v != want and got_v not in [rt.api_version(v) for v in rt.versions]:
            raise E.bad_request(f"the API version in the data ({got_v}) does not match the "
                                f"expected API version ({want})")
        if got_k and got_k != rt.kind:
            raise E.bad_request(f"the kind in the data ({got_k}) does not match the expected kind ({rt.kind})")

    def _ns(self, rt: ResourceType, namespace: str | None) -> str:
        return (namespace or "") if rt.namespaced else ""

    def _ensure_namespace(self, rt: ResourceType, ns: str, dry_run: bool) -> None:
        """Strict: 404 for a missing namespace. Implicit: create it first, as
        the NamespaceAutoProvision admission plugin does."""
        if not rt.namespaced:
            return
        nrt = self.types.resolve("namespaces")
        if self.store.get(nrt.storage_key, "", ns) is not None:
            return
        if not self.implicit_namespaces:
            raise E.not_found("", "namespaces", ns)
        if not dry_run:
            self.create(nrt, None, {"metadata": {"name": ns}})

    def label_selector(self, text: str | None) -> LabelSelector:
        return parse_label_selector(text)

    def field_selector(self, rt: ResourceType, text: str | None) -> FieldSelector:
        return parse_field_selector(text, rt.field_labels, _field_value, rt.known_field_style)

    @staticmethod
    def _matches(obj: dict, lsel: LabelSelector, fsel: FieldSelector) -> bool:
        return lsel.matches((obj.get("metadata") or {}).get("labels")) and fsel.matches(obj)

    def _apply_defaults(self, rt: ResourceType, obj: dict) -> None:
        fn = DEFAULTERS.get((rt.group if rt.group != "events.k8s.io" else "", rt.kind))
        if fn:
            fn(obj, self)

    def _validate(self, rt: ResourceType, obj: dict, old: dict | None) -> None:
        errs = validate_meta(rt, obj)
        fn = VALIDATORS.get((rt.group, rt.kind))
        if fn:
            errs += fn(obj, old)
        if errs:
            raise E.invalid(rt.group, rt.kind, obj["metadata"].get("name", ""), errs)

    # ------------------------------------------------------------ read
    def get(self, rt: ResourceType, namespace: str | None, name: str, version: str | None = None) -> dict:
        ns = self._ns(rt, namespace)
        with self.store.cond:
            obj = self.store.get(rt.storage_key, ns, name)
            if obj is None:
                raise E.not_found(rt.group, rt.plural, name)
            return self.to_output(rt, obj, version)

    def list(self, rt: ResourceType, namespace: str | None, *, label_selector: str | None = None,
             field_selector: str | None = None, limit: int | None = None,
             continue_: str | None = None, version: str | None = None) -> dict:
        lsel = self.label_selector(label_selector)
        fsel = self.field_selector(rt, field_selector)
        ns = namespace if rt.namespaced and namespace else None
        start_after: tuple[str, str] | None = None
        with self.store.cond:
            list_rv = self.store.resource_version
            if continue_:
                try:
                    tok = json.loads(base64.urlsafe_b64decode(continue_.encode()).decode())
                    tok_rv, start_after = int(tok["rv"]), (tok["start"][0], tok["start"][1])
                except Exception:
                    raise E.bad_request("continue key is not valid: illegal base64 data") from None
                if tok_rv < self.store.oldest_resource_version:
                    raise E.gone(
                        "The provided continue parameter is too old to display a consistent list "
                        "result. You can start a new list without the continue parameter, or use "
                        "the continue token in this response to retrieve the remainder of the results. "
                        "Continuing with the provided token results in an inconsistent list - objects "
                        "that were created, modified, or deleted between the time the first chunk was "
                        "returned and now may show up in the list.")
                list_rv = tok_rv
            matched = []
            for o in self.store.items(rt.storage_key, ns):
                m = o["metadata"]
                key = (m.get("namespace", ""), m["name"])
                if start_after is not None and key <= start_after:
                    continue
                if self._matches(o, lsel, fsel):
                    matched.append(o)
            meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
            if limit and limit > 0 and len(matched) > limit:
                last = matched[limit - 1]["metadata"]
                token = {"rv": list_rv, "start": [last.get("namespace", ""), last["name"]]}
                meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
                meta["remainingItemCount"] = len(matched) - limit
                matched = matched[:limit]
            items = [self.to_output(rt, o, version, in_list=True) for o in matched]
        return {"kind": rt.list_kind, "apiVersion": rt.api_version(version), "metadata": meta,
                "items": items}

    # ------------------------------------------------------------ create
    def create(self, rt: ResourceType, namespace: str | None, body: Any, *,
               version: str | None = None, dry_run: bool = False) -> dict:
        if not isinstance(body, dict):
            raise E.bad_request("the object provided is unrecognized (must be of type %s)" % rt.kind)
        self._check_type(rt, body, version)
        ns = self._ns(rt, namespace)
        obj = self.to_storage(rt, copy.deepcopy(body))
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise E.bad_request("metadata must be an object")
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise E.bad_request("the namespace of the provided object does not match the "
                                    "namespace sent on the request")
            if not ns:
                raise E.bad_request("an empty namespace may not be set during creation")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise E.internal_error("resourceVersion should not be set on objects to be created")
        generate = not meta.get("name") and meta.get("generateName")
        if not meta.get("name") and not generate:
            raise E.invalid(rt.group, rt.kind, "", [FieldError(
                "Required", "metadata.name", detail="name or generateName is required")])
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
            meta.pop(k, None)
        if rt.generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if rt.status_subresource:
            if rt.custom:
                obj.pop("status", None)
            else:
                obj["status"] = {}
        with self.store.cond:
            if generate:
                for _ in range(100):
                    meta["name"] = meta["generateName"] + random_suffix()
                    if self.store.get(rt.storage_key, ns, meta["name"]) is None:
                        break
            name = meta["name"]
            self._apply_defaults(rt, obj)
            self._validate(rt, obj, None)
            self._ensure_namespace(rt, ns, dry_run)
            if self.store.get(rt.storage_key, ns, name) is not None:
                raise E.already_exists(rt.group, rt.plural, name)
            if not dry_run:
                self.store.commit(rt.storage_key, "ADDED", obj, None)
            return self.to_output(rt, obj, version)

    # ------------------------------------------------------------ update
    def update(self, rt: ResourceType, namespace: str | None, name: str, body: Any, *,
               subresource: str | None = None, version: str | None = None,
               dry_run: bool = False) -> tuple[dict, bool]:
        if not isinstance(body, dict):
            raise E.bad_request("the object provided is unrecognized (must be of type %s)" % rt.kind)
        if subresource == "scale":
            return self.update_scale(rt, namespace, name, body, dry_run=dry_run), False
        self._check_type(rt, body, version)
        ns = self._ns(rt, namespace)
        with self.store.cond:
            old = self.store.get(rt.storage_key, ns, name)
            if old is None:
                if rt.allow_create_on_update and subresource is None:
                    body = copy.deepcopy(body)
                    body.setdefault("metadata", {}).pop("resourceVersion", None)
                    body["metadata"].setdefault("name", name)
                    return self.create(rt, ns, body, version=version, dry_run=dry_run), True
                raise E.not_found(rt.group, rt.plural, name)
            new = self.to_storage(rt, copy.deepcopy(body))
            return self._update_locked(rt, ns, name, old, new, subresource=subresource,
                                       is_patch=False, dry_run=dry_run, version=version), False

    def _update_locked(self, rt: ResourceType, ns: str, name: str, old: dict, new: dict, *,
                       subresource: str | None, is_patch: bool, dry_run: bool,
                       version: str | None) -> dict:
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        if meta.get("name") and meta["name"] != name:
            raise E.bad_request(f"the name of the object ({meta['name']}) does not match the name "
                                f"on the URL ({name})")
        meta["name"] = name
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise E.bad_request("the namespace of the provided object does not match the "
                                    "namespace sent on the request")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        old_meta = old["metadata"]
        rv = meta.get("resourceVersion")
        if rv:
            if rv != old_meta["resourceVersion"]:
                raise E.conflict(rt.group, rt.plural, name)
        elif not is_patch and not rt.allow_unconditional_update:
            raise E.invalid(rt.group, rt.kind, name, [FieldError(
                "Invalid", "metadata.resourceVersion", GoLiteral("0x0"), "must be specified for an update")])

        if subresource == "status":
            merged = copy.deepcopy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
            meta = new["metadata"]
        elif subresource is None and rt.status_subresource:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        for k in ("uid", "creationTimestamp", "generation", "deletionTimestamp",
                  "deletionGracePeriodSeconds"):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        meta.pop("managedFields", None)
        meta["resourceVersion"] = old_meta["resourceVersion"]

        prepare_for_update(rt, new, old)  # before defaulting: keep allocated values
        self._apply_defaults(rt, new)
        self._validate(rt, new, old)
        if rt.generation and spec_changed(rt, new, old):
            meta["generation"] = int(old_meta.get("generation", 0)) + 1
        if new == old:
            return self.to_output(rt, old, version)  # no-op: nothing written, rv unchanged
        if old_meta.get("deletionTimestamp") and not meta.get("finalizers"):
            if not dry_run:
                self.store.commit(rt.storage_key, "DELETED", new, old)
            return self.to_output(rt, new, version)
        if not dry_run:
            self.store.commit(rt.storage_key, "MODIFIED", new, old)
        return self.to_output(rt, new, version)

    # ------------------------------------------------------------ patch
    def accepted_patch_types(self, rt: ResourceType) -> list[str]:
        if rt.custom:
            return [JSON_PATCH, MERGE_PATCH, APPLY_PATCH]
        return [JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH, APPLY_PATCH]

    def _apply_patch(self, rt: ResourceType, ptype: str, current: dict, patch: Any) -> dict:
        try:
            if ptype == JSON_PATCH:
                out = json_patch(current, patch)
            elif ptype == MERGE_PATCH:
                if not isinstance(patch, dict):
                    raise PatchFormatError("invalid JSON document")
                out = merge_patch(current, patch)
            elif ptype == APPLY_PATCH:
                if not isinstance(patch, dict):
                    raise PatchFormatError("invalid object")
                out = merge_patch(current, patch) if rt.custom else strategic_merge_patch(current, patch)
            else:
                out = strategic_merge_patch(current, patch)
        except JsonPatchError:
            raise E.json_patch_failed() from None
        except PatchFormatError as e:
            raise E.bad_request(str(e)) from None
        if not isinstance(out, dict):
            raise E.bad_request("the patched object is not a JSON object")
        return out

    def patch(self, rt: ResourceType, namespace: str | None, name: str, content_type: str,
              patch: Any, *, subresource: str | None = None, version: str | None = None,
              dry_run: bool = False, field_manager: str | None = None) -> tuple[dict, bool]:
        ptype = (content_type or "").split(";")[0].strip().lower()
        if ptype not in self.accepted_patch_types(rt):
            raise E.unsupported_media_type(self.accepted_patch_types(rt))
        if ptype == APPLY_PATCH and not field_manager:
            raise E.invalid("meta.k8s.io", "PatchOptions", "", [FieldError(
                "Required", "fieldManager", detail="is required for apply patch")])
        ns = self._ns(rt, namespace)
        with self.store.cond:
            old = self.store.get(rt.storage_key, ns, name)
            if old is None:
                if ptype == APPLY_PATCH and subresource is None and isinstance(patch, dict):
                    body = copy.deepcopy(patch)
                    body.setdefault("metadata", {})["name"] = name
                    return self.create(rt, ns, body, version=version, dry_run=dry_run), True
                raise E.not_found(rt.group, rt.plural, name)
            if subresource == "scale":
                current = self.scale_from(rt, old)
                patched = self._apply_patch(rt, ptype if ptype != APPLY_PATCH else MERGE_PATCH,
                                            current, patch)
                return self.update_scale(rt, ns, name, patched, dry_run=dry_run), False
            current = self.to_output(rt, old, version)
            patched = self._apply_patch(rt, ptype, current, patch)
            new = self.to_storage(rt, patched)
            return self._update_locked(rt, ns, name, old, new, subresource=subresource,
                                       is_patch=True, dry_run=dry_run, version=version), False

    # ------------------------------------------------------------ scale
    def scale_from(self, rt: ResourceType, obj: dict) -> dict:
        m = obj["metadata"]
        spec = obj.get("spec") or {}
        replicas = spec.get("replicas") or 0
        return {
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: m[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                           "creationTimestamp") if k in m},
            "spec": {"replicas": replicas} if replicas else {},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                       "selector": label_selector_string(spec.get("selector"))},
        }

    def get_scale(self, rt: ResourceType, namespace: str | None, name: str) -> dict:
        with self.store.cond:
            obj = self.store.get(rt.storage_key, self._ns(rt, namespace), name)
            if obj is None:
                raise E.not_found(rt.group, rt.plural, name)
            return self.scale_from(rt, obj)

    def update_scale(self, rt: ResourceType, namespace: str | None, name: str, body: dict, *,
                     dry_run: bool = False) -> dict:
        ns = self._ns(rt, namespace)
        if body.get("kind") not in (None, "Scale"):
            raise E.bad_request(f"the kind in the data ({body.get('kind')}) does not match the expected kind (Scale)")
        with self.store.cond:
            old = self.store.get(rt.storage_key, ns, name)
            if old is None:
                raise E.not_found(rt.group, rt.plural, name)
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise E.conflict(rt.group, rt.plural, name)
            replicas = (body.get("spec") or {}).get("replicas", 0)
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise E.invalid("autoscaling", "Scale", name, [FieldError(
                    "Invalid", "spec.replicas", replicas, "must be greater than or equal to 0")])
            new = copy.deepcopy(old)
            new.setdefault("spec", {})["replicas"] = replicas
            result = self._update_locked(rt, ns, name, old, new, subresource=None, is_patch=True,
                                         dry_run=dry_run, version=None)
            return self.scale_from(rt, result)

    # ------------------------------------------------------------ delete
    def delete(self, rt: ResourceType, namespace: str | None, name: str, options: Any = None, *,
               version: str | None = None, dry_run: bool = False) -> dict:
        ns = self._ns(rt, namespace)
        options = options if isinstance(options, dict) else {}
        with self.store.cond:
            old = self.store.get(rt.storage_key, ns, name)
            if old is None:
                raise E.not_found(rt.group, rt.plural, name)
            meta = old["metadata"]
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise E.conflict(rt.group, rt.plural, name,
                                 f"Precondition failed: UID in precondition: {pre['uid']}, "
                                 f"UID in object meta: {meta.get('uid')}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
                raise E.conflict(rt.group, rt.plural, name,
                                 f"Precondition failed: ResourceVersion in precondition: "
                                 f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                 f"{meta.get('resourceVersion')}")
            if meta.get("finalizers"):
                if meta.get("deletionTimestamp"):
                    return self.to_output(rt, old, version)
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = now_rfc3339()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                if not dry_run:
                    self.store.commit(rt.storage_key, "MODIFIED", new, old)
                return self.to_output(rt, new, version)
            gone = copy.deepcopy(old)
            if not dry_run:
                if rt.kind == "Namespace" and rt.group == "":
                    self._delete_namespace_contents(name)
                self.store.commit(rt.storage_key, "DELETED", gone, old)
            if rt.custom:
                return self.to_output(rt, gone, version)
            details = {"name": name, "kind": rt.plural, "uid": meta.get("uid")}
            if rt.group:
                details = {"name": name, "group": rt.group, "kind": rt.plural, "uid": meta.get("uid")}
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": details}

    def _delete_namespace_contents(self, ns: str) -> None:
        seen: set[str] = set()
        for rt in self.types.types:
            if not rt.namespaced or rt.storage_key in seen:
                continue
            seen.add(rt.storage_key)
            for o in list(self.store.items(rt.storage_key, ns)):
                self.store.commit(rt.storage_key, "DELETED", copy.deepcopy(o), o)

    def delete_collection(self, rt: ResourceType, namespace: str | None, *,
                          label_selector: str | None = None, field_selector: str | None = None,
                          version: str | None = None, dry_run: bool = False) -> dict:
        lsel = self.label_selector(label_selector)
        fsel = self.field_selector(rt, field_selector)
        ns = namespace if rt.namespaced and namespace else None
        out = []
        with self.store.cond:
            for o in list(self.store.items(rt.storage_key, ns)):
                if self._matches(o, lsel, fsel):
                    self.delete(rt, o["metadata"].get("namespace"), o["metadata"]["name"],
                                version=version, dry_run=dry_run)
                    out.append(self.to_output(rt, o, version, in_list=True))
            rv = self.store.resource_version
        return {"kind": rt.list_kind, "apiVersion": rt.api_version(version),
                "metadata": {"resourceVersion": str(rv)}, "items": out}

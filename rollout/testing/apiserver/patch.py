"""The three PATCH flavours the API server accepts, on plain JSON values.

* JSON patch (RFC 6902) — list of ops, `test` included; failures raise
  `JsonPatchError` (the HTTP layer turns it into 422 Invalid, as upstream).
* JSON merge patch (RFC 7386) — maps merge, `null` deletes, lists replace.
* Strategic merge patch — merge patch plus per-field list strategies taken
  from the Go struct tags of the built-in types (`patchMergeKey`) and the
  `$patch`, `$retainKeys`, `$setElementOrder/…`, `$deleteFromPrimitiveList/…`
  directives. Custom resources have no Go types, which is why the server
  refuses SMP for them (415) — the HTTP layer enforces that.

Only the list strategies of fields the served kinds actually use are known
(see `MERGE_KEYS`); any other list is replaced, as it is for atomic lists
upstream.
"""

from __future__ import annotations

import copy
from typing import Any


class JsonPatchError(Exception):
    """A JSON patch could not be applied (missing path, failed test...)."""


class PatchFormatError(Exception):
    """The patch document itself is malformed (-> 400 BadRequest)."""


# ------------------------------ RFC 7386 ------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


# ------------------------------ RFC 6902 ------------------------------------

def _parse_pointer(ptr: str) -> list[str]:
    if ptr == "":
        return []
    if not ptr.startswith("/"):
        raise JsonPatchError(f"invalid JSON pointer: {ptr!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in ptr[1:].split("/")]


def _resolve_parent(doc: Any, parts: list[str], ptr: str) -> tuple[Any, str]:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict):
            if p not in cur:
                raise JsonPatchError(f"doc is missing path: {ptr}: missing value")
            cur = cur[p]
        elif isinstance(cur, list):
            try:
                i = int(p)
            except ValueError:
                raise JsonPatchError(f"doc is missing path: {ptr}: missing value") from None
            if not 0 <= i < len(cur):
                raise JsonPatchError(f"doc is missing path: {ptr}: missing value")
            cur = cur[i]
        else:
            raise JsonPatchError(f"doc is missing path: {ptr}: missing value")
    return cur, parts[-1]


def _get(doc: Any, ptr: str) -> Any:
    parts = _parse_pointer(ptr)
    if not parts:
        return doc
    parent, last = _resolve_parent(doc, parts, ptr)
    if isinstance(parent, dict):
        if last not in parent:
            raise JsonPatchError(f"unable to get nonexistent key: {last}: missing value")
        return parent[last]
    if isinstance(parent, list):
        try:
            i = int(last)
        except ValueError:
            raise JsonPatchError(f"invalid array index: {last}") from None
        if not 0 <= i < len(parent):
            raise JsonPatchError(f"unable to access invalid index: {i}: invalid index referenced")
        return parent[i]
    raise JsonPatchError(f"doc is missing path: {ptr}: missing value")


def _add(doc: Any, ptr: str, value: Any) -> Any:
    parts = _parse_pointer(ptr)
    if not parts:
        return value
    parent, last = _resolve_parent(doc, parts, ptr)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            try:
                i = int(last)
            except ValueError:
                raise JsonPatchError(f"invalid array index: {last}") from None
            if not 0 <= i <= len(parent):
                raise JsonPatchError(f"add operation does not apply: doc is missing path: {ptr}: "
                                     "invalid index referenced")
            parent.insert(i, value)
    else:
        raise JsonPatchError(f"add operation does not apply: doc is missing path: {ptr}: missing value")
    return doc


def _remove(doc: Any, ptr: str, op: str = "remove") -> tuple[Any, Any]:
    parts = _parse_pointer(ptr)
    if not parts:
        raise JsonPatchError(f"{op} operation does not apply: doc is missing path: {ptr}")
    parent, last = _resolve_parent(doc, parts, ptr)
    if isinstance(parent, dict):
        if last not in parent:
            raise JsonPatchError(f"{op} operation does not apply: doc is missing key: {ptr}: missing value")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        try:
            i = int(last)
        except ValueError:
            raise JsonPatchError(f"invalid array index: {last}") from None
        if not 0 <= i < len(parent):
            raise JsonPatchError(f"{op} operation does not apply: doc is missing path: {ptr}: "
                                 "invalid index referenced")
        return doc, parent.pop(i)
    raise JsonPatchError(f"{op} operation does not apply: doc is missing path: {ptr}: missing value")


def json_patch(doc: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise PatchFormatError("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op:
            raise PatchFormatError("Unexpected kind: unknown")
        kind = op["op"]
        path = op.get("path")
        if not isinstance(path, str):
            raise JsonPatchError(f"operation missing path: {kind}")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            _get_for_replace(doc, path)
            doc, _ = _remove(doc, path, "replace")
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "move":
            doc, val = _remove(doc, op.get("from", ""), "move")
            doc = _add(doc, path, val)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op.get("from", ""))))
        elif kind == "test":
            try:
                cur = _get(doc, path)
            except JsonPatchError:
                cur = _MISSING
            if cur is _MISSING or not _json_equal(cur, op.get("value")):
                raise JsonPatchError(f"testing value {path} failed: test failed")
        else:
            raise PatchFormatError(f"Unexpected kind: {kind}")
    return doc


_MISSING = object()


def _get_for_replace(doc: Any, path: str) -> None:
    try:
        _get(doc, path)
    except JsonPatchError:
        raise JsonPatchError(f"replace operation does not apply: doc is missing key: {path}: "
                             "missing value") from None


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


# --------------------------- strategic merge --------------------------------

# patchMergeKey of list fields with patchStrategy "merge" in the Go types of
# the kinds served here. "ports" depends on where it sits (see _merge_key).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
# Lists of scalars with patchStrategy "merge" (union instead of replace).
PRIMITIVE_MERGE = {"finalizers"}

_CONTAINER_LISTS = {"containers", "initContainers", "ephemeralContainers"}


def _merge_key(path: tuple[str, ...], field: str) -> str | None:
    if field == "ports":
        # Container ports merge on containerPort, Service ports on port.
        return "containerPort" if any(p in _CONTAINER_LISTS for p in path) else "port"
    return MERGE_KEYS.get(field)


def strategic_merge_patch(original: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        raise PatchFormatError("strategic merge patch must be a JSON object")
    return _smp_map(copy.deepcopy(original) if isinstance(original, dict) else {}, patch, ())


def _smp_map(orig: dict, patch: dict, path: tuple[str, ...]) -> dict:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}  # the caller drops the key
    if directive not in (None, "merge"):
        raise PatchFormatError(f"Unknown patch type: {directive}")

    retain = patch.get("$retainKeys")
    result = orig
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/") \
                or key.startswith("$deleteFromPrimitiveList/"):
            continue
        if value is None:
            result.pop(key, None)
            continue
        cur = result.get(key)
        if isinstance(value, dict):
            if value.get("$patch") == "delete":
                result.pop(key, None)
                continue
            result[key] = _smp_map(cur if isinstance(cur, dict) else {}, value, path + (key,))
        elif isinstance(value, list):
            result[key] = _smp_list(cur if isinstance(cur, list) else [], value, path, key)
        else:
            result[key] = copy.deepcopy(value)

    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            fld = key.split("/", 1)[1]
            if not isinstance(value, list):
                raise PatchFormatError("invalid patch: $deleteFromPrimitiveList must be a list")
            if isinstance(result.get(fld), list):
                result[fld] = [x for x in result[fld] if x not in value]
    for key, value in patch.items():
        if key.startswith("$setElementOrder/"):
            fld = key.split("/", 1)[1]
            if isinstance(result.get(fld), list) and isinstance(value, list):
                result[fld] = _apply_order(result[fld], value, _merge_key(path, fld))
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchFormatError("invalid patch: $retainKeys must be a list")
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(orig: list, patch: list, path: tuple[str, ...], field: str) -> list:
    mkey = _merge_key(path, field)
    sub = path + (field,)
    if mkey is None:
        if field in PRIMITIVE_MERGE:
            out = list(orig)
            for v in patch:
                if v not in out:
                    out.append(copy.deepcopy(v))
            return out
        # Atomic list: replace, dropping directive-only entries.
        return [copy.deepcopy(v) for v in patch
                if not (isinstance(v, dict) and set(v) == {"$patch"})]

    # A `{"$patch": "replace"}` element means: the list is exactly the rest.
    if any(isinstance(v, dict) and v.get("$patch") == "replace" for v in patch):
        return [copy.deepcopy({k: x for k, x in v.items() if k != "$patch"})
                for v in patch if not (isinstance(v, dict) and v.get("$patch") == "replace")]

    out = [copy.deepcopy(v) for v in orig]
    for item in patch:
        if not isinstance(item, dict):
            raise PatchFormatError(f"invalid patch: list {field} with merge key {mkey} has a "
                                   "non-object element")
        if mkey not in item:
            raise PatchFormatError(f"map: {item} does not contain declared merge key: {mkey}")
        idx = next((i for i, o in enumerate(out) if isinstance(o, dict) and o.get(mkey) == item[mkey]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(_smp_map({}, item, sub))
        else:
            out[idx] = _smp_map(out[idx], item, sub)
    return out


def _apply_order(items: list, order: list, mkey: str | None) -> list:
    if mkey is None:
        ranked = {json_key(v): i for i, v in enumerate(order)}
        return sorted(items, key=lambda v: ranked.get(json_key(v), len(order)))
    rank = {o.get(mkey): i for i, o in enumerate(order) if isinstance(o, dict)}
    return sorted(items, key=lambda v: rank.get(v.get(mkey) if isinstance(v, dict) else None, len(order)))


def json_key(v: Any) -> str:
    import json
    return json.dumps(v, sort_keys=True)

"""Label and field selectors, parsed like k8s.io/apimachinery's `labels` and
`fields` packages.

A selector the real server rejects must be rejected here too (400 BadRequest),
and `!=` / `notin` must match objects that lack the key, as they do upstream:
that asymmetry is the usual source of surprises, so it is reproduced exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ApiError, bad_request

_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        v = labels.get(self.key)
        if self.op == "=":
            return has and v == self.values[0]
        if self.op == "!=":
            return not has or v != self.values[0]
        if self.op == "in":
            return has and v in self.values
        if self.op == "notin":
            return not has or v not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("gt", "lt"):
            try:
                lv, rv = int(v), int(self.values[0])  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return False
            return lv > rv if self.op == "gt" else lv < rv
        return False


class LabelSelector:
    """A parsed `labelSelector` query string (requirements are ANDed)."""

    def __init__(self, requirements: list[Requirement]):
        self.requirements = requirements

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def empty(self) -> bool:
        return not self.requirements


def _split_top_level(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise bad_request(f"unable to parse requirement: unexpected ')' in {s!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise bad_request(f"unable to parse requirement: missing ')' in {s!r}")
    parts.append("".join(cur))
    return parts


def _check_key(key: str) -> str:
    if not key or not _KEY_RE.match(key) or len(key.split("/")[-1]) > 63:
        raise bad_request(
            f"unable to parse requirement: <nil>: Invalid value: {key!r}: name part must consist "
            "of alphanumeric characters, '-', '_' or '.', and must start and end with an "
            "alphanumeric character")
    return key


def _check_value(key: str, value: str) -> str:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise bad_request(
            f"unable to parse requirement: values[0][{key}]: Invalid value: {value!r}: a valid "
            "label must be an empty string or consist of alphanumeric characters, '-', '_' or "
            "'.', and must start and end with an alphanumeric character")
    return value


_SET_RE = re.compile(r"^\s*([^\s!=<>(),]+)\s+(in|notin)\s*\((.*)\)\s*$")
_OP_RE = re.compile(r"^\s*([^\s!=<>(),]+)\s*(==|=|!=|>|<)\s*([^\s,()]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([^\s!=<>(),]+)\s*$")


def parse_label_selector(text: str | None) -> LabelSelector:
    if text is None or not text.strip():
        return LabelSelector([])
    reqs: list[Requirement] = []
    for part in _split_top_level(text):
        if not part.strip():
            raise bad_request(f"unable to parse requirement: found '', expected: identifier in {text!r}")
        m = _SET_RE.match(part)
        if m:
            key, op, inner = m.group(1), m.group(2), m.group(3)
            values = tuple(v.strip() for v in inner.split(",")) if inner.strip() else ()
            if op == "in" and not values:
                raise bad_request(
                    "unable to parse requirement: values: Invalid value: []string{}: for 'in', "
                    "'notin' operators, values set can't be empty")
            for v in values:
                _check_value(key, v)
            reqs.append(Requirement(_check_key(key), op, tuple(sorted(values))))
            continue
        m = _OP_RE.match(part)
        if m:
            key, op, value = m.group(1), m.group(2), m.group(3)
            if op in (">", "<"):
                if not re.fullmatch(r"-?\d+", value):
                    raise bad_request(
                        "unable to parse requirement: for 'Gt', 'Lt' operators, the value must "
                        "be an integer")
                reqs.append(Requirement(_check_key(key), "gt" if op == ">" else "lt", (value,)))
            else:
                reqs.append(Requirement(_check_key(key), "=" if op in ("=", "==") else "!=",
                                        (_check_value(key, value),)))
            continue
        m = _EXISTS_RE.match(part)
        if m:
            reqs.append(Requirement(_check_key(m.group(2)), "!" if m.group(1) else "exists"))
            continue
        raise bad_request(f"unable to parse requirement: invalid selector: {part.strip()!r}")
    return LabelSelector(reqs)


def selector_from_label_selector_object(sel: dict | None) -> LabelSelector:
    """metav1.LabelSelector (matchLabels + matchExpressions) -> selector."""
    sel = sel or {}
    reqs = [Requirement(k, "=", (v,)) for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for expr in sel.get("matchExpressions") or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}.get(expr.get("operator", ""))
        if op is None:
            continue
        reqs.append(Requirement(expr.get("key", ""), op, tuple(sorted(expr.get("values") or []))))
    return LabelSelector(reqs)


def label_selector_string(sel: dict | None) -> str:
    """The canonical string form (what Scale.status.selector carries)."""
    parts = []
    s = selector_from_label_selector_object(sel)
    for r in sorted(s.requirements, key=lambda r: r.key):
        if r.op == "=":
            parts.append(f"{r.key}={r.values[0]}")
        elif r.op in ("in", "notin"):
            parts.append(f"{r.key} {r.op} ({','.join(r.values)})")
        elif r.op == "exists":
            parts.append(r.key)
        elif r.op == "!":
            parts.append(f"!{r.key}")
    return ",".join(parts)


# ------------------------------- fields -------------------------------------

@dataclass(frozen=True)
class FieldRequirement:
    field: str
    op: str  # "=" or "!="
    value: str


class FieldSelector:
    def __init__(self, reqs: list[FieldRequirement], getter: Callable[[dict, str], Any]):
        self.reqs = reqs
        self._get = getter

    def matches(self, obj: dict) -> bool:
        for r in self.reqs:
            v = self._get(obj, r.field)
            v = "" if v is None else str(v)
            if (v == r.value) != (r.op == "="):
                return False
        return True

    def empty(self) -> bool:
        return not self.reqs


def _unescape(v: str) -> str:
    return re.sub(r"\\(.)", r"\1", v)


def parse_field_selector(text: str | None, supported: tuple[str, ...], getter: Callable[[dict, str], Any],
                         known_style: bool) -> FieldSelector:
    """`supported` is the full set of labels; `known_style` picks the error
    wording of the generic metav1 conversion (vs. per-type conversion funcs)."""
    if text is None or not text.strip():
        return FieldSelector([], getter)
    reqs: list[FieldRequirement] = []
    for part in re.split(r"(?<!\\),", text):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([^=!]+?)\s*(==|!=|=)\s*(.*)$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        fld, op, value = m.group(1).strip(), m.group(2), _unescape(m.group(3).strip())
        if fld not in supported:
            if known_style:
                raise bad_request(f'"{fld}" is not a known field selector: only "metadata.name", '
                                  f'"metadata.namespace"')
            raise bad_request(f"field label not supported: {fld}")
        reqs.append(FieldRequirement(fld, "!=" if op == "!=" else "=", value))
    return FieldSelector(reqs, getter)


def get_path(obj: dict, dotted: str) -> Any:
    cur: Any = obj
    for p in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


__all__ = [
    "ApiError", "LabelSelector", "FieldSelector", "Requirement", "parse_label_selector",
    "parse_field_selector", "selector_from_label_selector_object", "label_selector_string", "get_path",
]

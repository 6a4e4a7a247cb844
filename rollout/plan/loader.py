"""Loading a plan file: YAML with line numbers, every problem reported at once.

PyYAML's composed node tree knows where each key and item starts; we build
the plain data and a map from field path to line side by side, validate the
data with the models, then check what the models cannot see (cross
references, files that must exist). Every problem becomes a PlanIssue with
file, line, path, what was found and what is expected.

Safe by construction, whatever the file holds (a plan may come from a pull
request): only a regular file is read (a FIFO, a device such as /dev/zero or a
directory is refused from its `stat`, and it is opened non-blocking so a file
swapped for a FIFO cannot hang the read), at most MAX_PLAN_BYTES of it;
nesting deeper than MAX_DEPTH, or more than MAX_NODES values, is refused while
the YAML is composed (before Python's recursion limit could be reached); aliases are allowed but the
document they expand to is measured first, in time linear in the file, and
refused above MAX_NODES values or when an alias refers to itself (a "billion
laughs" file is refused in milliseconds, with the line of its first alias);
every reader, scanner, parser, composer and constructor error becomes a plan
error with its line. No input reaches "internal error".
"""

from __future__ import annotations

import difflib
import os
import stat
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from rollout.errors import PlanInvalid, PlanIssue
from rollout.plan import names
from rollout.plan.names import printable
from rollout.plan.model import LocalTarget, Plan

Loc = tuple[str | int, ...]

MAX_PLAN_BYTES = 256 * 1024  # a plan is a few KB; the largest example is ~3 KB
MAX_DEPTH = 64  # mappings and lists nested in each other (a plan needs 6)
MAX_NODES = 10_000  # values in the document, also once aliases are expanded (the example plan has ~110)
# fields whose text may span lines (YAML block scalars); everywhere else a control character is an error
MULTILINE_FIELDS = ("description", "query", "command", "bad", "total")  # PromQL may be a block scalar


@dataclass(frozen=True)
class LoadedPlan:
    """A valid plan and where it came from (relative paths in it are relative to its file)."""

    plan: Plan
    path: Path
    warnings: tuple[PlanIssue, ...] = ()  # valid, but probably not meant (printed by `validate`, `run`, `advance`)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else (self.base_dir / p)


# -- YAML with lines ----------------------------------------------------------


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int, first_line: int) -> None:
        self.key, self.line, self.first_line = key, line, first_line


class _Refused(Exception):
    """A document the loader will not build (too deep, too big once expanded, a bad value): one located issue."""

    def __init__(self, line: int | None, found: str, expected: str) -> None:
        self.line, self.found, self.expected = line, found, expected


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _PlanLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the nesting bounded while it composes (its composer is recursive)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(mark.line + 1, f"values nested more than {MAX_DEPTH} levels deep",
                               f"a plan nested at most {MAX_DEPTH} levels")
            if self._nodes > MAX_NODES:  # stop composing at once: pure-Python YAML costs ~10 µs a token
                mark = self.peek_event().start_mark
                raise _Refused(mark.line + 1, f"more than {MAX_NODES:,} values",
                               "a plan of a reasonable size (a plan has a few hundred values)")
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _measure(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand too far or refer to themselves, before building it.

    Each distinct node is visited once (memoised, iteratively: no recursion), so a
    billion-laughs file costs as much as its text; the expanded size and depth are
    computed, not produced.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    grey: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        kids = _children(node)
        if done:
            grey.discard(nid)
            size[nid] = min(MAX_NODES + 1, 1 + sum(size[id(k)] for k in kids))
            depth[nid] = min(MAX_DEPTH + 1, 1 + max((depth[id(k)] for k in kids), default=0))
            if size[nid] > MAX_NODES:
                raise _Refused(_line(node), f"more than {MAX_NODES:,} values once its aliases (*name) are expanded",
                               "a plan of a reasonable size: fewer aliases, or write the values out")
            if depth[nid] > MAX_DEPTH:
                raise _Refused(_line(node), f"values nested more than {MAX_DEPTH} levels deep once aliases are expanded",
                               f"a plan nested at most {MAX_DEPTH} levels")
            continue
        if nid in size:
            continue
        if nid in grey:
            raise _Refused(_line(node), "an alias that refers to the value it is part of (a recursive anchor)",
                           "aliases (*name) only to values defined before and outside them")
        grey.add(nid)
        stack.append((node, True))
        for kid in kids:
            if id(kid) not in size:
                if id(kid) in grey:
                    raise _Refused(_line(kid), "an alias that refers to the value it is part of (a recursive anchor)",
                                   "aliases (*name) only to values defined before and outside them")
                stack.append((kid, False))


def _construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """One scalar (or complex key): a value PyYAML cannot build (a 5,000-digit int, 2024-13-45) is a located error."""
    try:
        return loader.construct_object(node, deep=True)
    except yaml.MarkedYAMLError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyYAML's constructors raise anything on odd input (`!!timestamp x`: AttributeError)
        raise _Refused(_line(node), f"a value YAML cannot read: {names.printable(str(exc).split(';')[0])[:120]}", "a valid YAML value") from None


def _build(node: yaml.Node, loader: yaml.SafeLoader, loc: Loc, lines: dict[Loc, int]) -> Any:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        own = sum(1 for k, _v in node.value if k.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)  # merged pairs (`<<: *base`) first, then the mapping's own
        merged = len(node.value) - own
        out: dict[Any, Any] = {}
        seen: dict[Any, int] = {}
        for n, (key_node, value_node) in enumerate(node.value):
            key = _construct(loader, key_node)
            if not isinstance(key, str | int | float | bool) and key is not None:
                key = str(key)
            line = key_node.start_mark.line + 1
            if key in seen and n >= merged and seen[key] >= 0:  # a merged key may be overridden, an own key not repeated
                raise _DuplicateKey(key, line, seen[key])
            seen[key] = line if n >= merged else -1
            child: Loc = (*loc, key if isinstance(key, str | int) else str(key))
            lines[child] = line
            out[key] = _build(value_node, loader, child, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, loader, (*loc, i), lines) for i, item in enumerate(node.value)]
    return _construct(loader, node)


def _invalid(file: str, line: int | None, found: str, expected: str) -> PlanInvalid:
    return PlanInvalid(file, [PlanIssue(file, line, "", found, expected)])


def parse_yaml(text: str, file: str) -> tuple[Any, dict[Loc, int]]:
    """YAML text → (data, {path: line}); every problem becomes a PlanInvalid with its line."""
    lines: dict[Loc, int] = {}
    loader: _PlanLoader | None = None
    try:
        loader = _PlanLoader(text)  # its reader refuses a NUL or another control character right here
        node = loader.get_single_node()
        if node is None:
            return None, lines
        _measure(node)
        return _build(node, loader, (), lines), lines
    except _DuplicateKey as dup:
        raise PlanInvalid(
            file,
            [
                PlanIssue(
                    file,
                    dup.line,
                    names.printable(dup.key),
                    f"a second `{names.printable(dup.key)}` (first on line {dup.first_line})",
                    "each key once",
                )
            ],
        ) from None
    except _Refused as ref:
        raise _invalid(file, ref.line, ref.found, ref.expected) from None
    except yaml.reader.ReaderError as exc:  # a NUL byte or another character YAML does not allow
        pos = exc.position if isinstance(exc.position, int) else 0
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise _invalid(file, text.count("\n", 0, pos) + 1, f"the character {names.printable(repr(char))[1:-1]!s} (not allowed in YAML)",
                       "YAML text without NUL or other control characters") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or "unreadable YAML"
        ctx = f" {exc.context}" if exc.context else ""
        raise _invalid(file, line, names.printable(f"invalid YAML: {problem}{ctx}"), "well-formed YAML") from None
    except yaml.YAMLError as exc:
        raise _invalid(file, None, names.printable(f"invalid YAML: {exc}"), "well-formed YAML") from None
    except RecursionError:  # defence in depth: the bounds above should make this unreachable
        raise _invalid(file, None, "values nested too deeply", f"a plan nested at most {MAX_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def read_plan_text(path: str | os.PathLike[str], file: str) -> str:
    """The plan's text: a regular file only, at most MAX_PLAN_BYTES, UTF-8; anything else is a PlanInvalid.

    `stat` first (a FIFO or a device is never opened), then open with O_NONBLOCK and
    check again on the descriptor (the path may have been swapped in between).
    """
    expected = "a rollout plan: a regular YAML file"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _invalid(file, None, "no such file", "a rollout plan (YAML) at this path") from None
    except (OSError, ValueError) as exc:  # permission, a too-long name, a NUL in the path
        raise _invalid(file, None, f"unreadable file ({names.printable(exc)})", "a readable UTF-8 YAML file") from None
    if not stat.S_ISREG(st.st_mode):
        raise _invalid(file, None, _kind(st.st_mode), expected)
    if st.st_size > MAX_PLAN_BYTES:
        raise _invalid(file, None, f"a file of {st.st_size:,} bytes", f"a plan of at most {MAX_PLAN_BYTES // 1024} KiB")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _invalid(file, None, f"unreadable file ({names.printable(exc)})", "a readable UTF-8 YAML file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _invalid(file, None, _kind(st.st_mode), expected)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_PLAN_BYTES:
            chunk = os.read(fd, MAX_PLAN_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _invalid(file, None, f"unreadable file ({names.printable(exc)})", "a readable UTF-8 YAML file") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_PLAN_BYTES:
        raise _invalid(file, None, f"a file of more than {MAX_PLAN_BYTES:,} bytes", f"a plan of at most {MAX_PLAN_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _invalid(file, line, f"the byte 0x{data[exc.start]:02x}, which is not UTF-8", "a UTF-8 text file") from None


def text_issues(data: Any, file: str, lines: dict[Loc, int]) -> list[PlanIssue]:
    """Every key and text value on one line without control characters (multi-line only where text may span lines).

    A NUL or an ESC sequence in an owner's name would be printed raw by `status`;
    a CR/LF in a name would forge a header or a log line. YAML's double-quoted
    escapes ("\\e[31m", "\\0") can write them, so they are refused here, with the path.
    """
    issues: list[PlanIssue] = []
    stack: list[tuple[Loc, Any]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                ckey = key if isinstance(key, str | int) else str(key)
                cloc: Loc = (*loc, ckey)
                if isinstance(key, str):
                    bad = names.control_chars(key)
                    if bad:
                        issues.append(PlanIssue(file, _line_for(cloc, lines), path_str(cloc), f"a key with control characters ({', '.join(bad)})",
                                                "keys without control characters"))
                stack.append((cloc, child))
        elif isinstance(value, list):
            stack.extend(((*loc, i), item) for i, item in enumerate(value))
        elif isinstance(value, str):
            field = loc[-1] if loc else ""
            bad = names.control_chars(value, allow="\t\n" if field in MULTILINE_FIELDS else "\t")  # a tab is harmless
            if bad:
                issues.append(PlanIssue(file, _line_for(loc, lines), path_str(loc), f"text with control characters ({', '.join(bad)})",
                                        "text on one line without control characters (they would reach terminals, headers and processes raw)"))
    return issues


def plan_warnings(plan: Plan, file: str, lines: dict[Loc, int]) -> list[PlanIssue]:
    """What is valid but probably a mistake.

    A local version whose command has no `{port}` and never mentions PORT listens
    somewhere the tool cannot know: it never becomes healthy and the start-up
    waits its whole timeout. It is a warning, not an error: the port is also given
    as $PORT in the environment, which a program may read without saying so.
    """
    out: list[PlanIssue] = []
    if isinstance(plan.target, LocalTarget):
        for vname, spec in plan.target.versions.items():
            if "{port}" not in spec.command and "PORT" not in spec.command:
                loc: Loc = ("target", "versions", vname, "command")
                out.append(PlanIssue(file, _line_for(loc, lines), path_str(loc), "a command without {port}",
                                     "{port} where the version should listen (or a program that reads $PORT); "
                                     f"otherwise it never answers its health check and start-up waits {spec.startup_timeout:g}s"))
    return out


# -- pydantic errors → located issues ------------------------------------------


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation may hold (Optional/Union/Annotated peeled)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                out.extend(_unwrap(arg))
        return out
    return [annotation]


def _is_discriminated(annotation: Any) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in typing.get_args(annotation)[1:]:
            if getattr(meta, "discriminator", None):
                return True
    return False


def _walk(loc: Loc) -> tuple[Loc, type[BaseModel] | None]:
    """Strip pydantic's union tags from loc and find the model that holds its last key.

    Pydantic puts the tag of a discriminated union into the error location
    (`target.local.port`); users wrote `target.port`. Walking the model types
    along the location tells which elements are tags, and which model an
    unknown key was found in (for "did you mean").
    """
    clean: list[str | int] = []
    current: list[Any] = [Plan]
    holder: type[BaseModel] | None = Plan
    i = 0
    while i < len(loc):
        part = loc[i]
        models = [t for t in current if isinstance(t, type) and issubclass(t, BaseModel)]
        holder = models[0] if models else None
        nxt: list[Any] = []
        clean.append(part)
        field = next((m.model_fields[part] for m in models if isinstance(part, str) and part in m.model_fields), None)
        if field is not None:
            nxt = _unwrap(field.annotation)
            if (field.discriminator is not None or _is_discriminated(field.annotation)) and i + 1 < len(loc):
                i += 1  # skip pydantic's union tag
                nxt = [t for t in nxt if _tag_of(t) == loc[i]] or nxt
        else:
            containers = [t for t in current if typing.get_origin(t) in (list, dict)]
            if containers:
                args = typing.get_args(containers[0])
                nxt = _unwrap(args[-1]) if args else []
        current = nxt
        i += 1
    return tuple(clean), holder


def _tag_of(model: Any) -> Any:
    if isinstance(model, type) and issubclass(model, BaseModel) and "backend" in model.model_fields:
        ann = model.model_fields["backend"].annotation
        args = typing.get_args(ann)
        return args[0] if args else None
    return None


def path_str(loc: Loc) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for an error in a mapping's key: the path already ends at the key
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + names.printable(part)
    return out


def _found(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _line_for(loc: Loc, lines: dict[Loc, int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


_MESSAGES = {
    "missing": "this field (it is required)",
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "dict_type": "a mapping of keys to values",
    "list_type": "a list",
    "model_type": "a mapping of fields",
    "model_attributes_type": "a mapping of fields",
    "bool_type": "true or false",
}


def issues_from_validation(err: ValidationError, file: str, lines: dict[Loc, int]) -> list[PlanIssue]:
    issues: list[PlanIssue] = []
    for e in err.errors(include_url=False):
        loc, model = _walk(tuple(e["loc"]))
        kind = e["type"]
        inp = e.get("input")
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else ""
            known = list(model.model_fields) if model is not None else []
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"a known field (did you mean `{close[0]}`?)" if close else f"one of: {', '.join(known)}"
            issues.append(
                PlanIssue(file, _line_for(loc, lines), path_str(loc), f"unknown field `{key}`", hint)
            )
            continue
        if kind == "missing":
            found = "nothing"
        elif kind in ("value_error", "assertion_error") and isinstance(inp, dict):
            found = ""  # a rule across fields: the message says it all
        else:
            found = _found(inp)
        msg = e["msg"]
        if kind in _MESSAGES:
            expected = _MESSAGES[kind]
        elif kind in ("value_error", "assertion_error"):
            expected = msg.removeprefix("Value error, ")
        elif kind == "union_tag_invalid" or kind == "literal_error":
            expected = msg.replace("Input should be", "one of").replace("Input tag", "backend")
        elif kind == "union_tag_not_found":
            expected = "a `backend` field (local or kubernetes)"
        elif kind == "string_pattern_mismatch":
            last = loc[-1] if loc else ""
            desc = model.model_fields[last].description if model is not None and isinstance(last, str) and last in model.model_fields else None
            expected = desc or msg
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            ctx = e.get("ctx", {})
            sym = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
            expected = " and ".join(f"a number {sym[k]} {v}" for k, v in ctx.items() if k in sym)
        elif kind in ("too_short", "too_long"):
            expected = msg.replace("List should have", "a list with").replace("Dictionary should have", "a mapping with").replace("Value should have", "at least")
        else:
            expected = msg.replace("Input should be", "").replace("String should", "text that should").strip()
        issues.append(PlanIssue(file, _line_for(loc, lines), path_str(loc), found, expected))
    return issues


# -- checks the models cannot make ---------------------------------------------


def _get(data: Any, *keys: str | int) -> Any:
    for k in keys:
        if isinstance(k, int):
            if not isinstance(data, list) or k >= len(data):
                return None
        elif not isinstance(data, dict):
            return None
        data = data[k] if isinstance(k, int) else data.get(k)
    return data


def cross_checks(data: dict[str, Any], file: str, base: Path, lines: dict[Loc, int]) -> list[PlanIssue]:
    """Rules across fields, on the raw data, so they are reported with the schema errors.

    Works defensively on whatever the file holds: a field of the wrong type
    was already reported by the schema, so here it is simply skipped.
    """
    issues: list[PlanIssue] = []

    def add(loc: Loc, found: str, expected: str) -> None:
        issues.append(PlanIssue(file, _line_for(loc, lines), path_str(loc), found, expected))

    target = _get(data, "target")
    if _get(target, "backend") in ("local", "kubernetes"):
        versions = _get(target, "versions")
        vnames = sorted(str(v) for v in versions) if isinstance(versions, dict) else []
        names = ", ".join(vnames)
        stable, canary = _get(target, "stable"), _get(target, "canary")
        if vnames and isinstance(stable, str) and stable not in vnames:
            add(("target", "stable"), repr(stable), f"one of the versions: {names}")
        if vnames and isinstance(canary, str) and canary not in vnames:
            add(("target", "canary"), repr(canary), f"one of the versions: {names}")
        if isinstance(canary, str) and canary == stable:
            add(("target", "canary"), repr(canary), "a version other than the stable one")
    if _get(target, "backend") == "local":
        versions = _get(target, "versions")
        for vname in sorted(str(v) for v in versions) if isinstance(versions, dict) else []:
            health = _get(versions, vname, "health")
            if isinstance(health, str) and not health.startswith("/"):
                add(("target", "versions", vname, "health"), repr(health), "a path starting with /")
        if _get(data, "load", "host") is not None:
            add(("load", "host"), repr(_get(data, "load", "host")), "no host with the local backend (its router is the entry point)")
    if _get(target, "backend") == "kubernetes":
        if isinstance(_get(target, "deployments", "stable"), str) and _get(target, "deployments", "stable") == _get(target, "deployments", "canary"):
            add(("target", "deployments", "canary"), repr(_get(target, "deployments", "canary")), "a Deployment other than the stable one")
        k8s_stages = _get(data, "stages")
        for i, stage in enumerate(k8s_stages if isinstance(k8s_stages, list) else []):
            if not isinstance(stage, dict):
                continue
            if _get(target, "router") == "replicas" and stage.get("cohort") is not None:
                add(("stages", i, "cohort"), "a cohort", "no cohort with router `replicas` (one Service, no header routing): "
                    "use router gateway-api or nginx")
            if stage.get("load_to") == "canary":
                if _get(target, "router") == "replicas":
                    add(("stages", i, "load_to"), "'canary'", "no `load_to: canary` with router `replicas` (any canary pod serves users)")
                elif _get(target, "canary_url") is None:
                    add(("stages", i, "load_to"), "'canary'", "a `target.canary_url` (where the canary alone answers) for `load_to: canary`")
            elif _get(target, "entry_url") is None and _get(data, "load", "host") is None:
                add(("stages", i, "name"), repr(stage.get("name")), "`target.entry_url` or `load.host` (where users' traffic enters)")

    locustfile = _get(data, "load", "locustfile")
    if isinstance(locustfile, str) and locustfile and (why := _locustfile_issue(locustfile, base)):
        add(("load", "locustfile"), repr(locustfile), why)

    plan_gates = _get(data, "gates")
    plan_gates = plan_gates if isinstance(plan_gates, dict) else {}
    declared = _get(data, "load", "metrics")
    declared = declared if isinstance(declared, dict) else {}
    builtin = ("error_rate", "p50", "p90", "p95", "p99")

    def check_metric(loc: Loc, gate: Any) -> None:
        metric = gate.get("metric") if isinstance(gate, dict) else None
        if isinstance(metric, str) and metric not in builtin and metric not in declared:
            names = ", ".join(builtin) + (", or a declared metric: " + ", ".join(map(str, declared)) if declared else ", or a metric declared under load.metrics")
            add((*loc, "metric"), repr(metric), f"one of {names}")

    for gname, gate in plan_gates.items():
        check_metric(("gates", gname), gate)
    stages = _get(data, "stages")
    seen: dict[str, int] = {}
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        if not isinstance(stage, dict):
            continue
        name = stage.get("name")
        if isinstance(name, str):
            if name in seen:
                add(("stages", i, "name"), repr(name), f"a name not used by stage {seen[name] + 1}")
            seen.setdefault(name, i)
        to_canary = stage.get("load_to") == "canary"
        if to_canary and stage.get("cohort") is not None:
            add(("stages", i, "cohort"), "a cohort", "no cohort when load_to is canary (all load goes to the canary)")
        stage_gates = stage.get("gates") if isinstance(stage.get("gates"), dict) else {}
        for gname, gate in stage_gates.items():
            check_metric(("stages", i, "gates", gname), gate)
        for gname, gate in stage_gates.items():
            if gate is None and gname not in plan_gates:
                add(("stages", i, "gates", gname), "null",
                    f"the name of a plan-wide gate to remove ({', '.join(map(str, plan_gates)) or 'none defined'})")
        if to_canary:
            merged = {**plan_gates, **stage_gates}
            for gname, gate in merged.items():
                if isinstance(gate, dict) and (gate.get("compare") is not None or gate.get("version") == "stable"):
                    where: Loc = ("stages", i, "gates", gname) if gname in stage_gates else ("gates", gname)
                    add(where, f"gate `{gname}` needs stable traffic",
                        f"no stable comparison in stage `{name}`: load_to: canary sends nothing to stable "
                        f"(remove it there with `gates: {{{gname}: null}}`)")
    issues += _watch_checks(data, base, add, declared)
    load = _get(data, "load")
    if not (isinstance(load, dict) and load.get("runner") == "kubernetes"):
        # stages[].workers: worker pods per stage; local workers (load.workers) live as long as the command
        for i, stage in enumerate(stages if isinstance(stages, list) else []):
            if isinstance(stage, dict) and stage.get("workers") is not None:
                add(("stages", i, "workers"), f"workers: {stage.get('workers')!r} without load.runner: kubernetes",
                    "`load.runner: kubernetes` (worker pods per stage), or remove it: local worker processes are "
                    "load.workers, for every stage")
    return issues


def _locustfile_issue(value: Any, base: Path) -> str | None:
    """Why `value` is not an existing locustfile (None when it is one)."""
    lf = Path(value)
    lf_path = lf if lf.is_absolute() else base / lf
    try:
        exists = lf_path.is_file()
    except (OSError, ValueError):  # a name too long, a NUL: no such file either
        exists = False
    return None if exists else f"an existing locustfile (looked at {printable(str(lf_path))[:300]})"


def _watch_checks(data: Any, base: Path, add: Any, declared: dict[str, Any]) -> list[PlanIssue]:
    """The watch's probe and the gates that count its answers (rollout.plan.watch): located at the gate's field."""
    watch = _get(data, "watch")
    if not isinstance(watch, dict):
        return []
    probe = watch.get("probe")
    locustfile = _get(probe, "locustfile")
    if isinstance(locustfile, str) and locustfile:
        why = _locustfile_issue(locustfile, base)
        if why:
            add(("watch", "probe", "locustfile"), repr(locustfile), why)
    gates = watch.get("gates")
    for gname, gate in (gates.items() if isinstance(gates, dict) else []):
        if not isinstance(gate, dict):
            continue
        field = next((k for k in ("probe", "metric", "json") if gate.get(k) is not None), None)
        if field is not None and not isinstance(probe, dict):
            add(("watch", "gates", gname, field), repr(gate.get(field)),
                "a `watch.probe` section (this gate counts the probe's answers), e.g. probe: {users: 2}")
        metric = gate.get("metric")
        if isinstance(metric, str):
            source = declared.get(metric)
            if not isinstance(source, dict) or not (source.get("json") or source.get("header")):
                readable = [str(n) for n, m in declared.items() if isinstance(m, dict) and (m.get("json") or m.get("header"))]
                add(("watch", "gates", gname, "metric"), repr(metric),
                    "a metric declared under load.metrics with a `json` or `header` source"
                    + (f" ({', '.join(readable)})" if readable else " (none is), or `json: FIELD` in the gate"))
    return []


def load_plan(path: str | os.PathLike[str]) -> LoadedPlan:
    """Read, parse and validate a plan file; raise PlanInvalid listing every problem."""
    p = Path(path)
    file = names.printable(path)
    text = read_plan_text(path, file)
    data, lines = parse_yaml(text, file)
    if not isinstance(data, dict):
        raise PlanInvalid(file, [PlanIssue(file, 1 if data is not None else None, "", _found(data) if data is not None else "an empty file", "a mapping with name, owner, target, load, stages")])
    issues = text_issues(data, file, lines)
    issues += cross_checks(data, file, p.resolve().parent, lines)
    plan: Plan | None = None
    try:
        plan = Plan.model_validate(data)
    except ValidationError as err:
        issues += issues_from_validation(err, file, lines)
    if issues or plan is None:
        raise PlanInvalid(file, sorted(issues, key=lambda i: (i.line or 0, i.path)))
    return LoadedPlan(plan=plan, path=p.resolve(), warnings=tuple(plan_warnings(plan, file, lines)))


def json_schema() -> dict[str, Any]:
    schema = Plan.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "rollout plan"
    return schema

"""API-level fault injection and the request log.

Rules are checked in the order they were added, after routing (so they can
match on verb/resource/name) and before the request touches the store —
the position of authentication, authorization and API Priority & Fairness
in the real server. The first rule that matches and still has budget fires.

The log records every API request with its Kubernetes verb (get, list,
watch, create, update, patch, delete, deletecollection), resource and
outcome, so tests and benchmarks can count calls ("how many API requests
did stage 2 cost?") at the server, where nothing can hide them.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class RequestInfo:
    """What the server understood a request to be."""

    method: str
    path: str
    verb: str
    group: str = ""
    version: str = ""
    resource: str = ""  # plural, e.g. "deployments"
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    user: str = ""

    @property
    def qualified_resource(self) -> str:
        if not self.resource:
            return ""
        q = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{q}/{self.subresource}" if self.subresource else q


@dataclass(frozen=True)
class RequestRecord:
    info: RequestInfo
    status: int
    started: float
    duration: float
    fault: bool

    def __getattr__(self, item: str):  # record.verb, record.resource ... for convenience
        return getattr(self.info, item)


def _as_set(v: str | Iterable[str] | None) -> frozenset[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        return frozenset({v})
    return frozenset(v)


@dataclass
class FaultRule:
    """Return `status` for matching requests (or delay / drop them).

    Matching: every given criterion must hold. `resource` accepts
    "deployments", "deployments.apps" or "deployments.apps/scale".
    `times`: how many requests fire (None = forever); with `per_object`,
    that budget is per object (namespace/name) instead of global.
    `action`: "error" (respond with `status`), "delay" (sleep `delay` s then
    serve normally), "drop" (close the connection without a response).
    `when` (in-process only): a predicate asked after the other criteria; the
    rule fires only while it returns True — e.g. "once the stable Deployment
    runs the new image", to fail a precise step without counting requests.
    """

    status: int = 500
    verb: frozenset[str] | None = None
    resource: str | None = None
    namespace: str | None = None
    name: str | None = None
    user: str | None = None
    times: int | None = None
    per_object: bool = False
    message: str | None = None
    retry_after: int | None = None
    action: str = "error"
    delay: float = 0.0
    as_status: bool = False
    when: Callable[[], bool] | None = field(default=None, repr=False)
    hits: int = 0
    _per_obj: dict = field(default_factory=dict, repr=False)

    def matches(self, info: RequestInfo) -> bool:
        if self.verb is not None and info.verb not in self.verb:
            return False
        if self.resource is not None:
            want = self.resource
            res, _, sub = want.partition("/")
            plural, _, group = res.partition(".")
            if plural != info.resource:
                return False
            if group and group != info.group:
                return False
            if (sub or "") != (info.subresource or "") and not (sub == "*"):
                return False
        if self.namespace is not None and self.namespace != info.namespace:
            return False
        if self.name is not None and self.name != info.name:
            return False
        if self.user is not None and self.user != info.user:
            return False
        return True

    def take(self, info: RequestInfo) -> bool:
        """Consume one unit of budget if this rule fires for `info`."""
        if not self.matches(info):
            return False
        if self.when is not None and not self.when():
            return False
        if self.per_object:
            key = (info.qualified_resource.split("/")[0], info.namespace, info.name)
            used = self._per_obj.get(key, 0)
            if self.times is not None and used >= self.times:
                return False
            self._per_obj[key] = used + 1
        else:
            if self.times is not None and self.hits >= self.times:
                return False
        self.hits += 1
        return True

    @property
    def exhausted(self) -> bool:
        return not self.per_object and self.times is not None and self.hits >= self.times


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def remove(self, rule: FaultRule) -> None:
        with self._lock:
            if rule in self.rules:
                self.rules.remove(rule)

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def pick(self, info: RequestInfo) -> FaultRule | None:
        with self._lock:
            for r in self.rules:
                if r.take(info):
                    return r
        return None


def _key(info: RequestInfo) -> str:
    return f"{info.verb} {info.qualified_resource or info.path}"


class RequestLog:
    """Records (the last `max_records`) plus exact per-key totals, so a long
    benchmark keeps bounded memory and `counts()` stays exact."""

    def __init__(self, max_records: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._records: deque[RequestRecord] = deque(maxlen=max_records)
        self._totals: Counter[str] = Counter()

    def add(self, rec: RequestRecord) -> None:
        with self._lock:
            self._records.append(rec)
            self._totals[_key(rec.info)] += 1

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._totals.clear()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._totals.values())

    def count(self, verb: str | Iterable[str] | None = None, resource: str | None = None, *,
              namespace: str | None = None, name: str | None = None,
              status: int | None = None, include_faults: bool = True) -> int:
        """Number of API requests matching; `resource` as in FaultRule."""
        probe = FaultRule(verb=_as_set(verb), resource=resource, namespace=namespace, name=name)
        n = 0
        for r in self.records():
            if not r.info.resource and resource is not None:
                continue
            if not probe.matches(r.info):
                continue
            if status is not None and r.status != status:
                continue
            if not include_faults and r.fault:
                continue
            n += 1
        return n

    def counts(self) -> dict[str, int]:
        """{"patch deployments.apps": 3, "get deployments.apps/scale": 1, "get /version": 1}"""
        with self._lock:
            return dict(sorted(self._totals.items()))


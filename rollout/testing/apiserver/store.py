"""The object store: etcd plus the watch cache, in one lock.

Every write gets the next value of one global counter as its
`resourceVersion` (a string on the wire, like etcd's revision) and is
appended to a bounded history. Watches replay that history from the
resourceVersion they were given; once it has rolled past (or `compact()`
dropped it) they get 410 Gone / Expired, which is the case real clients must
handle by re-listing.

A single `threading.Condition` guards everything: HTTP handler threads,
watch streams and the controller thread all go through it, so every
read-modify-write is atomic and a watch never misses an event.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from .errors import too_old_resource_version


@dataclass(frozen=True)
class StoreEvent:
    rv: int
    storage: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict  # new state; for DELETED the last state (with the deletion's rv)
    old: dict | None


class Store:
    def __init__(self, history_size: int = 1000, initial_rv: int = 1):
        self.cond = threading.Condition(threading.RLock())
        self._rv = initial_rv
        self._objects: dict[str, dict[tuple[str, str], dict]] = {}
        self._history: deque[StoreEvent] = deque(maxlen=max(1, history_size))
        # Events with rv > _floor are all still in the history.
        self._floor = initial_rv
        self.closed = False
        self._listeners: list[Callable[[StoreEvent], None]] = []

    # -------------------------------------------------------------- reading
    @property
    def resource_version(self) -> int:
        with self.cond:
            return self._rv

    @property
    def oldest_resource_version(self) -> int:
        """The smallest rv a watch may still resume from."""
        with self.cond:
            return self._floor

    def get(self, storage: str, namespace: str, name: str) -> dict | None:
        """The stored object itself (callers must hold `cond` and not mutate)."""
        return self._objects.get(storage, {}).get((namespace or "", name))

    def items(self, storage: str, namespace: str | None = None) -> list[dict]:
        """Objects sorted like etcd keys (namespace, then name)."""
        bucket = self._objects.get(storage, {})
        keys = sorted(k for k in bucket if namespace is None or k[0] == namespace)
        return [bucket[k] for k in keys]

    def snapshot(self) -> dict[str, list[dict]]:
        with self.cond:
            return {s: [copy.deepcopy(o) for _, o in sorted(b.items())] for s, b in self._objects.items()}

    # -------------------------------------------------------------- writing
    def add_listener(self, fn: Callable[[StoreEvent], None]) -> None:
        self._listeners.append(fn)

    def commit(self, storage: str, type_: str, obj: dict, old: dict | None) -> dict:
        """Store (or delete) `obj` with a fresh resourceVersion; returns it.

        `obj` is owned by the store afterwards: pass a copy."""
        with self.cond:
            self._rv += 1
            obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
            meta = obj["metadata"]
            key = (meta.get("namespace", "") or "", meta["name"])
            bucket = self._objects.setdefault(storage, {})
            if type_ == "DELETED":
                bucket.pop(key, None)
            else:
                bucket[key] = obj
            ev = StoreEvent(self._rv, storage, type_, obj, old)
            if len(self._history) == self._history.maxlen:
                self._floor = self._history[0].rv
            self._history.append(ev)
            self.cond.notify_all()
            listeners = list(self._listeners)
        for fn in listeners:
            fn(ev)
        return obj

    def compact(self) -> int:
        """Forget all history (like an etcd compaction): older rvs now 410."""
        with self.cond:
            self._history.clear()
            self._floor = self._rv
            self.cond.notify_all()
            return self._rv

    # -------------------------------------------------------------- watching
    def check_resumable(self, rv: int) -> None:
        with self.cond:
            if rv < self._floor:
                raise too_old_resource_version(rv, self._floor + 1)

    def events_after(self, rv: int, storages: Iterable[str]) -> list[StoreEvent]:
        """Events with rv greater than `rv` (caller holds `cond`)."""
        self.check_resumable(rv)
        wanted = set(storages)
        return [e for e in self._history if e.rv > rv and e.storage in wanted]

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

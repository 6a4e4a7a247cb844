"""Watch streams: a cursor into the store's event history per watch.

The real server serves watches from its watch cache, which is why a watch
with a labelSelector sees an object *leave* the selection as DELETED and
*enter* it as ADDED, and why resuming from a resourceVersion older than the
cache window gets 410 Expired. `Watcher` reproduces both; the HTTP side
(chunking, bookmarks, timeoutSeconds) is in handler.py.
"""

from __future__ import annotations

from . import errors as E
from .errors import ApiError
from .registry import Registry
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector
from .store import StoreEvent


def open_watch(reg: Registry, rt: ResourceType, namespace: str | None, *,
               label_selector: str | None = None, field_selector: str | None = None,
               resource_version: str | None = None, version: str | None = None,
               send_initial_events: bool = False) -> "Watcher":
    """A watch on `rt`; no/"0" resourceVersion sends current objects as ADDED."""
    lsel = reg.label_selector(label_selector)
    fsel = reg.field_selector(rt, field_selector)
    start: int | None = None
    if resource_version not in (None, "", "0"):
        try:
            start = int(resource_version)  # type: ignore[arg-type]
            if start < 0:
                raise ValueError
        except ValueError:
            raise E.bad_request(f"invalid resource version: {resource_version}") from None
    return Watcher(reg, rt, namespace if rt.namespaced and namespace else None, lsel, fsel,
                   version, start, send_initial_events or start is None)


class Watcher:
    """One watch stream's cursor into the store history.

    `poll()` returns ready-to-send event dicts; label/field selector
    transitions turn MODIFIED into ADDED/DELETED as the watch cache does."""

    def __init__(self, reg: Registry, rt: ResourceType, ns: str | None, lsel: LabelSelector,
                 fsel: FieldSelector, version: str | None, start: int | None, initial: bool):
        self.reg, self.rt, self.ns, self.lsel, self.fsel, self.version = reg, rt, ns, lsel, fsel, version
        self.pending: list[dict] = []
        self.expired: ApiError | None = None
        store = reg.store
        with store.cond:
            if start is not None:
                try:
                    store.check_resumable(start)
                except ApiError as e:
                    self.expired = e
            self.last = store.resource_version if start is None else start
            if initial and start is None:
                for o in store.items(rt.storage_key, ns):
                    if Registry._matches(o, lsel, fsel):
                        self.pending.append({"type": "ADDED", "object": reg.to_output(rt, o, version)})

    def _in_scope(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        if self.ns is not None and obj["metadata"].get("namespace", "") != self.ns:
            return False
        return Registry._matches(obj, self.lsel, self.fsel)

    def _translate(self, ev: StoreEvent) -> dict | None:
        new_in, old_in = self._in_scope(ev.obj), self._in_scope(ev.old)
        if ev.type == "ADDED":
            typ = "ADDED" if new_in else None
        elif ev.type == "DELETED":
            typ = "DELETED" if (old_in or new_in) else None
        elif new_in and old_in:
            typ = "MODIFIED"
        elif new_in:
            typ = "ADDED"
        elif old_in:
            typ = "DELETED"
        else:
            typ = None
        if typ is None:
            return None
        return {"type": typ, "object": self.reg.to_output(self.rt, ev.obj, self.version)}

    def poll(self, timeout: float) -> list[dict]:
        """Events since the last poll; waits up to `timeout` for one.

        Raises ApiError(410) when the cursor fell out of the history."""
        if self.expired is not None:
            raise self.expired
        if self.pending:
            out, self.pending = self.pending, []
            return out
        store = self.reg.store
        with store.cond:
            evs = store.events_after(self.last, [self.rt.storage_key])
            if not evs and not store.closed and timeout > 0:
                store.cond.wait(timeout)
                evs = store.events_after(self.last, [self.rt.storage_key])
            self.last = max(self.last, store.resource_version)
        out = []
        for ev in evs:
            t = self._translate(ev)
            if t is not None:
                out.append(t)
        return out

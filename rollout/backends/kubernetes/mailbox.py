"""The Kubernetes mailbox: ConfigMap `rollout-<plan>-requests` (data key `requests.json`).

A separate ConfigMap rather than a second key of the state's: the driver writes the state
ConfigMap with compare-and-swap on the whole object and treats any change by someone else as
another driver (a StateError), so a request written there would stop the very driver it talks
to. Here every writer does read → change → replace with the read resourceVersion, and on a 409
reads again and re-applies its change (a post or an acknowledgement commutes with any other),
so the requester and the driver never lose each other's writes. Same RBAC as the state
(configmaps get/create/update), plus `watch`:

While a stage's load runs, the driver watches this ConfigMap (`watching()`, a ConfigMapWatch in
a background thread) and the load loop asks `version()` every 0.1 s: a change means a read, so an
operator's request is picked up within ~0.1 s of landing instead of at the next 1 s tick, at the
price of one open connection (no polling). Without `watch` in the Role (403) the driver says so
once and falls back to the read at every load tick (as before: up to a second's wait).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rollout.backends.kubernetes.client import CONFIGMAPS, ConfigMapWatch, Conflict, Kube
from rollout.backends.kubernetes.store import object_name
from rollout.engine.requests import MailboxData
from rollout.errors import StateError

DATA_KEY = "requests.json"
MAX_TRIES = 10


def mailbox_name(plan: str) -> str:
    return f"{object_name(plan)}-requests"


class KubeMailbox:
    def __init__(self, kube: Kube, plan: str) -> None:
        self.kube = kube
        self.plan = plan
        self.name = mailbox_name(plan)

        self._watch: ConfigMapWatch | None = None
        self._said: str | None = None  # the watch's failure, once told

    def location(self) -> str:
        return f"ConfigMap {self.kube.namespace}/{self.name}"

    @contextmanager
    def watching(self, say: Callable[[str], None] | None = None) -> Iterator[None]:
        """Watch the mailbox while the block runs (a stage's load), so `version()` moves within ~0.1 s
        of any write. `say` hears, once per process, why the watch could not be kept (e.g. RBAC)."""
        self._watch = ConfigMapWatch(self.kube, self.name).start()
        try:
            yield
        finally:
            w, self._watch = self._watch, None
            w.stop()
            if w.error and say is not None and self._said != w.error:
                self._said = w.error
                say(f"{w.error}; requests to this driver (`rollout revert`, ...) were read once per load tick instead "
                    f"(add `watch` on configmaps to the Role, see manifests/rbac.yaml)")

    def version(self) -> int:
        """How many changes the watch saw (0 when not watching): cheap, no API call; the driver reads the
        mailbox only when it moved."""
        w = self._watch
        return w.changes if w is not None else 0

    def _get(self) -> dict[str, Any] | None:
        return self.kube.call("get", CONFIGMAPS, self.name, self.kube.core.read_namespaced_config_map,
                              self.name, self.kube.namespace, missing_ok=True)  # type: ignore[no-any-return]

    @staticmethod
    def _data(cm: dict[str, Any] | None) -> MailboxData:
        text = ((cm or {}).get("data") or {}).get(DATA_KEY)
        try:
            return MailboxData.from_dict(json.loads(text) if text else None)
        except (ValueError, TypeError, KeyError):
            return MailboxData()  # unreadable: start afresh (requests are short-lived by design)

    def read(self) -> MailboxData:
        return self._data(self._get())

    def _body(self, data: MailboxData, rv: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "labels": {"app.kubernetes.io/managed-by": "rollout", "rollout.dev/plan": self.plan,
                                                              "rollout.dev/role": "requests"}}
        if rv is not None:
            meta["resourceVersion"] = rv
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {DATA_KEY: json.dumps(data.to_dict())}}

    def update(self, change: Callable[[MailboxData], Any]) -> Any:
        for _ in range(MAX_TRIES):
            cm = self._get()
            data = self._data(cm)
            result = change(data)
            try:
                if cm is None:
                    self.kube.call("create", CONFIGMAPS, self.name, self.kube.core.create_namespaced_config_map,
                                   self.kube.namespace, self._body(data, None))
                else:
                    self.kube.call("update", CONFIGMAPS, self.name, self.kube.core.replace_namespaced_config_map,
                                   self.name, self.kube.namespace, self._body(data, cm["metadata"]["resourceVersion"]))
                return result
            except Conflict:
                continue  # someone else wrote meanwhile: read again and re-apply our change
        raise StateError(f"could not write the request mailbox {self.location()}: it kept changing ({MAX_TRIES} tries)",
                         "run the command again")

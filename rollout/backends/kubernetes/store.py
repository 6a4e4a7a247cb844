"""State in a ConfigMap, and a Lease as the lock: the cluster is the shared disk.

`ConfigMapStore` keeps the state JSON in ConfigMap `rollout-<plan>` and writes
it with compare-and-swap on resourceVersion: a write based on an old read is
refused (409) by the API server. On a 409 we re-read: if the stored content is
still what we last read (someone touched only metadata, or a fault injector
said no) or already what we are writing (our own earlier attempt landed, its
answer was lost), we retry; otherwise another writer really changed the state
and we stop with a StateError naming it — silently overwriting a rollout
someone else is driving is the one thing the store must never do.

`LeaseLock` holds coordination.k8s.io/v1 Lease `rollout-<plan>` while a
command acts, renewed in a background thread every leaseDurationSeconds/3, so
a killed command's lock expires by itself after leaseDurationSeconds. The
expiry check compares the Lease's renewTime with our clock, so large clock
skew between machines shortens or lengthens it.

Fencing (a command that lost its lock stops before its next write):
  * locally, before every write to the cluster (`Kube.before_write`) and every
    save: the lock counts as held only while its last successful renewal was
    sent less than FENCE_FRACTION × leaseDurationSeconds ago and nobody took it
    over. Past that, one renewal is tried there and then (a compare-and-swap on
    the Lease: it lands only if nobody took the lock); if it fails too, the
    command stops — so renewals failing (5xx, 409, timeouts) stop it at 80 % of
    the lease, before another command may take over an expired lease, while a
    process that was merely too busy to renew in time goes on;
  * on the cluster, before every state save: the Lease is read again and must
    still name this command, and the state ConfigMap is written (with
    compare-and-swap on its resourceVersion) annotated with the holder and the
    Lease's transition count, so a takeover is visible in the state itself.
Kubernetes has no compare-and-swap across two objects, so a residual window
remains: a takeover landing between the Lease read and the ConfigMap write (one
request), or a write already in flight when the lease runs out. A takeover can
only follow an expiry or a `--force`; the 20 % margin covers the first.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from rollout.backends.kubernetes.client import CONFIGMAPS, LEASES, Conflict, Kube
from rollout.engine.state import State, StateShapeError, actor, check_shape, check_state_shape, from_dict, to_dict
from rollout.errors import LockHeld, RolloutError, StateError

DATA_KEY = "state.json"
WRITER_ANNOTATION = "rollout.dev/written-by"
COMMAND_ANNOTATION = "rollout.dev/command"
LEASE_ANNOTATION = "rollout.dev/lease-holder"  # on the state ConfigMap: the lock holder that wrote it
MAX_CAS_TRIES = 5
DEFAULT_LEASE_SECONDS = 15
FENCE_FRACTION = 0.8  # the lock counts as held for this share of the lease after its last renewal
RELEASE_SECONDS = 5.0  # releasing is best effort: an unreleased Lease expires by itself


class LockLost(StateError):
    """This command no longer holds the rollout's Lease: it must not change anything more."""


@dataclass(frozen=True)
class KubeCanaryRecord:
    version: str
    deployment: str


@dataclass(frozen=True)
class KubeTemplateRecord:
    version: str
    template: dict[str, Any]  # the Deployment's pod template, kept for `revert --to-revision`


@dataclass(frozen=True)
class KubeBackendRecord:
    """The shape of `state.backend` for the Kubernetes backend (checked when the state is loaded, as the local
    store checks its own): what rollout.backends.kubernetes.backend writes there, nothing else."""

    canary: KubeCanaryRecord | None = None  # the canary Deployment serving `version`, while it runs
    total: int | None = None  # replicas router: the pods shared out between stable and canary
    note: str | None = None  # replicas router: why the weight is coarser than asked
    templates: list[KubeTemplateRecord] = field(default_factory=list)
    images: dict[str, dict[str, str]] = field(default_factory=dict)  # version -> container -> image (--image)


def parse_state(text: str) -> State:
    """The state JSON of a ConfigMap, its shape checked before anything reads it: a newer schema first, then every
    field of the state and of the Kubernetes backend's record. Raises StateShapeError, or ValueError for bad JSON."""
    data = json.loads(text)
    check_state_shape(data)
    check_shape(data.get("backend", {}), KubeBackendRecord, "backend")
    return from_dict(data)


def object_name(plan: str) -> str:
    return f"rollout-{plan}"


def micro_time(t: float | None = None) -> str:
    """RFC 3339 with microseconds, as Lease MicroTime fields want it."""
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class ConfigMapStore:
    def __init__(self, kube: Kube, plan: str, lease_seconds: int = DEFAULT_LEASE_SECONDS) -> None:
        self.kube = kube
        self.plan = plan
        self.name = object_name(plan)
        self.lease_seconds = lease_seconds
        self.writer = f"{actor()} pid {os.getpid()}"
        self._rv: str | None = None  # resourceVersion of the last read or write
        self._text: str | None = None  # the state JSON at _rv
        self._lease: LeaseLock | None = None  # held while a command acts

    def location(self) -> str:
        return f"ConfigMap {self.kube.namespace}/{self.name}"

    def mailbox(self) -> Any:
        """Requests to a live driver (rollout.backends.kubernetes.mailbox): a ConfigMap of their own."""
        from rollout.backends.kubernetes.mailbox import KubeMailbox

        return KubeMailbox(self.kube, self.plan)

    def holder(self, wait: float = 0.0) -> dict[str, Any] | None:
        """The Lease's holder while it is held and not expired: {identity, command, renewed}; else None."""
        lease = self.kube.call("get", LEASES, self.name, self.kube.coord.read_namespaced_lease,
                               self.name, self.kube.namespace, missing_ok=True)
        spec = (lease or {}).get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = parse_time(spec.get("renewTime")) or 0.0
        if not holder or time.time() > renewed + float(spec.get("leaseDurationSeconds") or self.lease_seconds):
            return None
        cmd = (((lease or {}).get("metadata") or {}).get("annotations") or {}).get(COMMAND_ANNOTATION)
        return {"identity": holder, "command": cmd, "renewed": renewed}

    # -- reading ---------------------------------------------------------------

    def _read(self) -> dict[str, Any] | None:
        cm = self.kube.call("get", CONFIGMAPS, self.name, self.kube.core.read_namespaced_config_map,
                            self.name, self.kube.namespace, missing_ok=True)
        return cm

    def load(self) -> State | None:
        cm = self._read()
        if cm is None:
            self._rv, self._text = None, None
            return None
        meta = cm.get("metadata") or {}
        data = cm.get("data") or {}
        self._rv, self._text = meta.get("resourceVersion"), data.get(DATA_KEY) if isinstance(data, dict) else None
        fix = (f"restore it (`kubectl -n {self.kube.namespace} edit configmap {self.name}`), or delete it "
               f"(`kubectl -n {self.kube.namespace} delete configmap {self.name}`) and run `rollout revert PLAN`: it starts "
               "from the plan's stable version, puts all traffic on it and scales the canary to 0")
        if self._text is None:
            raise StateError(f"the rollout state {self.location()} has no `{DATA_KEY}` key (its data: "
                             f"{', '.join(sorted(data)) if isinstance(data, dict) and data else 'none'})", fix)
        try:
            return parse_state(self._text)
        except StateShapeError as exc:
            if exc.field == "schema" and "newer" in exc.message:
                raise StateError(f"the rollout state in {self.location()} was {exc.message.split(':')[0]}",
                                 "upgrade rollout to read it (this rollout does not change it)") from None
            raise StateError(f"the rollout state in {self.location()} is malformed: field `{exc.field or '(the whole state)'}`: "
                             f"{exc.message}", fix) from None
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise StateError(f"the rollout state in {self.location()} is unreadable ({type(exc).__name__}: {str(exc)[:200]})", fix) from None

    # -- writing ---------------------------------------------------------------

    def _body(self, text: str, rv: str | None) -> dict[str, Any]:
        annotations = {WRITER_ANNOTATION: self.writer}
        if self._lease is not None:
            annotations[LEASE_ANNOTATION] = self._lease.token()
        meta: dict[str, Any] = {"name": self.name, "labels": {"app.kubernetes.io/managed-by": "rollout", "rollout.dev/plan": self.plan},
                                "annotations": annotations}
        if rv is not None:
            meta["resourceVersion"] = rv
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {DATA_KEY: text}}

    def save(self, state: State) -> None:
        if self._lease is not None:  # fencing: still ours, fresh, and the Lease says so now
            self._lease.check()
            self._lease.verify()
        text = json.dumps(to_dict(state), indent=1, sort_keys=True)
        for _ in range(MAX_CAS_TRIES):
            try:
                if self._rv is None:
                    cm = self.kube.call("create", CONFIGMAPS, self.name, self.kube.core.create_namespaced_config_map,
                                        self.kube.namespace, self._body(text, None))
                else:
                    cm = self.kube.call("update", CONFIGMAPS, self.name, self.kube.core.replace_namespaced_config_map,
                                        self.name, self.kube.namespace, self._body(text, self._rv))
                self._rv, self._text = cm["metadata"]["resourceVersion"], text
                return
            except Conflict:
                current = self._read()
                if current is None:  # deleted under us: write it again from scratch
                    self._rv = None
                    continue
                stored = (current.get("data") or {}).get(DATA_KEY)
                rv = current["metadata"]["resourceVersion"]
                if stored == text:  # our earlier attempt landed
                    self._rv, self._text = rv, text
                    return
                if stored == self._text:  # content unchanged since our read: safe to write over
                    self._rv = rv
                    continue
                by = ((current["metadata"].get("annotations") or {}).get(WRITER_ANNOTATION)) or "an unknown writer"
                raise StateError(f"the rollout state in {self.location()} was changed by {by} while this command ran",
                                 "run `rollout status` to see what it did; only one command may drive a rollout "
                                 "(the Lease should have prevented this — was `--force` used?)") from None
        raise StateError(f"could not write the rollout state to {self.location()}: it kept changing ({MAX_CAS_TRIES} tries)",
                         "run the command again")

    # -- locking ---------------------------------------------------------------

    @contextmanager
    def lock(self, command: str, force: bool = False) -> Iterator[None]:
        """Hold the Lease while the block runs; every write to the cluster meanwhile is fenced by it."""
        self._lease = LeaseLock(self.kube, self.name, command, self.lease_seconds)
        try:
            with self._lease.hold(force):
                self.kube.before_write = self._lease.check
                try:
                    yield
                finally:
                    self.kube.before_write = None
        finally:
            self._lease = None


class LeaseLock:
    """A Lease held while one command acts; renewed in the background, expired when its holder dies."""

    def __init__(self, kube: Kube, name: str, command: str, duration: int = 15, identity: str | None = None) -> None:
        self.kube = kube
        self.name = name
        self.command = command
        self.duration = duration
        self.identity = identity or f"{actor()} pid {os.getpid()}"
        self.lost: str | None = None  # why the lock is not (or may not be) ours: "taken over ..." or "renewal failed ..."
        self._rv: str | None = None
        self._transitions = 0
        self._held_at: float | None = None  # monotonic time the last successful acquire/renewal was sent
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- fencing -----------------------------------------------------------------

    def where(self) -> str:
        return f"Lease {self.kube.namespace}/{self.name}"

    def token(self) -> str:
        """Who holds the lock, and which holding it is (leaseTransitions grows at every takeover)."""
        return f"{self.identity} (transition {self._transitions})"

    def _lost_error(self, why: str) -> LockLost:
        return LockLost(f"this command lost its lock on the rollout ({self.where()}): {why}; "
                        "it stopped before its next change",
                        "`rollout status` shows what may be half done; once the cluster is healthy run the command again "
                        "(it resumes from the recorded state), or `rollout revert` to put all traffic on stable")

    def check(self) -> None:
        """Raise LockLost unless the lock is still ours and fresh. No API call while the background
        renewals keep it fresh (cheap enough before every write); when they did not land in time
        (failing, or this process too busy to send them), one renewal now decides: it is a
        compare-and-swap on the Lease, so it succeeds only if nobody took the lock meanwhile."""
        if self.lost and self.lost.startswith("taken over"):
            raise self._lost_error(self.lost)
        if self._held_at is None:
            raise self._lost_error("it was never acquired")
        age = time.monotonic() - self._held_at
        if age <= FENCE_FRACTION * self.duration:
            return
        why = self.lost
        try:
            with self.kube.deadline("renewing the lock", max(1.0, self.duration / 3.0)):
                self.renew()
        except Exception as exc:  # noqa: BLE001  (any failure to renew means: not ours for sure)
            why = f"renewal failed: {getattr(exc, 'what', exc)}"
        else:
            if self.lost is None and self._held_at is not None and time.monotonic() - self._held_at <= FENCE_FRACTION * self.duration:
                return  # renewed just now: nobody took it, it is ours again
            why = self.lost or why
        if self.lost and self.lost.startswith("taken over"):
            raise self._lost_error(self.lost)
        raise self._lost_error(f"its last renewal was {age:.1f}s ago, past {FENCE_FRACTION:.0%} of the "
                               f"{self.duration}s lease, so another command may take it over"
                               + (f"; {why}" if why else ""))

    def verify(self) -> None:
        """Read the Lease: it must still name this command (a takeover by `--force` or after an expiry)."""
        lease = self._get()
        spec = (lease or {}).get("spec") or {}
        if lease is None or spec.get("holderIdentity") != self.identity:
            self.lost = f"taken over by {spec.get('holderIdentity') or 'nobody (released or deleted)'}"
            self._stop.set()
            raise self._lost_error(self.lost)

    def _get(self) -> dict[str, Any] | None:
        return self.kube.call("get", LEASES, self.name, self.kube.coord.read_namespaced_lease,
                              self.name, self.kube.namespace, missing_ok=True)

    def _body(self, holder: str | None, rv: str | None, acquire: str | None, transitions: int) -> dict[str, Any]:
        now = micro_time()
        meta: dict[str, Any] = {"name": self.name, "annotations": {COMMAND_ANNOTATION: self.command if holder else ""}}
        if rv:
            meta["resourceVersion"] = rv
        spec: dict[str, Any] = {"holderIdentity": holder, "leaseDurationSeconds": self.duration,
                                "renewTime": now, "acquireTime": acquire or now, "leaseTransitions": transitions}
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def _replace(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.kube.call("update", LEASES, self.name, self.kube.coord.replace_namespaced_lease,
                              self.name, self.kube.namespace, body)

    def _held_error(self, lease: dict[str, Any]) -> LockHeld:
        spec = lease.get("spec") or {}
        cmd = ((lease.get("metadata") or {}).get("annotations") or {}).get(COMMAND_ANNOTATION)
        since = parse_time(spec.get("acquireTime"))
        since_s = time.strftime("%H:%M:%S", time.localtime(since)) if since else "?"
        renewed = parse_time(spec.get("renewTime"))
        ago = f", renewed {max(time.time() - renewed, 0):.0f}s ago" if renewed else ""
        what = f"`rollout {cmd}` by " if cmd else ""
        return LockHeld(f"another command is acting on this rollout: {what}{spec.get('holderIdentity')} "
                        f"(Lease {self.kube.namespace}/{self.name}, since {since_s}{ago})",
                        f"wait for it to finish (`rollout status` shows progress); if it is gone, its lock expires "
                        f"{spec.get('leaseDurationSeconds', self.duration)}s after its last renewal, or take over now with `--force`")

    def acquire(self, force: bool = False) -> None:
        lease = self._get()
        sent = time.monotonic()
        if lease is None:
            try:
                made = self.kube.call("create", LEASES, self.name, self.kube.coord.create_namespaced_lease,
                                      self.kube.namespace, self._body(self.identity, None, None, 0))
                self._rv = made["metadata"]["resourceVersion"]
                self._held_at, self._transitions, self.lost = sent, 0, None
                return
            except Conflict:
                lease = self._get()
                if lease is None:
                    raise LockHeld(f"the Lease {self.kube.namespace}/{self.name} appeared and vanished while taking it",
                                   "run the command again") from None
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = parse_time(spec.get("renewTime")) or 0.0
        expired = time.time() > renewed + float(spec.get("leaseDurationSeconds") or self.duration)
        if holder and holder != self.identity and not expired and not force:
            raise self._held_error(lease)
        transitions = int(spec.get("leaseTransitions") or 0) + (1 if holder != self.identity else 0)
        sent = time.monotonic()
        try:
            got = self._replace(self._body(self.identity, lease["metadata"]["resourceVersion"], None, transitions))
        except Conflict:  # someone else took it between our read and our write
            now = self._get()
            raise self._held_error(now or lease) from None
        self._rv = got["metadata"]["resourceVersion"]
        self._held_at, self._transitions, self.lost = sent, transitions, None

    def renew(self) -> None:
        """One renewal; on a conflict, re-read: still ours → retry once, else the lock was taken over.
        Only a renewal that landed makes the lock fresh again (`check`)."""
        for _ in range(2):
            lease = self._get()
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.identity:
                self.lost = f"taken over by {spec.get('holderIdentity') or 'nobody (released or deleted)'}"
                self._stop.set()
                return
            sent = time.monotonic()
            try:
                got = self._replace(self._body(self.identity, lease["metadata"]["resourceVersion"], spec.get("acquireTime"),
                                               int(spec.get("leaseTransitions") or 0)))
                self._rv = got["metadata"]["resourceVersion"]
                self._held_at, self.lost = sent, None
                return
            except Conflict:
                continue
        self.lost = "renewal failed: the Lease kept changing (409 Conflict)"

    def _renew_loop(self) -> None:
        """Renew every duration/3; after a failure, try again soon (each try bounded, so a hung
        request cannot outlive the lease) until the lease is renewed or taken over."""
        interval = self.duration / 3.0
        retry = max(0.2, self.duration / 10.0)
        wait = interval
        while not self._stop.wait(wait):
            try:
                with self.kube.deadline("renewing the lock", interval):
                    self.renew()
            except Exception as exc:  # keep trying until the lease expires; the next renewal may work
                self.lost = f"renewal failed: {getattr(exc, 'what', exc)}"
            wait = retry if self.lost else interval

    def release(self) -> None:
        """Best effort and bounded: a Lease left behind expires by itself after its duration."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        try:
            with self.kube.deadline("releasing the lock", RELEASE_SECONDS):
                lease = self._get()
                spec = (lease or {}).get("spec") or {}
                if lease is None or spec.get("holderIdentity") != self.identity:
                    return  # taken over: not ours to release
                self._replace(self._body(None, lease["metadata"]["resourceVersion"], spec.get("acquireTime"),
                                         int(spec.get("leaseTransitions") or 0)))
        except Conflict:
            pass  # changed meanwhile: whoever changed it owns it now
        except RolloutError:
            pass  # the cluster is failing: the lease expires `duration` after the last renewal

    @contextmanager
    def hold(self, force: bool = False) -> Iterator[None]:
        self.acquire(force)
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self.release()

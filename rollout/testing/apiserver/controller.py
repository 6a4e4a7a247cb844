"""A simulated Deployment controller (plus just enough kubelet to fail).

Without it nothing ever writes a Deployment's status, so code that waits for
a rollout would hang. After `delay` seconds it reports what the real
controller reports when pods come up: `observedGeneration`, the replica
counts (zeros omitted, as Go's omitempty does) and the `Available` /
`Progressing` conditions with upstream's reasons and messages, and the
`deployment.kubernetes.io/revision` annotation. It writes through the store,
so every step bumps resourceVersion and reaches watches like a real one.

Faults make the unhappy paths testable; pick them per Deployment with the
annotation `fake.rollout.dev/fault` or with `set_fault()` (which can also
match on the pod template's image, so "the new version is broken" can be
expressed without touching the manifest):

* ``never-ready`` — new pods never become ready; once the progress deadline
  passes, Progressing turns False with reason ProgressDeadlineExceeded.
* ``slow`` — pods become ready only `ready_after` seconds after the change.
* ``crash-loop`` — like never-ready (ready replicas stay 0 for the new
  ReplicaSet) and kubelet-style ``BackOff`` Warning events are emitted for a
  pod of the new ReplicaSet; the Progressing message mentions
  CrashLoopBackOff (a fake-only hint: reasons stay upstream's).

During a broken rolling update the old ReplicaSet's pods stay up, as the
real controller leaves them (bounded by maxUnavailable/maxSurge), so
`readyReplicas` is not 0 and naive "any ready pods?" checks are caught.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import heapq
import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from .registry import Registry, now_rfc3339, random_suffix
from .store import Store, StoreEvent

FAULT_ANNOTATION = "fake.rollout.dev/fault"
READY_AFTER_ANNOTATION = "fake.rollout.dev/ready-after"
DEADLINE_ANNOTATION = "fake.rollout.dev/progress-deadline"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
FAULT_KINDS = ("none", "never-ready", "slow", "crash-loop")

_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: Any) -> str:
    """A stable pod-template-hash in the same alphabet as the real one."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    n = int.from_bytes(digest[:8], "big")
    out = []
    for _ in range(10):
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(out)


def _intstr(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = float(value[:-1])
        except ValueError:
            return 0
        x = pct * total / 100.0
        return math.ceil(x) if round_up else math.floor(x)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


@dataclass
class DeploymentFault:
    """A fault for Deployments matching all given patterns (fnmatch style)."""

    fault: str
    namespace: str | None = None
    name: str | None = None
    image: str | None = None
    ready_after: float | None = None
    progress_deadline: float | None = None

    def matches(self, dep: dict) -> bool:
        meta = dep.get("metadata") or {}
        if self.namespace and not fnmatch.fnmatchcase(meta.get("namespace", ""), self.namespace):
            return False
        if self.name and not fnmatch.fnmatchcase(meta.get("name", ""), self.name):
            return False
        if self.image:
            pod = (((dep.get("spec") or {}).get("template") or {}).get("spec") or {})
            images = [c.get("image", "") for c in (pod.get("containers") or []) if isinstance(c, dict)]
            if not any(fnmatch.fnmatchcase(i, self.image) for i in images):
                return False
        return True


@dataclass
class _Rollout:
    generation: int = 0
    sig: tuple = ()
    template_hash: str = ""
    revision: int = 0
    started: float = 0.0
    old_available: int = 0
    base_ready: int = 0
    completed: bool = False
    announced: bool = False
    crash_events: int = 0
    crash_pod: str = ""
    crash_event_name: str = ""


class DeploymentController:
    STORAGE = "deployments.apps"

    def __init__(self, store: Store, registry: Registry, *, delay: float = 0.05,
                 slow_ready_after: float = 2.0, progress_deadline: float | None = None,
                 crash_backoff: float = 0.5, emit_events: bool = True) -> None:
        self.store = store
        self.registry = registry
        self.delay = delay
        self.slow_ready_after = slow_ready_after
        self.progress_deadline = progress_deadline
        self.crash_backoff = crash_backoff
        self.emit_events = emit_events
        self._lock = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._seq = 0
        self._state: dict[tuple[str, str], _Rollout] = {}
        self._good: dict[tuple[str, str], tuple[str, int]] = {}
        self._faults: list[DeploymentFault] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        store.add_listener(self._on_event)

    # ----------------------------------------------------------- public API
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="fake-deployment-controller",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def set_fault(self, fault: str, *, namespace: str | None = None, name: str | None = None,
                  image: str | None = None, ready_after: float | None = None,
                  progress_deadline: float | None = None) -> DeploymentFault:
        if fault not in FAULT_KINDS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULT_KINDS}")
        f = DeploymentFault(fault, namespace, name, image, ready_after, progress_deadline)
        with self._lock:
            self._faults.append(f)
        self._kick_all()
        return f

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
        self._kick_all()

    # ----------------------------------------------------------- internals
    def _kick_all(self) -> None:
        """Re-evaluate every known Deployment (faults changed)."""
        with self.store.cond:
            deps = list(self.store.items(self.STORAGE))
        for d in deps:
            self._observe(d, force=True)

    def _effective_fault(self, dep: dict) -> DeploymentFault:
        with self._lock:
            faults = list(self._faults)
        for f in reversed(faults):
            if f.matches(dep):
                return f
        ann = (dep.get("metadata") or {}).get("annotations") or {}
        kind = ann.get(FAULT_ANNOTATION, "none")
        if kind not in FAULT_KINDS:
            kind = "none"

        def num(key: str) -> float | None:
            try:
                return float(ann[key])
            except (KeyError, ValueError):
                return None
        return DeploymentFault(kind, ready_after=num(READY_AFTER_ANNOTATION),
                               progress_deadline=num(DEADLINE_ANNOTATION))

    @staticmethod
    def _sig(dep: dict) -> tuple:
        ann = (dep.get("metadata") or {}).get("annotations") or {}
        return tuple(ann.get(k) for k in (FAULT_ANNOTATION, READY_AFTER_ANNOTATION, DEADLINE_ANNOTATION))

    def _on_event(self, ev: StoreEvent) -> None:
        if ev.storage != self.STORAGE:
            return
        m = ev.obj["metadata"]
        key = (m.get("namespace", ""), m["name"])
        if ev.type == "DELETED":
            with self._lock:
                self._state.pop(key, None)
                self._good.pop(key, None)
            return
        self._observe(ev.obj)

    def _observe(self, dep: dict, force: bool = False) -> None:
        m = dep["metadata"]
        key = (m.get("namespace", ""), m["name"])
        gen = int(m.get("generation", 1))
        sig = self._sig(dep)
        thash = template_hash((dep.get("spec") or {}).get("template"))
        now = time.monotonic()
        with self._lock:
            st = self._state.get(key)
            if st is not None and st.generation == gen:
                # Same spec: our own status write, a metadata-only change, or
                # a fault change. Running pods are unaffected once ready; an
                # unfinished rollout is re-evaluated with the new fault.
                if st.sig == sig and not force:
                    return
                st.sig = sig
                if not st.completed:
                    self._schedule_locked(key, now)
                return
            if st is None:
                st = self._state[key] = _Rollout()
            good = self._good.get(key)
            if thash != st.template_hash:
                # A new ReplicaSet: the last fully available one keeps its pods.
                st.old_available = good[1] if good and good[0] != thash else 0
                st.base_ready = 0
                st.template_hash = thash
                st.revision += 1
                st.announced = False
            else:
                # Same ReplicaSet (e.g. scaled): its ready pods stay ready.
                st.base_ready = good[1] if good and good[0] == thash else 0
            st.generation, st.sig, st.started, st.completed = gen, sig, now, False
            st.crash_events, st.crash_pod, st.crash_event_name = 0, "", ""
            self._schedule_locked(key, now + max(self.delay, 0.0))

    def _schedule_locked(self, key: tuple[str, str], when: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, key))
        self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping:
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    wait = (self._heap[0][0] - time.monotonic()) if self._heap else None
                    self._lock.wait(timeout=wait)
                if self._stopping:
                    return
                _, _, key = heapq.heappop(self._heap)
            try:
                nxt = self._reconcile(key)
            except Exception:  # never let the simulated controller die
                nxt = None
            if nxt is not None:
                with self._lock:
                    self._schedule_locked(key, nxt)

    # ----------------------------------------------------------- reconcile
    def _reconcile(self, key: tuple[str, str]) -> float | None:
        ns, name = key
        store = self.store
        with store.cond:
            dep = store.get(self.STORAGE, ns, name)
            if dep is None:
                return None
            with self._lock:
                st = self._state.get(key)
                if st is None:
                    return None
                st = copy.copy(st)
            now = time.monotonic()
            spec = dep.get("spec") or {}
            replicas = int(spec.get("replicas", 1) or 0)
            fault = self._effective_fault(dep)
            deadline_s = fault.progress_deadline if fault.progress_deadline is not None else (
                self.progress_deadline if self.progress_deadline is not None
                else float(spec.get("progressDeadlineSeconds", 600)))
            delay = max(self.delay, 0.0)
            observed_at = st.started + delay
            if fault.fault == "none":
                ready_at = st.started + 2 * delay
            elif fault.fault == "slow":
                ra = fault.ready_after if fault.ready_after is not None else self.slow_ready_after
                ready_at = observed_at + ra
            else:
                ready_at = math.inf
            deadline_at = observed_at + deadline_s
            eps = 1e-3
            if now + eps < observed_at:
                return observed_at  # a timer of an older observation: not noticed yet
            rs_name = f"{name}-{st.template_hash}"
            paused = bool(spec.get("paused"))
            ready = st.completed or replicas == 0 or now + eps >= ready_at
            ts = now_rfc3339()
            old_status = dep.get("status") or {}
            conds = {c.get("type"): c for c in old_status.get("conditions") or []}
            status: dict[str, Any] = {"observedGeneration": st.generation}

            strategy = spec.get("strategy") or {}
            if strategy.get("type") == "Recreate":
                surge, unavail = 0, replicas
            else:
                ru = strategy.get("rollingUpdate") or {}
                surge = _intstr(ru.get("maxSurge", "25%"), replicas, True)
                unavail = _intstr(ru.get("maxUnavailable", "25%"), replicas, False)
                if surge == 0 and unavail == 0:
                    unavail = 1

            if paused:
                for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas",
                          "unavailableReplicas"):
                    if old_status.get(k):
                        status[k] = old_status[k]
                avail_ok = status.get("availableReplicas", 0) >= replicas - unavail
                progressing = ("Unknown", "DeploymentPaused", "Deployment is paused")
            elif ready:
                status.update(replicas=replicas, updatedReplicas=replicas, readyReplicas=replicas,
                              availableReplicas=replicas)
                avail_ok = True
                progressing = ("True", "NewReplicaSetAvailable",
                               f'ReplicaSet "{rs_name}" has successfully progressed.')
            else:
                old_kept = min(st.old_available, max(replicas - unavail, 0))
                new_count = max(min(replicas + surge - old_kept, replicas), 0)
                total = old_kept + new_count
                up = old_kept + min(st.base_ready, new_count)
                status.update(replicas=total, updatedReplicas=new_count, readyReplicas=up,
                              availableReplicas=up, unavailableReplicas=max(total - up, 0))
                avail_ok = up >= replicas - unavail
                if now + eps >= deadline_at:
                    progressing = ("False", "ProgressDeadlineExceeded",
                                   f'ReplicaSet "{rs_name}" has timed out progressing.')
                else:
                    progressing = ("True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.')
                if fault.fault == "crash-loop":
                    progressing = (progressing[0], progressing[1], progressing[2] +
                                   f" (fake: pods of ReplicaSet \"{rs_name}\" are in CrashLoopBackOff:"
                                   " back-off restarting failed container)")
            available = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.") \
                if avail_ok else ("False", "MinimumReplicasUnavailable",
                                  "Deployment does not have minimum availability.")
            status = {k: v for k, v in status.items() if v}  # omitempty
            status["observedGeneration"] = st.generation
            status["conditions"] = [
                _condition(conds.get("Available"), "Available", *available, ts),
                _condition(conds.get("Progressing"), "Progressing", *progressing, ts),
            ]
            if ready and not paused:
                st.completed = True
                with self._lock:
                    self._good[key] = (st.template_hash, replicas)

            new = copy.deepcopy(dep)
            new["status"] = status
            ann = new["metadata"].setdefault("annotations", {})
            ann[REVISION_ANNOTATION] = str(st.revision)
            if new != dep:
                store.commit(self.STORAGE, "MODIFIED", new, dep)

            next_times = [] if st.completed else [
                t for t in (ready_at, deadline_at) if t > now + eps and t != math.inf]
            if self.emit_events and not paused:
                if not st.announced:
                    self._event(ns, "Deployment", name, dep["metadata"].get("uid"), "apps/v1",
                                "Normal", "ScalingReplicaSet",
                                f"Scaled up replica set {rs_name} to {status.get('updatedReplicas', 0)}",
                                "deployment-controller")
                    st.announced = True
                if fault.fault == "crash-loop" and not ready and replicas > 0:
                    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
                    nxt = self._crash_event(ns, rs_name, st, now, observed_at,
                                            containers[0].get("name", "app"))
                    if nxt is not None:
                        next_times.append(nxt)
            with self._lock:
                cur = self._state.get(key)
                if cur is not None and cur.generation == st.generation and cur.started == st.started:
                    cur.announced, cur.completed = st.announced, st.completed
                    cur.crash_events, cur.crash_pod = st.crash_events, st.crash_pod
                    cur.crash_event_name = st.crash_event_name
                elif cur is not None:
                    return None  # superseded by a newer observation, which has its own timer
            return min(next_times) if next_times else None

    def _crash_event(self, ns: str, rs_name: str, st: _Rollout, now: float, since: float,
                     container: str) -> float | None:
        """kubelet's BackOff events for one pod, aggregated by count."""
        if st.crash_events >= 20:
            return None
        due = since + self.crash_backoff * (2 ** st.crash_events - 1)
        if now + 1e-3 < due:
            return due
        if not st.crash_pod:
            st.crash_pod = f"{rs_name}-{random_suffix()}"
        st.crash_events += 1
        msg = (f"Back-off restarting failed container {container} in pod "
               f"{st.crash_pod}_{ns}(fake)")
        st.crash_event_name = self._event(ns, "Pod", st.crash_pod, None, "v1", "Warning", "BackOff",
                                          msg, "kubelet", count=st.crash_events,
                                          existing=st.crash_event_name)
        return since + self.crash_backoff * (2 ** st.crash_events - 1)

    def _event(self, ns: str, kind: str, name: str, uid: str | None, api_version: str, etype: str,
               reason: str, message: str, component: str, count: int = 1, existing: str = "") -> str:
        rt = self.registry.types.resolve("events")
        ts = now_rfc3339()
        if existing:
            cur = self.store.get(rt.storage_key, ns, existing)
            if cur is not None:
                new = copy.deepcopy(cur)
                new["count"], new["lastTimestamp"] = count, ts
                self.store.commit(rt.storage_key, "MODIFIED", new, cur)
                return existing
        involved = {"kind": kind, "namespace": ns, "name": name, "apiVersion": api_version}
        if uid:
            involved["uid"] = uid
        ev_name = f"{name}.{hashlib.sha1(f'{name}{reason}{time.time_ns()}'.encode()).hexdigest()[:16]}"
        body = {
            "metadata": {"name": ev_name, "namespace": ns},
            "involvedObject": involved, "reason": reason, "message": message, "type": etype,
            "source": {"component": component, **({"host": "fake-node"} if component == "kubelet" else {})},
            "firstTimestamp": ts, "lastTimestamp": ts, "count": count,
            "reportingComponent": component,
            "reportingInstance": "fake-node" if component == "kubelet" else "",
        }
        try:
            self.registry.create(rt, ns, body)
        except Exception:
            pass
        return ev_name


def _condition(old: dict | None, type_: str, status: str, reason: str, message: str, ts: str) -> dict:
    if old and old.get("status") == status and old.get("reason") == reason and old.get("message") == message:
        return old
    return {
        "type": type_, "status": status,
        "lastUpdateTime": ts,
        "lastTransitionTime": old.get("lastTransitionTime", ts) if old and old.get("status") == status else ts,
        "reason": reason, "message": message,
    }

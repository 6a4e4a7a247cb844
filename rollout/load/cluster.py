"""Load in the cluster (`load.runner: kubernetes`): rollout's own Locust master and N workers in the namespace.

For services reachable only inside the cluster, and for load beyond one machine. The pods run rollout's
image (the Dockerfile; entrypoint `rollout`): the master `rollout load-master` (rollout.load.master), the
workers `rollout load-worker --master <name>-master:5557` — the same recorder plugin as local workers, so
every request is attributed to the version whose header answered it and the master holds exact
per-version latency histograms (0.5 % buckets, not Locust's rounded percentiles). The CLI outside the
cluster reads them once a second through the API server's service proxy
(`/api/v1/namespaces/{ns}/services/<name>-master:8089/proxy/rollout/stats`): nothing is exposed, the CLI
needs only API access. So `rollout run` and `rollout advance` judge canary against stable with the same
gates and sequential statistics as in-process; `rollout gate` judges the versions it sees.

Lifecycle (`ClusterLoad`): the objects (templates: rollout/backends/kubernetes/templates/locust-*.yaml,
package data) are created at the first stage that needs them, labelled `rollout.dev/load-run=<run>`, and
kept for the next stages of the same command while the stage's worker count (`stages[].workers`, default
`load.cluster.workers`) is the same; a different count replaces them. They are ALWAYS deleted when the
command ends (`close`: success, gate failure, Ctrl-C/SIGTERM, an error), and, for a driver that was killed,
by the next command on the rollout: the run's label is recorded in the state *before* any object is
created (`on_create`) and removed after the deletion (`on_delete`); `reap` deletes what a record names,
by label.

Freshness: a worker ships its deltas once a second, the master merges them as they arrive, the CLI polls
every 0.5 s and the gates judge once a second: bench/bench_cluster_load.py measured the gates 0.3-0.45 s
behind the target's own count (median), at most 0.86 s, on a busy 2-core machine. At a stage's end the master stops the users, waits for every worker's last delta, and
the CLI reads those final numbers.

The CLI does not probe the target itself: it may answer only inside the cluster.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from rollout.errors import InfraError, LoadError, RolloutError
from rollout.load.stats import StageStats

POLL = 0.5
LABEL = "rollout.dev/load-run"
STOP_GRACE = 30.0  # after the stage's end or a stop: the master's stop and final flush take ~1-5 s


def settings_for(plan: Any) -> Any:
    """load.cluster with the defaults, and a kubernetes target's kubeconfig/context/namespace unless it says otherwise."""
    cluster = plan.load.cluster or type(plan.load).Cluster()
    if plan.target.backend == "kubernetes":
        cluster = cluster.model_copy(update={k: getattr(cluster, k) or getattr(plan.target, k) for k in ("kubeconfig", "context", "namespace")})
    return cluster


def _connect(settings: Any, namespace: str | None = None) -> Any:
    from rollout.backends.kubernetes.client import connect

    return connect(settings.get("kubeconfig") if isinstance(settings, dict) else settings.kubeconfig,
                   settings.get("context") if isinstance(settings, dict) else settings.context,
                   namespace or (settings.get("namespace") if isinstance(settings, dict) else settings.namespace))


class ClusterLoad:
    """A LoadRunner (`(spec, on_tick) -> StageStats`) with the users in the cluster; `close()` deletes everything.

    `on_create(record)` is called before any object is created (record: run, namespace, kubeconfig, context),
    `on_delete(run)` after all of its objects were deleted: the engine keeps them in the state (`load_runs`)
    so the next command can delete what a killed driver left (`reap`)."""

    def __init__(self, settings: Any, kube: Any = None, on_create: Callable[[dict[str, Any]], None] | None = None,
                 on_delete: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.kube = kube
        self.on_create, self.on_delete = on_create, on_delete
        self.cl: Any = None  # rollout.backends.kubernetes.load_runner.LocustInCluster of the live run
        self.workers = 0
        self.stages = 0

    # -- objects -----------------------------------------------------------------------
    def _ensure(self, spec: Any, workers: int) -> Any:
        from rollout.backends.kubernetes.load_runner import LocustInCluster

        if self.cl is not None and self.workers != workers:
            self.close()
        if self.cl is not None:
            return self.cl
        try:
            text = spec.locustfile.read_text(encoding="utf-8")
        except OSError as exc:
            raise LoadError(f"locustfile {spec.locustfile} cannot be read: {exc}", "fix load.locustfile in the plan") from None
        if self.kube is None:
            self.kube = _connect(self.settings)
        run = uuid.uuid4().hex[:8]
        cl = LocustInCluster(self.kube, f"rollout-load-{run}", run, self.settings.image, workers, text)
        if self.on_create is not None:  # before any object exists: a killed driver's next command finds it here
            self.on_create({"run": run, "namespace": cl.ns, "kubeconfig": self.settings.kubeconfig, "context": self.settings.context,
                            "workers": workers, "at": time.time()})
        self.cl, self.workers = cl, workers
        cl.create()
        self._wait_master(cl)
        return cl

    def _wait_master(self, cl: Any) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout
        last = "no answer yet"
        while True:
            try:
                cl.master("GET", "rollout/stats", retry=False)
                return
            except Exception as exc:  # noqa: BLE001  (the pods are starting: the proxy answers 503 until the master listens)
                last = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            if time.monotonic() > deadline:
                raise InfraError(f"the in-cluster Locust master did not answer within {self.settings.ready_timeout:g}s ({last}; {cl.describe()})",
                                 f"check the pods: kubectl -n {cl.ns} get pods -l {LABEL}={cl.run} (image, resources, RBAC)")
            time.sleep(POLL)

    def close(self) -> list[str]:
        """Delete the live run's objects (never raises; returns the problems, also printed)."""
        cl, self.cl = self.cl, None
        if cl is None:
            return []
        problems = cl.delete()
        if problems:
            print(f"Warning: could not delete every in-cluster load object ({'; '.join(problems)}); "
                  f"delete them with: kubectl -n {cl.ns} delete deploy,svc,cm -l {LABEL}={cl.run}", file=sys.stderr)
        elif self.on_delete is not None:
            self.on_delete(cl.run)
        return problems

    # -- one stage ---------------------------------------------------------------------
    def __call__(self, spec: Any, on_tick: Callable[[StageStats], bool]) -> StageStats:
        from rollout.load.wire import spec_to_json, stats_from_json

        workers = int(getattr(spec, "workers", None) or self.settings.workers)
        t0 = time.monotonic()
        try:
            cl = self._ensure(spec, workers)
            self.stages += 1
            stage = f"{cl.run}-{self.stages}"
            ready = max(5.0, self.settings.ready_timeout - (time.monotonic() - t0))
            answer = cl.master("POST", "rollout/start", json_body={"stage": stage, "spec": spec_to_json(spec), "workers": workers,
                                                                   "ready_timeout": ready})
            if answer.get("phase") not in ("waiting", "running"):
                raise InfraError(f"the in-cluster Locust master did not start the stage: {answer}", "see the master pod's log")
            stats = StageStats()
            interrupt: Callable[[], bool] | None = getattr(on_tick, "interrupt", None)
            stopping: float | None = None
            started: float | None = None
            last_tick = 0.0
            while True:
                doc = cl.master("GET", f"rollout/stats?since={len(stats.timeline)}")
                if doc.get("stage") != stage:
                    raise InfraError(f"the in-cluster Locust master lost the stage (it reports {doc.get('stage')!r}: restarted?)",
                                     f"see the master pod's log: kubectl -n {cl.ns} logs deploy/{cl.name}-master")
                phase = doc.get("phase")
                if doc.get("stats") is not None:
                    stats_from_json(doc["stats"], stats)
                if phase == "failed":
                    err = doc.get("error") or {}
                    cls = LoadError if int(err.get("code") or 3) == 3 else InfraError
                    raise cls(f"in-cluster load: {err.get('what', 'the master failed')}", err.get("fix") or "see the master pod's log")
                if phase == "done":
                    return stats
                now = time.monotonic()
                if phase == "running":
                    started = started or now
                    if stopping is None and now - last_tick >= 1.0:
                        last_tick = now
                        if on_tick(stats):
                            stopping = now
                            cl.master("POST", "rollout/stop")
                elif now - t0 > self.settings.ready_timeout + 10:  # the master enforces ready_timeout itself; a bound here too
                    raise InfraError(f"the in-cluster workers did not join within {self.settings.ready_timeout:g}s ({doc.get('workers', 0)}/{workers})",
                                     f"check the pods: kubectl -n {cl.ns} get pods -l {LABEL}={cl.run}")
                if started is not None and now - started > spec.duration + STOP_GRACE and (stopping is None or now - stopping > STOP_GRACE):
                    raise InfraError(f"the in-cluster Locust master did not end the stage within {spec.duration + STOP_GRACE:g}s",
                                     "see the master pod's log")
                # between polls: an operator's request (the engine's mailbox) is looked at every 0.1 s
                until = time.monotonic() + (0.25 if stopping is not None else POLL)
                while time.monotonic() < until:
                    if stopping is None and interrupt is not None and interrupt():
                        stopping = time.monotonic()
                        cl.master("POST", "rollout/stop")
                    time.sleep(0.1)
        except BaseException:  # a failed gate is a normal return; this is an error or Ctrl-C/SIGTERM: nothing stays
            self._stop_quietly()
            self.close()
            raise

    def _stop_quietly(self) -> None:
        if self.cl is None:
            return
        try:
            self.cl.master("POST", "rollout/stop", retry=False)
        except Exception:  # noqa: BLE001  (the objects are deleted next anyway)
            pass


def reap(records: list[dict[str, Any]], settings: Any = None, kube: Any = None) -> list[str]:
    """Delete every object of the recorded load runs, by label (what a killed driver left behind). Returns the
    runs whose objects are all gone (the caller removes their records); a failure is printed, not raised."""
    from rollout.backends.kubernetes.load_runner import delete_by_label

    gone = []
    for rec in records:
        run = str(rec.get("run"))
        try:
            k = kube if kube is not None else _connect(rec if settings is None else settings, rec.get("namespace"))
            n = delete_by_label(k, rec.get("namespace") or k.namespace, f"{LABEL}={run}")
            gone.append(run)
            if n:
                print(f"• deleted {n} in-cluster load object(s) a killed command left ({LABEL}={run})", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001  (never holds up the command that cleans up: the record stays for the next)
            what = exc.what if isinstance(exc, RolloutError) else f"{type(exc).__name__}: {exc}"
            print(f"Warning: could not delete the in-cluster load objects {LABEL}={run}: {what}; "
                  f"delete them with: kubectl -n {rec.get('namespace')} delete deploy,svc,cm -l {LABEL}={run}", file=sys.stderr)
    return gone


def cluster_runner(settings: Any) -> Callable[[Any, Callable[[StageStats], bool]], StageStats]:
    """A LoadRunner for one call (`rollout gate`): the objects are deleted when it returns."""

    def run(spec: Any, on_tick: Callable[[StageStats], bool]) -> StageStats:
        cl = ClusterLoad(settings)
        try:
            return cl(spec, on_tick)
        finally:
            cl.close()

    return run

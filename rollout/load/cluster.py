"""Load in the cluster (`load.runner: kubernetes`): a Locust master and N workers in the namespace.

For services reachable only inside the cluster, and for load beyond one
machine. Per run, `rollout.backends.kubernetes.load_runner` creates a
ConfigMap with the locustfile, a master Deployment + Service and a worker
Deployment (templates: rollout/backends/kubernetes/templates/locust-*.yaml, package data), waits until the master
counts every worker connected, starts the swarm (POST /swarm), reads the
master's statistics every second (GET /stats/requests) and judges the same
gates as the local runners; at the end (time, request bound, a failing gate)
it stops the swarm and deletes every object it created — in a `finally`, so
also when a call fails, a gate fails, or the run is interrupted (Ctrl-C,
SIGTERM: the CLI turns both into KeyboardInterrupt). All traffic to the
master goes through the API server's service proxy
(`/api/v1/namespaces/{ns}/services/{name}:8089/proxy/...`): nothing is
exposed, and the CLI needs only API access. The CLI does not probe the
target itself: it may answer only inside the cluster.

What the gates see, and what they cannot:
  * all traffic only: Locust's master does not know which version answered a
    request (there is no per-request hook on the master, and its statistics
    are per request name, not per response header), so every gate judges all
    traffic, as `rollout gate` does; gates on `stable` or comparing versions
    are skipped there. Per-version judging needs the local runners.
  * Locust's numbers: counts are exact; latency is Locust's aggregated
    median, p95, p99, min and max (Locust rounds response times to about two
    significant digits). They are laid into a histogram with those order
    statistics (`histogram_from_percentiles`), so p50/p95/p99 gates read
    Locust's values and a p90 gate reads the p95 (conservative: never lower).
  * freshness: the master's /stats/requests is cached for 2 s, so gates see
    numbers up to ~2-3 s old; after the stop the final numbers are read once
    more, after the cache has expired.
"""

from __future__ import annotations

import math
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from rollout.errors import InfraError, LoadError
from rollout.load.stats import StageStats, VersionStats
from rollout.stats.histogram import Histogram

ROLE = "in-cluster"  # the series name: all traffic the in-cluster load made
POLL = 0.5
STATS_CACHE = 2.1  # Locust's web UI memoizes /stats/requests for 2 s


def histogram_from_percentiles(n: int, mean: float | None, points: list[tuple[float, float | None]]) -> Histogram:
    """n values laid out so that the histogram's nearest-rank quantiles return the given ones.

    `points` are (q, value) with q ascending in [0, 1] (0: min, 1: max); the ranks between
    two points read the upper one (conservative). Missing values are skipped.
    """
    h = Histogram()
    if n <= 0:
        return h
    prev_rank = 0
    for q, v in points:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        rank = 1 if q <= 0 else max(1, math.ceil(q * n - 1e-9))
        k = rank - prev_rank
        if k > 0:
            h.record(float(v), k)
            prev_rank = rank
    if prev_rank < n and h.count:
        h.record(h.max, n - prev_rank)
    if mean is not None and h.count:
        h.total = float(mean) * h.count
    return h


def aggregate(doc: dict[str, Any]) -> dict[str, Any]:
    """The master's total row ("Aggregated") of /stats/requests."""
    rows = doc.get("stats") or []
    total = next((r for r in rows if r.get("name") == "Aggregated"), rows[-1] if rows else None)
    return total or {"num_requests": 0, "num_failures": 0}


def apply(stats: StageStats, doc: dict[str, Any], elapsed: float, prev: list[int]) -> None:
    """Set the stage's statistics from one /stats/requests document; add a timeline entry for the change."""
    row = aggregate(doc)
    n, f = int(row.get("num_requests") or 0), int(row.get("num_failures") or 0)
    hist = histogram_from_percentiles(n, row.get("avg_response_time"), [
        (0.0, row.get("min_response_time")), (0.5, row.get("median_response_time")),
        (0.95, row.get("response_time_percentile_0.95")), (0.99, row.get("response_time_percentile_0.99")),
        (1.0, row.get("max_response_time")),
    ])
    stats.by_role = {ROLE: VersionStats(n, f, hist)}
    stats.elapsed = elapsed
    stats.users = int(doc.get("user_count") or 0)
    entry: dict[str, Any] = {"t": round(elapsed, 2)}
    dn, df = n - prev[0], f - prev[1]
    if dn > 0:
        cur = doc.get("current_response_time_percentiles") or {}
        entry[ROLE] = {"requests": dn, "failures": max(df, 0), "p50_ms": cur.get("response_time_percentile_0.5"),
                       "p95_ms": cur.get("response_time_percentile_0.95"), "p99_ms": None}
        prev[0], prev[1] = n, f
    stats.timeline.append(entry)


def _wait_ready(cl: Any, workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        try:
            doc = cl.master("GET", "stats/requests", retry=False)
            ready = int(doc.get("worker_count") or 0)
            if ready >= workers:
                return
            last = f"{ready}/{workers} workers connected"
        except Exception as exc:  # noqa: BLE001  (the pods are starting: the proxy answers 503 until the master listens)
            last = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        if time.monotonic() > deadline:
            raise InfraError(f"the in-cluster Locust did not come up within {timeout:g}s ({last}; {cl.describe()})",
                             f"check the pods: kubectl -n {cl.ns} get pods -l rollout.dev/load-run (image, resources, RBAC)")
        time.sleep(POLL)


def run_load_in_cluster(spec: Any, on_tick: Callable[[StageStats], bool], settings: Any, kube: Any = None) -> StageStats:
    """`run_load`'s contract (a tick a second, bounded by time and requests, on_tick may stop it) with the
    users in the cluster; every object is deleted afterwards, whatever happened."""
    from rollout.backends.kubernetes.client import connect
    from rollout.backends.kubernetes.load_runner import LocustInCluster

    try:
        text = spec.locustfile.read_text(encoding="utf-8")
    except OSError as exc:
        raise LoadError(f"locustfile {spec.locustfile} cannot be read: {exc}", "fix load.locustfile in the plan") from None
    if kube is None:
        kube = connect(settings.kubeconfig, settings.context, settings.namespace)
    run = uuid.uuid4().hex[:8]
    cl = LocustInCluster(kube, f"rollout-load-{run}", run, settings.image, settings.workers, text)
    stats = StageStats(by_role={ROLE: VersionStats()})
    prev = [0, 0]
    try:
        cl.create()
        _wait_ready(cl, settings.workers, settings.ready_timeout)
        answer = cl.master("POST", "swarm", {"user_count": spec.users, "spawn_rate": spec.spawn_rate, "host": spec.host})
        if answer.get("success") is False:
            raise LoadError(f"the in-cluster Locust master refused to start: {answer.get('message')}", "check the locustfile and load.users")
        start = time.monotonic()
        next_tick = start + 1.0
        while True:
            time.sleep(max(0.0, next_tick - time.monotonic()))
            next_tick += 1.0
            elapsed = time.monotonic() - start
            apply(stats, cl.master("GET", "stats/requests"), elapsed, prev)
            if elapsed >= spec.duration or (spec.max_requests is not None and stats.requests >= spec.max_requests):
                break
            if on_tick(stats):
                break
        cl.master("POST", "stop")
        time.sleep(STATS_CACHE)  # the workers' last reports, and past the master's stats cache
        apply(stats, cl.master("GET", "stats/requests"), elapsed, prev)
        stats.elapsed = elapsed
        stats.users = 0
    finally:
        problems = cl.delete()
        if problems:
            print(f"Warning: could not delete every in-cluster load object ({'; '.join(problems)}); "
                  f"delete them with: kubectl -n {cl.ns} delete deploy,svc,cm -l rollout.dev/load-run={run}", file=sys.stderr)
    return stats


def cluster_runner(settings: Any) -> Callable[[Any, Callable[[StageStats], bool]], StageStats]:
    """A LoadRunner (as `rollout.load.distributed.load_runner`) for `load.runner: kubernetes`."""
    return lambda spec, on_tick: run_load_in_cluster(spec, on_tick, settings)

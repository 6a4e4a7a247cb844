"""The JSON between the CLI and `rollout load-master` (rollout.load.master, rollout.load.cluster): a stage's
LoadSpec one way, its cumulative per-version statistics the other. No locust import here: the CLI side
reads statistics without it (histograms as `Histogram.to_dict`, exact to their 0.5 % buckets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollout.load.stats import StageStats

# LoadSpec fields the CLI sends (the locustfile is the pod's own; metrics sources stay with the CLI)
SPEC_FIELDS = ("host", "users", "spawn_rate", "duration", "version_header", "roles", "cohort", "cohort_share", "max_requests",
               "only_role", "shape", "tags", "exclude_tags", "options", "endpoint_stats", "no_request_timeout")


def spec_to_json(spec: Any) -> dict[str, Any]:
    """What of a stage's LoadSpec the master needs (JSON)."""
    out = {k: getattr(spec, k) for k in SPEC_FIELDS}
    for k in ("cohort", "tags", "exclude_tags"):
        out[k] = list(out[k]) if out[k] is not None else None
    out["options"] = [list(kv) for kv in spec.options]
    return out


def spec_from_json(data: dict[str, Any], locustfile: Path) -> Any:
    from rollout.load.runner import LoadSpec

    kw = {k: data[k] for k in SPEC_FIELDS if k in data}
    for k in ("cohort", "tags", "exclude_tags"):
        if kw.get(k) is not None:
            kw[k] = tuple(kw[k])
    kw["options"] = tuple(tuple(kv) for kv in kw.get("options") or ())
    kw["roles"] = dict(kw.get("roles") or {})
    return LoadSpec(locustfile=locustfile, **kw)


def stats_to_json(stats: StageStats, since: int = 0) -> dict[str, Any]:
    """The stage's cumulative statistics: per role the counts and the latency histogram (exact to its 0.5 %)."""
    out: dict[str, Any] = {
        "roles": {r: {"requests": vs.requests, "failures": vs.failures, "latency": vs.latency.to_dict()}
                  for r, vs in list(stats.by_role.items()) if vs.requests},
        "routing": dict(stats.cohort_routing), "elapsed": stats.elapsed, "users": stats.users, "cpu_max": stats.cpu_max,
        "last_failure": dict(stats.last_failure), "timeline_from": since, "timeline": stats.timeline[since:],
        "users_timeline": stats.users_timeline[since:],
    }
    if stats.endpoints is not None:
        out["endpoints"] = stats.endpoints.to_dict()
    return out


def stats_from_json(doc: dict[str, Any], into: StageStats | None = None) -> StageStats:
    """A StageStats from `stats_to_json` (into `into`, whose timeline is kept up to `timeline_from`)."""
    from rollout.load.stats import VersionStats
    from rollout.stats.histogram import Histogram

    st = into if into is not None else StageStats()
    st.by_role = {"stable": VersionStats(), "canary": VersionStats(), "unknown": VersionStats()}
    for role, d in (doc.get("roles") or {}).items():
        st.by_role[role] = VersionStats(int(d["requests"]), int(d["failures"]), Histogram.from_dict(d["latency"]))
    st.cohort_routing = {k: int(v) for k, v in (doc.get("routing") or {}).items()}
    st.elapsed = float(doc.get("elapsed") or 0.0)
    st.users = int(doc.get("users") or 0)
    st.cpu_max = float(doc.get("cpu_max") or 0.0)
    st.last_failure = dict(doc.get("last_failure") or {})
    k = int(doc.get("timeline_from") or 0)
    st.timeline[k:] = list(doc.get("timeline") or [])
    st.users_timeline[k:] = [list(x) for x in doc.get("users_timeline") or []]
    if doc.get("endpoints") is not None:
        from rollout.load.endpoints import EndpointStats

        st.endpoints = EndpointStats.from_dict(doc["endpoints"])
    return st

"""The plan's `watch:` section: what to judge on the live version after promotion, and what to do on a breach.

Every watch gate is a *rate against a limit* read from two Prometheus counters of the watched version:
the requests that count as bad and all requests. The watch differences the counters between checks, so
consecutive batches never overlap (what the change detector's false-alarm bound needs), and a gate of any
kind is the same statistic:

- errors:      bad  = sum(http_requests_total{version="{version}",status=~"5.."})
               total = sum(http_requests_total{version="{version}"})
- p95 ≤ 250ms: bad  = total − sum(http_request_duration_seconds_bucket{version="{version}",le="0.25"})
               (requests slower than 250 ms; 250 ms must be a bucket boundary), max: 5%
- confidence:  bad  = sum(answer_confidence_bucket{version="{version}",le="0.6"}) (answers below 0.6), max: 5%
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from rollout.plan.units import parse_duration, parse_percent

# the plan's own conventions (rollout.plan.model imports this module, so they are restated, not imported)
Duration = Annotated[float, BeforeValidator(parse_duration),
                     WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^\d+(\.\d+)?\s*(ms|s|m|h)$"}, {"type": "number", "exclusiveMinimum": 0}],
                                     "description": "a duration: 15s, 5m, 720h"})]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PromCounters(Strict):
    """Two PromQL expressions giving cumulative counts for the watched version ({version}, {role} replaced)."""

    url: str = Field(description="the Prometheus base URL, e.g. http://prometheus:9090")
    bad: str = Field(min_length=1, description="PromQL: the cumulative count of bad requests (errors, slower than the limit, low confidence)")
    total: str = Field(min_length=1, description="PromQL: the cumulative count of all requests")
    timeout: Duration = Field(3.0, gt=0, le=60, description="per query")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not (v.startswith("http://") or v.startswith("https://")) or any(c.isspace() for c in v):
            raise ValueError("an http:// or https:// URL")
        return v.rstrip("/")


class WatchGate(Strict):
    """The share of bad requests of the live version must stay at most `max`."""

    prometheus: PromCounters
    max: float = Field(description="the limit on the share of bad requests, e.g. 1%")
    what: str | None = Field(None, max_length=80, description="how alerts name the rate (default: the gate's name)")

    @field_validator("max", mode="before")
    @classmethod
    def _rate(cls, v: object) -> float:
        rate = parse_percent(v)
        if not 0.0 < rate < 1.0:
            raise ValueError("a share strictly between 0% and 100%")
        return rate


class Watch(Strict):
    """Continuous judgement of the live (stable) version: `rollout watch PLAN`."""

    every: Duration = Field(15.0, ge=1, le=3600, description="how often the counters are read and judged (a batch); "
                            "at least the Prometheus scrape interval")
    false_alarm_every: Duration = Field(30 * 86400.0, ge=3600, description="at most one false alarm this often on average "
                                        "for a version exactly at its limits (the CUSUM threshold follows from it)")
    on_breach: Literal["revert", "alert"] = Field("revert", description="revert: back to the previous revision at once, and "
                                                   "keep watching it; alert: alert only, resolved when the rate is back to normal")
    blind_after: Duration = Field(60.0, ge=1, description="no data for this long → alert that the watch is blind (never a revert)")
    resend: Duration = Field(300.0, ge=1, description="re-send a firing alert this often (Alertmanager ends alerts not re-sent)")
    gates: dict[str, WatchGate] = Field(min_length=1, description="the rates judged, by name")


class Bake(Strict):
    """After the last stage: all traffic on the new version, the previous one kept running for an instant
    revert, judged by the `watch:` gates for `duration`. A breach rolls back at once; only a clean bake
    (no breach, and some evidence) ends in `promoted`, after which the previous version is released."""

    duration: Duration = Field(gt=0, le=7 * 86400, description="how long the new version serves everyone before it is promoted")

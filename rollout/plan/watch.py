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

Besides Prometheus, a gate may count what the watch's own synthetic probe sees (`watch.probe`: a few Locust
users through the entry point, rollout.watch.synthetic):

- `probe: errors`                         the share of the probe's requests that failed;
- `metric: confidence, below: 0.7`        the share of the probe's answers whose value (a `json`/`header`
  (or `json: confidence, below: 0.7`)     metric of load.metrics, or a JSON field given here) is below 0.7 —
                                          a content gate; it keeps the worst answers as evidence.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from rollout.plan import names

from rollout.plan.units import parse_duration, parse_percent

# the plan's own conventions (rollout.plan.model imports this module, so they are restated, not imported)
Duration = Annotated[float, BeforeValidator(parse_duration),
                     WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^\d+(\.\d+)?\s*(ms|s|m|h)$"}, {"type": "number", "exclusiveMinimum": 0}],
                                     "description": "a duration: 15s, 5m, 720h"})]




def _rule(check: Any) -> Any:
    def validate(value: Any) -> Any:
        problem = check(value)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(validate)


HeaderName = Annotated[str, _rule(names.check_header_name)]
Url = Annotated[str, _rule(names.check_url)]

EVIDENCE_BUDGET = 64 * 1024  # bytes of kept bodies per content gate and side (request, answer)
# headers whose values never reach evidence, alerts or the record (plus `probe.redact_headers`)
REDACTED_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Probe(Strict):
    """A synthetic probe: a few Locust users through the entry point, at a low rate, whose answers feed
    `probe: errors` and content gates (rollout.watch.synthetic). Runs in the watch's (or the bake's) process."""

    locustfile: str | None = Field(None, description="path, relative to the plan file (default: load.locustfile)")
    users: int = Field(2, ge=1, le=5, description="concurrent probe users (1-5: a probe, not a load test)")
    host: Url | None = Field(None, description="where the probe enters (default: the entry point users reach)")
    rate: float = Field(5.0, gt=0, le=50, description="at most this many requests per second, all users together "
                        "(the locustfile's wait_time is stretched to it)")
    max_requests: int = Field(1_000_000, ge=1, le=names.INT32_MAX, description="hard bound on the probe's requests in one "
                              "watch or bake; past it the probe stops and its gates go blind")
    evidence: int = Field(20, ge=0, le=200, description="per content gate: how many of the worst answers are kept for the reviewer")
    evidence_bytes: int = Field(2048, ge=64, le=65536, description="at most this many bytes of each kept request/answer body")
    redact_headers: list[HeaderName] = Field(default_factory=list, description="headers shown as *** in the evidence, besides "
                                             + ", ".join(REDACTED_HEADERS))

    @model_validator(mode="after")
    def _evidence_fits(self) -> Probe:
        # the evidence is saved with the watch record every check (a ConfigMap on Kubernetes: 1 MiB in all)
        if self.evidence * self.evidence_bytes > EVIDENCE_BUDGET:
            raise ValueError(f"evidence × evidence_bytes at most {EVIDENCE_BUDGET // 1024} KiB per content gate "
                             f"(got {self.evidence} × {self.evidence_bytes}); the record keeps it beside the statistics")
        return self


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
    """The share of bad requests of the live version must stay at most `max`: counted by Prometheus
    (`prometheus`), or by the watch's probe (`probe: errors`, or a content gate: `metric`/`json` with `below`)."""

    prometheus: PromCounters | None = None
    probe: Literal["errors"] | None = Field(None, description="errors: the share of the probe's requests that failed")
    metric: str | None = Field(None, min_length=1, description="content gate: a metric of load.metrics with a `json` or `header` "
                               "source, read from the probe's answers")
    json_field: str | None = Field(None, alias="json", min_length=1, description="content gate: a dot path into each probe "
                                   "answer's JSON body, e.g. confidence (instead of `metric`)")
    below: float | None = Field(None, description="content gate: an answer counts as bad when its value is below this, e.g. 0.7")
    max: float = Field(description="the limit on the share of bad requests, e.g. 1%")
    what: str | None = Field(None, max_length=80, description="how alerts name the rate (default: the gate's name; "
                             "content gates: `answers with FIELD < BELOW`)")

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True)

    @field_validator("max", mode="before")
    @classmethod
    def _rate(cls, v: object) -> float:
        rate = parse_percent(v)
        if not 0.0 < rate < 1.0:
            raise ValueError("a share strictly between 0% and 100%")
        return rate

    @model_validator(mode="after")
    def _one_source(self) -> WatchGate:
        content = self.metric is not None or self.json_field is not None
        given = [k for k, v in (("prometheus", self.prometheus), ("probe", self.probe), ("metric/json", content)) if v]
        if len(given) != 1:
            raise ValueError("exactly one source: `prometheus: {url, bad, total}`, `probe: errors`, or a content gate "
                             "(`metric: NAME` or `json: FIELD`, with `below: VALUE`)")
        if self.metric is not None and self.json_field is not None:
            raise ValueError("either `metric` (declared under load.metrics) or `json` (a field of the answers), not both")
        if content != (self.below is not None):
            raise ValueError("`below: VALUE` exactly with a content gate (`metric` or `json`)")
        return self

    @property
    def content(self) -> bool:
        """Judged from the values in the probe's answers (keeps evidence)."""
        return self.below is not None

    @property
    def source(self) -> str:
        return "prometheus" if self.prometheus is not None else "probe"


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
    probe: Probe | None = Field(None, description="a synthetic probe through the entry point, for `probe:` and content gates")
    # gates counting the probe need `probe:`: rollout.plan.loader.cross_checks (located at the gate)


class Bake(Strict):
    """After the last stage: all traffic on the new version, the previous one kept running for an instant
    revert, judged by the `watch:` gates for `duration`. A breach rolls back at once; only a clean bake
    (no breach, and some evidence) ends in `promoted`, after which the previous version is released."""

    duration: Duration = Field(gt=0, le=7 * 86400, description="how long the new version serves everyone before it is promoted")

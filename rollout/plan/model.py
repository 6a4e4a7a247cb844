"""The rollout plan as typed models.

One declaration serves three purposes: parsing (units become floats in one
canonical unit), validation (pydantic collects every error with its path; the
loader adds file and line), and the JSON Schema that `rollout schema` prints
for editors. Models are frozen: the engine treats the plan as data it reads,
never writes.

Canonical units after parsing: durations in seconds, latencies in
milliseconds, rates and weights as fractions 0..1.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from rollout.notify import Webhook
from rollout.plan import names
from rollout.plan.limits import MAX_USERS, MAX_WORKERS
from rollout.plan.watch import Bake, Watch
from rollout.plan.units import (
    parse_duration,
    parse_latency,
    parse_percent,
    parse_points,
    parse_rate_or_fraction,
    parse_relative,
    parse_weight,
)


def _rule(check: Any, *args: Any) -> Any:
    """An AfterValidator from a `names.check_*` function: its text is the "expected" of the error."""

    def validate(value: Any) -> Any:
        problem = check(value, *args)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(validate)


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("a duration > 0, such as 30s (zero would give up before anything could happen)")
    return value


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(\.\d+)?\s*(ms|s|m|h)$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "a duration: 90s, 5m, 1h, 500ms (a bare number is seconds)",
        }
    ),
]
# a timeout or a stage length: zero makes no sense (it would fail or end before anything happens)
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
VersionName = Annotated[str, _rule(names.check_version_name)]
HeaderName = Annotated[str, _rule(names.check_header_name)]
HeaderValue = Annotated[str, _rule(names.check_header_value)]
EnvName = Annotated[str, _rule(names.check_env_name)]
ImageRef = Annotated[str, _rule(names.check_image)]
Url = Annotated[str, _rule(names.check_url)]
ContainerName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
                                     description="a container name: lowercase letters, digits and '-', at most 63")]
Int32 = names.INT32_MAX

Weight = Annotated[
    float,
    BeforeValidator(parse_weight),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(\.\d+)?\s*%$"},
                {"type": "number", "minimum": 0, "maximum": 100},
            ],
            "description": "share of traffic to the canary: 10% or 10 (percent)",
        }
    ),
]
Percent = Annotated[
    float,
    BeforeValidator(parse_percent),
    WithJsonSchema(
        {"type": "string", "pattern": r"^\d+(\.\d+)?\s*%$", "description": "a percentage: 1%, 0.5%"}
    ),
]
Alpha = Annotated[
    float,
    BeforeValidator(parse_rate_or_fraction),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "pattern": r"^\d+(\.\d+)?\s*%$"}, {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.5}],
            "description": "a false-verdict rate: 1% or 0.01",
        }
    ),
]
Margin = Annotated[
    float,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\+?\s*\d+(\.\d+)?\s*(%|pt|pts|pp|points?)$",
            "description": "latency: a relative increase (20% = ×1.2); error_rate: percentage points (+1pt; a bare 1% means the same)",
        }
    ),
]
Threshold = Annotated[
    Union[str, int, float],
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "number"}],
            "description": "a latency (300ms, 1.5s) for latency metrics, a percentage (1%) for error_rate",
        }
    ),
]

NAME_RE = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
LATENCY_METRICS = ("p50", "p90", "p95", "p99")
METRICS = ("error_rate", *LATENCY_METRICS)


class Strict(BaseModel):
    """Unknown fields are errors (with a did-you-mean, added by the validator).

    NaN and infinity are refused in every number: `.nan` as a limit makes a gate
    pass whatever it measures, `.inf` as a duration makes a stage endless.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Owner(Strict):
    """Every rollout has a named owner: who answers for it, and how to reach them."""

    name: str = Field(min_length=1, description="a person or team")
    contact: str = Field(min_length=1, description="e-mail, chat channel or pager handle")


class LocalVersion(Strict):
    """How to start one version of the service as a local process."""

    command: str = Field(
        min_length=1,
        description="shell-free command line (split as a POSIX shell would; no shell runs it), run in the plan's directory; "
        "{port} is replaced by the port to listen on (also given as $PORT), {version} by the version's name, "
        "{python} by the Python running rollout",
    )
    health: str = Field("/healthz", pattern=r"^/[^\s\x00-\x1f\x7f]*$",
                        description="path answered with 2xx once the version is up (starts with /, no spaces)")
    env: dict[EnvName, str] = Field(default_factory=dict)
    startup_timeout: PositiveDuration = Field(30.0, description="how long to wait for the health check")

    @field_validator("command")
    @classmethod
    def _splits(cls, v: str) -> str:
        problem = names.check_command(v, {"port": "8000", "version": "v", "python": "python"})
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("env")
    @classmethod
    def _env_values(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if "\0" in value:
                raise ValueError(f"env {key}: a value without NUL characters")
        return v


class LocalTarget(Strict):
    """The embedded local backend: versions as processes behind a weighted router on 127.0.0.1."""

    backend: Literal["local"]
    versions: dict[VersionName, LocalVersion] = Field(min_length=1)
    stable: str = Field(description="the version serving users before the first rollout (known good)")
    canary: str | None = Field(None, description="the version to roll out (or `--version` on the command line)")
    port: int = Field(0, ge=0, le=65535, description="router port on 127.0.0.1 (0: a free port, kept across commands)")


class KubernetesVersion(Strict):
    """One version as container images: `image` for a one-container pod, or `images` by container name."""

    image: ImageRef | None = Field(None, min_length=1, description="the image of the pod's only container")
    images: dict[ContainerName, ImageRef] = Field(default_factory=dict, description="container name -> image (pods with several containers)")

    @model_validator(mode="after")
    def _one_way(self) -> KubernetesVersion:
        if (self.image is None) == (not self.images):
            raise ValueError("either `image` (one container) or `images` (container name -> image)")
        return self


class KubernetesPair(Strict):
    """The stable and the canary object of one kind (Deployments or Services), by name."""

    stable: str = Field(pattern=NAME_RE)
    canary: str = Field(pattern=NAME_RE)


class KubernetesTarget(Strict):
    """A cluster: two Deployments (stable, canary) and a traffic router in one namespace."""

    backend: Literal["kubernetes"]
    versions: dict[VersionName, KubernetesVersion] = Field(min_length=1)
    stable: str = Field(description="the version serving users before the first rollout (known good)")
    canary: str | None = Field(None, description="the version to roll out (or `--version` on the command line)")
    kubeconfig: str | None = Field(None, description="kubeconfig path (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    context: str | None = Field(None, description="kubeconfig context (default: the current one)")
    namespace: str | None = Field(None, pattern=NAME_RE, description="default: the context's namespace, else `default`")
    deployments: KubernetesPair = Field(description="the stable and canary Deployments (created beforehand, see manifests/)")
    router: Literal["replicas", "gateway-api", "nginx"] = Field(
        description="replicas: one Service over both Deployments, split by pod counts; "
        "gateway-api: weights on an HTTPRoute; nginx: a canary Ingress's annotations"
    )
    services: KubernetesPair | None = Field(None, description="stable and canary Services (gateway-api backendRefs)")
    httproute: str | None = Field(None, pattern=NAME_RE, description="the HTTPRoute to drive (gateway-api)")
    ingress: str | None = Field(None, pattern=NAME_RE, description="the canary Ingress to annotate (nginx)")
    port: int = Field(80, ge=1, le=65535, description="the Services' port (HTTPRoute backendRefs)")
    replicas: int | None = Field(None, ge=1, le=Int32, description="replicas router: total pods (default: the stable Deployment's)")
    canary_replicas: int = Field(1, ge=1, le=Int32, description="gateway-api / nginx: pods of the canary Deployment")
    progress_deadline: PositiveDuration = Field(300.0, description="how long a Deployment may take to become ready")
    entry_url: Url | None = Field(None, description="where users' traffic enters (default: load.host)")
    canary_url: Url | None = Field(None, description="the canary alone, for `load_to: canary` stages")
    # time bounds against a slow or failing cluster (rollout.backends.kubernetes.client)
    step_timeout: Duration | None = Field(None, gt=0, le=86400, description="the deadline of each step (deploy, shift, promote, "
                                          "roll back), its waits included; past it the command stops, exit 3 "
                                          "(default: 2 × progress_deadline + 60s; --step-timeout)")
    request_timeout: Duration = Field(30.0, gt=0, le=3600, description="client-side timeout of each API request (--request-timeout)")
    retry_budget: Duration = Field(30.0, ge=0, le=3600, description="how long one API call may retry 429/5xx/timeouts, "
                                   "Retry-After honoured within it")
    lease_duration: Duration = Field(15.0, ge=1, le=3600, description="the lock's Lease: a command whose renewals fail for "
                                     "80% of it stops before its next change; a dead command's lock expires after it")

    @model_validator(mode="after")
    def _router_fields(self) -> KubernetesTarget:
        if self.router == "gateway-api" and (self.httproute is None or self.services is None):
            raise ValueError("`httproute` and `services` with router gateway-api")
        if self.router == "nginx" and self.ingress is None:
            raise ValueError("`ingress` (the canary Ingress, pointing at the canary Service) with router nginx")
        return self


Target = Annotated[Union[LocalTarget, KubernetesTarget], Field(discriminator="backend")]


class Prometheus(Strict):
    """A PromQL query per version, read from Prometheus while the stage runs."""

    url: Url = Field(description="the Prometheus base URL, e.g. http://prometheus:9090")
    query: str = Field(
        description="PromQL with placeholders {version} (the version's name) and {role} (stable|canary), "
        "e.g. sum(rate(http_errors_total{version=\"{version}\"}[1m]))"
    )
    every: PositiveDuration = Field(5.0, description="how often to query")
    timeout: PositiveDuration = Field(3.0, description="per query")


class MetricSource(Strict):
    """Where a metric's values come from: one of json, header, custom, prometheus."""

    json_field: str | None = Field(None, alias="json", description="dot path into each response's JSON body, e.g. confidence or usage.tokens")
    header: HeaderName | None = Field(None, description="a numeric response header")
    custom: bool = Field(False, description="fired from the locustfile with rollout.metrics.record(name, value, response)")
    prometheus: Prometheus | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one(self) -> MetricSource:
        given = [k for k, v in (("json", self.json_field), ("header", self.header), ("custom", self.custom or None), ("prometheus", self.prometheus)) if v]
        if len(given) != 1:
            raise ValueError("exactly one source: `json: FIELD`, `header: NAME`, `custom: true` or `prometheus: {url, query}`")
        return self


class Load(Strict):
    """The Locust load profile; think time lives in the locustfile."""

    locustfile: str = Field(description="path, relative to the plan file")
    host: Url | None = Field(None, description="entry point URL; the local backend supplies its router's")
    users: int = Field(ge=1, le=MAX_USERS, description="concurrent Locust users")
    spawn_rate: float | None = Field(None, gt=0, le=MAX_USERS, description="users started per second (default: all at once)")
    version_header: HeaderName = Field("X-Version", description="response header naming the version that served it")
    cohort_share: Percent = Field(0.2, description="share of users sending the cohort header in cohort stages")
    max_requests: int | None = Field(
        None, ge=1, le=Int32, description="hard bound on requests per stage; the stage's load stops there"
    )
    workers: int = Field(
        0, ge=0, le=MAX_WORKERS, description="Locust worker processes (master/worker mode on this machine); 0 runs the load in the CLI's process"
    )
    metrics: dict[str, MetricSource] = Field(
        default_factory=dict, description="values measured per version besides errors and latency, usable in gates"
    )
    shape: str | None = Field(
        None, min_length=1, description="a LoadTestShape class of the locustfile that drives users and spawn rate (and user "
        "classes) in every stage without its own `shape`; users/spawn_rate are then ignored; a stage ends at its duration or the shape's end"
    )
    tags: list[str] | None = Field(None, description="run only tasks with one of these @tag names (locust --tags)")
    exclude_tags: list[str] | None = Field(None, description="do not run tasks with these @tag names (locust --exclude-tags)")
    options: dict[str, Union[str, int, float, bool, list[str]]] = Field(
        default_factory=dict, description="the locustfile's own command-line options (init_command_line_parser) or Locust's, "
        "by name without dashes, e.g. {my-option: value, some-flag: true}: given to environment.parsed_options"
    )

    class Cluster(Strict):
        """`runner: kubernetes`: where and how the in-cluster Locust master and workers run (rollout.load.cluster)."""

        namespace: str | None = Field(None, pattern=NAME_RE, description="default: a kubernetes target's, else the context's, else `default`")
        kubeconfig: str | None = Field(None, description="default: a kubernetes target's, else $KUBECONFIG, ~/.kube/config, in-cluster")
        context: str | None = Field(None, description="kubeconfig context (default: a kubernetes target's, else the current one)")
        workers: int = Field(1, ge=1, le=500, description="Locust worker pods (`rollout load-worker`); a stage's `workers` overrides it")
        image: ImageRef = Field("registry.example.com/rollout:0.1", min_length=1,
                                description="rollout's image (built from the Dockerfile) the master and worker pods run")
        ready_timeout: PositiveDuration = Field(180.0, description="how long the master and all workers may take to connect")

    runner: Literal["local", "kubernetes"] = Field(
        "local", description="local: Locust in this process (or `workers` local processes); kubernetes: rollout's Locust master "
        "and workers in the cluster (load.cluster), their per-version statistics read through the API server's service proxy"
    )
    cluster: Load.Cluster | None = Field(None, description="with runner: kubernetes (defaults apply when omitted)")

    @model_validator(mode="after")
    def _runner(self) -> Load:
        if self.runner == "local" and self.cluster is not None:
            raise ValueError("`cluster` goes with `runner: kubernetes`")
        if self.runner == "kubernetes" and (self.shape or self.tags or self.exclude_tags or self.options):
            raise ValueError("no `shape`, `tags`, `exclude_tags` or `options` with `runner: kubernetes` yet (the in-cluster "
                             "Locust is started without them); use the local runner (`workers` for more load)")
        if self.workers or self.runner == "kubernetes":
            why = answer_metrics_refusal(self.metrics, "`runner: kubernetes`" if self.runner == "kubernetes" else f"`workers: {self.workers}`")
            if why:
                raise ValueError(why)
        return self


def answer_metrics_refusal(metrics: dict[str, MetricSource], where: str) -> str | None:
    """Why load that runs in Locust workers (`where`) cannot serve these metric sources; None when it can.

    json/header/custom values are read from each answer in the process that sent it, and Locust workers do not
    send them to the master yet: a gate on them would see no value at all and go to review, where a canary with
    low-confidence answers must fail. Prometheus sources are read by the CLI and work with any load."""
    in_answers = sorted(n for n, m in metrics.items() if m.json_field or m.header or m.custom)
    if not in_answers:
        return None
    return (f"no metric read from the answers ({', '.join(in_answers)}: json, header or custom) with {where}: only "
            "in-process load records them (Locust workers do not send them to the master yet); use `workers: 0` with "
            "the local runner, or a `prometheus` metric source")


class Gate(Strict):
    """One check on the live statistics of a stage.

    Either an absolute guard (`max`) on one version's (or all) traffic, or a
    comparison of the canary against stable in the same stage
    (`compare: stable` with `max_increase`).
    """

    metric: str = Field(description="error_rate, p50, p90, p95, p99, or a metric declared under load.metrics")
    stat: Literal["mean", "p10", "p50", "p90", "p95", "p99", "share_below", "last"] | None = Field(
        None, description="for a declared metric: which statistic (default mean; last for prometheus)"
    )
    below: float | None = Field(None, description="with stat: share_below, the value counted below, e.g. 0.6")
    version: Literal["canary", "stable", "all"] = "canary"
    max: Threshold | None = None
    min: Threshold | None = Field(None, description="for a declared metric: the lowest acceptable value")
    compare: Literal["stable"] | None = None
    max_increase: Margin | None = Field(
        None,
        description="with compare: latency at most this much above stable's (20% = ×1.2); "
        "error_rate at most this many percentage points above stable's (+1pt; a bare 1% also means +1 point)",
    )
    max_ratio: float | None = Field(
        None, gt=0, description="with compare, for error_rate: the canary's rate at most this many times stable's (2 = at most double)"
    )
    min_requests: int = Field(
        100, ge=1, le=Int32, description="threshold: requests per version before the gate may judge (default 100); "
        "sequential: an optional floor before the gate may pass (default none; a failure never waits for it)"
    )
    critical: bool = Field(
        True, description="a failing critical gate rolls back at once; a failing non-critical one asks a person (awaiting-review)"
    )
    method: Literal["threshold", "sequential"] = Field(
        "threshold",
        description="`sequential` (the default for absolute limits on error_rate and p50–p99) runs an anytime-valid "
        "test (e-process / confidence sequence) whose false-rollback rate stays at `alpha` however often it is "
        "checked: fail when credibly worse than the limit, pass when credibly better, else inconclusive; "
        "`threshold` (the default for comparisons and declared metrics) compares the stage's cumulative numbers each second",
    )
    alpha: Alpha = Field(0.01, gt=0, lt=0.5, description="sequential: the false-rollback rate (1% or 0.01), split over the stage's sequential gates")
    pass_increase: Margin | None = Field(
        None, description="sequential: the canary passes once credibly below this increase (default: max_increase)"
    )
    pass_max: Threshold | None = Field(
        None, description="sequential, with max: the gate passes once credibly below this stricter limit (default: max)"
    )

    max_decrease: Percent | None = Field(
        None, description="with compare, for a declared metric where higher is better: at most this much below stable's"
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """Defaults that depend on the gate's shape: absolute limits on error_rate and p50–p99 are judged
        sequentially unless the plan says `method: threshold`; sequential gates have no request floor unless given."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        builtin = out.get("metric") in METRICS
        if out.get("method") is None and builtin and out.get("compare") is None and out.get("max") is not None:
            out["method"] = "sequential"
        if out.get("method") == "sequential" and out.get("min_requests") is None:
            out["min_requests"] = 1
        return out

    @field_validator("max_increase", "pass_increase", mode="before")
    @classmethod
    def _margin(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return v
        if info.data.get("metric") == "error_rate":
            points = parse_points(v)
            if points is None:
                try:
                    points = parse_percent(v if not isinstance(v, str) else v.strip().lstrip("+").strip())
                except ValueError:
                    raise ValueError("an error-rate increase in percentage points, such as +1pt "
                                     "(or a ratio: `max_ratio: 2` for at most double)") from None
            if not points < 1:
                raise ValueError(f"an error-rate increase below 100 points: `{v}` is read as +{100 * points:g} points, which "
                                 "no error rate can exceed; for percentage points write +1pt, for a ratio write "
                                 "`max_ratio: 2` (at most double) instead of max_increase")
            return points
        if parse_points(v) is not None:
            raise ValueError("a relative increase in %, such as 20% (percentage points are for error_rate)")
        return parse_relative(v)

    @field_validator("max", "min", "pass_max", mode="before")
    @classmethod
    def _threshold(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return v
        metric = info.data.get("metric")
        if metric == "error_rate":
            return parse_percent(v)
        if metric in LATENCY_METRICS:
            return parse_latency(v)
        if info.data.get("stat") == "share_below":
            return parse_percent(v)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError("a number")
        if not math.isfinite(float(v)):
            raise ValueError("a finite number (not .nan or .inf: such a limit would make the gate meaningless)")
        return float(v)

    @model_validator(mode="after")
    def _shape(self) -> Gate:
        builtin = self.metric in METRICS
        if builtin and (self.stat is not None or self.below is not None or self.min is not None or self.max_decrease is not None):
            raise ValueError(f"no `stat`, `below`, `min` or `max_decrease` for the built-in metric {self.metric} (they are for declared metrics)")
        if (self.stat == "share_below") != (self.below is not None):
            raise ValueError("`below: VALUE` exactly with `stat: share_below`")
        if self.compare is None and self.max is None and self.min is None:
            raise ValueError("either `max` (an absolute limit) or `compare: stable` with `max_increase`")
        if self.compare is not None and (self.max is not None or self.min is not None):
            raise ValueError("`max`/`min` and `compare` together; use two gates")
        if self.compare is not None and self.max_increase is None and self.max_decrease is None and self.max_ratio is None:
            raise ValueError("`max_increase` with `compare: stable` (e.g. max_increase: 20%, or +1pt / max_ratio: 2 for error_rate)")
        if self.compare is None and (self.max_increase is not None or self.max_decrease is not None or self.max_ratio is not None):
            raise ValueError("`compare: stable` to go with `max_increase`/`max_ratio`/`max_decrease`")
        if self.method == "sequential" and not builtin:
            raise ValueError("`method: threshold` for a declared metric (sequential tests cover error_rate and p50–p99)")
        if self.compare is not None and self.version != "canary":
            raise ValueError("`version: canary` (or no version) with `compare: stable`")
        if self.pass_increase is not None and self.method != "sequential":
            raise ValueError("`method: sequential` to go with `pass_increase`")
        if self.pass_increase is not None and self.max_increase is not None and self.pass_increase > self.max_increase:
            raise ValueError("`pass_increase` at most `max_increase`")
        if self.max_ratio is not None:
            if self.metric != "error_rate" or self.compare is None:
                raise ValueError("`max_ratio` with `metric: error_rate` and `compare: stable` (latency margins are relative already: max_increase: 20%)")
            if self.max_increase is not None:
                raise ValueError("either `max_increase` (percentage points, +1pt) or `max_ratio` (2 = at most double), not both")
            if self.pass_increase is not None:
                raise ValueError("`pass_increase` goes with `max_increase`; a `max_ratio` gate passes below the same ratio")
        if self.method == "sequential" and self.compare is None:
            if self.min is not None:
                raise ValueError("`method: threshold` with `min` (sequential limits are upper limits: `max`)")
            limit = float(self.max)  # type: ignore[arg-type]
            if self.metric == "error_rate" and not 0 < limit < 1:
                raise ValueError("`max` between 0% and 100% (exclusive) with `method: sequential` "
                                 "(a limit of 0% can never be shown to hold; use `method: threshold` for it)")
            if self.metric != "error_rate" and not limit > 0:
                raise ValueError("`max` above 0 ms with `method: sequential`")
        if self.pass_max is not None:
            if self.method != "sequential" or self.max is None:
                raise ValueError("`pass_max` goes with `max` and `method: sequential`")
            if float(self.pass_max) > float(self.max) or not float(self.pass_max) > 0:  # type: ignore[arg-type]
                raise ValueError("`pass_max` above 0 and at most `max` (the gate passes once credibly below it)")
        return self

    @property
    def declared(self) -> bool:
        """A metric from load.metrics rather than errors or latency."""
        return self.metric not in METRICS

    @property
    def statistic(self) -> str:
        return self.stat or "mean"


class Stage(Strict):
    name: str = Field(min_length=1)
    weight: Weight | None = Field(None, description="share of traffic to the canary")
    cohort: dict[HeaderName, HeaderValue] | None = Field(
        None, description="one header match sent entirely to the canary, e.g. {x-team: payments}"
    )
    duration: PositiveDuration
    min_duration: Duration | None = Field(
        None, description="end the stage early once every gate has passed and this much time has gone by "
        "(only sequential gates can pass before the end)"
    )
    users: int | None = Field(None, ge=1, le=MAX_USERS, description="overrides load.users")
    workers: int | None = Field(None, ge=1, le=500, description="load.runner: kubernetes: the worker pods of this stage (overrides "
                                "load.cluster.workers); the stage's users are spread over them")
    spawn_rate: float | None = Field(None, gt=0, le=MAX_USERS)
    shape: str | None = Field(None, min_length=1, description="a LoadTestShape class of the locustfile for this stage (overrides load.shape; "
                              "`none`: users/spawn_rate even when load.shape is set)")
    approval: Literal["auto", "manual"] = "auto"
    load_to: Literal["entry", "canary"] = Field(
        "entry",
        description="entry: through the shared entry point (the split users see); "
        "canary: to the canary alone (pre-flight at production concurrency)",
    )
    gates: dict[str, Union[Gate, None]] | None = Field(
        None, description="per-stage gates merged over the plan's by name; null removes one"
    )

    @field_validator("cohort")
    @classmethod
    def _one_header(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and len(v) != 1:
            raise ValueError("exactly one header match, such as {x-team: payments}")
        return v

    @model_validator(mode="after")
    def _routing(self) -> Stage:
        if self.weight is None and self.cohort is None and self.load_to == "entry":
            raise ValueError("a `weight` (share of traffic to the canary) and/or a `cohort` (header match)")
        return self


class Review(Strict):
    """What happens when the evidence is uncertain: a person decides, within a time limit."""

    timeout: Duration = Field(3600.0, description="how long a review may stay unanswered")
    default: Literal["rollback", "continue"] = Field(
        "rollback", description="what an unanswered review does after the timeout"
    )


class Plan(Strict):
    """A staged rollout of one service."""

    name: str = Field(pattern=NAME_RE, description="lowercase letters, digits and dashes")
    owner: Owner
    description: str | None = None
    target: Target
    load: Load
    gates: dict[str, Gate] = Field(default_factory=dict, description="gates for every stage")
    review: Review = Field(default_factory=Review, description="inconclusive stages wait for `rollout approve` / `rollout reject`")
    stages: list[Stage] = Field(min_length=1)
    notify: list[Webhook] = Field(
        default_factory=list,
        description="webhooks told when a stage starts, a gate fails, the rollout is rolled back, awaits review, "
        "is promoted, reverted or aborted; sent in the background, never delaying a rollback",
    )
    watch: Watch | None = Field(None, description="`rollout watch`: continuous judgement of the live version, "
                                "alerts and automatic revert (rollout.plan.watch)")
    bake: Bake | None = Field(None, description="after the last stage: all traffic on the new version for `duration`, judged "
                              "by the watch gates, the previous version kept ready; a breach rolls back (needs `watch:`)")

    @model_validator(mode="after")
    def _bake_needs_watch(self) -> Plan:
        if self.bake is not None and self.watch is None:
            raise ValueError("a `watch:` section with the bake's gates when `bake:` is given (the bake judges with them)")
        return self

    def stage_gates(self, index: int) -> dict[str, Gate]:
        """The plan's gates with the stage's merged over them by name (null removes one)."""
        merged: dict[str, Gate] = dict(self.gates)
        overrides = self.stages[index].gates or {}
        for name, gate in overrides.items():
            if gate is None:
                merged.pop(name, None)
            else:
                merged[name] = gate
        return merged

    def stage_users(self, index: int) -> int:
        return self.stages[index].users or self.load.users

    def stage_shape(self, index: int) -> str | None:
        """The LoadTestShape class driving this stage's users, or None (users/spawn_rate)."""
        name = self.stages[index].shape or self.load.shape
        return None if name in (None, "none") else name

    def stage_spawn_rate(self, index: int) -> float:
        stage = self.stages[index]
        return stage.spawn_rate or self.load.spawn_rate or float(self.stage_users(index))



"""Anytime-valid latency-percentile gates from order statistics.

Confidence sequence (Howard & Ramdas, "Sequential estimation of quantiles with
applications to A/B-testing and best-arm identification", Bernoulli 2022).
For the p-quantile q of one version, S_n = #{i <= n: X_i <= q} - n*p is a sum
of increments in {-p, 1-p} with mean >= 0 (and #{X_i < q} - n*p has mean <= 0),
so a time-uniform boundary b for such sums bounds, simultaneously for all n,
how far the empirical CDF at q can stray. With the one-sided beta-binomial
mixture boundary (`rollout.stats.boundaries`) at v = p(1-p)n:

    lower = X_(l),  l = floor(n*p - b_L(v) + 1)   (l < 1: -inf),  b_L at alpha_lower
    upper = X_(u),  u = ceil(n*p + b_U(v))        (u > n: +inf),  b_U at alpha_upper

and P(exists n: q < lower_n) <= alpha_lower, P(exists n: q > upper_n) <= alpha_upper,
for any distribution (ties and atoms included; q = inf{x: F(x) >= p}).

Gate. FAIL if canary lower > (1 + fail_margin) * stable upper, PASS if canary
upper < (1 + pass_margin) * stable lower. A false FAIL needs the canary's lower
bound above its true quantile or stable's upper bound below its true quantile,
so with both at alpha_fail / 2 the union bound gives P(false FAIL) <= alpha_fail;
the same for PASS with the other two one-sided bounds at alpha_pass / 2.

Histograms. `Histogram.value_at_rank` returns a bucket representative within
RELATIVE_ERROR of the true order statistic; the true value lies in
[r / (1 + e), r / (1 - e)], so lower bounds are divided by 1 + e and upper
bounds by 1 - e before comparing (an exact min/max stays valid after it).

Cost per update: one pass over each version's sorted buckets for three ranks
(lower, upper, estimate; `read_ranks`) and, via the cached boundary grid, a root solve only when n crosses a new
0.5 % grid point; at n = 100,000 one gate update costs well under a millisecond.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .boundaries import BetaBinomialBoundary, beta_binomial_boundary
from .histogram import RELATIVE_ERROR, Histogram
from .verdict import Decision, SequentialResult, fmt_count, fmt_value

DEFAULT_N_OPT = 5_000  # samples at which the boundary is tuned to be tightest (it is valid at every n)


@runtime_checkable
class OrderStatistics(Protocol):
    """Anything with a sample count and 1-based order statistics, e.g. `Histogram`."""

    @property
    def count(self) -> int: ...

    def value_at_rank(self, rank: int) -> float: ...


class SortedSample:
    """Exact order statistics of raw values (tests, benchmarks, small samples)."""

    relative_error = 0.0

    def __init__(self, values: Iterable[float] = ()) -> None:
        self._values: list[float] = sorted(values)

    def add(self, values: Iterable[float]) -> None:
        new = sorted(values)
        if len(new) > 64:
            self._values = sorted(self._values + new)
        else:
            for v in new:
                bisect.insort(self._values, v)

    @property
    def count(self) -> int:
        return len(self._values)

    def value_at_rank(self, rank: int) -> float:
        if not self._values:
            return math.nan
        return self._values[min(max(rank, 1), len(self._values)) - 1]


def read_ranks(source: OrderStatistics, ranks: list[int]) -> list[float]:
    """`source.value_at_rank(r)` for several ranks, in one pass over a `Histogram`.

    `Histogram.value_at_rank` sorts and walks the buckets on every call; a gate
    needs three ranks per version per second, so for histograms we walk the
    sorted buckets once with exactly the same semantics (extreme ranks return
    the exact min/max; representatives are clamped to [min, max]). A test checks
    that both agree. Other sources use `values_at_ranks` if they have it, else
    `value_at_rank` per rank.
    """
    many = getattr(source, "values_at_ranks", None)
    if many is not None:
        return list(many(ranks))
    if not isinstance(source, Histogram):
        return [source.value_at_rank(r) for r in ranks]
    h = source
    if h.count == 0:
        return [math.nan] * len(ranks)
    out: dict[int, float] = {}
    pending = []
    for r in set(ranks):
        if r <= 1:
            out[r] = h.min
        elif r >= h.count:
            out[r] = h.max
        else:
            pending.append(r)
    pending.sort()
    if pending:
        lo, hi = h.min, h.max
        targets = iter(pending)
        target: int | None = next(targets)
        seen = 0
        for value, n in h._iter_sorted():  # noqa: SLF001 - same package; equality with value_at_rank is tested
            seen += n
            while target is not None and seen >= target:
                out[target] = min(max(value, lo), hi)
                target = next(targets, None)
            if target is None:
                break
        while target is not None:
            out[target] = hi
            target = next(targets, None)
    return [out[r] for r in ranks]


def _relative_error(source: OrderStatistics, relative_error: float | None) -> float:
    if relative_error is not None:
        return relative_error
    if isinstance(source, Histogram):
        return RELATIVE_ERROR
    return float(getattr(source, "relative_error", 0.0))


def lower_boundary(p: float, alpha: float, n_opt: int = DEFAULT_N_OPT) -> BetaBinomialBoundary:
    """Boundary for n*p - #{X_i <= q} (increments in [-(1-p), p]): gives the lower confidence bound."""
    return beta_binomial_boundary(1 - p, p, alpha, p * (1 - p) * n_opt)


def upper_boundary(p: float, alpha: float, n_opt: int = DEFAULT_N_OPT) -> BetaBinomialBoundary:
    """Boundary for #{X_i < q} - n*p (increments in [-p, 1-p]): gives the upper confidence bound."""
    return beta_binomial_boundary(p, 1 - p, alpha, p * (1 - p) * n_opt)


def lower_rank(n: int, p: float, boundary: BetaBinomialBoundary) -> int:
    """l = floor(n p - b_L + 1); values < 1 mean the lower bound is -inf."""
    b = boundary.at_count(n)
    if math.isinf(b):
        return 0
    return math.floor(n * p - b + 1)


def upper_rank(n: int, p: float, boundary: BetaBinomialBoundary) -> int:
    """u = ceil(n p + b_U); values > n mean the upper bound is +inf."""
    b = boundary.at_count(n)
    if math.isinf(b):
        return n + 1
    return math.ceil(n * p + b)


@dataclass(frozen=True)
class QuantileBounds:
    """An anytime-valid confidence interval for one version's p-quantile at one time."""

    p: float
    n: int
    lower: float
    upper: float
    estimate: float
    rank_lower: int
    rank_upper: int


def quantile_confidence_sequence(
    source: OrderStatistics,
    p: float,
    *,
    alpha_lower: float,
    alpha_upper: float,
    n_opt: int = DEFAULT_N_OPT,
    relative_error: float | None = None,
) -> QuantileBounds:
    """[lower, upper] for the p-quantile of the distribution `source` samples, valid at all n at once.

    P(the true quantile is ever below `lower`) <= alpha_lower and ever above
    `upper` <= alpha_upper. Values read from a histogram are widened by its
    relative error so the bounds hold for the true samples.
    """
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    n = int(source.count)
    eps = _relative_error(source, relative_error)
    if n <= 0:
        return QuantileBounds(p, 0, -math.inf, math.inf, math.nan, 0, 1)
    lo_rank = lower_rank(n, p, lower_boundary(p, alpha_lower, n_opt))
    hi_rank = upper_rank(n, p, upper_boundary(p, alpha_upper, n_opt))
    est_rank = max(1, math.ceil(n * p - 1e-9))
    wanted = [est_rank] + ([lo_rank] if lo_rank >= 1 else []) + ([hi_rank] if hi_rank <= n else [])
    values = dict(zip(wanted, read_ranks(source, wanted)))
    lower = values[lo_rank] / (1 + eps) if lo_rank >= 1 else -math.inf
    upper = values[hi_rank] / (1 - eps) if hi_rank <= n else math.inf
    estimate = values[est_rank]
    return QuantileBounds(p, n, lower, upper, estimate, lo_rank, hi_rank)


def _percentile_name(p: float) -> str:
    pct = 100 * p
    return f"p{pct:.0f}" if abs(pct - round(pct)) < 1e-9 else f"p{pct:g}"


def _fmt_ratio(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.3f}"


class QuantileTest:
    """Latency-percentile gate: canary p-quantile vs stable's, with relative margins.

    fail_margin=0.2 means FAIL when the canary's quantile is credibly more than
    +20 % above stable's; pass_margin=0.1 means PASS when it is credibly less
    than +10 % above (pass_margin <= fail_margin; None disables PASS). Call
    `update(canary_hist, stable_hist)` with each version's cumulative
    histogram (or any `OrderStatistics`) once a second. Verdicts latch (FAIL
    overrides an earlier PASS), as the confidence sequences hold at all times
    simultaneously.
    """

    kind = "latency_quantile"

    def __init__(
        self,
        quantile: float,
        *,
        fail_margin: float = 0.2,
        pass_margin: float | None = None,
        alpha_fail: float = 0.01,
        alpha_pass: float | None = None,
        n_opt: int = DEFAULT_N_OPT,
        unit: str = "ms",
    ) -> None:
        if not 0 < quantile < 1:
            raise ValueError("quantile must be in (0, 1), e.g. 0.95")
        if not fail_margin > -1:
            raise ValueError("fail_margin must be > -1 (relative: 0.2 = +20 %)")
        if pass_margin is not None and not -1 < pass_margin <= fail_margin:
            raise ValueError("pass_margin must be in (-1, fail_margin]")
        if not 0 < alpha_fail < 1:
            raise ValueError("alpha_fail must be in (0, 1)")
        if alpha_pass is None:
            alpha_pass = alpha_fail
        if not 0 < alpha_pass < 1:
            raise ValueError("alpha_pass must be in (0, 1)")
        if n_opt < 1:
            raise ValueError("n_opt must be >= 1")
        self.p = float(quantile)
        self.fail_margin = float(fail_margin)
        self.pass_margin = None if pass_margin is None else float(pass_margin)
        self.alpha_fail = float(alpha_fail)
        self.alpha_pass = float(alpha_pass)
        self.n_opt = int(n_opt)
        self.unit = unit
        self.name = _percentile_name(self.p)
        # Each one-sided bound gets half of its verdict's alpha (union bound over the two versions).
        self._fail_lower = lower_boundary(self.p, self.alpha_fail / 2, self.n_opt)  # canary lower
        self._fail_upper = upper_boundary(self.p, self.alpha_fail / 2, self.n_opt)  # stable upper
        self._pass_upper = upper_boundary(self.p, self.alpha_pass / 2, self.n_opt)  # canary upper
        self._pass_lower = lower_boundary(self.p, self.alpha_pass / 2, self.n_opt)  # stable lower
        self.fail_crossed_at: tuple[int, int] | None = None
        self.pass_crossed_at: tuple[int, int] | None = None
        self.rank_reads = 0  # passes over a version's order statistics (cost accounting: 2 per update)

    @property
    def boundaries(self) -> tuple[BetaBinomialBoundary, ...]:
        return (self._fail_lower, self._fail_upper, self._pass_upper, self._pass_lower)

    def _bounds(
        self, source: OrderStatistics, lower_b: BetaBinomialBoundary, upper_b: BetaBinomialBoundary
    ) -> tuple[float, float, float, int]:
        n = int(source.count)
        if n <= 0:
            return -math.inf, math.inf, math.nan, 0
        eps = _relative_error(source, None)
        lo_rank = lower_rank(n, self.p, lower_b)
        hi_rank = upper_rank(n, self.p, upper_b)
        est_rank = max(1, math.ceil(n * self.p - 1e-9))
        wanted = [est_rank]
        if lo_rank >= 1:
            wanted.append(lo_rank)
        if hi_rank <= n:
            wanted.append(hi_rank)
        values = dict(zip(wanted, read_ranks(source, wanted)))
        self.rank_reads += 1
        lower = values[lo_rank] / (1 + eps) if lo_rank >= 1 else -math.inf
        upper = values[hi_rank] / (1 - eps) if hi_rank <= n else math.inf
        return lower, upper, values[est_rank], n

    def update(self, canary: OrderStatistics, stable: OrderStatistics) -> SequentialResult:
        """Judge the cumulative samples of both versions (call once a second)."""
        c_lo, c_hi, c_est, n_c = self._bounds(canary, self._fail_lower, self._pass_upper)
        s_lo, s_hi, s_est, n_s = self._bounds(stable, self._pass_lower, self._fail_upper)

        fail_thr = 1 + self.fail_margin
        fail_stat = _ratio(c_lo, s_hi)
        fail_now = c_lo > fail_thr * s_hi  # false with an infinite stable upper / -inf canary lower
        if fail_now and self.fail_crossed_at is None:
            self.fail_crossed_at = (n_c, n_s)
        has_pass = self.pass_margin is not None
        pass_thr = 1 + self.pass_margin if has_pass else math.nan  # type: ignore[operator]
        pass_stat = _ratio(c_hi, s_lo) if has_pass else math.nan
        pass_now = has_pass and s_lo > 0 and c_hi < pass_thr * s_lo
        if pass_now and self.pass_crossed_at is None:
            self.pass_crossed_at = (n_c, n_s)

        if self.fail_crossed_at is not None:
            decision, stat, thr = Decision.FAIL, fail_stat, fail_thr
        elif self.pass_crossed_at is not None:
            decision, stat, thr = Decision.PASS, pass_stat, pass_thr
        else:
            decision, stat, thr = Decision.CONTINUE, fail_stat, fail_thr

        u = f" {self.unit}" if self.unit else ""
        head = (
            f"canary {self.name} [{fmt_value(c_lo)}, {fmt_value(c_hi)}]{u} vs stable "
            f"[{fmt_value(s_lo)}, {fmt_value(s_hi)}]{u}"
        )
        counts = f"{fmt_count(n_c)}/{fmt_count(n_s)} requests"
        if decision is Decision.FAIL:
            tail = (
                f": > {_fmt_margin(self.fail_margin)} credibly "
                f"(canary lower / stable upper {_fmt_ratio(fail_stat)} > {fail_thr:.2f}, {counts})"
            )
        elif decision is Decision.PASS:
            tail = (
                f": < {_fmt_margin(self.pass_margin or 0.0)} credibly "
                f"(canary upper / stable lower {_fmt_ratio(pass_stat)} < {pass_thr:.2f}, {counts})"
            )
        else:
            parts = [f"fail needs lower/upper > {fail_thr:.2f}, now {_fmt_ratio(fail_stat)}"]
            if has_pass:
                parts.append(f"pass needs upper/lower < {pass_thr:.2f}, now {_fmt_ratio(pass_stat)}")
            tail = f": undecided ({'; '.join(parts)}; {counts})"
        return SequentialResult(
            decision=decision,
            kind=self.kind,
            statistic=stat,
            threshold=thr,
            estimate_canary=c_est,
            estimate_stable=s_est,
            bounds_canary=(c_lo, c_hi),
            bounds_stable=(s_lo, s_hi),
            n_canary=n_c,
            n_stable=n_s,
            message=head + tail,
            fail_statistic=fail_stat,
            fail_threshold=fail_thr,
            pass_statistic=pass_stat,
            pass_threshold=pass_thr,
            extra={"quantile": self.p},
        )


def _ratio(num: float, den: float) -> float:
    """num / den for bounds that may be infinite: an infinite or non-positive denominator decides nothing."""
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if den == math.inf:
        return math.nan if num == math.inf else 0.0
    if den <= 0:
        return math.inf
    return num / den


def _fmt_margin(m: float) -> str:
    return f"{100 * m:+.0f} %"

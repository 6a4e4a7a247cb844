"""Anytime-valid one-sample tests: a rate against a fixed limit, checked every second.

An absolute gate ("error rate ≤ 2 %", "p95 ≤ 250 ms") asks whether one
version's rate of bad requests is above a fixed limit p0. Counting n requests
and x bad ones, two e-processes (see /work/shared/reference/monitoring-statistics.md §1):

FAIL side, H0: p ≤ p0 ("within the limit"). The likelihood ratio against
p0, mixed over alternatives p in [p0, 1] with a uniform prior:

    E_fail = ∫_{p0}^{1} (p/p0)^x ((1-p)/(1-p0))^(n-x) dp / (1-p0)
           = B(x+1, n-x+1) · (1 − I_{p0}(x+1, n-x+1)) / ((1-p0) · p0^x · (1-p0)^(n-x))

Under any true p ≤ p0, each request multiplies every mixed likelihood ratio
by a factor of mean ≤ 1 (the mean is increasing in the true p and is 1 at
p0), so E_fail is a nonnegative supermartingale and, by Ville's inequality,
P(E_fail ever ≥ 1/α) ≤ α however often it is looked at. FAIL when it
reaches 1/α.

PASS side, H0': p ≥ p1 (p1 = the limit, or a stricter pass limit). The
mirror: prior uniform on [0, p1],

    E_pass = B(x+1, n-x+1) · I_{p1}(x+1, n-x+1) / (p1 · p1^x · (1-p1)^(n-x)).

PASS when it reaches 1/α. Neither side → CONTINUE (at the end of a stage:
inconclusive). Each side errs with probability ≤ α, as the canary-vs-stable
tests do.

A latency percentile is the same test: "q-quantile ≤ L" ⇔ "share of
requests slower than L ≤ 1 − q", so x counts the requests slower than L and
p0 = 1 − q. `exceedances` reads that count from a `Histogram`: a request in a
bucket wholly above L counts, one wholly below does not, and the one bucket
that contains L (values within 1 % of L) is counted as *not slower* for the
FAIL side and as *slower* for the PASS side. Both e-values are monotone in x
(E_fail grows with x, E_pass shrinks), so each side sees a count that can
only understate its evidence: the guarantees hold exactly, at the price of
the requests within 1 % of L.

O(1) per update (two regularized incomplete beta functions), no per-request
state: the gate keeps only the cumulative counters.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import betainc, betaincc, betaln

from .verdict import Decision, fmt_count, fmt_e


def log_e_fail(n: Any, x: Any, p0: float) -> Any:
    """log E_fail: evidence that the rate is above p0 (uniform mixture over [p0, 1]).

    Scalars or numpy arrays of counts (the benches evaluate whole paths at once).
    """
    if not 0 < p0 < 1:
        raise ValueError("p0 must be in (0, 1)")
    n, x = np.asarray(n, dtype=float), np.asarray(x, dtype=float)
    a, b = x + 1, n - x + 1
    with np.errstate(divide="ignore"):
        tail = np.log(betaincc(a, b, p0))  # log(1 - I_{p0}(a, b)); -inf when it underflows (no evidence)
    out = betaln(a, b) + tail - math.log1p(-p0) - x * math.log(p0) - (n - x) * math.log1p(-p0)
    out = np.where(n == 0, 0.0, out)
    return float(out) if out.ndim == 0 else out


def log_e_pass(n: Any, x: Any, p1: float) -> Any:
    """log E_pass: evidence that the rate is below p1 (uniform mixture over [0, p1])."""
    if not 0 < p1 < 1:
        raise ValueError("p1 must be in (0, 1)")
    n, x = np.asarray(n, dtype=float), np.asarray(x, dtype=float)
    a, b = x + 1, n - x + 1
    with np.errstate(divide="ignore"):
        head = np.log(betainc(a, b, p1))  # log I_{p1}(a, b)
    out = betaln(a, b) + head - math.log(p1) - x * math.log(p1) - (n - x) * math.log1p(-p1)
    out = np.where(n == 0, 0.0, out)
    return float(out) if out.ndim == 0 else out


def _check(n: int, x: int) -> None:
    if n < 0 or x < 0 or x > n:
        raise ValueError(f"bad counts: {x} of {n}")


class RateLimitTest:
    """One version's rate of bad requests against a limit: FAIL above `limit`, PASS below `pass_limit`.

    Feed it cumulative counters (`update(n, x)`, once a second, never going
    backwards). Verdicts latch, as the other sequential tests' do: Ville's
    inequality bounds the chance of *ever* crossing, so a crossing stays. For a
    percentile gate give `update` the two counts from `exceedances`: the one
    that can only undercount for FAIL, the one that can only overcount for PASS.
    """

    kind = "rate_limit"

    def __init__(self, limit: float, *, pass_limit: float | None = None, alpha_fail: float = 0.01,
                 alpha_pass: float | None = None) -> None:
        if not 0 < limit < 1:
            raise ValueError("limit must be in (0, 1) (a rate)")
        if pass_limit is None:
            pass_limit = limit
        if not 0 < pass_limit <= limit:
            raise ValueError("pass_limit must be in (0, limit]")
        if not 0 < alpha_fail < 1:
            raise ValueError("alpha_fail must be in (0, 1)")
        alpha_pass = alpha_fail if alpha_pass is None else alpha_pass
        if not 0 < alpha_pass < 1:
            raise ValueError("alpha_pass must be in (0, 1)")
        self.limit, self.pass_limit = float(limit), float(pass_limit)
        self.alpha_fail, self.alpha_pass = float(alpha_fail), float(alpha_pass)
        self.n = self.x_fail = self.x_pass = 0
        self.log_e_fail = self.log_e_pass = 0.0
        self.fail_crossed_at: int | None = None  # requests when FAIL was first reached
        self.pass_crossed_at: int | None = None

    @property
    def threshold_fail(self) -> float:
        return 1.0 / self.alpha_fail

    @property
    def threshold_pass(self) -> float:
        return 1.0 / self.alpha_pass

    def update(self, n: int, x: int, x_pass: int | None = None) -> Decision:
        """Cumulative requests `n` and bad ones `x` (for PASS, `x_pass` ≥ x when the count is bracketed)."""
        x_pass = x if x_pass is None else x_pass
        _check(n, x)
        _check(n, x_pass)
        if x_pass < x:
            raise ValueError("x_pass must be at least x (the PASS side takes the upper count)")
        if n < self.n or x < self.x_fail:
            raise ValueError(f"cumulative counters went backwards ({self.x_fail}/{self.n} -> {x}/{n})")
        self.n, self.x_fail, self.x_pass = n, x, x_pass
        self.log_e_fail = log_e_fail(n, x, self.limit)
        self.log_e_pass = log_e_pass(n, x_pass, self.pass_limit)
        if self.fail_crossed_at is None and self.log_e_fail >= math.log(self.threshold_fail):
            self.fail_crossed_at = n
        if self.pass_crossed_at is None and self.log_e_pass >= math.log(self.threshold_pass):
            self.pass_crossed_at = n
        return self.decision

    @property
    def decision(self) -> Decision:
        if self.fail_crossed_at is not None:
            return Decision.FAIL  # FAIL overrides an earlier PASS
        if self.pass_crossed_at is not None:
            return Decision.PASS
        return Decision.CONTINUE

    @property
    def e_fail(self) -> float:
        return math.exp(min(self.log_e_fail, 700.0))

    @property
    def e_pass(self) -> float:
        return math.exp(min(self.log_e_pass, 700.0))

    def evidence(self) -> str:
        """The e-value that decided (or both, undecided), e.g. 'e=104 ≥ 1/α=100'."""
        d = self.decision
        if d is Decision.FAIL:
            return f"e={fmt_e(self.e_fail)} ≥ 1/α={fmt_e(self.threshold_fail)}"
        if d is Decision.PASS:
            return f"e={fmt_e(self.e_pass)} ≥ 1/α={fmt_e(self.threshold_pass)}"
        return f"fail e={fmt_e(self.e_fail)}, pass e={fmt_e(self.e_pass)} < 1/α={fmt_e(self.threshold_fail)}"

    def requests(self) -> str:
        return f"{fmt_count(self.n)} requests"


def exceedances(hist: object, limit: float) -> tuple[int, int]:
    """(surely slower than `limit`, possibly slower) request counts from a latency `Histogram`.

    The first never overcounts (for FAIL), the second never undercounts (for
    PASS); they differ only by the requests in the bucket that contains the
    limit (within the histogram's 0.5 % relative error of it).
    """
    from .histogram import _INV_LOG_GAMMA, MIN_VALUE, Histogram

    assert isinstance(hist, Histogram)
    n = hist.count
    if n == 0:
        return 0, 0
    if hist.max <= limit:
        return 0, 0
    if hist.min > limit:
        return n, n
    if limit < MIN_VALUE:  # the zero bucket holds values ≤ 1 µs: straddles such a limit
        above = sum(hist.buckets.values())
        return above, n
    # the same (monotone) mapping `Histogram.record` uses: buckets above `key` hold only values > limit,
    # buckets below it only values < limit, whatever the float rounding
    key = math.ceil(math.log(limit) * _INV_LOG_GAMMA)
    sure = sum(c for k, c in hist.buckets.items() if k > key)
    straddle = hist.buckets.get(key, 0)
    return sure, sure + straddle

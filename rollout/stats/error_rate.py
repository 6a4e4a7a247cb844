"""Anytime-valid error-rate tests between a canary and the stable version.

Two tests, both fed cumulative per-version counters once a second, both O(new
data) per update:

`PairedErrorRateTest` -- additive margin, FAIL and PASS, exact for any error
rate. The i-th canary request is paired with the i-th stable request and
D_i = err_canary_i - err_stable_i in {-1, 0, +1}. For H0: E[D] <= m the
betting e-process

    K_n = (1/J) sum_j prod_i (1 + lambda_j (D_i - m)),  lambda_j = c_j / (1 + m),

is a nonnegative supermartingale under H0 (each factor has mean <= 1 and is
>= 1 - c_j > 0), so by Ville's inequality P(ever K_n >= 1/alpha) <= alpha
however often it is looked at. Because the lambdas are fixed, K_n depends on
the pairs only through three counters n+, n0, n- (pairs with D = +1, 0, -1).
FAIL when K_n >= 1/alpha_fail with m = fail_margin. The PASS mirror tests
H0: E[D] >= m with factors 1 + lambda_j (m - D), lambda_j = c_j / (1 - m), and
PASS when it reaches 1/alpha_pass with m = pass_margin. Inverting both over m
gives the anytime confidence bounds of p_canary - p_stable that messages show.

Pairing from counts (no per-request storage). Requests arrive as counts per
second and version, not as an ordered stream. Each version keeps a FIFO of the
not-yet-paired part of each one-second batch as (ok, err) counts. Pairs are
formed oldest batch first; within a batch the order of requests is taken to be
random, so drawing k requests from a batch with e errors out of n draws a
hypergeometric number of errors, and matching k canary requests (x errors)
with k stable requests (y errors) in random order gives a hypergeometric
number of error-error pairs. This is exactly "pair the i-th canary request
with the i-th stable request" for a uniformly random order of the requests
inside each second, so cumulatively min(n_canary, n_stable) requests are paired
(less what `max_lag` drops). The draws use a seeded `random.Random`, so a gate
is reproducible from its recorded counters.

Assumption (documented, not checkable from counts): within one version the
outcomes of requests in the same second are exchangeable, and which requests
get paired does not depend on their outcomes -- true when requests are
i.i.d. given the version (the null model of every canary test), and the
pairing rule looks only at arrival counts and ages. If request rates react to
errors (e.g. failed requests return faster and closed-loop users send more),
the counts carry a little outcome information; with constant-rate load
shapes they do not.

`max_lag` (seconds, default 10) drops unpaired requests older than that:
with an uneven split (say canary 10 %) a pure FIFO would pair the canary's
requests at minute 9 with stable requests from minute 1, and any drift in
time (a dependency degrading mid-stage) would look like a canary effect.
Dropping depends only on ages, never on outcomes, so validity is unchanged;
with an uneven split nothing is lost either (the minority version still finds
a partner in the same second).

`ErrorRateRatioTest` -- ratio margin, FAIL (H0: p_canary <= r0 * p_stable) and,
with `pass_ratio`, PASS (the mirror, H0': p_canary >= r1 * p_stable, alternatives
r1 / m_j below it).
Given that an error happened in second s, it is a canary error with
probability theta_s(r) = r*n_c,s / (r*n_c,s + n_b,s), r = p_canary / p_stable
(exact for Poisson error counts, the rare-error limit of Bernoulli requests).
The log-likelihood l(r) = sum_s x_c,s log theta_s(r) + x_b,s log(1 - theta_s(r))
is kept for r0 and a fixed grid r_j > r0, and E = mean_j exp(l(r_j) - l(r0)).
Each likelihood ratio has conditional mean <= 1 for every r <= r0 (it is
increasing in theta and equals 1 at theta_s(r0)), so E is an e-process under
the composite null. It is for rare errors (up to a few %): the conditional
split of Bernoulli errors is a Fisher noncentral hypergeometric, which is less
dispersed than the binomial at r = 1 (conservative) but slightly shifted up
for r0 != 1 at high error rates. Use the paired test for high error rates and
for PASS verdicts.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence

from .verdict import Decision, SequentialResult, fmt_count, fmt_e, fmt_pct, fmt_points

# Bet fractions c_j (lambda_j = c_j / (1 + m)): large ones win fast when errors are
# rare and one-sided, small ones when the difference is small relative to the noise.
DEFAULT_BET_FRACTIONS: tuple[float, ...] = (0.9, 0.7) + tuple(0.5 * 2 ** (-i / 2) for i in range(11))  # ... 1/64

# Alternatives r_j = r0 * multiplier, equal weights, log-spaced up to "stable has ~no errors".
DEFAULT_RATIO_MULTIPLIERS: tuple[float, ...] = (
    1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0, 10.0, 15.0, 25.0, 40.0, 70.0, 150.0, 400.0, 1000.0,
)  # fmt: skip


def hypergeometric(rng: random.Random, total: int, marked: int, draws: int) -> int:
    """How many of `marked` items fall in a uniform random sample of `draws` out of `total`.

    Exact sequential sampling; loops at most min(marked, draws, total - marked,
    total - draws) times, i.e. over the rarer outcome of one batch.
    """
    if not (0 <= marked <= total and 0 <= draws <= total):
        raise ValueError(f"bad hypergeometric arguments total={total} marked={marked} draws={draws}")
    if marked == 0 or draws == 0:
        return 0
    if draws == total:
        return marked
    if marked == total:
        return draws
    if 2 * marked > total:
        return draws - hypergeometric(rng, total, total - marked, draws)
    if 2 * draws > total:
        return marked - hypergeometric(rng, total, marked, total - draws)
    small, large = (marked, draws) if marked <= draws else (draws, marked)
    hits = 0
    remaining, remaining_large = total, large
    rand = rng.random
    for _ in range(small):
        if rand() * remaining < remaining_large:
            hits += 1
            remaining_large -= 1
        remaining -= 1
    return hits


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def _check_counts(n_c: int, e_c: int, n_b: int, e_b: int) -> None:
    for name, value in (("n_canary", n_c), ("err_canary", e_c), ("n_stable", n_b), ("err_stable", e_b)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if e_c > n_c or e_b > n_b:
        raise ValueError(f"more errors than requests: canary {e_c}/{n_c}, stable {e_b}/{n_b}")


class _Cumulative:
    """Turns cumulative counters into increments, rejecting counters that go backwards."""

    __slots__ = ("n_c", "e_c", "n_b", "e_b")

    def __init__(self) -> None:
        self.n_c = self.e_c = self.n_b = self.e_b = 0

    def delta(self, n_c: int, e_c: int, n_b: int, e_b: int) -> tuple[int, int, int, int]:
        _check_counts(n_c, e_c, n_b, e_b)
        d = (n_c - self.n_c, e_c - self.e_c, n_b - self.n_b, e_b - self.e_b)
        if min(d) < 0:
            raise ValueError(
                "cumulative counters went backwards "
                f"(canary {self.e_c}/{self.n_c} -> {e_c}/{n_c}, stable {self.e_b}/{self.n_b} -> {e_b}/{n_b})"
            )
        self.n_c, self.e_c, self.n_b, self.e_b = n_c, e_c, n_b, e_b
        return d


class PairedErrorRateTest:
    """Additive-margin error-rate gate: FAIL if p_c - p_s > fail_margin credibly, PASS if < pass_margin.

    Margins are differences of rates (0.005 = +0.5 percentage points). PASS
    needs pass_margin > 0 when errors are rare: "no difference at all" can
    never be proven, "at most +0.5 points" can (about 3,500 requests per
    version at 0.1 % errors).

    Feed it once a second, either cumulative counters with `update` or the
    second's increments with `add`. Verdicts latch: once an e-process crossed
    its threshold the verdict stays (FAIL overrides an earlier PASS), which
    Ville's inequality allows because it bounds the chance of *ever* crossing.
    """

    kind = "error_rate_diff"

    def __init__(
        self,
        *,
        fail_margin: float = 0.0,
        pass_margin: float | None = None,
        alpha_fail: float = 0.01,
        alpha_pass: float | None = None,
        bet_fractions: Sequence[float] = DEFAULT_BET_FRACTIONS,
        max_lag: int | None = 10,
        seed: int = 0,
        compute_bounds: bool = True,
    ) -> None:
        if not -1 < fail_margin < 1:
            raise ValueError("fail_margin must be in (-1, 1) (a difference of error rates)")
        if pass_margin is not None and not -1 < pass_margin <= fail_margin:
            raise ValueError("pass_margin must be in (-1, fail_margin]")
        if not 0 < alpha_fail < 1:
            raise ValueError("alpha_fail must be in (0, 1)")
        if alpha_pass is None:
            alpha_pass = alpha_fail
        if not 0 < alpha_pass < 1:
            raise ValueError("alpha_pass must be in (0, 1)")
        if not bet_fractions or any(not 0 < c < 1 for c in bet_fractions):
            raise ValueError("bet fractions must be in (0, 1)")
        if max_lag is not None and max_lag < 0:
            raise ValueError("max_lag must be >= 0 or None")
        self.fail_margin = float(fail_margin)
        self.pass_margin = None if pass_margin is None else float(pass_margin)
        self.alpha_fail = float(alpha_fail)
        self.alpha_pass = float(alpha_pass)
        self.bet_fractions = tuple(float(c) for c in bet_fractions)
        self.max_lag = max_lag
        self.compute_bounds = compute_bounds
        self._rng = random.Random(seed)
        self._cum = _Cumulative()
        # Unpaired remainders of one-second batches: [ok, err, second].
        self._queue_c: deque[list[int]] = deque()
        self._queue_b: deque[list[int]] = deque()
        self._second = 0
        self.n_plus = 0  # pairs with canary error, stable ok  (D = +1)
        self.n_zero = 0  # pairs with equal outcomes            (D =  0)
        self.n_minus = 0  # pairs with canary ok, stable error  (D = -1)
        self.dropped_canary = 0
        self.dropped_stable = 0
        self._fail_logs = self._fail_factors(self.fail_margin)
        self._pass_logs = self._pass_factors(self.pass_margin) if self.pass_margin is not None else None
        self.fail_crossed_at: int | None = None  # pairs when FAIL was first reached
        self.pass_crossed_at: int | None = None
        self.operations = 0  # pairing-loop iterations + e-value term evaluations (cost accounting)

    # ------------------------------------------------------------------ e-processes

    def _fail_factors(self, m: float) -> list[tuple[float, float, float]]:
        out = []
        for c in self.bet_fractions:
            lam = c / (1 + m)
            out.append((math.log1p(lam * (1 - m)), math.log1p(-lam * m), math.log1p(-lam * (1 + m))))
        return out

    def _pass_factors(self, m: float) -> list[tuple[float, float, float]]:
        out = []
        for c in self.bet_fractions:
            lam = c / (1 - m)
            out.append((math.log1p(-lam * (1 - m)), math.log1p(lam * m), math.log1p(lam * (1 + m))))
        return out

    def _log_e(self, logs: list[tuple[float, float, float]]) -> float:
        self.operations += len(logs)
        p, z, n = self.n_plus, self.n_zero, self.n_minus
        return _logsumexp([p * a + z * b + n * c for a, b, c in logs]) - math.log(len(logs))

    def log_e_fail(self, margin: float | None = None) -> float:
        """log of the FAIL e-process (H0: p_c - p_s <= margin), default margin = fail_margin."""
        logs = self._fail_logs if margin is None else self._fail_factors(margin)
        return self._log_e(logs)

    def log_e_pass(self, margin: float | None = None) -> float:
        """log of the PASS e-process (H0: p_c - p_s >= margin), default margin = pass_margin."""
        if margin is None:
            if self._pass_logs is None:
                return 0.0
            logs = self._pass_logs
        else:
            logs = self._pass_factors(margin)
        return self._log_e(logs)

    @property
    def pairs(self) -> int:
        return self.n_plus + self.n_zero + self.n_minus

    def difference_bounds(self, tol: float = 1e-5) -> tuple[float, float]:
        """Anytime-valid bounds on p_c - p_s: [lower at alpha_fail, upper at alpha_pass].

        Lower = sup of margins the FAIL e-process rejects, upper = inf of margins
        the PASS e-process rejects (both monotone in the margin; bisection).
        """
        lo_thr = math.log(1 / self.alpha_fail)
        hi_thr = math.log(1 / self.alpha_pass)

        def bisect(rejects, lo: float, hi: float) -> float:  # rejects(lo) is True, rejects(hi) False
            while hi - lo > tol:
                mid = 0.5 * (lo + hi)
                if rejects(mid):
                    lo = mid
                else:
                    hi = mid
            return 0.5 * (lo + hi)

        edge = 1 - 1e-9
        if self.log_e_fail(-edge) >= lo_thr:
            lower = bisect(lambda m: self.log_e_fail(m) >= lo_thr, -edge, edge)
        else:
            lower = -1.0
        if self.log_e_pass(edge) >= hi_thr:
            upper = bisect(lambda m: not self.log_e_pass(m) >= hi_thr, -edge, edge)
        else:
            upper = 1.0
        return lower, upper

    # ------------------------------------------------------------------ updates

    def update(self, n_canary: int, err_canary: int, n_stable: int, err_stable: int) -> SequentialResult:
        """Cumulative counters since the start of the stage (call once a second)."""
        return self.add(*self._cum.delta(n_canary, err_canary, n_stable, err_stable), _checked=True)

    def add(
        self, canary_requests: int, canary_errors: int, stable_requests: int, stable_errors: int, *, _checked: bool = False
    ) -> SequentialResult:
        """This second's new requests and errors per version (call once a second)."""
        if not _checked:
            _check_counts(canary_requests, canary_errors, stable_requests, stable_errors)
            c = self._cum
            c.n_c += canary_requests
            c.e_c += canary_errors
            c.n_b += stable_requests
            c.e_b += stable_errors
        self._second += 1
        if canary_requests:
            self._queue_c.append([canary_requests - canary_errors, canary_errors, self._second])
        if stable_requests:
            self._queue_b.append([stable_requests - stable_errors, stable_errors, self._second])
        self._pair()
        self._expire()
        return self.result()

    def _pair(self) -> None:
        qc, qb, rng = self._queue_c, self._queue_b, self._rng
        while qc and qb:
            self.operations += 1
            c, b = qc[0], qb[0]
            nc, nb = c[0] + c[1], b[0] + b[1]
            k = min(nc, nb)
            xc = hypergeometric(rng, nc, c[1], k)  # canary errors among the k drawn
            xb = hypergeometric(rng, nb, b[1], k)  # stable errors among the k drawn
            both = hypergeometric(rng, k, xc, xb)  # error-error pairs under a random matching
            plus, minus = xc - both, xb - both
            self.n_plus += plus
            self.n_minus += minus
            self.n_zero += k - plus - minus
            c[0] -= k - xc
            c[1] -= xc
            b[0] -= k - xb
            b[1] -= xb
            if c[0] + c[1] == 0:
                qc.popleft()
            if b[0] + b[1] == 0:
                qb.popleft()

    def _expire(self) -> None:
        if self.max_lag is None:
            return
        oldest = self._second - self.max_lag
        for queue, attr in ((self._queue_c, "dropped_canary"), (self._queue_b, "dropped_stable")):
            while queue and queue[0][2] < oldest:
                ok, err, _ = queue.popleft()
                setattr(self, attr, getattr(self, attr) + ok + err)

    # ------------------------------------------------------------------ verdict

    def result(self) -> SequentialResult:
        log_fail = self.log_e_fail()
        e_fail = math.exp(min(log_fail, 700.0))
        thr_fail = 1 / self.alpha_fail
        if self.fail_crossed_at is None and log_fail >= math.log(thr_fail):
            self.fail_crossed_at = self.pairs
        has_pass = self.pass_margin is not None
        log_pass = self.log_e_pass() if has_pass else 0.0
        e_pass = math.exp(min(log_pass, 700.0)) if has_pass else math.nan
        thr_pass = 1 / self.alpha_pass if has_pass else math.nan
        if has_pass and self.pass_crossed_at is None and log_pass >= math.log(thr_pass):
            self.pass_crossed_at = self.pairs

        if self.fail_crossed_at is not None:
            decision, stat, thr = Decision.FAIL, e_fail, thr_fail
        elif self.pass_crossed_at is not None:
            decision, stat, thr = Decision.PASS, e_pass, thr_pass
        else:
            decision, stat, thr = Decision.CONTINUE, e_fail, thr_fail

        cum = self._cum
        rate_c = cum.e_c / cum.n_c if cum.n_c else math.nan
        rate_b = cum.e_b / cum.n_b if cum.n_b else math.nan
        bounds = self.difference_bounds() if self.compute_bounds else None

        head = (
            f"canary errors {fmt_pct(rate_c)} ({fmt_count(cum.e_c)}/{fmt_count(cum.n_c)}) vs stable "
            f"{fmt_pct(rate_b)} ({fmt_count(cum.e_b)}/{fmt_count(cum.n_b)})"
        )
        if bounds is not None:
            head += f", difference [{fmt_points(bounds[0])}, {fmt_points(bounds[1])}] points"
        pairs = f"{fmt_count(self.pairs)} pairs"
        if decision is Decision.FAIL:
            tail = (
                f": > {fmt_points(self.fail_margin)} points credibly "
                f"(e={fmt_e(e_fail)} ≥ {fmt_e(thr_fail)}, {pairs})"
            )
        elif decision is Decision.PASS:
            tail = (
                f": < {fmt_points(self.pass_margin or 0.0)} points credibly "
                f"(e={fmt_e(e_pass)} ≥ {fmt_e(thr_pass)}, {pairs})"
            )
        else:
            parts = [f"fail e={fmt_e(e_fail)} < {fmt_e(thr_fail)} for > {fmt_points(self.fail_margin)}"]
            if has_pass:
                parts.append(f"pass e={fmt_e(e_pass)} < {fmt_e(thr_pass)} for < {fmt_points(self.pass_margin or 0.0)}")
            tail = f": undecided ({', '.join(parts)}, {pairs})"
        return SequentialResult(
            decision=decision,
            kind=self.kind,
            statistic=stat,
            threshold=thr,
            estimate_canary=rate_c,
            estimate_stable=rate_b,
            bounds_canary=bounds,
            bounds_stable=None,
            n_canary=cum.n_c,
            n_stable=cum.n_b,
            message=head + tail,
            fail_statistic=e_fail,
            fail_threshold=thr_fail,
            pass_statistic=e_pass,
            pass_threshold=thr_pass,
            extra={
                "pairs": float(self.pairs),
                "n_plus": float(self.n_plus),
                "n_zero": float(self.n_zero),
                "n_minus": float(self.n_minus),
                "dropped_canary": float(self.dropped_canary),
                "dropped_stable": float(self.dropped_stable),
            },
        )


class ErrorRateRatioTest:
    """Ratio-margin error-rate gate: FAIL if p_canary > max_ratio * p_stable credibly; PASS if < pass_ratio × credibly.

    PASS is the mirror test (H0': r >= pass_ratio, alternatives pass_ratio / m_j):
    each likelihood ratio l(r_j) - l(r1) with r_j < r1 has conditional mean <= 1
    for every r >= r1 (it decreases in theta), so it is an e-process too. It
    needs errors on both sides to say anything: with rare errors, proving
    "at most double" takes many requests (see bench/README.md).

    Feed it once a second with cumulative counters (`update`) or increments
    (`add`); per-second shares make it robust to a changing traffic split.
    """

    kind = "error_rate_ratio"

    def __init__(
        self,
        *,
        max_ratio: float = 1.0,
        alpha: float = 0.01,
        ratio_multipliers: Sequence[float] = DEFAULT_RATIO_MULTIPLIERS,
        pass_ratio: float | None = None,
        alpha_pass: float | None = None,
    ) -> None:
        if not max_ratio > 0:
            raise ValueError("max_ratio must be positive")
        if pass_ratio is not None and not 0 < pass_ratio <= max_ratio:
            raise ValueError("pass_ratio must be in (0, max_ratio]")
        alpha_pass = alpha if alpha_pass is None else alpha_pass
        if not 0 < alpha_pass < 1:
            raise ValueError("alpha_pass must be in (0, 1)")
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if not ratio_multipliers or any(not m > 1 for m in ratio_multipliers):
            raise ValueError("ratio multipliers must be > 1 (alternatives above the null ratio)")
        self.max_ratio = float(max_ratio)
        self.alpha = float(alpha)
        self.ratios = tuple(self.max_ratio * m for m in ratio_multipliers)
        self._log_ratios = tuple(math.log(r) for r in self.ratios)
        self._log_r0 = math.log(self.max_ratio)
        self._cum = _Cumulative()
        # l(r_j) - l(r0) for each alternative, accumulated over seconds.
        self._llr = [0.0] * len(self.ratios)
        self.crossed_at: tuple[int, int] | None = None
        self.pass_ratio = None if pass_ratio is None else float(pass_ratio)
        self.alpha_pass = float(alpha_pass)
        # PASS side: alternatives below r1 (same multipliers, divided), l(r_j) - l(r1)
        self._log_r1 = math.log(self.pass_ratio) if self.pass_ratio is not None else 0.0
        self._log_pass_ratios = tuple(self._log_r1 - math.log(m) for m in ratio_multipliers) if self.pass_ratio is not None else ()
        self._llr_pass = [0.0] * len(self._log_pass_ratios)
        self.pass_crossed_at: tuple[int, int] | None = None
        self.operations = 0

    def update(self, n_canary: int, err_canary: int, n_stable: int, err_stable: int) -> SequentialResult:
        """Cumulative counters since the start of the stage (call once a second)."""
        return self.add(*self._cum.delta(n_canary, err_canary, n_stable, err_stable), _checked=True)

    def add(
        self, canary_requests: int, canary_errors: int, stable_requests: int, stable_errors: int, *, _checked: bool = False
    ) -> SequentialResult:
        """This second's new requests and errors per version."""
        if not _checked:
            _check_counts(canary_requests, canary_errors, stable_requests, stable_errors)
            c = self._cum
            c.n_c += canary_requests
            c.e_c += canary_errors
            c.n_b += stable_requests
            c.e_b += stable_errors
        x_c, x_b = canary_errors, stable_errors
        if (x_c or x_b) and canary_requests and stable_requests:
            # x_c log theta(r) + x_b log(1 - theta(r)) with theta(r) = r n_c / (r n_c + n_b);
            # the terms that do not depend on r cancel in l(r_j) - l(r0).
            x = x_c + x_b
            log_nc, log_nb = math.log(canary_requests), math.log(stable_requests)

            def ll(log_r: float) -> float:
                lrn = log_r + log_nc
                top = max(lrn, log_nb)
                log_den = top + math.log(math.exp(lrn - top) + math.exp(log_nb - top))
                return x_c * lrn - x * log_den

            base = ll(self._log_r0)
            for j, log_r in enumerate(self._log_ratios):
                self._llr[j] += ll(log_r) - base
            self.operations += len(self._log_ratios) + 1
            if self._llr_pass:
                base1 = ll(self._log_r1)
                for j, log_r in enumerate(self._log_pass_ratios):
                    self._llr_pass[j] += ll(log_r) - base1
                self.operations += len(self._log_pass_ratios) + 1
        return self.result()

    def log_e(self) -> float:
        return _logsumexp(self._llr) - math.log(len(self._llr))

    def log_e_pass(self) -> float:
        """log of the PASS e-process (H0': ratio >= pass_ratio); 0 without a pass_ratio."""
        if not self._llr_pass:
            return 0.0
        return _logsumexp(self._llr_pass) - math.log(len(self._llr_pass))

    def result(self) -> SequentialResult:
        log_e = self.log_e()
        e = math.exp(min(log_e, 700.0))
        thr = 1 / self.alpha
        cum = self._cum
        if self.crossed_at is None and log_e >= math.log(thr):
            self.crossed_at = (cum.n_c, cum.n_b)
        log_e_pass = self.log_e_pass()
        e_pass = math.exp(min(log_e_pass, 700.0))
        thr_pass = 1 / self.alpha_pass
        if self.pass_crossed_at is None and self.pass_ratio is not None and log_e_pass >= math.log(thr_pass):
            self.pass_crossed_at = (cum.n_c, cum.n_b)
        if self.crossed_at is not None:
            decision = Decision.FAIL
        elif self.pass_crossed_at is not None:
            decision = Decision.PASS
        else:
            decision = Decision.CONTINUE
        rate_c = cum.e_c / cum.n_c if cum.n_c else math.nan
        rate_b = cum.e_b / cum.n_b if cum.n_b else math.nan
        if rate_b > 0:
            ratio = rate_c / rate_b
        elif rate_c > 0:
            ratio = math.inf
        else:
            ratio = math.nan
        ratio_txt = "∞" if math.isinf(ratio) else ("nan" if math.isnan(ratio) else f"{ratio:.3g}×")
        head = (
            f"canary errors {fmt_pct(rate_c)} ({fmt_count(cum.e_c)}/{fmt_count(cum.n_c)}) vs stable "
            f"{fmt_pct(rate_b)} ({fmt_count(cum.e_b)}/{fmt_count(cum.n_b)}), ratio {ratio_txt}"
        )
        counts = f"{fmt_count(cum.n_c)}/{fmt_count(cum.n_b)} requests"
        if decision is Decision.FAIL:
            tail = f": > {self.max_ratio:g}× stable credibly (e={fmt_e(e)} ≥ {fmt_e(thr)}, {counts})"
        elif decision is Decision.PASS:
            tail = f": < {self.pass_ratio:g}× stable credibly (e={fmt_e(e_pass)} ≥ {fmt_e(thr_pass)}, {counts})"
        else:
            more = f", pass e={fmt_e(e_pass)} < {fmt_e(thr_pass)} for < {self.pass_ratio:g}×" if self.pass_ratio is not None else ""
            tail = f": undecided (e={fmt_e(e)} < {fmt_e(thr)} for > {self.max_ratio:g}× stable{more}, {counts})"
        return SequentialResult(
            decision=decision,
            kind=self.kind,
            statistic=e,
            threshold=thr,
            estimate_canary=rate_c,
            estimate_stable=rate_b,
            bounds_canary=None,
            bounds_stable=None,
            n_canary=cum.n_c,
            n_stable=cum.n_b,
            message=head + tail,
            fail_statistic=e,
            fail_threshold=thr,
            pass_statistic=e_pass if self.pass_ratio is not None else math.nan,
            pass_threshold=thr_pass if self.pass_ratio is not None else math.nan,
            extra={"ratio": ratio},
        )

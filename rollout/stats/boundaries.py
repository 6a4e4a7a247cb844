"""Uniform (time-uniform, "anytime") boundaries for sums of bounded increments.

A boundary b(v) for a process S_n = sum of increments in [-g, h] with
variance process v = g*h*n guarantees P(exists n: S_n >= b(v_n)) <= alpha.
We use the one-sided beta-binomial mixture of Howard, Ramdas, McAuliffe and
Sekhon ("Time-uniform, nonparametric, nonasymptotic confidence sequences",
Ann. Statist. 2021), the boundary confseq implements as `BetaBinomialMixture`
in `uniform_boundaries.h`: the mixture of the exact Bernoulli (two-point)
supermartingales exp(lambda*S - psi(lambda)*n) over a truncated beta prior.
It is the tightest boundary for {-g, h}-valued increments, which is what
1{X_i <= q} - p is, so Howard & Ramdas use it for quantile confidence
sequences (`rollout.stats.quantile_cs`).

Cost. The boundary has no closed form; b(v) is a root of
log M(s, v) = log(1/alpha) found with Brent's method (~10-20 evaluations of
betainc/betaln, ~0.1 ms). A gate asks for b at a new n every second, so
`BetaBinomialBoundary.at_count(n)` never solves at n itself: it solves once
at grid points n_k = GRID_RATIO**k >= n (exact integers below EXACT_BELOW) and
returns b(n_k). b is increasing in v, so b(n_k) >= b(n): the rounding only
widens the boundary (by < 0.25 %), never invalidates it. At 200 requests/s a
new grid point is reached every few seconds at n = 100,000; all other calls
are a dict lookup. Boundary objects are shared through `beta_binomial_boundary`
(an lru_cache), so every gate with the same (g, h, alpha, v_opt) shares roots.

scipy (`scipy.special.betainc`, `betaln`, `scipy.optimize.brentq`) is imported
lazily, so modules that only need the error-rate tests import without it.
"""

from __future__ import annotations

import functools
import math

GRID_RATIO = 1.005  # boundary evaluated at n rounded up to a 0.5 % geometric grid
EXACT_BELOW = 256  # ... and at the exact n below this
_LOG_GRID_RATIO = math.log(GRID_RATIO)


def _scipy():  # type: ignore[no-untyped-def]
    try:
        from scipy import optimize, special
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rollout.stats.boundaries needs scipy (betainc, betaln, brentq) for latency-quantile gates; "
            "install it with `pip install scipy`"
        ) from exc
    return special, optimize


def normal_mixture_rho(v_opt: float, alpha_opt: float, one_sided: bool = True) -> float:
    """The mixture precision that makes the normal-mixture boundary tightest at v = v_opt.

    confseq's `TwoSidedNormalMixture::best_rho`; the one-sided version uses 2*alpha.
    """
    a = 2 * alpha_opt if one_sided else alpha_opt
    log_inv = math.log(1 / a)
    return v_opt / (2 * log_inv + math.log(1 + 2 * log_inv))


class BetaBinomialBoundary:
    """One-sided beta-binomial mixture boundary for increments in [-g, h], at level alpha.

    `log_supermartingale(s, v)` is log M(s, v), a nonnegative supermartingale
    (M(0, 0) = 1) when S has mean <= 0; `bound(v)` is the smallest s with
    log M(s, v) >= log(1/alpha) (math.inf if no attainable s, s <= v/g,
    reaches it); `at_count(n)` is the cached, conservatively rounded bound at
    v = g*h*n.
    """

    def __init__(self, g: float, h: float, alpha: float, v_opt: float, alpha_opt: float | None = None) -> None:
        if not (g > 0 and h > 0):
            raise ValueError("g and h must be positive")
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if not v_opt > 0:
            raise ValueError("v_opt must be positive")
        self.g = float(g)
        self.h = float(h)
        self.alpha = float(alpha)
        self.v_opt = float(v_opt)
        self.alpha_opt = float(alpha if alpha_opt is None else alpha_opt)
        self.log_threshold = math.log(1 / self.alpha)
        rho = normal_mixture_rho(self.v_opt, self.alpha_opt, one_sided=True)
        gh = self.g * self.h
        self.r = max(rho - gh, 1e-3 * gh)  # confseq's optimal_r
        gph = self.g + self.h
        self._x = self.h / gph
        self._normalizer = self._log_incomplete_beta(self.r / (self.g * gph), self.r / (self.h * gph))
        self._cache: dict[int, float] = {}
        # Operation counters (tests and benchmarks read them to check the cost per update).
        self.evaluations = 0
        self.root_solves = 0

    def _log_incomplete_beta(self, a: float, b: float) -> float:
        special, _ = _scipy()
        value = float(special.betainc(a, b, self._x))
        if value <= 0.0:
            return -math.inf
        return math.log(value) + float(special.betaln(a, b))

    def log_supermartingale(self, s: float, v: float) -> float:
        """log M(s, v) of the one-sided beta-binomial mixture (confseq `BetaBinomialMixture::log_superMG`)."""
        self.evaluations += 1
        g, h = self.g, self.h
        gph = g + h
        a = (self.r + v - g * s) / (g * gph)
        b = (self.r + v + h * s) / (h * gph)
        if a <= 0 or b <= 0:
            return math.inf
        return (
            v / (g * h) * math.log(gph)
            - ((v + h * s) / (h * gph)) * math.log(g)
            - ((v - g * s) / (g * gph)) * math.log(h)
            + self._log_incomplete_beta(a, b)
            - self._normalizer
        )

    def bound(self, v: float) -> float:
        """The exact boundary at intrinsic time v (a root solve; prefer `at_count`)."""
        if v <= 0:
            return math.inf
        _, optimize = _scipy()
        self.root_solves += 1
        s_max = v / self.g  # the largest value S can take after v/(g*h) increments
        f_max = self.log_supermartingale(s_max, v) - self.log_threshold
        if not f_max >= 0:  # never crosses: no finite boundary (also catches nan)
            return math.inf
        f0 = self.log_supermartingale(0.0, v) - self.log_threshold
        if f0 >= 0:  # pragma: no cover - M(0, v) <= 1 < 1/alpha
            return 0.0
        root = optimize.brentq(
            lambda s: self.log_supermartingale(s, v) - self.log_threshold, 0.0, s_max, xtol=1e-9, rtol=1e-10
        )
        # Round up by a hair so the root is on the crossing side despite the solver's tolerance.
        return min(float(root) * (1 + 1e-9) + 1e-9, s_max)

    def at_count(self, n: float) -> float:
        """The boundary for n increments (v = g*h*n), rounded up to the grid and cached."""
        if n <= 0:
            return math.inf
        if n < EXACT_BELOW:
            key = -math.ceil(n)  # negative keys: exact integer counts
            n_eval = float(math.ceil(n))
        else:
            key = math.floor(math.log(n) / _LOG_GRID_RATIO) + 1
            n_eval = max(GRID_RATIO**key, float(n))
        cached = self._cache.get(key)
        if cached is None:
            cached = self.bound(self.g * self.h * n_eval)
            self._cache[key] = cached
        return cached

    def __repr__(self) -> str:
        return f"BetaBinomialBoundary(g={self.g}, h={self.h}, alpha={self.alpha}, v_opt={self.v_opt})"


@functools.lru_cache(maxsize=256)
def beta_binomial_boundary(g: float, h: float, alpha: float, v_opt: float) -> BetaBinomialBoundary:
    """A shared (cached) boundary object, so gates with equal parameters share root solves."""
    return BetaBinomialBoundary(g, h, alpha, v_opt)

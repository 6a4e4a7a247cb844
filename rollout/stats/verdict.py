"""Result types shared by the sequential canary tests, the alpha split, and number formatting."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum


class Decision(str, Enum):
    """The three outcomes of an anytime-valid gate."""

    PASS = "pass"  # the canary is credibly within the pass margin (false PASS <= alpha_pass)
    FAIL = "fail"  # the canary is credibly worse than the fail margin (false FAIL <= alpha_fail)
    CONTINUE = "continue"  # not enough evidence either way yet: keep collecting

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SequentialResult:
    """One gate's verdict after an update, with the numbers a message or report needs.

    `statistic` and `threshold` are the pair that decided (or, for CONTINUE, the
    FAIL pair): an e-value against 1/alpha for the error-rate tests, a ratio of
    confidence bounds against 1 + delta for latency quantiles. The fail_* and
    pass_* fields keep both sides. `bounds_*` are anytime-valid confidence
    bounds (for the paired error test, `bounds_canary` holds the bounds of the
    difference canary - stable and `bounds_stable` is None).
    """

    decision: Decision
    kind: str  # "error_rate_diff" | "error_rate_ratio" | "latency_quantile"
    statistic: float
    threshold: float
    estimate_canary: float
    estimate_stable: float
    bounds_canary: tuple[float, float] | None
    bounds_stable: tuple[float, float] | None
    n_canary: int
    n_stable: int
    message: str
    fail_statistic: float = math.nan
    fail_threshold: float = math.nan
    pass_statistic: float = math.nan
    pass_threshold: float = math.nan
    extra: Mapping[str, float] = field(default_factory=dict)

    @property
    def e_value(self) -> float:
        """The deciding e-value for error-rate tests (nan for latency quantiles)."""
        return self.statistic if self.kind.startswith("error_rate") else math.nan

    def to_dict(self) -> dict[str, object]:
        def clean(x: object) -> object:
            if isinstance(x, float) and not math.isfinite(x):
                return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
            if isinstance(x, tuple):
                return [clean(v) for v in x]
            return x

        return {
            "decision": self.decision.value,
            "kind": self.kind,
            "statistic": clean(self.statistic),
            "threshold": clean(self.threshold),
            "estimate_canary": clean(self.estimate_canary),
            "estimate_stable": clean(self.estimate_stable),
            "bounds_canary": clean(self.bounds_canary),
            "bounds_stable": clean(self.bounds_stable),
            "n_canary": self.n_canary,
            "n_stable": self.n_stable,
            "fail_statistic": clean(self.fail_statistic),
            "fail_threshold": clean(self.fail_threshold),
            "pass_statistic": clean(self.pass_statistic),
            "pass_threshold": clean(self.pass_threshold),
            "extra": {k: clean(v) for k, v in self.extra.items()},
            "message": self.message,
        }


def bonferroni(alpha: float, gates: int) -> float:
    """The per-gate level when `gates` gates share a total error budget alpha (alpha / M)."""
    if gates < 1:
        raise ValueError("need at least one gate")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    return alpha / gates


def split_alpha(alpha: float, gates: Sequence[str] | Mapping[str, float]) -> dict[str, float]:
    """Split a total alpha over named gates (weighted Bonferroni; equal weights for a sequence).

    The probability that any gate reaches a false verdict is at most the sum of
    the per-gate levels, i.e. alpha, whatever the dependence between gates.
    """
    if isinstance(gates, Mapping):
        weights = {name: float(w) for name, w in gates.items()}
    else:
        names = list(gates)
        if len(set(names)) != len(names):
            raise ValueError("gate names must be unique")
        weights = {name: 1.0 for name in names}
    if not weights:
        raise ValueError("need at least one gate")
    if any(not (w > 0) for w in weights.values()):
        raise ValueError("weights must be positive")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    total = sum(weights.values())
    return {name: alpha * w / total for name, w in weights.items()}


# --------------------------------------------------------------------------- formatting


def fmt_count(n: int | float) -> str:
    """4210 -> '4,210'."""
    return f"{int(n):,}"


def fmt_e(e: float) -> str:
    """An e-value for humans: 'e=142', 'e=3.2', 'e>1e6'."""
    if math.isnan(e):
        return "nan"
    if e >= 1e6:
        return f"{e:.1e}"
    if e >= 100:
        return f"{e:,.0f}"
    if e >= 10:
        return f"{e:.0f}"
    return f"{e:.2g}"


def fmt_value(x: float) -> str:
    """A latency or other value with about 3 significant digits: 812, 61.3, 0.842, ∞."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_pct(rate: float, digits: int = 2) -> str:
    """A rate as percent: 0.0213 -> '2.13 %' ('n/a' before any request)."""
    if math.isnan(rate):
        return "n/a"
    return f"{100 * rate:.{digits}f} %"


def fmt_points(diff: float) -> str:
    """A difference of rates in percentage points, signed: 0.012 -> '+1.20'."""
    if math.isnan(diff):
        return "nan"
    if math.isinf(diff):
        return "+∞" if diff > 0 else "-∞"
    return f"{100 * diff:+.2f}"

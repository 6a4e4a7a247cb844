"""Anytime-valid canary-vs-stable tests: PASS / FAIL / CONTINUE, checked every second.

Every test here is an e-process or a confidence sequence: its error bound
holds uniformly over time (Ville's inequality), so looking at it every second
and stopping at the first verdict is valid -- unlike a fixed-horizon test or a
"p95 > 1.2x over the last 10 s" rule, which fail identical versions often
(see bench/bench_false_rollback.py and /work/shared/reference/canary-statistics.md).

Gates (plain objects over counters and histograms; no I/O, no locust):

- `PairedErrorRateTest` -- error rate, additive margin (FAIL and PASS), exact
  for any rate: paired betting e-process over (n+, n0, n-) counters, pairing
  from per-second counts (see `rollout.stats.error_rate`).
- `ErrorRateRatioTest` -- error rate, ratio margin (FAIL only): per-second
  likelihood-ratio mixture for "canary errors > r0 x stable errors".
- `QuantileTest` -- latency percentile (p50..p99): Howard & Ramdas confidence
  sequences from order statistics of each version's `Histogram`, with the
  beta-binomial mixture boundary (cached; see `rollout.stats.boundaries`).

Multiple gates: give each gate its share of the total alpha with
`split_alpha(alpha, names)` / `bonferroni(alpha, M)`.

Each `update(...)` returns a `SequentialResult` with the decision, the
deciding statistic and threshold, estimates, bounds, counts and a message such as
"canary p95 [812, 845] ms vs stable [610, 640] ms: > +20 % credibly
(canary lower / stable upper 1.269 > 1.20, 4,210/4,190 requests)".
"""

from __future__ import annotations

from .boundaries import BetaBinomialBoundary, beta_binomial_boundary
from .error_rate import (
    DEFAULT_BET_FRACTIONS,
    DEFAULT_RATIO_MULTIPLIERS,
    ErrorRateRatioTest,
    PairedErrorRateTest,
    hypergeometric,
)
from .quantile_cs import (
    DEFAULT_N_OPT,
    OrderStatistics,
    QuantileBounds,
    QuantileTest,
    SortedSample,
    quantile_confidence_sequence,
)
from .verdict import Decision, SequentialResult, bonferroni, split_alpha

__all__ = [
    "DEFAULT_BET_FRACTIONS",
    "DEFAULT_N_OPT",
    "DEFAULT_RATIO_MULTIPLIERS",
    "BetaBinomialBoundary",
    "Decision",
    "ErrorRateRatioTest",
    "OrderStatistics",
    "PairedErrorRateTest",
    "QuantileBounds",
    "QuantileTest",
    "SequentialResult",
    "SortedSample",
    "beta_binomial_boundary",
    "bonferroni",
    "hypergeometric",
    "quantile_confidence_sequence",
    "split_alpha",
]

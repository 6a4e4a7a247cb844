"""A constant-memory, mergeable latency histogram with a stated relative error.

Locust rounds response times to about two significant digits before it
stores them (up to ~5 % error), which is too coarse to compare a canary's p95
with stable's. We record the raw float milliseconds of every request into
logarithmic buckets (the DDSketch mapping): bucket i holds values in
(gamma^(i-1), gamma^i], and a value read back from a bucket is within
RELATIVE_ERROR of every value the bucket holds. Memory is bounded by the
number of distinct buckets (about 2,300 between 1 µs and 1 hour), never by
the number of requests, and two histograms merge by adding counts, so
per-second, per-stage and per-worker histograms combine exactly.

Written here rather than taken from ddsketch/hdrhistogram: `record` sits on
the load generator's hot path (one call per request, inside the gevent loop)
and a dict increment plus one `math.log` is the cheapest form; the on-disk
form is a plain JSON dict so reports need no extra decoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

RELATIVE_ERROR = 0.005  # every quantile read back is within 0.5 % of a recorded value
_GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_LOG_GAMMA = math.log(_GAMMA)
_INV_LOG_GAMMA = 1.0 / _LOG_GAMMA
MIN_VALUE = 0.001  # ms; anything at or below is counted in the zero bucket (1 µs)
MAX_VALUE = 3.6e9  # ms (1,000 hours); larger, infinite or NaN values are clamped


class Histogram:
    """Counts of values (milliseconds or any positive quantity) in log buckets."""

    __slots__ = ("buckets", "zero", "count", "total", "min", "max")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.zero = 0
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def record(self, value: float, n: int = 1) -> None:
        # the load generator's hot path: one call per request, kept to the bare minimum
        if not 0.0 <= value < MAX_VALUE:  # NaN, inf, negative: clamp rather than crash the load
            value = MAX_VALUE if value == value and value > 0 else 0.0
        if n <= 0:
            return
        self.count += n
        self.total += value * n
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if value <= MIN_VALUE:
            self.zero += n
            return
        key = math.ceil(math.log(value) * _INV_LOG_GAMMA)
        buckets = self.buckets
        buckets[key] = buckets.get(key, 0) + n

    def minus(self, earlier: Histogram) -> Histogram:
        """What was recorded since `earlier` (a copy of this histogram taken before): per-second views
        of a cumulative histogram cost O(buckets) once a second instead of a second record per request.
        min/max of the difference are bounded by the buckets it spans."""
        h = Histogram()
        for key, n in self.buckets.items():
            d = n - earlier.buckets.get(key, 0)
            if d:
                h.buckets[key] = d
        h.zero = self.zero - earlier.zero
        h.count = self.count - earlier.count
        h.total = self.total - earlier.total
        if h.buckets:
            lo, hi = min(h.buckets), max(h.buckets)
            h.min = max(self.min, _GAMMA ** (lo - 1))
            h.max = min(self.max, _GAMMA**hi)
        if h.zero:
            h.min = self.min
        return h

    def merge(self, other: Histogram) -> None:
        for key, n in other.buckets.items():
            self.buckets[key] = self.buckets.get(key, 0) + n
        self.zero += other.zero
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> Histogram:
        h = Histogram()
        h.merge(self)
        return h

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def _iter_sorted(self) -> Iterator[tuple[float, int]]:
        if self.zero:
            yield (max(self.min, 0.0), self.zero)
        for key in sorted(self.buckets):
            # The bucket's representative value: within RELATIVE_ERROR of both its bounds.
            yield (2 * _GAMMA**key / (_GAMMA + 1), self.buckets[key])

    def value_at_rank(self, rank: int) -> float:
        """The rank-th smallest recorded value (1-based order statistic), to RELATIVE_ERROR.

        Sequential quantile tests need order statistics X_(k), not only quantiles.
        The extreme ranks return the exact min and max, which are kept exactly.
        """
        if self.count == 0:
            return math.nan
        if rank <= 1:
            return self.min
        if rank >= self.count:
            return self.max
        seen = 0
        for value, n in self._iter_sorted():
            seen += n
            if seen >= rank:
                return min(max(value, self.min), self.max)
        return self.max

    def quantile(self, q: float) -> float:
        """The q-quantile (0 ≤ q ≤ 1): the ceil(q·N)-th smallest value, as nearest-rank percentiles are."""
        if self.count == 0:
            return math.nan
        # the small epsilon keeps float noise (0.07 * 100 = 7.000000000000001) from skipping a rank
        return self.value_at_rank(max(1, math.ceil(q * self.count - 1e-9)))

    def values_at_ranks(self, ranks: list[int]) -> list[float]:
        """Several order statistics in one pass over the sorted buckets (ranks 1-based, any order)."""
        if self.count == 0:
            return [math.nan] * len(ranks)
        order = sorted(range(len(ranks)), key=lambda i: ranks[i])
        out = [math.nan] * len(ranks)
        it = iter(self._iter_sorted())
        seen, value = 0, self.min
        for i in order:
            r = ranks[i]
            if r <= 1:
                out[i] = self.min
                continue
            if r >= self.count:
                out[i] = self.max
                continue
            while seen < r:
                value, n = next(it)
                seen += n
            out[i] = min(max(value, self.min), self.max)
        return out

    def count_at_or_below(self, value: float) -> int:
        """How many recorded values are ≤ value (to the bucket containing value)."""
        if value <= MIN_VALUE:
            return self.zero if value >= self.min else 0
        limit = math.ceil(math.log(value) / _LOG_GAMMA)
        return self.zero + sum(n for key, n in self.buckets.items() if key <= limit)

    def to_dict(self) -> dict[str, object]:
        return {
            "relative_error": RELATIVE_ERROR,
            "count": self.count,
            "total": self.total,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "zero": self.zero,
            "buckets": {str(k): v for k, v in sorted(self.buckets.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Histogram:
        stored = data.get("relative_error", RELATIVE_ERROR)
        if stored != RELATIVE_ERROR:
            raise ValueError(f"histogram recorded with relative error {stored}, this version reads {RELATIVE_ERROR}")
        h = cls()
        h.count = int(data.get("count", 0))  # type: ignore[arg-type]
        h.total = float(data.get("total", 0.0))  # type: ignore[arg-type]
        h.zero = int(data.get("zero", 0))  # type: ignore[arg-type]
        if h.count:
            h.min = float(data["min"])  # type: ignore[arg-type]
            h.max = float(data["max"])  # type: ignore[arg-type]
        buckets = data.get("buckets", {})
        assert isinstance(buckets, Mapping)
        h.buckets = {int(k): int(v) for k, v in buckets.items()}
        return h

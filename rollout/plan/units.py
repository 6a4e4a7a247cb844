"""Parsing the human units a plan is written in: `90s`, `5m`, `300ms`, `1%`.

Each parser returns a plain float in one canonical unit (seconds, milliseconds,
fraction 0..1) and raises ValueError with the exact form expected, which the
plan validator turns into a located error message.
"""

from __future__ import annotations

import math
import re

_NUM = r"(\d+(?:\.\d+)?|\.\d+)"
_DURATION = re.compile(rf"^{_NUM}\s*(ms|s|m|h)$")
_LATENCY = re.compile(rf"^{_NUM}\s*(us|µs|ms|s)$")
_PERCENT = re.compile(rf"^{_NUM}\s*%$")

_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_MILLIS = {"us": 0.001, "µs": 0.001, "ms": 1.0, "s": 1000.0}

# Upper bounds: a finite number can still be absurd (1e300 s overflows every timer API).
# Nothing a plan times is longer than a year (a watch's false_alarm_every may be months), no latency limit above a day.
MAX_DURATION = 366 * 86400.0
MAX_LATENCY_MS = 86400.0 * 1000.0


def _bounded(value: float, limit: float, expected: str) -> float:
    """NaN and infinity are never a duration or a limit: `.nan` would make a gate pass, `.inf` a stage endless."""
    if not math.isfinite(value):
        raise ValueError(f"{expected} (a finite number: not .nan or .inf)")
    if value > limit:
        raise ValueError(f"{expected}, at most {limit:g}")
    return value


def parse_duration(value: object) -> float:
    """`90s`, `5m`, `1h`, `500ms`, or a bare number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration such as 90s, 5m or 1h")
    expected = "a duration such as 90s, 5m or 1h (at most 8784h, a year)"
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration ≥ 0 such as 90s, 5m or 1h")
        return _bounded(float(value), MAX_DURATION, expected)
    if isinstance(value, str):
        m = _DURATION.fullmatch(value.strip())
        if m:
            return _bounded(float(m.group(1)) * _SECONDS[m.group(2)], MAX_DURATION, expected)
    raise ValueError("a duration such as 90s, 5m or 1h")


def parse_latency(value: object) -> float:
    """`300ms`, `1.5s`, `800us`, or a bare number of milliseconds → milliseconds."""
    if isinstance(value, bool):
        raise ValueError("a latency such as 300ms or 1.5s")
    expected = "a latency such as 300ms or 1.5s (at most 24h)"
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a latency ≥ 0 such as 300ms or 1.5s")
        return _bounded(float(value), MAX_LATENCY_MS, expected)
    if isinstance(value, str):
        m = _LATENCY.fullmatch(value.strip())
        if m:
            return _bounded(float(m.group(1)) * _MILLIS[m.group(2)], MAX_LATENCY_MS, expected)
    raise ValueError("a latency such as 300ms or 1.5s")


def parse_percent(value: object, *, allow_above_100: bool = False) -> float:
    """`1%`, `0.5%` → fraction. Bare numbers are refused: is `1` one percent or all?"""
    if isinstance(value, str):
        m = _PERCENT.fullmatch(value.strip())
        if m:
            frac = float(m.group(1)) / 100.0
            if not math.isfinite(frac):
                raise ValueError("a percentage such as 1% or 0.5% (a finite number)")
            if frac > 1.0 and not allow_above_100:
                raise ValueError("a percentage between 0% and 100%")
            return frac
    raise ValueError("a percentage such as 1% or 0.5%")


def parse_weight(value: object) -> float:
    """A traffic weight: `10%` or a bare number 0..100 (percent) → fraction."""
    if isinstance(value, bool):
        raise ValueError("a weight between 0 and 100 (percent), such as 10 or 10%")
    if isinstance(value, int | float):
        if 0 <= value <= 100:  # NaN fails both comparisons
            return float(value) / 100.0
        raise ValueError("a weight between 0 and 100 (percent), such as 10 or 10%")
    if isinstance(value, str):
        return parse_percent(value)
    raise ValueError("a weight between 0 and 100 (percent), such as 10 or 10%")


def fmt_duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    if seconds < 1 and seconds > 0:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def fmt_ms(ms: float) -> str:
    if ms != ms:  # NaN
        return "n/a"
    if ms >= 10000:
        return f"{ms / 1000:.1f} s"
    if ms >= 100:
        return f"{ms:,.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def fmt_percent(frac: float) -> str:
    """0.0123 → `1.23%`, 0.1 → `10%`, 0.00042 → `0.042%`: enough digits to compare, no more."""
    if frac != frac:
        return "n/a"
    pct = frac * 100
    if pct == 0:
        return "0%"
    text = f"{pct:.3g}" if pct < 100 else f"{pct:.0f}"
    return f"{text}%"


_POINTS = re.compile(rf"^\+?\s*{_NUM}\s*(pt|pts|pp|points?)$")
_SIGNED_PERCENT = re.compile(rf"^\+?\s*{_NUM}\s*%$")


def parse_rate_or_fraction(value: object) -> float:
    """An alpha or other probability: `1%` or a bare fraction `0.01` → fraction (no ambiguity: < 1)."""
    if isinstance(value, bool):
        raise ValueError("a rate such as 1% or 0.01")
    if isinstance(value, int | float):
        return _bounded(float(value), math.inf, "a rate such as 1% or 0.01")
    if isinstance(value, str):
        s = value.strip()
        if _PERCENT.match(s):
            return parse_percent(s)
        try:
            return _bounded(float(s), math.inf, "a rate such as 1% or 0.01")  # float("nan") parses: refused here
        except ValueError as exc:
            if "finite" in str(exc):
                raise
    raise ValueError("a rate such as 1% or 0.01")


def parse_points(value: object) -> float | None:
    """`+1pt`, `0.5pt`, `1pp`, `2 points` → a difference of rates as a fraction (0.01); None when not in points."""
    if isinstance(value, str):
        m = _POINTS.match(value.strip())
        if m:
            return _bounded(float(m.group(1)) / 100.0, math.inf, "a difference in points such as +1pt")
    return None


def parse_relative(value: object) -> float:
    """`20%` or `+20%` → 0.2 (a relative increase; above 100 % allowed: `+150%` is ×2.5)."""
    if isinstance(value, str):
        m = _SIGNED_PERCENT.match(value.strip())
        if m:
            return _bounded(float(m.group(1)) / 100.0, math.inf, "a percentage such as 20% or +20%")
    raise ValueError("a percentage such as 20% or +20%")

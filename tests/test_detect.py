"""CUSUM change detection for watching a live version (rollout.stats.detect): pure tests."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from rollout.stats.detect import Change, RateCusum, cusum_path, threshold


def test_threshold_is_log_of_checks_times_alternatives_over_budget() -> None:
    # 30 days checked every second, 3 alternatives, 1 false alarm allowed
    h = threshold(1.0, 30 * 86400, 1.0, 3)
    assert h == pytest.approx(math.log(3 * 30 * 86400))
    assert threshold(0.5, 3600, 1.0, 1) == pytest.approx(math.log(7200))
    with pytest.raises(ValueError):
        threshold(0.0, 3600, 1.0)


def test_closed_form_path_matches_the_recursion() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(-0.1, 1.0, 5000)
    s, out = 0.0, []
    for v in z:
        s = max(0.0, s + v)
        out.append(s)
    assert np.allclose(cusum_path(z), out)


def _run(det: RateCusum, p: float, seconds: int, rps: int, rng: random.Random, t0: float = 0.0) -> list[tuple[float, Change]]:
    events = []
    for t in range(seconds):
        n = rps
        x = sum(1 for _ in range(n) if rng.random() < p)
        ch = det.update(n, x, t0 + t)
        if ch is not Change.NONE:
            events.append((t0 + t, ch))
    return events


def test_unchanged_rate_at_the_limit_raises_few_false_alarms_vs_the_bound() -> None:
    """At the limit itself (the worst pre-change case), alarms stay within Lorden's bound: ARL >= e^h checks.
    h is set for <= 1 false alarm per 20,000 checks; 200,000 checks at the limit (vectorised) may raise
    at most ~10 by the bound: assert well under a generous multiple, and that the naive window rule raises far more."""
    rng = np.random.default_rng(7)
    p0, n, steps = 0.02, 50, 200_000
    det = RateCusum(limit=p0, h=threshold(1.0, 20_000, 1.0))
    x = rng.binomial(n, p0, steps)
    alarms = 0
    for i in range(len(det.multipliers)):
        bad, good = det._llr[i]
        llr = x * bad + (n - x) * good
        start = 0
        while start < steps:
            path = cusum_path(llr[start:])
            hit = np.flatnonzero(path >= det.threshold_each)
            if not hit.size:
                break
            alarms += 1
            start += int(hit[0]) + 1
    assert alarms <= 10 * 3  # the bound allows ~10; a broken statistic alarms thousands of times
    # the naive rule "rate over the last 60 s > limit", checked every second, at the same true rate:
    window = np.convolve(x, np.ones(60, dtype=int), "valid")
    assert int(np.sum(window > p0 * n * 60)) > 1000


def test_a_jump_to_twice_the_limit_is_detected_with_its_numbers() -> None:
    rng = random.Random(3)
    det = RateCusum(limit=0.01, h=threshold(1.0, 30 * 86400, 1.0))
    assert _run(det, 0.001, 600, 50, rng) == []  # ten quiet minutes at 0.1 %
    events = _run(det, 0.04, 600, 50, rng, t0=600)
    assert events and events[0][1] is Change.ALARM
    at = events[0][0]
    assert 600 < at < 600 + 300  # 4 % against a 1 % limit: within minutes at 50 req/s
    text = det.describe()
    assert "over the last" in text and "limit 1%" in text and "CUSUM" in text
    w = det.evidence()
    assert w.n >= 50 and w.rate > 0.01 and w.since is not None and w.since >= 600 - 60


def test_alarm_resolves_once_normal_data_erases_the_evidence() -> None:
    rng = random.Random(5)
    det = RateCusum(limit=0.01, h=threshold(1.0, 86400, 1.0))
    fired = _run(det, 0.05, 300, 50, rng)
    assert fired and fired[0][1] is Change.ALARM and det.firing
    back = _run(det, 0.0005, 3600, 50, rng, t0=300)
    assert back and back[-1][1] is Change.RESOLVED and not det.firing
    assert all(v == 0.0 for v in det.s)


def test_state_round_trips_and_continues_identically() -> None:
    rng = random.Random(11)
    a = RateCusum(limit=0.05, h=12.0)
    _run(a, 0.08, 100, 20, rng)
    b = RateCusum.from_dict(a.to_dict())
    assert b.to_dict() == a.to_dict()
    for t in range(50):
        x = rng.randint(0, 3)
        assert a.update(20, x, 1000 + t) == b.update(20, x, 1000 + t)
    assert a.to_dict() == b.to_dict()


@pytest.mark.parametrize("bad", [dict(limit=0.0, h=5), dict(limit=1.0, h=5), dict(limit=0.1, h=float("nan")),
                                 dict(limit=0.1, h=5, multipliers=(1.0,))])
def test_invalid_detectors_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        RateCusum(**bad)


def test_invalid_batches_are_refused() -> None:
    det = RateCusum(limit=0.1, h=5)
    with pytest.raises(ValueError):
        det.update(3, 4, 0.0)


def test_a_severe_breach_clears_within_a_bounded_time_once_normal() -> None:
    """The statistic is capped at twice its threshold: 100 % bad for an hour clears as fast as a short breach."""
    rng = random.Random(8)
    det = RateCusum(limit=0.05, h=10.0)
    _run(det, 1.0, 3600, 20, rng)
    assert det.firing and max(det.s) <= 2 * det.threshold_each + 1e-9
    back = _run(det, 0.0, 600, 20, rng, t0=3600)
    assert back and back[-1][1] is Change.RESOLVED and back[-1][0] < 3600 + 120

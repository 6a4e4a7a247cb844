"""One stage through the executor with a scripted load: early pass, health checks sending it to review."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import pytest

from rollout.engine.executor import Engine
from rollout.engine.state import Phase, new_state
from rollout.gates.health import health_checks, split_mismatch
from rollout.engine.state import Split
from rollout.load.stats import StageStats
from rollout.plan import load_plan
from rollout.plan.model import Gate
from tests.conftest import write_plan
from tests.test_engine_recovery import MemoryBackend, MemoryStore, Quiet


def scripted(seconds: int, canary_err: float, stable_err: float, share: float = 0.5, rps: int = 400, cpu: float = 20.0) -> Callable[[Any, Any], StageStats]:
    """A load runner that feeds `seconds` ticks of synthetic traffic split by `share`."""

    def run(spec: Any, on_tick: Callable[[StageStats], bool]) -> StageStats:
        rng = random.Random(1)
        stats = StageStats()
        for sec in range(1, seconds + 1):
            for _ in range(rps):
                role = "canary" if rng.random() < share else "stable"
                err = canary_err if role == "canary" else stable_err
                stats.role(role).add(rng.lognormvariate(3, 0.3), rng.random() < err)
                stats.cohort_routing[f"other->{role}"] = stats.cohort_routing.get(f"other->{role}", 0) + 1
            stats.elapsed, stats.cpu_max = float(sec), cpu
            if on_tick(stats):
                break
        return stats

    return run


@pytest.fixture
def plan_path(tmp_path: Path, base_plan: dict) -> Path:
    base_plan["gates"] = {
        "errors": {"metric": "error_rate", "compare": "stable", "max_increase": "2%", "method": "sequential", "min_requests": 100},
        "p95": {"metric": "p95", "compare": "stable", "max_increase": "30%", "method": "sequential", "min_requests": 100},
    }
    base_plan["stages"] = [{"name": "half", "weight": 50, "duration": "10m", "min_duration": "5s"}]
    return write_plan(tmp_path, base_plan)


def _run(plan_path: Path, runner: Any) -> tuple[Any, Any]:
    st = new_state("svc", "v1", now=1.0)
    store = MemoryStore(st)
    engine = Engine(load_plan(plan_path), MemoryBackend(), store, Quiet(), "tester", load_runner=runner, clock=lambda: 1000.0)
    engine._load_spec = lambda i: None  # type: ignore[method-assign]  (no Locust in this process)
    return engine.drive("v2", from_cli=True, one_stage=False), store.state


def test_a_stage_ends_early_once_every_sequential_gate_passed(plan_path: Path) -> None:
    outcome, state = _run(plan_path, scripted(600, 0.001, 0.001))
    assert outcome.kind == "promoted", outcome
    rec = state.past[-1].stages[0]
    assert "early at" in rec["reason"] and rec["stats"]["elapsed_s"] < 600  # not the 10 minutes planned


def test_a_split_far_from_the_plan_goes_to_review(plan_path: Path) -> None:
    outcome, state = _run(plan_path, scripted(20, 0.001, 0.001, share=0.8))
    assert outcome.kind == "awaiting-review" and outcome.exit_code == 4
    assert state.phase is Phase.AWAITING_REVIEW and "planned 50%" in state.reason


def test_a_saturated_load_generator_goes_to_review(plan_path: Path) -> None:
    outcome, state = _run(plan_path, scripted(20, 0.001, 0.001, cpu=98.0))
    assert outcome.kind == "awaiting-review" and "98% CPU" in state.reason


def test_health_checks_in_isolation() -> None:
    s = StageStats()
    s.cohort_routing = {"other->canary": 100, "other->stable": 900}
    assert split_mismatch(Split(0.1), s) is None
    assert split_mismatch(Split(0.5), s) is not None
    for _ in range(300):
        s.role("stable").add(10.0, True)
        s.role("canary").add(10.0, False)
    found = health_checks({"errors": Gate(metric="error_rate", max="5%", min_requests=10)}, Split(0.1), s, to_canary_only=False)
    assert [v.gate for v in found] == ["health: stable errors"] and "stable version itself breaches" in found[0].message
    assert health_checks({"errors": Gate(metric="error_rate", max="5%")}, Split(0.1), s, to_canary_only=True) == []

"""The executor finishes what a killed command left half done, with an in-memory backend.

The saved state's `transition` is the contract: whatever it names is carried
out first by the next command, whatever the phase.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from rollout.engine.executor import Engine
from rollout.engine.state import ALL_STABLE, Phase, Split, State, Transition, new_state
from rollout.plan import load_plan
from tests.conftest import write_plan


class MemoryStore:
    def __init__(self, state: State | None) -> None:
        self.state, self.saves = state, 0

    def load(self) -> State | None:
        return copy.deepcopy(self.state)

    def save(self, state: State) -> None:
        self.state, self.saves = copy.deepcopy(state), self.saves + 1

    @contextmanager
    def lock(self, command: str, force: bool = False) -> Iterator[None]:
        yield

    def location(self) -> str:
        return "memory"


class MemoryBackend:
    """Records what traffic does; every method idempotent like the real ones."""

    name = "memory"

    def __init__(self) -> None:
        self.split = Split()
        self.canary: str | None = None
        self.stable = "v1"
        self.calls: list[str] = []
        self.checkpoint = lambda: None

    def ensure(self, state: State, canary: bool = True) -> None:
        self.calls.append("ensure")

    def deploy_canary(self, state: State, version: str) -> None:
        self.calls.append(f"deploy {version}")
        self.canary = version

    def apply_split(self, state: State, split: Split) -> None:
        self.calls.append(f"split {split.weight}")
        self.split = split

    def stop_canary(self, state: State) -> None:
        self.calls.append("stop-canary")
        self.canary = None

    def promote(self, state: State) -> None:
        self.calls.append("promote")
        if self.canary:
            self.stable, self.canary, self.split = self.canary, None, Split()

    def entry_url(self, state: State) -> str:
        return "http://127.0.0.1:1"

    def canary_url(self, state: State) -> str:
        return "http://127.0.0.1:2"

    def inspect(self, state: State) -> dict[str, Any]:
        return {}

    def down(self, state: State) -> None:
        self.calls.append("down")


class Quiet:
    def event(self, message: str) -> None: ...

    def progress(self, *a: Any) -> None: ...

    def stage_done(self, record: Any) -> None: ...


@pytest.fixture
def loaded(tmp_path: Path, base_plan: dict):
    base_plan["stages"] = [{"name": "a", "weight": 10, "duration": "1s"}, {"name": "b", "weight": 50, "duration": "1s"}]
    return load_plan(write_plan(tmp_path, base_plan))


def _engine(loaded: Any, state: State) -> tuple[Engine, MemoryBackend, MemoryStore]:
    backend, store = MemoryBackend(), MemoryStore(state)
    return Engine(loaded, backend, store, Quiet(), "tester", load_runner=None, clock=lambda: 1000.0), backend, store


def _mid(phase: Phase, action: str, to: Split) -> State:
    st = new_state("svc", "v1", now=1.0)
    st.phase, st.canary_version, st.stage_index = phase, "v2", 1
    st.split = Split(0.1)
    st.transition = Transition(action, to, 5.0, 999999, "killed-command")
    return st


def test_an_interrupted_shift_is_finished_before_anything_else(loaded: Any) -> None:
    engine, backend, store = _engine(loaded, _mid(Phase.PROGRESSING, "shift", Split(0.5)))
    engine.abort("after the crash")
    assert backend.calls[:2] == ["ensure", "split 0.5"]  # the half-done shift first ...
    assert backend.split == ALL_STABLE and backend.calls[-1] == "stop-canary"  # ... then the abort
    assert store.state is not None and store.state.transition is None and store.state.phase is Phase.ABORTED


def test_an_interrupted_rollback_is_completed_by_revert(loaded: Any) -> None:
    engine, backend, store = _engine(loaded, _mid(Phase.ROLLED_BACK, "rollback", ALL_STABLE))
    engine.revert("3am")
    assert backend.split == ALL_STABLE and "stop-canary" in backend.calls
    st = store.state
    assert st is not None and st.transition is None and st.phase is Phase.ROLLED_BACK and st.split == ALL_STABLE
    assert any(h.action == "revert" and h.who == "tester" for h in st.history)


def test_an_interrupted_promotion_is_finished_by_the_next_drive(loaded: Any) -> None:
    st = _mid(Phase.PROGRESSING, "promote", ALL_STABLE)
    st.stage_index = 2
    engine, backend, store = _engine(loaded, st)
    backend.canary = "v2"
    outcome = engine.drive(None, from_cli=False, one_stage=False)
    assert backend.calls[0] == "promote" and backend.stable == "v2"
    assert store.state is not None and store.state.phase is Phase.PROMOTED and store.state.stable_version == "v2"
    assert [r.version for r in store.state.revisions] == ["v1", "v2"]
    assert outcome.kind == "nothing"  # promoted already: nothing left to do


def test_every_traffic_change_is_saved_before_and_after(loaded: Any) -> None:
    st = new_state("svc", "v1", now=1.0)
    st.phase, st.canary_version = Phase.PROGRESSING, "v2"
    engine, backend, store = _engine(loaded, st)
    seen: list[Any] = []
    real_apply = backend.apply_split

    def apply(state: State, split: Split) -> None:
        seen.append(copy.deepcopy(store.state.transition) if store.state else None)  # what is on disk while acting
        real_apply(state, split)

    backend.apply_split = apply  # type: ignore[method-assign]
    engine.abort("")
    assert seen and all(t is not None and t.action == "abort" for t in seen)
    assert store.state is not None and store.state.transition is None


def test_revert_after_a_finished_rollout_adds_no_bogus_history(loaded: Any) -> None:
    st = new_state("svc", "v2", now=1.0)
    st.phase = Phase.PROMOTED
    engine, backend, store = _engine(loaded, st)
    engine.revert("just in case")
    assert store.state is not None and store.state.past == [] and store.state.phase is Phase.PROMOTED
    assert backend.split == ALL_STABLE

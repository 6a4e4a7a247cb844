"""What the engine needs from a backend, and from the place that keeps the state."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from rollout.engine.state import Split, State
from rollout.gates.liveness import CanaryProbe


class Backend(Protocol):
    """Runs the versions and splits traffic. Every method is idempotent: a command
    that was killed halfway repeats it safely. Methods record their runtime facts
    (processes, ports, object versions) in `state.backend` and call `checkpoint()`
    after any change outside the process, so the saved state always knows what exists."""

    name: str
    checkpoint: Callable[[], None]

    def ensure(self, state: State, canary: bool = True) -> None:
        """Bring back whatever the state says should exist: the stable version (the recorded one),
        the router at state.split, and (if `canary`) a deployed canary. Rollbacks pass canary=False:
        a broken canary must never stand in the way of putting traffic on stable."""

    def deploy_canary(self, state: State, version: str) -> None:
        """Start the canary version, serving no user traffic yet; return once it is healthy."""

    def apply_split(self, state: State, split: Split) -> None:
        """Make traffic follow `split`; return once the change has taken effect (read back)."""

    def stop_canary(self, state: State) -> None:
        """Stop the canary (it must receive no traffic first)."""

    def promote(self, state: State) -> None:
        """The canary becomes the stable version, serving all traffic; the old stable stops."""

    def entry_url(self, state: State) -> str:
        """Where users' traffic enters (and the load of an `entry` stage goes)."""

    def canary_url(self, state: State) -> str:
        """The canary alone (the load of a `canary` stage)."""

    def inspect(self, state: State) -> dict[str, Any]:
        """Live facts for `status`: what is running, what the router really does."""

    def canary_probe(self, state: State) -> CanaryProbe | None:
        """Read every tick of a stage (fail closed): is the canary down (process exited, no ready pod),
        and the router's per-version counts of what happened to the requests it sent (None if it cannot tell).
        Optional: the engine skips the probe of a backend without it."""

    def down(self, state: State) -> None:
        """Stop everything this backend started for the plan."""


class StateStore(Protocol):
    def load(self) -> State | None: ...

    def save(self, state: State) -> None: ...

    def lock(self, command: str, force: bool = False) -> AbstractContextManager[None]: ...

    def location(self) -> str: ...

"""Requests to a live rollout: the mailbox model, and what a request means to the running driver.

A driver (`rollout run`/`advance`) holds the rollout's lock and saves the whole state as it goes
(state.json replaced whole; the ConfigMap written with compare-and-swap on the whole object). A
request written *into* that state would be overwritten by the driver's next save, or make it fail
with a conflict. So an operator's `revert`, `abort`, `pause`, `promote`, ... that finds the lock
held writes to a separate mailbox in the same place (locally `requests.json` beside state.json,
on Kubernetes the ConfigMap `rollout-<plan>-requests`), and waits, bounded, for the driver's
acknowledgement. The driver reads the mailbox at every tick of its load loop and between steps,
acts, and acknowledges. A request that was not answered before its `expires_at` (the requester
gave up) is never acted on later: a 3 a.m. revert must not fire at 9 a.m.

Nothing here does I/O: `Mailbox` is the protocol the stores implement; `MailboxData.update` is
the pure read-modify-write both use.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from rollout.engine.state import Phase, State

VERBS = ("revert", "abort", "pause", "resume", "promote", "approve", "reject", "retry", "stop")
DRIVER = "driver"  # who a request is for: the command driving the rollout (run, advance, resume, retry)...
WATCH = "watch"  # ...or the `rollout watch` of the plan (pause, resume, stop); each answers only its own
MAX_KEPT = 50  # requests and acks kept in the mailbox (oldest dropped)

# outcomes of an acknowledgement
ACCEPTED = "accepted"  # claimed by the driver, which is acting on it (then replaced by its final answer)
DONE = "done"  # the driver acted
REFUSED = "refused"  # the request makes no sense now (e.g. approve while a stage runs); nothing changed
EXPIRED = "expired"  # the requester gave up before anyone acted
SELF = "self"  # no driver answered; the requester took the lock and acted itself


@dataclass(frozen=True)
class Request:
    id: str
    verb: str
    who: str
    reason: str
    at: float
    expires_at: float
    args: dict[str, Any] = field(default_factory=dict)  # promote: {"full": bool}; retry: {"from_start": bool}; revert: {"to_revision": int}
    to: str = DRIVER  # DRIVER or WATCH (a mailbox written before there was a watch has only the driver's)

    @staticmethod
    def new(verb: str, who: str, reason: str, timeout: float, args: dict[str, Any] | None = None, now: float | None = None,
            to: str = DRIVER) -> Request:
        at = time.time() if now is None else now
        return Request(id=secrets.token_hex(6), verb=verb, who=who, reason=reason, at=at, expires_at=at + timeout, args=dict(args or {}),
                       to=to)

    def describe(self) -> str:
        flags = " --full" if self.args.get("full") else (" --from-start" if self.args.get("from_start") else "")
        if self.args.get("to_revision"):
            flags = f" --to-revision {self.args['to_revision']}"
        if self.to == WATCH:
            cmd = "rollout watch --stop" if self.verb == "stop" else f"rollout {self.verb} --watch"
        else:
            cmd = f"rollout {self.verb}{flags}"
        return f"`{cmd}` by {self.who}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class Ack:
    id: str
    outcome: str  # done | refused | expired | self
    message: str
    at: float
    by: str  # the driver that answered (its identity), or the requester itself


@dataclass
class MailboxData:
    requests: list[Request] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)

    def ack_of(self, request_id: str) -> Ack | None:
        return next((a for a in self.acks if a.id == request_id), None)

    def pending(self, now: float, to: str = DRIVER) -> list[Request]:
        """Requests for `to` nobody answered yet and whose requester still waits, oldest first."""
        answered = {a.id for a in self.acks}
        return [r for r in self.requests if r.id not in answered and r.expires_at > now and r.to == to]

    def post(self, req: Request) -> None:
        self.requests.append(req)
        del self.requests[:-MAX_KEPT]

    def answer(self, ack: Ack) -> Ack:
        """Record `ack` unless the request was answered already; returns the answer that stands.
        A claim (ACCEPTED) is replaced by the final answer of the one who claimed it."""
        first = self.ack_of(ack.id)
        if first is not None:
            if first.outcome == ACCEPTED and ack.by == first.by and ack.outcome != ACCEPTED:
                self.acks[self.acks.index(first)] = ack
                return ack
            return first
        self.acks.append(ack)
        del self.acks[:-MAX_KEPT]
        return ack

    def to_dict(self) -> dict[str, Any]:
        return {"requests": [asdict(r) for r in self.requests], "acks": [asdict(a) for a in self.acks]}

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> MailboxData:
        d = d or {}
        return MailboxData(requests=[Request(**r) for r in d.get("requests", [])], acks=[Ack(**a) for a in d.get("acks", [])])


class Mailbox(Protocol):
    """Where requests and acknowledgements live (rollout.backends.local.mailbox, rollout.backends.kubernetes.mailbox)."""

    def read(self) -> MailboxData: ...

    def update(self, change: Callable[[MailboxData], Any]) -> Any:
        """Read, apply `change` (which mutates the data and returns a result), write back atomically; returns the result."""

    def location(self) -> str: ...


def post(box: Mailbox, req: Request) -> None:
    box.update(lambda d: d.post(req))


def answer(box: Mailbox, req_id: str, outcome: str, message: str, by: str, now: float | None = None) -> Ack:
    ack = Ack(id=req_id, outcome=outcome, message=message, at=time.time() if now is None else now, by=by)
    return box.update(lambda d: d.answer(ack))  # type: ignore[no-any-return]


# -- what a request means to the driver ------------------------------------------------------


STOP_LOAD = "stop-load"  # the running stage stops now; then the action
ACT = "act"  # between steps: act now
REFUSE = "refuse"


def meaning(req: Request, state: State, stage_running: bool) -> tuple[str, str]:
    """What the driver does with `req`: (STOP_LOAD | ACT | REFUSE, why). Pure: decided from the state alone.

    While the driver holds the lock the rollout is in progress, so `approve`/`reject` (nothing waits
    for a person while a driver runs), `resume` (nothing is paused) and `retry` (a rollout is in
    progress) are refused with the reason; the others stop the load when a stage runs."""
    v = req.verb
    where = f"a driver is running the rollout of {state.canary_version or '-'}"
    if v in ("revert", "abort", "pause", "promote"):
        if v in ("pause", "promote") and not state.phase.active:
            return REFUSE, f"no rollout in progress ({state.phase.value}); nothing to {v}"
        return (STOP_LOAD if stage_running else ACT), ""
    if v == "approve":
        return REFUSE, f"nothing is waiting for approval: {where} (stage {state.stage_index + 1} in progress)"
    if v == "reject":
        return REFUSE, f"nothing is waiting for a decision: {where}; `rollout abort` or `rollout revert` stops it"
    if v == "resume":
        return REFUSE, f"nothing is paused: {where}"
    if v == "retry":
        return REFUSE, f"{where}; `retry` restarts a rolled-back or aborted version"
    return REFUSE, f"unknown request `{v}`"


def pause_kind(state: State) -> str | None:
    """'operator' for a `rollout pause`, 'approval' for a stage waiting for `rollout approve`, None otherwise."""
    if state.phase is not Phase.PAUSED:
        return None
    return "operator" if state.pause else "approval"

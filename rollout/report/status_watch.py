"""`rollout status PLAN --watch`: the rollout redrawn every second until it ends or waits for a person.

Takes no lock and changes nothing: each second it reads the stored state (the
state file, or the ConfigMap from any machine) and who holds the lock. The
running driver records its latest numbers in `state.live` at a bounded rate
(per version: requests/s, error rate, p95; the gates' current verdicts), so the
watcher shows them without talking to the driver.

On a terminal the view is redrawn in place (cursor up, clear to the end, lines
cut to the terminal's width so nothing wraps); to a pipe or a CI log it is one
plain line whenever the phase, stage, split or a verdict changes, and at least
every few seconds otherwise. It ends the way `kubectl argo rollouts status`
does, with an exit code a script can branch on:

    0  promoted, or idle (nothing in progress)
    1  rolled back or aborted
    4  waiting for a person: paused, awaiting review, or progressing with no
       command driving it (`rollout advance`/`run` carries on)
    5  --timeout passed first (EXIT_WATCH_TIMEOUT)
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from rollout.engine.state import Phase, State, StageStatus
from rollout.errors import EXIT_GATE_FAILED, EXIT_OK, EXIT_PAUSED, EXIT_WATCH_TIMEOUT
from rollout.plan.model import Plan
from rollout.plan.units import fmt_duration, fmt_ms, fmt_percent

LIVE_FRESH = 10.0  # live numbers older than this are not shown as current (the driver writes them every ≤ 2 s)
RECENT_WRITE = 5.0  # a state written this recently counts as driven (a command between two steps)
PLAIN_EVERY = 5.0  # plain mode: a line at least this often while nothing but the numbers changes
MARKS = {EXIT_OK: "✔", EXIT_GATE_FAILED: "✘", EXIT_PAUSED: "⏸", EXIT_WATCH_TIMEOUT: "⌛"}


@dataclass(frozen=True)
class Ending:
    code: int
    text: str


def _live(state: State, now: float) -> dict[str, Any] | None:
    """The driver's latest numbers when they are current (fresh, and about the stage in progress)."""
    live = getattr(state, "live", None)  # written by the driver (a field of State since #8)
    if not isinstance(live, dict) or now - float(live.get("at") or 0.0) > LIVE_FRESH:
        return None
    return live


def driven(state: State, now: float, holder: str | None) -> bool:
    """Whether a command is moving the rollout: it holds the lock, or writes numbers, or just wrote the state."""
    return holder is not None or _live(state, now) is not None or now - state.updated_at <= RECENT_WRITE


def ending(state: State | None, now: float, holder: str | None) -> Ending | None:
    """None while the rollout moves; the exit code and why once it reached a final or a waiting phase."""
    if state is None:
        return Ending(EXIT_OK, "idle: nothing recorded yet")
    if state.transition is not None and driven(state, now, holder):
        return None  # a traffic change is under way: wait for its result
    phase = state.phase
    why = f"{phase.value}" + (f": {state.reason}" if state.reason else "")
    t = state.transition
    if t is not None:  # its command is gone: say what it left half done
        why += f" — an unfinished `{t.action}` towards {t.to.describe()}: `rollout revert` puts all traffic on stable"
    if phase in (Phase.PROMOTED, Phase.IDLE):
        return Ending(EXIT_OK, why)
    if phase in (Phase.ROLLED_BACK, Phase.ABORTED):
        return Ending(EXIT_GATE_FAILED, why)
    if phase in (Phase.PAUSED, Phase.AWAITING_REVIEW):
        return Ending(EXIT_PAUSED, why)
    if phase is Phase.PROGRESSING and not driven(state, now, holder):
        return Ending(EXIT_PAUSED, f"{why} — no command is driving it: `rollout advance` or `rollout run` carries on")
    if not phase.active:  # a phase this watcher does not know: final, but not a success
        return Ending(EXIT_GATE_FAILED, why)
    return None


def _stage_line(plan: Plan, state: State, now: float, live: dict[str, Any] | None) -> str:
    n = len(plan.stages)
    i = state.stage_index
    if i >= n:
        return f"{n}/{n} done, promotion next"
    stage = plan.stages[i]
    rec = state.current_stage()
    text = f"{i + 1}/{n} `{stage.name}`"
    if rec is not None and rec.status is StageStatus.RUNNING and state.phase is Phase.PROGRESSING:
        if live is not None and live.get("stage") == i:
            elapsed = float(live.get("elapsed") or 0.0) + max(0.0, now - float(live["at"]))
            duration = float(live.get("duration") or stage.duration)
        else:
            elapsed, duration = max(0.0, now - rec.started_at), stage.duration
        elapsed = min(elapsed, duration)
        return f"{text} running — {elapsed:,.0f}s of {fmt_duration(duration)}, {max(0.0, duration - elapsed):,.0f}s left"
    if rec is not None:
        return f"{text} {rec.status.value}"
    return f"{text} next"


def _num(v: Any, fmt: Callable[[float], str]) -> str:
    return "-" if v is None else fmt(float(v))


def _version_rows(live: dict[str, Any]) -> list[list[str]]:
    rows = []
    versions = live.get("versions") or {}
    for version, v in sorted(versions.items(), key=lambda kv: (kv[1].get("role") != "stable", kv[0])):
        rows.append([str(version), str(v.get("role", "-")), _num(v.get("rps"), lambda x: f"{x:,.1f}"),
                     _num(v.get("error_rate"), fmt_percent), _num(v.get("p95_ms"), fmt_ms), f"{int(v.get('requests') or 0):,}"])
    return rows


def _gate_bits(live: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list((live or {}).get("gates") or [])


def frame(plan: Plan, state: State | None, now: float, holder: str | None, location: str) -> list[str]:
    """The terminal view: one screenful of lines."""
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    if state is None:
        return [f"Rollout `{plan.name}` — nothing recorded yet ({location})  {clock}"]
    live = _live(state, now)
    driver = holder or ("a command writing numbers ({:.0f}s ago)".format(now - float(live["at"])) if live else "none")
    lines = [f"Rollout `{plan.name}` — {state.phase.value}" + (f": {state.reason}" if state.reason else "") + f"  {clock}",
             f"Driver:   {driver}",
             f"Versions: stable {state.stable_version}" + (f" → canary {state.canary_version}" if state.canary_version else ""),
             f"Traffic:  {state.split.describe()}"]
    if state.phase.active:
        lines.append(f"Stage:    {_stage_line(plan, state, now, live)}")
    if live is not None:
        from tabulate import tabulate

        table = tabulate(_version_rows(live), headers=["version", "role", "rps", "errors", "p95", "requests"], disable_numparse=True)
        lines += ["", *table.splitlines()]
        gates = _gate_bits(live)
        if gates:
            lines.append("")
            lines += [f"  {g.get('status', '?'):>12}  {g.get('gate', '?')}: {g.get('message', '')}" for g in gates]
    elif state.phase is Phase.PROGRESSING:
        lines.append("Numbers:  none yet (the command running the stage records them every 2 s)")
    return lines


def plain(plan: Plan, state: State | None, now: float, holder: str | None) -> tuple[str, str]:
    """(the line, its key): a plain line for logs; a new line is due when the key changes."""
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    if state is None:
        return f"[{clock}] nothing recorded yet", "none"
    live = _live(state, now)
    parts = [state.phase.value]
    if state.phase.active:
        parts.append("stage " + _stage_line(plan, state, now, live))
    parts.append(state.split.describe())
    for row in _version_rows(live) if live else []:
        parts.append(f"{row[0]} {row[1]} {row[2]} rps err {row[3]} p95 {row[4]}")
    gates = _gate_bits(live)
    if gates:
        parts.append("gates " + ", ".join(f"{g.get('gate')} {g.get('status')}" for g in gates))
    key = "|".join([state.phase.value, str(state.stage_index), state.split.describe(),
                    ",".join(f"{g.get('gate')}={g.get('status')}" for g in gates), str(holder is not None)])
    return f"[{clock}] " + " | ".join(parts), key


class Watcher:
    """Reads the store every `interval` seconds and draws, until `ending` says the rollout stopped moving."""

    def __init__(self, plan: Plan, load: Callable[[], State | None], holder: Callable[[], str | None], location: str,
                 stream: TextIO, tty: bool, interval: float = 1.0, timeout: float | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.plan, self.load, self.holder, self.location = plan, load, holder, location
        self.stream, self.tty, self.interval, self.timeout = stream, tty, interval, timeout
        self.clock, self.sleep = clock, sleep
        self._drawn = 0  # lines of the last terminal frame
        self._key: str | None = None
        self._last_plain = 0.0

    def _draw(self, state: State | None, now: float, holder: str | None) -> None:
        if self.tty:
            width = max(20, shutil.get_terminal_size((120, 40)).columns - 1)
            lines = [line[:width] for line in frame(self.plan, state, now, holder, self.location)]
            up = f"\x1b[{self._drawn}A" if self._drawn else ""
            self.stream.write(up + "\x1b[J" + "".join(line + "\n" for line in lines))
            self._drawn = len(lines)
        else:
            line, key = plain(self.plan, state, now, holder)
            if key != self._key or now - self._last_plain >= PLAIN_EVERY:
                self.stream.write(line + "\n")
                self._key, self._last_plain = key, now
        self.stream.flush()

    def run(self) -> int:
        started = self.clock()
        while True:
            state = self.load()
            now = self.clock()
            holder = self.holder() if state is not None else None
            self._draw(state, now, holder)
            end = ending(state, now, holder)
            if end is None and self.timeout is not None and now - started >= self.timeout:
                end = Ending(EXIT_WATCH_TIMEOUT, f"still {state.phase.value if state else 'idle'} after "
                                                 f"{fmt_duration(self.timeout)} (--timeout); the rollout goes on")
            if end is not None:
                self.stream.write(f"{MARKS.get(end.code, '•')} {end.text} (exit {end.code})\n")
                self.stream.flush()
                return end.code
            self.sleep(max(0.0, self.interval - (self.clock() - now)))

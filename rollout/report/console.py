"""Live output of a running command: events as lines, load progress each second.

On a terminal the progress is one line redrawn in place with a bar; to a pipe
or a CI log it is a plain line every few seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from rollout.engine.state import StageRecord
from rollout.gates.verdict import Status, Verdict
from rollout.load.stats import StageStats
from rollout.plan.model import Stage
from rollout.plan.names import printable
from rollout.plan.units import fmt_ms, fmt_percent

PLAIN_EVERY = 5.0
BAR = 20


def _role_line(stats: StageStats, role: str, rps: float) -> str:
    vs = stats.by_role.get(role)
    if vs is None or vs.requests == 0:
        return f"{role} -"
    return f"{role} {rps:,.0f} rps err {fmt_percent(vs.error_rate)} p95 {fmt_ms(vs.percentile(95))}"


class ConsoleReporter:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet
        self._last_plain = 0.0
        self._line_open = False

    def _write(self, text: str) -> None:
        if self._line_open:
            self.stream.write("\r\x1b[2K")
            self._line_open = False
        self.stream.write(printable(text) + "\n")  # names, reasons, owners: never raw control characters
        self.stream.flush()

    def event(self, message: str) -> None:
        if not self.quiet:
            self._write(f"• {message}")

    def progress(self, stage: Stage, index: int, total: int, stats: StageStats, verdicts: list[Verdict], duration: float) -> None:
        if self.quiet:
            return
        last = stats.timeline[-1] if stats.timeline else {}
        rps = {role: float(last.get(role, {}).get("requests", 0)) for role in ("stable", "canary")}
        left = max(0.0, duration - stats.elapsed)
        parts = [
            f"users {stats.users}" + (f" (shape {shape})" if (shape := getattr(stats.endpoints, "shape", None)) else ""),
            f"rps {sum(rps.values()):,.0f}",
            _role_line(stats, "stable", rps["stable"]),
            _role_line(stats, "canary", rps["canary"]),
            f"{left:,.0f}s left",
        ]
        failing = [v for v in verdicts if v.status is Status.FAIL]
        if failing:
            parts.append("FAIL " + failing[0].gate)
        text = " | ".join(parts)
        if self.tty:
            done = int(BAR * min(1.0, stats.elapsed / duration)) if duration else BAR
            bar = "█" * done + "░" * (BAR - done)
            self.stream.write(f"\r\x1b[2K  {stage.name} [{bar}] {text}")
            self.stream.flush()
            self._line_open = True
        else:
            now = time.monotonic()
            if now - self._last_plain >= PLAIN_EVERY or failing:
                self._last_plain = now
                self._write(f"  [{index + 1}/{total} {stage.name} {stats.elapsed:,.0f}s] {text}")

    def stage_done(self, record: StageRecord) -> None:
        if self.quiet:
            return
        mark = {"passed": "✔", "failed": "✘"}.get(record.status.value, "•")
        reqs = record.stats.get("all", {}).get("requests", 0)
        self._write(f"{mark} stage {record.index + 1} `{record.name}` {record.status.value} ({reqs:,} requests)")
        for v in record.verdicts:
            self._write(f"    {v['status']:>12}  {v['gate']}: {v['message']}")
        for line in endpoint_lines(record.stats.get("endpoints"), indent="    "):
            self._write(line)


def endpoint_lines(ep: dict[str, Any] | None, indent: str = "  ", top: int = 10) -> list[str]:
    """The console's per-endpoint summary (#9): the busiest/failing endpoints per version and the top failures."""
    if not ep:
        return []
    from rollout.plan.units import fmt_ms

    def ms(x: float | None) -> str:
        return "–" if x is None else fmt_ms(x)

    out: list[str] = []
    rows = ep.get("endpoints") or []
    if rows:
        out.append(f"{indent}{'version':<12} {'method':<7} {'name':<32} {'requests':>9} {'fails':>7} {'p50':>8} {'p95':>8} {'p99':>8}")
        for e in rows[:top]:
            out.append(f"{indent}{e['version'][:12]:<12} {e['method'][:7]:<7} {e['name'][:32]:<32} {e['requests']:>9,} {e['failures']:>7,} "
                       f"{ms(e.get('p50_ms')):>8} {ms(e.get('p95_ms')):>8} {ms(e.get('p99_ms')):>8}")
        rest = len(rows) - top + (ep.get("endpoints_more") or {}).get("rows", 0)
        if rest > 0:
            out.append(f"{indent}… {rest:,} more endpoints in the reports")
    for f in (ep.get("failures") or [])[:top]:
        out.append(f"{indent}failure ×{f['count']:,} {f['method']} {f['name']} ({f['version']}): {f['error']}")
    more = ep.get("failures_more") or {}
    if more.get("count"):
        out.append(f"{indent}… {more['count']:,} more failures of {more.get('rows', 0):,} more kinds")
    for text in ep.get("listener_errors") or []:
        out.append(f"{indent}warning: a listener of the locustfile raised: {text.strip().splitlines()[-1]}")
    return out

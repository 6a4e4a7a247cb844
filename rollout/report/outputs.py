"""Writing the reports a command was asked for, and capturing what `run`/`advance` measured for them.

Kept apart from the CLI so the CLI only adds flags: `write_reports` writes
--json/--junit/--markdown/--html and appends the Markdown summary to
$GITHUB_STEP_SUMMARY when set; `Capture` wraps the engine's load runner to keep
each stage's full StageStats (with the per-second timeline) and the second a
gate failed, without the engine knowing about reports.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReportPaths:
    json: str | None = None
    junit: str | None = None
    markdown: str | None = None
    html: str | None = None

    @property
    def any(self) -> bool:
        return any((self.json, self.junit, self.markdown, self.html))


def write_reports(report: dict[str, Any], paths: ReportPaths, step_summary: bool = True) -> list[str]:
    from rollout.report import html, json_report, junit, markdown

    written = []
    for path, mod in ((paths.json, json_report), (paths.junit, junit), (paths.markdown, markdown), (paths.html, html)):
        if path:
            try:
                written.append(str(mod.write(report, path)))
            except OSError as exc:
                print(f"Error: could not write report {path}: {exc.strerror or exc} — check the directory and its permissions", file=sys.stderr)
    if step_summary:
        s = markdown.write_summary(report)
        if s is not None:
            written.append(str(s))
    return written


class Capture:
    """Wraps a LoadRunner: same calls, same results; remembers each stage's StageStats and decisive second."""

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner = inner
        self.runs: list[dict[str, Any]] = []

    def __call__(self, spec: Any, on_tick: Callable[[Any], bool]) -> Any:
        box: dict[str, Any] = {"decided_at": None}

        def tick(stats: Any) -> bool:
            stop = on_tick(stats)
            if stop and box["decided_at"] is None:
                box["decided_at"] = stats.elapsed
            return stop

        if getattr(on_tick, "interrupt", None) is not None:  # the engine's between-ticks check passes through
            tick.interrupt = on_tick.interrupt  # type: ignore[attr-defined]
        stats = self.inner(spec, tick)
        self.runs.append({"stats": stats, "decided_at": box["decided_at"], "host": getattr(spec, "host", None)})
        return stats


def rollout_reports(command: str, loaded: Any, engine: Any, capture: Capture, outcome: Any, started: float, paths: ReportPaths) -> None:
    """After `run`/`advance`: the reports asked for (and the CI step summary), from the engine's state and the capture."""
    import os
    import time

    if not paths.any and not os.environ.get("GITHUB_STEP_SUMMARY"):
        return
    from rollout.report.json_report import rollout_report

    report = rollout_report(command, loaded, engine.state, capture.runs, outcome, started, time.time(), getattr(engine.backend, "name", ""))
    write_reports(report, paths)

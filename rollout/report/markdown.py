"""A Markdown summary of a report, fit for a CI step summary (GitHub's $GITHUB_STEP_SUMMARY, GitLab notes).

`write_summary` appends it to `$GITHUB_STEP_SUMMARY` when that is set, which
GitHub Actions does for every step: the summary appears on the run's page
without any flag.
"""

from __future__ import annotations

import os
from pathlib import Path
import time
from typing import Any

from rollout.plan.units import fmt_ms, fmt_percent

ICON = {"accepted": "☑️", "pass": "✅", "fail": "❌", "inconclusive": "⚠️", "pending": "⏳", "passed": "✅", "failed": "❌", "promoted": "✅",
        "rolled-back": "❌", "needs-review": "⚠️", "awaiting-review": "⚠️", "paused": "⏸️", "interrupted": "⚠️", "error": "💥"}


def _v(metric: str, x: float | None) -> str:
    if x is None:
        return "–"
    return fmt_percent(x) if metric == "error_rate" else fmt_ms(x)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(report: dict[str, Any]) -> str:
    o = report["outcome"]
    plan = (report.get("plan") or {}).get("name")
    tgt = report.get("target") or {}
    what = f"`{tgt['host']}`" if tgt.get("host") else f"`{plan}`: {tgt.get('stable')} → {tgt.get('canary')}"
    lines = [f"## {ICON.get(o['result'], '•')} rollout {report['command']} {o['result']} — {what}", "", f"{_cell(o['message'])} (exit {o['exit_code']})", ""]
    for st in report.get("stages", []):
        s = st.get("stats") or {}
        head = f"### {ICON.get(st['status'], '•')} "
        head += "load" if report["command"] == "gate" else f"stage {st['index'] + 1} `{st['name']}`"
        status = st["status"]
        if st.get("decided_by"):  # ended by a person's decision, not by its gates
            d = st["decided_by"]
            status += f" by {d.get('who', '?')} (`{d.get('action', '?')}`" + (f": {d['reason']}" if d.get("reason") else "") + ", not by its gates)"
        head += f" — {status}, {s.get('all', {}).get('requests', 0):,} requests in {s.get('elapsed_s', 0):,.1f}s"
        if st.get("users"):
            head += f", {st['users']} users"
        lines += [head, "", "| gate | result | observed | limit | requests | detail |", "|---|---|---:|---:|---:|---|"]
        for v in st.get("verdicts", []):
            metric = (st.get("gates") or {}).get(v["gate"], {}).get("metric", "")
            lines.append(f"| `{_cell(v['gate'])}` | {ICON.get(v['status'], '')} {v['status']} | {_v(metric, v.get('observed'))} | "
                         f"{_v(metric, v.get('threshold'))} | {v.get('requests', 0):,} | {_cell(v['message'])} |")
        for name, why in (st.get("skipped") or {}).items():
            lines.append(f"| `{_cell(name)}` | ⏭️ skipped | – | – | – | {_cell(why)} |")
        if not st.get("verdicts") and not st.get("skipped"):
            lines.append("| – | no gates | | | | |")
        versions = [k for k, val in s.items() if isinstance(val, dict) and "requests" in val and k != "cohort_routing"]
        if versions:
            lines += ["", "| version | requests | errors | p50 | p95 | p99 |", "|---|---:|---:|---:|---:|---:|"]
            for k in versions:
                d = s[k]
                lines.append(f"| {k} | {d['requests']:,} | {_v('error_rate', d.get('error_rate'))} | {_v('p', d.get('p50_ms'))} | "
                             f"{_v('p', d.get('p95_ms'))} | {_v('p', d.get('p99_ms'))} |")
        lines += _endpoint_lines(s.get("endpoints"))
        lines.append("")
    bake = report.get("bake")
    if bake:
        lines += ["### Bake", "", f"**{bake['result']}**: {_cell(bake['message'])}", ""]
        evidence = bake.get("evidence") or {}
        if evidence.get("answers"):
            lines += [f"{_cell(evidence.get('summary') or 'the worst answers')}:", ""]
            lines += [f"- `{_cell(a)}`" for a in evidence["answers"]]
            lines.append("")
    decisions = report.get("decisions") or []
    if decisions:
        lines += ["### Decisions by people", "", "| when | who | decided | reason | detail |", "|---|---|---|---|---|"]
        for d in decisions:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["at"]))
            lines.append(f"| {when} | {_cell(d['who'])} | {d['action']} | {_cell(d.get('reason') or '-')} | {_cell(d['detail'])} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _endpoint_lines(ep: dict[str, Any] | None) -> list[str]:
    """Per-endpoint rows and the failures table (#9): what failed, where, with which message, per version."""
    if not ep:
        return []
    out: list[str] = []
    if ep.get("shape"):
        out += ["", f"Users driven by the LoadTestShape `{_cell(ep['shape'])}`."]
    if ep.get("endpoints"):
        out += ["", "| version | method | name | requests | failures | p50 | p95 | p99 |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for e in ep["endpoints"]:
            out.append(f"| {_cell(e['version'])} | {_cell(e['method'])} | `{_cell(e['name'])}` | {e['requests']:,} | {e['failures']:,} | "
                       f"{_v('p', e.get('p50_ms'))} | {_v('p', e.get('p95_ms'))} | {_v('p', e.get('p99_ms'))} |")
        more = ep.get("endpoints_more") or {}
        if more.get("rows"):
            out.append(f"| … | | {more['rows']:,} more | {more['requests']:,} | {more['failures']:,} | | | |")
    if ep.get("failures"):
        out += ["", "| failures | method | name | error | version |", "|---:|---|---|---|---|"]
        for f in ep["failures"]:
            out.append(f"| {f['count']:,} | {_cell(f['method'])} | `{_cell(f['name'])}` | {_cell(f['error'])} | {_cell(f['version'])} |")
        more = ep.get("failures_more") or {}
        if more.get("count"):
            out.append(f"| {more['count']:,} | | | … {more['rows']:,} more kinds | |")
    for text in ep.get("listener_errors") or []:
        out += ["", f"⚠️ a listener of the locustfile raised: `{_cell(text.strip().splitlines()[-1])}`"]
    return out


def write(report: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render(report), encoding="utf-8")
    return p


def write_summary(report: dict[str, Any]) -> Path | None:
    """Append to $GITHUB_STEP_SUMMARY when set; quietly nothing otherwise (and never fail the command over it)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    try:
        with open(target, "a", encoding="utf-8") as f:
            f.write(render(report) + "\n")
    except OSError:
        return None
    return Path(target)

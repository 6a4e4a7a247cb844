"""One self-contained HTML file with plots, drawn as inline SVG from Python: no script, no network, no CDN.

Three charts share one time axis (the stages laid end to end): requests per
second, error rate, and latency (p50 dotted, p95 solid, p99 dashed), one
colour per version. Each stage is a shaded band with its name; gate limits are
red dashed lines over the stages they apply to (a comparison with stable is
drawn at the limit it was judged against, dotted); the decisive moment (the
second a gate failed, or the final verdict) is a vertical line on every chart.

Elements carry classes for machines too: `svg.chart[data-metric]`,
`rect.stage[data-stage]`, `polyline.series[data-version][data-stat]`,
`line.threshold[data-gate]`, `line.decisive`.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from rollout.plan.units import fmt_ms, fmt_percent
from rollout.report.json_report import series

W, H = 920, 230
ML, MR, MT, MB = 64, 16, 24, 30
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
FIXED = {"stable": "#1f77b4", "canary": "#ff7f0e", "unknown": "#7f7f7f"}
STAT_DASH = {"p50": "2 3", "p95": "", "p99": "7 4"}
STAGE_FILL = {"passed": "#2ca02c", "promoted": "#2ca02c", "failed": "#d62728", "needs-review": "#ff9f1c", "interrupted": "#999999"}


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _colors(versions: list[str]) -> dict[str, str]:
    out, k = {}, 0
    for v in versions:
        if v in FIXED:
            out[v] = FIXED[v]
        else:
            out[v] = PALETTE[(2 + k) % len(PALETTE)]
            k += 1
    return out


def _nice_max(x: float) -> float:
    if x <= 0 or not math.isfinite(x):
        return 1.0
    exp = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= x:
            return m * exp
    return 10 * exp


def _chart(metric: str, title: str, data: dict[str, Any], colors: dict[str, str], fmt: Any) -> str:
    end = max(data["end"], 1e-6)
    pw, ph = W - ML - MR, H - MT - MB

    # y range: the data and the limits drawn on this chart
    values: list[float] = []
    lines_by_version: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for v, pts in data["versions"].items():
        for t, rps, err, p50, p95, p99 in pts:
            row = {"rps": {"rps": rps}, "errors": {"err": err}, "latency": {"p50": p50, "p95": p95, "p99": p99}}[metric]
            for stat, y in row.items():
                if y is None:
                    continue
                lines_by_version.setdefault(v, {}).setdefault(stat, []).append((t, float(y)))
                values.append(float(y))
    limits = [th for th in data["thresholds"] if (metric == "errors" and th["metric"] == "error_rate") or (metric == "latency" and th["metric"] != "error_rate")]
    ymax = _nice_max(max(values + [th["value"] for th in limits] + [0.0]) * 1.08)

    def X(t: float) -> float:
        return ML + pw * min(max(t / end, 0.0), 1.0)

    def Y(y: float) -> float:
        return MT + ph * (1.0 - min(max(y / ymax, 0.0), 1.05))

    out = [f'<svg class="chart" data-metric="{metric}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{_e(title)}">',
           f'<text x="{ML}" y="15" class="title">{_e(title)}</text>']
    for i, st in enumerate(data["stages"]):
        fill = STAGE_FILL.get(st["status"], "#bbbbbb")
        x0, x1 = X(st["x0"]), X(st["x1"])
        out.append(f'<rect class="stage" data-stage="{_e(st["name"])}" data-status="{_e(st["status"])}" x="{x0:.1f}" y="{MT}" '
                   f'width="{max(x1 - x0, 0.5):.1f}" height="{ph}" fill="{fill}" fill-opacity="{0.07 if i % 2 == 0 else 0.13}"/>')
        out.append(f'<text x="{x0 + 4:.1f}" y="{MT + 12}" class="stage-label">{_e(st["name"])}</text>')
    for k in range(5):  # grid and y ticks
        y = ymax * k / 4
        out.append(f'<line class="grid" x1="{ML}" x2="{ML + pw}" y1="{Y(y):.1f}" y2="{Y(y):.1f}"/>')
        out.append(f'<text x="{ML - 6}" y="{Y(y) + 4:.1f}" class="tick" text-anchor="end">{_e(fmt(y))}</text>')
    step = _nice_max(end / 8)
    t = 0.0
    while t <= end + 1e-9:
        out.append(f'<text x="{X(t):.1f}" y="{H - 10}" class="tick" text-anchor="middle">{t:g}s</text>')
        t += step
    out.append(f'<line class="axis" x1="{ML}" x2="{ML + pw}" y1="{MT + ph}" y2="{MT + ph}"/><line class="axis" x1="{ML}" x2="{ML}" y1="{MT}" y2="{MT + ph}"/>')
    for th in limits:
        dash = "2 3" if th["relative"] else "6 4"
        y = Y(th["value"])
        out.append(f'<line class="threshold" data-gate="{_e(th["gate"])}" data-value="{th["value"]:g}" x1="{X(th["x0"]):.1f}" x2="{X(th["x1"]):.1f}" '
                   f'y1="{y:.1f}" y2="{y:.1f}" stroke="#d62728" stroke-width="1.5" stroke-dasharray="{dash}"/>')
        out.append(f'<text x="{X(th["x1"]) - 4:.1f}" y="{y - 4:.1f}" class="limit" text-anchor="end">{_e(th["gate"])} ≤ {_e(fmt(th["value"]))}</text>')
    for v, stats in lines_by_version.items():
        for stat, pts in stats.items():
            pts_s = " ".join(f"{X(t):.1f},{Y(y):.1f}" for t, y in pts)
            dash = STAT_DASH.get(stat, "")
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<polyline class="series" data-version="{_e(v)}" data-stat="{stat}" points="{pts_s}" fill="none" '
                       f'stroke="{colors[v]}" stroke-width="{2 if stat != "p50" else 1.5}"{dash_attr}><title>{_e(v)} {stat}</title></polyline>')
            if len(pts) == 1:  # a lone second still shows
                x, y = X(pts[0][0]), Y(pts[0][1])
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colors[v]}"/>')
    d = data["decisive"]
    if d:
        x = X(d["x"])
        color = "#d62728" if d["status"] == "fail" else "#333333"
        out.append(f'<line class="decisive" data-gate="{_e(d["gate"])}" x1="{x:.1f}" x2="{x:.1f}" y1="{MT}" y2="{MT + ph}" stroke="{color}" stroke-width="2"/>')
        label = f'{d["gate"]} {d["status"]} at {d["x"]:.0f}s'
        anchor = "end" if x > ML + pw * 0.7 else "start"
        dx = -4 if anchor == "end" else 4
        out.append(f'<text x="{x + dx:.1f}" y="{MT + 26}" class="decisive-label" text-anchor="{anchor}" fill="{color}">{_e(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:980px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 6px}
.ok{color:#1a7f37}.bad{color:#cf222e}.warn{color:#9a6700}
table{border-collapse:collapse;margin:6px 0 12px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
svg.chart{display:block;margin:6px 0 14px;border:1px solid #e5e5e5;background:#fff}
svg .title{font-weight:600;font-size:13px} svg .tick{font-size:10px;fill:#555} svg .stage-label{font-size:11px;fill:#444}
svg .limit{font-size:10px;fill:#d62728} svg .decisive-label{font-size:11px;font-weight:600}
svg .grid{stroke:#eee} svg .axis{stroke:#999}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:18px;height:3px;vertical-align:middle;margin-right:4px}
.muted{color:#666}
"""


def render(report: dict[str, Any]) -> str:
    data = series(report)
    colors = _colors(sorted(data["versions"], key=lambda v: (v not in FIXED, v)))
    o = report["outcome"]
    tgt = report.get("target") or {}
    plan = (report.get("plan") or {}).get("name")
    cls = {"passed": "ok", "promoted": "ok", "failed": "bad", "rolled-back": "bad", "error": "bad"}.get(o["result"], "warn")
    what = tgt.get("host") or f"{plan}: {tgt.get('stable')} → {tgt.get('canary')}"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>rollout {_e(report['command'])} {_e(o['result'])} — {_e(what)}</title>",
             f"<style>{CSS}</style></head><body>",
             f'<h1>rollout {_e(report["command"])} <span class="{cls}">{_e(o["result"])}</span> — {_e(what)}</h1>',
             f'<p>{_e(o["message"])} <span class="muted">(exit {o["exit_code"]}; {_e(report.get("generated_at") or "")}; '
             f'{report.get("duration_s") or 0:,.1f}s)</span></p>']
    if data["versions"]:
        legend = " ".join(f'<span><i style="background:{c}"></i>{_e(v)}</span>' for v, c in colors.items())
        parts.append(f'<p class="legend">{legend}<span class="muted">latency: p50 dotted, p95 solid, p99 dashed; '
                     f'red dashed: gate limits; vertical line: the decisive moment</span></p>')
        parts.append(_chart("rps", "Requests per second", data, colors, lambda y: f"{y:,.0f}"))
        parts.append(_chart("errors", "Error rate", data, colors, fmt_percent))
        parts.append(_chart("latency", "Latency p50 / p95 / p99", data, colors, fmt_ms))
    elif report.get("stages"):
        parts.append('<p class="muted">No per-second timeline was recorded for these stages (they ran in an earlier command).</p>')
    for st in report.get("stages", []):
        title = "Gates" if report["command"] == "gate" else f"Stage {st['index'] + 1} {st['name']}"
        parts.append(f'<h2>{_e(title)} — {_e(st["status"])}</h2>')
        if st.get("reason"):
            parts.append(f"<p>{_e(st['reason'])}</p>")
        rows = []
        for v in st.get("verdicts", []):
            metric = (st.get("gates") or {}).get(v["gate"], {}).get("metric", "")
            f = fmt_percent if metric == "error_rate" else fmt_ms
            c = {"pass": "ok", "fail": "bad"}.get(v["status"], "warn")
            obs = "–" if v.get("observed") is None else f(v["observed"])
            lim = "–" if v.get("threshold") is None else f(v["threshold"])
            rows.append(f'<tr><td>{_e(v["gate"])}</td><td class="{c}">{_e(v["status"])}</td><td class="n">{_e(obs)}</td>'
                        f'<td class="n">{_e(lim)}</td><td class="n">{v.get("requests", 0):,}</td><td>{_e(v["message"])}</td></tr>')
        for name, why in (st.get("skipped") or {}).items():
            rows.append(f'<tr><td>{_e(name)}</td><td class="muted">skipped</td><td></td><td></td><td></td><td>{_e(why)}</td></tr>')
        if rows:
            parts.append("<table><tr><th>gate</th><th>result</th><th>observed</th><th>limit</th><th>requests</th><th>detail</th></tr>" + "".join(rows) + "</table>")
        s = st.get("stats") or {}
        vrows = []
        for k, d in s.items():
            if isinstance(d, dict) and "requests" in d:
                vrows.append(f'<tr><td>{_e(k)}</td><td class="n">{d["requests"]:,}</td><td class="n">{_e(fmt_percent(d["error_rate"]) if d.get("error_rate") is not None else "–")}</td>'
                             + "".join(f'<td class="n">{_e(fmt_ms(d[q]) if d.get(q) is not None else "–")}</td>' for q in ("p50_ms", "p95_ms", "p99_ms")) + "</tr>")
        if vrows:
            parts.append("<table><tr><th>version</th><th>requests</th><th>errors</th><th>p50</th><th>p95</th><th>p99</th></tr>" + "".join(vrows) + "</table>")
        parts += _endpoint_tables(s.get("endpoints"))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _endpoint_tables(ep: dict[str, Any] | None) -> list[str]:
    """Per-endpoint statistics and failures per version (#9), under the plots: Locust's two tables, attributed."""
    if not ep:
        return []
    out: list[str] = []
    if ep.get("shape"):
        out.append(f'<p class="muted">Users driven by the LoadTestShape <code>{_e(ep["shape"])}</code>.</p>')
    if ep.get("endpoints"):
        rows = []
        for e in ep["endpoints"]:
            c = ' class="bad"' if e["failures"] else ""
            rows.append(f'<tr><td>{_e(e["version"])}</td><td>{_e(e["method"])}</td><td><code>{_e(e["name"])}</code></td>'
                        f'<td class="n">{e["requests"]:,}</td><td class="n"{c}>{e["failures"]:,}</td>'
                        + "".join(f'<td class="n">{_e(fmt_ms(e[q]) if e.get(q) is not None else "–")}</td>' for q in ("p50_ms", "p95_ms", "p99_ms")) + "</tr>")
        more = ep.get("endpoints_more") or {}
        if more.get("rows"):
            rows.append(f'<tr><td colspan="3" class="muted">{more["rows"]:,} more endpoints</td><td class="n">{more["requests"]:,}</td>'
                        f'<td class="n">{more["failures"]:,}</td><td></td><td></td><td></td></tr>')
        out.append("<h3>Endpoints</h3><table><tr><th>version</th><th>method</th><th>name</th><th>requests</th><th>failures</th>"
                   "<th>p50</th><th>p95</th><th>p99</th></tr>" + "".join(rows) + "</table>")
    if ep.get("failures"):
        rows = [f'<tr><td class="n">{f["count"]:,}</td><td>{_e(f["method"])}</td><td><code>{_e(f["name"])}</code></td>'
                f'<td>{_e(f["error"])}</td><td>{_e(f["version"])}</td></tr>' for f in ep["failures"]]
        more = ep.get("failures_more") or {}
        if more.get("count"):
            rows.append(f'<tr><td class="n">{more["count"]:,}</td><td colspan="4" class="muted">{more["rows"]:,} more kinds of failure</td></tr>')
        out.append("<h3>Failures</h3><table><tr><th>count</th><th>method</th><th>name</th><th>error</th><th>version</th></tr>" + "".join(rows) + "</table>")
    for text in ep.get("listener_errors") or []:
        out.append(f'<p class="warn">A listener of the locustfile raised:</p><pre>{_e(text)}</pre>')
    return out


def write(report: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render(report), encoding="utf-8")
    return p

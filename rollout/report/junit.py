"""JUnit XML from a report: each stage a test suite, each gate a test case.

The shape is the Ant/Jenkins one that CI systems read (GitHub test reporters,
GitLab `artifacts:reports:junit`, Jenkins): <testsuites> of <testsuite name
tests failures errors skipped time timestamp hostname> of <testcase classname
name time>, with <failure message type> for a failed gate (its numbers in the
message and the text), <skipped> for a gate that could not judge here, and
<error> when the command could not judge at all (target unreachable).
"""

from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from rollout.load.endpoints import top_failures_text


def _fmt_value(metric: str, x: float | None) -> str:
    from rollout.plan.units import fmt_ms, fmt_percent

    if x is None:
        return "n/a"
    return fmt_percent(x) if metric == "error_rate" else fmt_ms(x)


def _suite_name(report: dict[str, Any], stage: dict[str, Any]) -> str:
    plan = (report.get("plan") or {}).get("name")
    if report["command"] == "gate":
        return f"rollout gate {plan or report['target'].get('host', '')}".strip()
    return f"rollout {report['command']} {plan} / stage {stage['index'] + 1} {stage['name']}"


def render(report: dict[str, Any]) -> str:
    command = report["command"]
    plan = (report.get("plan") or {}).get("name") or "adhoc"
    root = ET.Element("testsuites", name=f"rollout {command} {plan}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    host = socket.gethostname()
    stages = report.get("stages") or []
    if not stages:  # could not judge at all
        o = report["outcome"]
        suite = ET.SubElement(root, "testsuite", name=f"rollout {command} {plan}", tests="1", failures="0", errors="1", skipped="0",
                              time=f"{report.get('duration_s') or 0:.3f}", timestamp=(report.get("generated_at") or "").rstrip("Z"), hostname=host)
        case = ET.SubElement(suite, "testcase", classname=f"rollout.{command}.{plan}", name="target", time="0")
        err = ET.SubElement(case, "error", message=o["message"], type="infrastructure")
        err.text = f"exit {o['exit_code']}: {o['message']}"
        totals["tests"] += 1
        totals["errors"] += 1
    for stage in stages:
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stage["started_at"])) if stage.get("started_at") else ""
        suite = ET.SubElement(root, "testsuite", name=_suite_name(report, stage), tests="0", failures="0", errors="0", skipped="0",
                              time=f"{stage.get('duration_s') or 0:.3f}", timestamp=stamp, hostname=host)
        props = ET.SubElement(suite, "properties")
        for k, v in (("stage", stage["name"]), ("status", stage["status"]), ("users", stage.get("users")),
                     ("requests", (stage.get("stats") or {}).get("all", {}).get("requests")),
                     ("target", report["target"].get("host") or report["target"].get("canary"))):
            if v is not None:
                ET.SubElement(props, "property", name=str(k), value=str(v))
        classname = f"rollout.{command}.{plan}.{stage['name']}"
        dur = f"{stage.get('duration_s') or 0:.3f}"
        for v in stage.get("verdicts", []):
            counts["tests"] += 1
            g = (stage.get("gates") or {}).get(v["gate"], {})
            case = ET.SubElement(suite, "testcase", classname=classname, name=v["gate"], time=dur)
            metric = g.get("metric", "")
            numbers = (f"gate {v['gate']}: {metric} on {v.get('version')}: observed {_fmt_value(metric, v.get('observed'))}, "
                       f"limit {_fmt_value(metric, v.get('threshold'))}, {v.get('requests', 0):,} requests")
            top = top_failures_text((stage.get("stats") or {}).get("endpoints"))
            if v["status"] == "fail":
                counts["failures"] += 1
                where = f" — top failures: {top}" if top else ""
                el = ET.SubElement(case, "failure", message=f"{v['gate']}: {v['message']}{where}", type="gate-failed")
                el.text = f"{v['message']}\n{numbers}\n" + (f"top failing endpoints: {top}\n" if top else "")
            elif v["status"] == "inconclusive":
                if command == "gate":
                    counts["failures"] += 1
                    el = ET.SubElement(case, "failure", message=f"{v['gate']} inconclusive: {v['message']}", type="inconclusive")
                    el.text = f"{v['message']}\n{numbers}\n"
                else:
                    counts["skipped"] += 1
                    ET.SubElement(case, "skipped", message=f"inconclusive, awaiting review: {v['message']}")
            else:
                out = ET.SubElement(case, "system-out")
                out.text = f"{v['status']}: {v['message']}\n{numbers}\n"
        for name, why in (stage.get("skipped") or {}).items():
            counts["tests"] += 1
            counts["skipped"] += 1
            case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
            ET.SubElement(case, "skipped", message=why)
        if stage["status"] == "interrupted":
            counts["tests"] += 1
            counts["errors"] += 1
            case = ET.SubElement(suite, "testcase", classname=classname, name="stage", time=dur)
            ET.SubElement(case, "error", message=stage.get("reason") or "interrupted", type="interrupted")
        for k, n in counts.items():
            suite.set(k, str(n))
            totals[k] += n
    for k in ("tests", "failures", "errors"):
        root.set(k, str(totals[k]))
    root.set("time", f"{report.get('duration_s') or 0:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write(report: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render(report), encoding="utf-8")
    return p

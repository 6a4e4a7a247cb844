"""Reports rendered from one document: JUnit valid against a JUnit XSD, JSON valid against its schema,
Markdown for a CI step summary, and a self-contained HTML file whose SVG plots are really drawn.

These build reports from synthetic but real statistics (StageStats filled request by request,
closed second by second like the recorder does), so they need no server and run in well under a second.
"""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import xmlschema

from rollout.gates.judge import StageJudge
from rollout.load.stats import StageStats, VersionStats
from rollout.plan.model import Gate
from rollout.report import html, json_report, junit, markdown
from tests.conftest import run_cli

# The Jenkins xUnit plugin's junit-10 shape (what Jenkins, GitLab and GitHub reporters read), written out
# here: <testsuites> of <testsuite> (name, tests, failures, errors required) of <testcase> (name required)
# with failure/error/skipped/system-out/system-err children; counts stricter than the original (integers).
JUNIT_XSD = """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:simpleType name="seconds"><xs:restriction base="xs:string"><xs:pattern value="[0-9]*(\\.[0-9]*)?"/></xs:restriction></xs:simpleType>
  <xs:complexType name="outcome" mixed="true">
    <xs:attribute name="message" type="xs:string"/>
    <xs:attribute name="type" type="xs:string"/>
  </xs:complexType>
  <xs:element name="failure" type="outcome"/>
  <xs:element name="error" type="outcome"/>
  <xs:element name="skipped" type="outcome"/>
  <xs:element name="system-out" type="xs:string"/>
  <xs:element name="system-err" type="xs:string"/>
  <xs:element name="property">
    <xs:complexType>
      <xs:attribute name="name" type="xs:string" use="required"/>
      <xs:attribute name="value" type="xs:string" use="required"/>
    </xs:complexType>
  </xs:element>
  <xs:element name="properties">
    <xs:complexType><xs:sequence><xs:element ref="property" minOccurs="0" maxOccurs="unbounded"/></xs:sequence></xs:complexType>
  </xs:element>
  <xs:element name="testcase">
    <xs:complexType>
      <xs:choice minOccurs="0" maxOccurs="unbounded">
        <xs:element ref="skipped"/><xs:element ref="error"/><xs:element ref="failure"/>
        <xs:element ref="system-out"/><xs:element ref="system-err"/>
      </xs:choice>
      <xs:attribute name="name" type="xs:string" use="required"/>
      <xs:attribute name="classname" type="xs:string"/>
      <xs:attribute name="time" type="seconds"/>
      <xs:attribute name="group" type="xs:string"/>
    </xs:complexType>
  </xs:element>
  <xs:element name="testsuite">
    <xs:complexType>
      <xs:choice minOccurs="0" maxOccurs="unbounded">
        <xs:element ref="testsuite"/><xs:element ref="properties"/><xs:element ref="testcase"/>
        <xs:element ref="system-out"/><xs:element ref="system-err"/>
      </xs:choice>
      <xs:attribute name="name" type="xs:string" use="required"/>
      <xs:attribute name="tests" type="xs:nonNegativeInteger" use="required"/>
      <xs:attribute name="failures" type="xs:nonNegativeInteger" use="required"/>
      <xs:attribute name="errors" type="xs:nonNegativeInteger" use="required"/>
      <xs:attribute name="skipped" type="xs:nonNegativeInteger"/>
      <xs:attribute name="time" type="seconds"/>
      <xs:attribute name="timestamp" type="xs:string"/>
      <xs:attribute name="hostname" type="xs:string"/>
      <xs:attribute name="id" type="xs:string"/>
      <xs:attribute name="package" type="xs:string"/>
      <xs:attribute name="group" type="xs:string"/>
      <xs:attribute name="file" type="xs:string"/>
      <xs:attribute name="log" type="xs:string"/>
      <xs:attribute name="url" type="xs:string"/>
    </xs:complexType>
  </xs:element>
  <xs:element name="testsuites">
    <xs:complexType>
      <xs:sequence><xs:element ref="testsuite" minOccurs="0" maxOccurs="unbounded"/></xs:sequence>
      <xs:attribute name="name" type="xs:string"/>
      <xs:attribute name="time" type="seconds"/>
      <xs:attribute name="tests" type="xs:nonNegativeInteger"/>
      <xs:attribute name="failures" type="xs:nonNegativeInteger"/>
      <xs:attribute name="errors" type="xs:nonNegativeInteger"/>
    </xs:complexType>
  </xs:element>
</xs:schema>
"""

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def xsd() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(JUNIT_XSD)


def report_schema() -> dict[str, Any]:
    return json.loads(json_report.SCHEMA_FILE.read_text())


def assert_valid_junit(text: str, xsd: xmlschema.XMLSchema) -> ET.Element:
    xsd.validate(text)  # raises with the offending element and rule
    return ET.fromstring(text)


def fake_stage(seconds: int, per_second: dict[str, tuple[int, float, float]], seed: int = 1, cut_at: int | None = None) -> StageStats:
    """Requests as the recorder adds them: {version: (requests/s, median ms, error share)}, closed every second."""
    rng = random.Random(seed)
    stats = StageStats()
    prev: dict[str, VersionStats] = {}
    for s in range(1, (cut_at or seconds) + 1):
        entry: dict[str, Any] = {"t": float(s)}
        for v, (n, median, err) in per_second.items():
            vs = stats.by_role.setdefault(v, VersionStats())
            before = prev.get(v) or VersionStats()
            for _ in range(n):
                vs.add(median * rng.lognormvariate(0, 0.3), rng.random() < err)
            sec = vs.latency.minus(before.latency)
            entry[v] = {"requests": vs.requests - before.requests, "failures": vs.failures - before.failures,
                        "p50_ms": sec.quantile(0.5), "p95_ms": sec.quantile(0.95), "p99_ms": sec.quantile(0.99)}
            prev[v] = VersionStats(vs.requests, vs.failures, vs.latency.copy())
        stats.timeline.append(entry)
    stats.elapsed = float(cut_at or seconds)
    stats.users = 10
    return stats


class _Setup:
    def __init__(self, gates: dict[str, Gate], skipped: dict[str, str] | None = None) -> None:
        self.host, self.locustfile, self.users, self.duration, self.workers, self.plan = "http://127.0.0.1:9", "load.py", 10, 8.0, 0, None
        self.gates, self.skipped = gates, skipped or {}


def gate_doc(fail: bool) -> dict[str, Any]:
    gates = {"p95<40ms": Gate(metric="p95", version="all", max="40ms", min_requests=50),
             "errors<5%": Gate(metric="error_rate", version="all", max="5%", min_requests=50)}
    err = 0.2 if fail else 0.0
    stats = fake_stage(8, {"v7": (60, 10.0, err)}, cut_at=3 if fail else None)
    judge = StageJudge(gates)
    verdicts = judge.judge(stats, final=not fail)
    result = "failed" if fail else "passed"
    return json_report.gate_report(_Setup(gates, {"p95-vs-stable": "compares with stable"}), stats, verdicts, 3.0 if fail else None,
                                   1_700_000_000.0, 1_700_000_008.0, result, 1 if fail else 0, "summary line")


def rollout_doc() -> dict[str, Any]:
    """A run report as `rollout run` builds it: two stages, the second failing at its 4th second."""
    s1 = fake_stage(5, {"stable": (80, 10.0, 0.0), "canary": (20, 11.0, 0.0)}, seed=2)
    s2 = fake_stage(10, {"stable": (50, 10.0, 0.0), "canary": (50, 12.0, 0.3)}, seed=3, cut_at=4)
    g = {"errors": Gate(metric="error_rate", max="5%", min_requests=50),
         "p95-vs-stable": Gate(metric="p95", compare="stable", max_increase="50%", min_requests=50)}
    gates = {n: json_report.gate_dict(x) for n, x in g.items()}
    stages = []
    for i, (name, st, status, t) in enumerate((("twenty", s1, "passed", None), ("half", s2, "failed", 4.0))):
        vds = [v.as_dict() for v in StageJudge(g).judge(st, final=status == "passed")]
        stages.append({"index": i, "name": name, "status": status, "reason": "", "started_at": 1e9 + 10 * i, "ended_at": 1e9 + 10 * i + st.elapsed,
                       "duration_s": st.elapsed, "planned_duration_s": 10.0, "users": 10, "split": {"weight": 0.2 * (i + 1), "cohort": None},
                       "gates": gates, "skipped": {}, "verdicts": vds, "stats": st.summary(), "timeline": st.timeline,
                       "decisive": json_report._decisive(vds, t, st.elapsed)})
    return json_report._clean({"schema": "rollout-report", "schema_version": 1, "command": "run", "generated_at": "2026-01-01T00:00:00Z",
                               "tool": {"name": "rollout", "version": "test"}, "plan": None, "target": {"backend": "local", "stable": "v1", "canary": "v3"},
                               "outcome": {"result": "rolled-back", "exit_code": 1, "message": "stage 2 failed"},
                               "started_at": 1e9, "ended_at": 1e9 + 20, "duration_s": 20.0, "stages": stages})


def test_junit_of_a_failed_gate_names_the_gate_and_its_numbers_and_validates(xsd: xmlschema.XMLSchema) -> None:
    doc = gate_doc(fail=True)
    root = assert_valid_junit(junit.render(doc), xsd)
    assert root.get("failures") == "1" and root.get("tests") == "3"
    fail = root.find(".//testcase[@name='errors<5%']/failure")
    assert fail is not None and fail.get("type") == "gate-failed"
    assert "errors<5%" in fail.get("message") and "error rate" in fail.get("message") and "> 5%" in fail.get("message")
    assert "observed" in fail.text and "limit 5%" in fail.text and "requests" in fail.text
    assert root.find(".//testcase[@name='p95-vs-stable']/skipped") is not None


def test_junit_of_passes_errors_and_rollouts_validates(xsd: xmlschema.XMLSchema) -> None:
    ok = assert_valid_junit(junit.render(gate_doc(fail=False)), xsd)
    assert ok.get("failures") == "0" and ok.find(".//failure") is None
    err = json_report.error_report("gate", {"host": "http://127.0.0.1:1"}, None, 3, "target unreachable", 1e9)
    e = assert_valid_junit(junit.render(err), xsd)
    assert e.get("errors") == "1" and "unreachable" in e.find(".//error").get("message")
    r = assert_valid_junit(junit.render(rollout_doc()), xsd)
    assert len(r.findall("testsuite")) == 2 and r.find(".//testsuite[2]//failure") is not None


def test_json_reports_match_their_schema() -> None:
    schema = report_schema()
    for doc in (gate_doc(True), gate_doc(False), rollout_doc(), json_report.error_report("run", {}, None, 3, "x", 1.0)):
        jsonschema.validate(json.loads(json.dumps(doc)), schema)
    bad = gate_doc(False)
    bad["stages"][0]["verdicts"][0]["status"] = "maybe"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def _svgs(text: str) -> dict[str, ET.Element]:
    body = text[text.index("<svg"): text.rindex("</svg>") + 6]
    root = ET.fromstring(f"<div>{body}</div>")
    return {svg.get("data-metric"): svg for svg in root.iter(f"{SVG}svg")}


def _points(poly: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in poly.get("points", "").split()]  # type: ignore[misc]


def test_html_draws_every_version_stage_limit_and_the_decisive_moment() -> None:
    text = html.render(rollout_doc())
    assert "<script" not in text and "<link" not in text and "src=" not in text and "@import" not in text  # offline, self-contained
    charts = _svgs(text)
    assert set(charts) == {"rps", "errors", "latency"}
    for metric, svg in charts.items():
        stages = svg.findall(f"{SVG}rect[@class='stage']")
        assert [r.get("data-stage") for r in stages] == ["twenty", "half"], metric
        assert all(float(r.get("width")) > 10 for r in stages)
        lines = svg.findall(f"{SVG}polyline[@class='series']")
        assert {p.get("data-version") for p in lines} == {"stable", "canary"}, metric
        for p in lines:
            pts = _points(p)
            assert len(pts) >= 4, (metric, p.get("data-version"))  # one point a second, over both stages
            if metric == "latency":
                assert len({y for _, y in pts}) > 1  # real numbers, not a flat placeholder
            xs = [x for x, _ in pts]
            assert xs == sorted(xs)
        decisive = svg.findall(f"{SVG}line[@class='decisive']")
        assert len(decisive) == 1 and decisive[0].get("data-gate") == "errors"
        # the decisive second (4 s into the second stage) lies inside the second stage's band
        half = stages[1]
        assert float(half.get("x")) < float(decisive[0].get("x1")) <= float(half.get("x")) + float(half.get("width")) + 0.2
    lat = charts["latency"]
    assert {p.get("data-stat") for p in lat.findall(f"{SVG}polyline")} == {"p50", "p95", "p99"}
    limits = charts["errors"].findall(f"{SVG}line[@class='threshold']")
    assert [t.get("data-gate") for t in limits] == ["errors", "errors"] and float(limits[0].get("data-value")) == pytest.approx(0.05)
    assert charts["latency"].findall(f"{SVG}line[@class='threshold'][@data-gate='p95-vs-stable']")  # judged limit, drawn too
    # the limit line sits at 5 % on the y axis: below the failing canary's error rate in the second stage
    canary_err = [p for p in charts["errors"].findall(f"{SVG}polyline") if p.get("data-version") == "canary"][0]
    y_limit = float(limits[1].get("y1"))
    assert min(y for _, y in _points(canary_err)[-4:]) < y_limit  # SVG y grows downwards: above the line


def test_html_of_a_gate_run_and_of_an_error() -> None:
    charts = _svgs(html.render(gate_doc(fail=True)))
    assert {p.get("data-version") for p in charts["rps"].findall(f"{SVG}polyline")} == {"v7"}
    assert charts["latency"].find(f"{SVG}line[@class='threshold'][@data-gate='p95<40ms']") is not None
    text = html.render(json_report.error_report("gate", {"host": "http://x"}, None, 3, "target unreachable", 1.0))
    assert "target unreachable" in text and "<svg" not in text


def test_markdown_summary_and_github_step_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md = markdown.render(gate_doc(fail=True))
    assert md.startswith("## ❌ rollout gate failed")
    assert "| `errors<5%` | ❌ fail |" in md and "| `p95-vs-stable` | ⏭️ skipped |" in md and "| v7 |" in md
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    markdown.write_summary(gate_doc(fail=False))
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "## ✅ rollout gate passed" in text  # appended, not replaced


def test_rollout_report_command_renders_a_saved_json_again(tmp_path: Path) -> None:
    doc = rollout_doc()
    saved = json_report.write(doc, tmp_path / "run.json")
    r = run_cli("report", str(saved), "--html", str(tmp_path / "out.html"), "--junit", str(tmp_path / "out.xml"),
                "--markdown", str(tmp_path / "out.md"), env={"GITHUB_STEP_SUMMARY": ""})
    assert r.returncode == 0, r.stderr
    again = json.loads(saved.read_text())
    assert (tmp_path / "out.html").read_text() == html.render(again)
    assert (tmp_path / "out.md").read_text() == markdown.render(again)
    assert junit.render(again).split("\n", 3)[3] == (tmp_path / "out.xml").read_text().split("\n", 3)[3]
    r = run_cli("report", str(saved))
    assert r.returncode == 0 and "rollout run rolled-back" in r.stdout
    (tmp_path / "other.json").write_text('{"hello": 1}')
    r = run_cli("report", str(tmp_path / "other.json"), "--html", str(tmp_path / "x.html"))
    assert r.returncode == 2 and "is not a rollout report" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("report", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "does not exist" in r.stderr

"""Reports of `rollout run` / `rollout advance` on the local backend: what the engine recorded per stage,
plus the per-second timeline the command measured, in JSON (schema-valid, re-rendered by `rollout report`),
JUnit (XSD-valid; the failing gate with its numbers) and HTML (a plot line per version, every stage shaded)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import xmlschema

from rollout.report import html, json_report
from tests.conftest import run_cli
from tests.test_local_e2e import rollout_env  # noqa: F401  (the fixture: plans on the local backend, cleaned up after)
from tests.test_report import JUNIT_XSD, SVG, _svgs


def test_run_writes_every_report_with_the_stage_that_failed_and_when(rollout_env: Any, tmp_path: Path) -> None:  # noqa: F811
    ro = rollout_env([{"name": "quarter", "weight": 25, "duration": "3s", "gates": {"errors": None}}, {"name": "half", "weight": 50, "duration": "40s"}])
    out = {k: tmp_path / f"run.{k}" for k in ("json", "xml", "html", "md")}
    summary = tmp_path / "step-summary.md"
    r = run_cli("run", str(ro.plan), "--version", "v3", "--json", str(out["json"]), "--junit", str(out["xml"]), "--html", str(out["html"]),
                "--markdown", str(out["md"]), env={**ro.env, "GITHUB_STEP_SUMMARY": str(summary)}, timeout=180)
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(out["json"].read_text())
    jsonschema.validate(doc, json.loads(json_report.SCHEMA_FILE.read_text()))
    assert doc["command"] == "run" and doc["outcome"]["result"] == "rolled-back" and doc["outcome"]["exit_code"] == 1
    assert doc["target"]["stable"] == "v1" and doc["target"]["canary"] == "v3" and doc["plan"]["name"] == "e2e"
    first, second = doc["stages"]
    assert (first["name"], first["status"], second["name"], second["status"]) == ("quarter", "passed", "half", "failed")
    state = ro.status()["state"]
    assert second["stats"] == state["stages"][1]["stats"] and second["verdicts"] == state["stages"][1]["verdicts"]  # what the engine recorded
    assert len(first["timeline"]) >= 2 and any("canary" in e and "stable" in e for e in first["timeline"])
    d = second["decisive"]
    assert d["gate"] == "errors" and d["status"] == "fail" and 0 < d["t"] < 40
    assert second["gates"]["errors"]["max"] == 0.05
    # JUnit: each stage a suite, the failing gate with its numbers
    xmlschema.XMLSchema(JUNIT_XSD).validate(str(out["xml"]))
    root = ET.fromstring(out["xml"].read_text())
    suites = root.findall("testsuite")
    assert len(suites) == 2 and suites[0].get("failures") == "0" and suites[1].get("failures") == "1"
    fail = suites[1].find("testcase[@name='errors']/failure")
    assert fail is not None and "canary error rate" in fail.get("message", "") and "> 5%" in fail.get("message", "")
    # HTML: stable and canary drawn over both stages, the decisive moment marked, the limit drawn
    charts = _svgs(out["html"].read_text())
    for svg in charts.values():
        assert [r.get("data-stage") for r in svg.findall(f"{SVG}rect[@class='stage']")] == ["quarter", "half"]
        assert {p.get("data-version") for p in svg.findall(f"{SVG}polyline[@class='series']")} >= {"stable", "canary"}
        assert len(svg.findall(f"{SVG}line[@class='decisive']")) == 1
    assert charts["errors"].findall(f"{SVG}line[@class='threshold'][@data-gate='errors']")
    assert "stage 2 `half` — failed" in out["md"].read_text() and summary.read_text() == out["md"].read_text() + "\n"
    # the saved JSON renders the same HTML later
    r = run_cli("report", str(out["json"]), "--html", str(tmp_path / "again.html"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again.html").read_text() == out["html"].read_text() == html.render(doc)


def test_advance_reports_the_stage_it_ran(rollout_env: Any, tmp_path: Path) -> None:  # noqa: F811
    ro = rollout_env([{"name": "ten", "weight": 10, "duration": "2s"}, {"name": "half", "weight": 50, "duration": "2s"}], gates={})
    r = run_cli("advance", str(ro.plan), "--version", "v2", "--json", str(tmp_path / "a.json"), env={**ro.env, "GITHUB_STEP_SUMMARY": ""})
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["command"] == "advance" and doc["outcome"]["result"] == "passed"
    assert [s["name"] for s in doc["stages"]] == ["ten"] and doc["stages"][0]["status"] == "passed"
    assert doc["stages"][0]["timeline"] and doc["stages"][0]["split"]["weight"] == 0.1

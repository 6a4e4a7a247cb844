"""`rollout gate --baseline report.json`: the candidate against a saved report of an earlier release.

One baseline run (examples/service.py at 20 ms) writes a JSON report with its histograms; the same server
then passes `p50<+30%` against it, a 40 ms server fails `p95<+10%` (exit 1, the baseline's numbers named),
and a malformed or mismatched baseline is exit 2 before any load. Margins are wide (a 2x slowdown against a
10 % limit; the same server against +30 %), so a busy machine cannot flip a verdict.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import stop_all

from rollout.report import json_report
from tests.test_gate import LOCUSTFILE, gate, start_service


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    procs: list[subprocess.Popen[bytes]] = []
    urls = {}
    try:
        for name, latency in (("fast", "20ms"), ("slow", "40ms")):
            proc, url = start_service(f"v-{name}", latency=latency)
            procs.append(proc)
            urls[name] = url
        yield urls
    finally:
        stop_all(procs)


def _args(url: str, duration: str, *extra: str) -> list[str]:
    return ["--host", url, "--locustfile", str(LOCUSTFILE), "--users", "20", "--duration", duration, "--min-requests", "50", *extra]


@pytest.fixture(scope="module")
def baseline(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("baseline") / "last-release.json"
    r = gate(*_args(servers["fast"], "6s", "--gate", "errors<5%", "--json", str(path)))
    assert r.returncode == 0, r.stdout + r.stderr
    return path


def test_the_json_report_carries_histograms_and_counts(baseline: Path) -> None:
    from rollout.stats.histogram import Histogram

    doc = json.loads(baseline.read_text())
    jsonschema.validate(doc, json.loads(json_report.SCHEMA_FILE.read_text()))
    assert doc["schema_version"] == 2  # v2 (#9) added stats.endpoints; v1 files stay readable
    dist = doc["stages"][0]["distributions"]
    assert set(dist) == {"v-fast", "all"}
    h = Histogram.from_dict(dist["all"]["latency"])
    assert h.count == dist["all"]["requests"] == doc["stages"][0]["stats"]["all"]["requests"] > 500
    assert abs(h.quantile(0.95) - doc["stages"][0]["stats"]["all"]["p95_ms"]) < 0.01


def test_the_same_server_passes_against_its_baseline(servers: dict[str, str], baseline: Path, tmp_path: Path) -> None:
    out, junit, html = tmp_path / "r.json", tmp_path / "junit.xml", tmp_path / "r.html"
    r = gate(*_args(servers["fast"], "6s", "--baseline", str(baseline), "--baseline-gate", "p50<+30%", "--json", str(out),
                    "--junit", str(junit), "--html", str(html)))
    assert r.returncode == 0, r.stdout + r.stderr
    import xmlschema

    from tests.test_report import JUNIT_XSD

    xmlschema.XMLSchema(JUNIT_XSD).validate(str(junit))
    assert 'name="p50&lt;+30% vs baseline"' in junit.read_text() and "<svg" in html.read_text()
    assert "p50<+30% vs baseline: pass" in r.stdout and "baseline v-fast (last-release.json" in r.stdout
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, json.loads(json_report.SCHEMA_FILE.read_text()))
    assert doc["baseline"]["file"] == str(baseline) and doc["baseline"]["requests"] > 500


def test_a_slower_server_fails_naming_the_baseline_numbers(servers: dict[str, str], baseline: Path) -> None:
    base = json.loads(baseline.read_text())["stages"][0]["stats"]["all"]
    r = gate(*_args(servers["slow"], "20s", "--baseline", str(baseline), "--baseline-gate", "p95<+10%"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "gate `p95<+10% vs baseline` failed" in r.stderr
    from rollout.plan.units import fmt_ms

    assert "baseline v-fast (last-release.json" in r.stderr and f"p95 {fmt_ms(base['p95_ms'])}" in r.stderr, r.stderr
    assert "limit +10 %" in r.stderr


@pytest.mark.parametrize(
    ("content", "exprs", "message"),
    [
        ("{not json", ["p95<+10%"], "is not readable JSON"),
        ('{"schema": "something-else"}', ["p95<+10%"], "is not a rollout report"),
        ('{"schema": "rollout-report", "schema_version": 99}', ["p95<+10%"], "schema version 99"),
        (None, ["p95<+10%"], "has no latency histograms (`distributions`)"),
        ("histogram", ["p95<+10%"], "histogram recorded with relative error 0.01"),
        ("locustfile", ["p95<+10%"], "was measured with the locustfile other.py, this run uses answer.py"),
        ("ok", ["p95<10ms"], "--baseline-gate 'p95<10ms' is not a baseline gate"),
        ("ok", ["errors<+1%"], "an error-rate increase is in percentage points"),
        ("ok", [], "--baseline given but no gate compares with it"),
    ],
)
def test_a_malformed_or_mismatched_baseline_is_exit_2(baseline: Path, tmp_path: Path, content: str | None, exprs: list[str], message: str) -> None:
    from rollout.errors import EXIT_BAD_INPUT, RolloutError
    from rollout.gate import resolve

    doc = json.loads(baseline.read_text())
    if content is None:
        del doc["stages"][0]["distributions"]
    elif content == "histogram":
        doc["stages"][0]["distributions"]["all"]["latency"]["relative_error"] = 0.01
    elif content == "locustfile":
        doc["target"]["locustfile"] = "/elsewhere/other.py"
    bad = tmp_path / "baseline.json"
    bad.write_text(content if content not in (None, "histogram", "locustfile", "ok") else json.dumps(doc))
    with pytest.raises(RolloutError) as exc:
        resolve(None, "http://127.0.0.1:9", str(LOCUSTFILE), None, "3s", ["errors<5%"], 100, None, None, str(bad), exprs)
    assert exc.value.exit_code == EXIT_BAD_INPUT
    assert message in exc.value.render()


def test_a_bad_baseline_on_the_command_line_is_exit_2_before_any_load(tmp_path: Path) -> None:
    bad = tmp_path / "nope.json"
    r = gate("--host", "http://127.0.0.1:9", "--locustfile", str(LOCUSTFILE), "--duration", "3s",
             "--baseline", str(bad), "--baseline-gate", "p95<+10%", timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"report {bad} does not exist" in r.stderr and "Traceback" not in r.stderr

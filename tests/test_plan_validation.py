"""Plan validation: every problem reported at once, each with file, line, field path and what is expected."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from rollout.errors import PlanInvalid
from rollout.plan import load_plan
from tests.conftest import EXAMPLES, run_cli, write_plan


def _issues(tmp_path: Path, data: Any) -> list[str]:
    path = write_plan(tmp_path, data)
    with pytest.raises(PlanInvalid) as exc:
        load_plan(path)
    return [i.render() for i in exc.value.issues]


def _mut(fn: Callable[[dict], None]) -> Callable[[dict], dict]:
    def apply(plan: dict) -> dict:
        p = copy.deepcopy(plan)
        fn(p)
        return p
    return apply


def _set(path: tuple, value: Any) -> Callable[[dict], dict]:
    def f(p: dict) -> None:
        cur: Any = p
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value
    return _mut(f)


def _del(path: tuple) -> Callable[[dict], dict]:
    def f(p: dict) -> None:
        cur: Any = p
        for k in path[:-1]:
            cur = cur[k]
        del cur[path[-1]]
    return _mut(f)


# (case id, mutation, substrings the one message must contain)
CASES = [
    ("missing-owner", _del(("owner",)), ["owner", "required"]),
    ("owner-without-contact", _del(("owner", "contact")), ["owner.contact", "required"]),
    ("bad-name", _set(("name",), "My_Service"), ["name", "lowercase letters, digits and dashes", "'My_Service'"]),
    ("unknown-top-field", _set(("stagse",), []), ["stagse", "unknown field", "did you mean `stages`"]),
    ("unknown-stage-field", _mut(lambda p: p["stages"][0].update(duraton="5s")), ["stages[0].duraton", "did you mean `duration`"]),
    ("bad-duration", _set(("stages", 0, "duration"), "5 minutes"), ["stages[0].duration", "a duration such as 90s"]),
    ("weight-over-100", _set(("stages", 0, "weight"), 150), ["stages[0].weight", "between 0 and 100", "150"]),
    ("rate-without-percent", _set(("gates", "errors", "max"), 1), ["gates.errors.max", "a percentage such as 1%"]),
    ("bad-latency", _mut(lambda p: p["gates"].update(lat={"metric": "p95", "max": "fast"})), ["gates.lat.max", "a latency such as 300ms"]),
    ("unknown-metric", _set(("gates", "errors", "metric"), "p97"), ["gates.errors.metric", "p99", "'p97'", "load.metrics"]),
    ("compare-without-margin", _mut(lambda p: p["gates"].update(cmp={"metric": "p95", "compare": "stable"})), ["gates.cmp", "max_increase"]),
    ("max-and-compare", _mut(lambda p: p["gates"].update(cmp={"metric": "p95", "compare": "stable", "max": "1s", "max_increase": "10%"})), ["gates.cmp", "use two gates"]),
    ("bad-approval", _set(("stages", 0, "approval"), "maybe"), ["stages[0].approval", "'auto' or 'manual'"]),
    ("two-header-cohort", _set(("stages", 0, "cohort"), {"a": "1", "b": "2"}), ["stages[0].cohort", "exactly one header"]),
    ("no-weight-no-cohort", _del(("stages", 0, "weight")), ["stages[0]", "`weight`", "`cohort`"]),
    ("duplicate-stage-name", _mut(lambda p: p["stages"].append(dict(p["stages"][0]))), ["stages[1].name", "not used by stage 1"]),
    ("unknown-stable-version", _set(("target", "stable"), "v9"), ["target.stable", "one of the versions: v1, v2", "'v9'"]),
    ("missing-locustfile", _set(("load", "locustfile"), "nope.py"), ["load.locustfile", "an existing locustfile"]),
    ("zero-users", _set(("load", "users"), 0), ["load.users", "≥ 1"]),
    ("unknown-backend", _set(("target", "backend"), "nomad"), ["target", "'local'"]),
    ("no-stages", _set(("stages",), []), ["stages", "at least 1"]),
    ("remove-unknown-gate", _mut(lambda p: p["stages"][0].update(gates={"nope": None})), ["stages[0].gates.nope", "plan-wide gate"]),
    ("compare-on-canary-only-stage", _mut(lambda p: (p["gates"].update(cmp={"metric": "p95", "compare": "stable", "max_increase": "20%"}), p["stages"][0].update(load_to="canary"))), ["gates.cmp", "needs stable traffic", "load_to: canary"]),
    ("health-not-a-path", _set(("target", "versions", "v1", "health"), "healthz"), ["target.versions.v1.health", "a path starting with /"]),
    ("host-with-local-backend", _set(("load", "host"), "http://example.com"), ["load.host", "no host with the local backend"]),
    ("sequential-with-min", _mut(lambda p: (p["load"].update(metrics={"conf": {"json": "confidence"}}), p["gates"].update(seq={"metric": "conf", "min": 0.5, "method": "sequential"}))), ["gates.seq", "`method: threshold` for a declared metric"]),
    ("sequential-limit-of-zero", _mut(lambda p: p["gates"].update(z={"metric": "error_rate", "max": "0%"})), ["gates.z", "`method: threshold`"]),
    ("error-increase-of-100-percent", _mut(lambda p: p["gates"].update(cmp={"metric": "error_rate", "compare": "stable", "max_increase": "100%", "method": "sequential"})), ["gates.cmp.max_increase", "+1pt", "max_ratio: 2"]),
    ("error-increase-not-a-margin", _mut(lambda p: p["gates"].update(cmp={"metric": "error_rate", "compare": "stable", "max_increase": "double"})), ["gates.cmp.max_increase", "+1pt", "max_ratio: 2"]),
    ("points-on-latency", _mut(lambda p: p["gates"].update(cmp={"metric": "p95", "compare": "stable", "max_increase": "+5pt"})), ["gates.cmp.max_increase", "20%"]),
    ("ratio-and-increase", _mut(lambda p: p["gates"].update(cmp={"metric": "error_rate", "compare": "stable", "max_increase": "+1pt", "max_ratio": 2})), ["gates.cmp", "not both"]),
    ("ratio-on-latency", _mut(lambda p: p["gates"].update(cmp={"metric": "p95", "compare": "stable", "max_ratio": 2})), ["gates.cmp", "`max_ratio` with `metric: error_rate`"]),
    ("pass-max-above-max", _mut(lambda p: p["gates"].update(lim={"metric": "error_rate", "max": "2%", "pass_max": "3%"})), ["gates.lim", "at most `max`"]),
    # stages[].workers: worker pods of the in-cluster runner, per stage (rollout.load.cluster)
    ("stage-workers-without-cluster-runner", _mut(lambda p: p["stages"][0].update(workers=2)), ["stages[0].workers", "load.runner: kubernetes"]),
    ("stage-workers-zero", _mut(lambda p: (p["load"].update(runner="kubernetes"), p["stages"][0].update(workers=0))), ["stages[0].workers", "≥ 1"]),
    ("stage-workers-not-a-number", _mut(lambda p: (p["load"].update(runner="kubernetes"), p["stages"][0].update(workers="two"))), ["stages[0].workers"]),
    ("alpha-percent-out-of-range", _mut(lambda p: p["gates"].update(lim={"metric": "error_rate", "max": "2%", "alpha": "60%"})), ["gates.lim.alpha", "< 0.5"]),
    ("alpha-out-of-range", _mut(lambda p: p["gates"].update(seq={"metric": "p95", "compare": "stable", "max_increase": "20%", "method": "sequential", "alpha": 0.7})), ["gates.seq.alpha", "< 0.5"]),
    ("metric-source-twice", _set(("load", "metrics"), {"conf": {"json": "confidence", "header": "X-Conf"}}), ["load.metrics.conf", "exactly one source"]),
    ("share-below-without-below", _mut(lambda p: (p["load"].update(metrics={"conf": {"json": "confidence"}}), p["gates"].update(c={"metric": "conf", "stat": "share_below", "max": "5%"}))), ["gates.c", "`below: VALUE`"]),
    ("stat-on-builtin-metric", _mut(lambda p: p["gates"].update(c={"metric": "p95", "stat": "mean", "max": "1s"})), ["gates.c", "built-in metric p95"]),
    ("stage-not-a-mapping", _set(("stages",), ["just-a-name"]), ["stages[0]", "a mapping of fields"]),
]


@pytest.mark.parametrize("case,mutate,needles", CASES, ids=[c[0] for c in CASES])
def test_each_kind_of_bad_plan_is_named_with_its_line(tmp_path: Path, base_plan: dict, case: str, mutate: Any, needles: list[str]) -> None:
    messages = _issues(tmp_path, mutate(base_plan))
    matching = [m for m in messages if all(n in m for n in needles)]
    assert matching, f"{case}: no message contains {needles}: {messages}"
    msg = matching[0]
    assert msg.startswith(str(tmp_path / "plan.yaml") + ":"), msg
    line = msg.split(":")[1]
    assert line.isdigit() and int(line) >= 1, f"{case}: no line number in {msg}"


def test_every_error_is_reported_at_once_in_line_order(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    p["owner"] = {"name": "x"}
    p["target"]["stable"] = "v9"
    p["load"]["users"] = 0
    p["stages"][0]["duration"] = "soon"
    p["stages"][0]["approvl"] = "auto"
    messages = _issues(tmp_path, p)
    assert len(messages) == 5, messages
    lines = [int(m.split(":")[1]) for m in messages]
    assert lines == sorted(lines)


def test_line_numbers_point_at_the_field(tmp_path: Path) -> None:
    lines = (EXAMPLES / "plan.yaml").read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if "name: payments-team" in line)
    dur = next(n for n in range(start, len(lines)) if lines[n].strip().startswith("duration:"))
    lines[dur] = lines[dur].split("duration:")[0] + "duration: 8 secs"
    text = "\n".join(lines) + "\n"
    (tmp_path / "examples").mkdir()
    path = tmp_path / "examples" / "plan.yaml"
    path.write_text(text)
    (tmp_path / "locustfiles").mkdir()
    (tmp_path / "locustfiles" / "answer.py").write_text("")
    with pytest.raises(PlanInvalid) as exc:
        load_plan(path)
    issue = next(i for i in exc.value.issues if i.path.endswith(".duration"))
    expected_line = next(n for n, line in enumerate(text.splitlines(), 1) if "duration: 8 secs" in line)
    assert issue.line == expected_line
    assert issue.path == "stages[1].duration"


def test_invalid_yaml_gets_a_line_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("name: svc\nstages:\n  - name: a\n    weight: [10\n")
    r = run_cli("validate", str(path))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"{path}:" in r.stderr and "invalid YAML" in r.stderr


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("name: svc\nname: other\n")
    with pytest.raises(PlanInvalid) as exc:
        load_plan(path)
    assert exc.value.issues[0].line == 2 and "first on line 1" in exc.value.issues[0].found


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    r = run_cli("validate", str(tmp_path / "none.yaml"))
    assert r.returncode == 2 and "no such file" in r.stderr
    (tmp_path / "empty.yaml").write_text("")
    r = run_cli("validate", str(tmp_path / "empty.yaml"))
    assert r.returncode == 2 and "an empty file" in r.stderr


def test_validate_cli_text_and_json(tmp_path: Path, base_plan: dict) -> None:
    good = write_plan(tmp_path, base_plan)
    r = run_cli("validate", str(good))
    assert r.returncode == 0, r.stderr
    assert "ten" in r.stdout and "errors" in r.stdout and "valid plan" in r.stdout
    r = run_cli("validate", str(good), "-o", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["valid"] is True
    bad = copy.deepcopy(base_plan)
    bad["stages"][0]["weight"] = 500
    bad["load"]["users"] = -1
    path = write_plan(tmp_path, bad, "bad.yaml")
    r = run_cli("validate", str(path), "-o", "json")
    assert r.returncode == 2
    out = json.loads(r.stdout)
    assert out["valid"] is False
    assert {e["path"] for e in out["errors"]} == {"stages[0].weight", "load.users"}
    assert all(isinstance(e["line"], int) for e in out["errors"])
    r = run_cli("validate", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "2 problems" in r.stderr


def test_units_are_parsed_to_canonical_numbers(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    p["stages"][0].update(duration="2m", weight="12.5%")
    p["gates"]["lat"] = {"metric": "p99", "max": "1.5s"}
    plan = load_plan(write_plan(tmp_path, p)).plan
    assert plan.stages[0].duration == 120.0
    assert plan.stages[0].weight == 0.125
    assert plan.gates["lat"].max == 1500.0
    assert plan.gates["errors"].max == 0.01


def test_stage_gates_merge_by_name(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    p["gates"]["lat"] = {"metric": "p95", "max": "300ms"}
    p["stages"][0]["gates"] = {"errors": None, "lat": {"metric": "p95", "max": "500ms"}}
    plan = load_plan(write_plan(tmp_path, p)).plan
    merged = plan.stage_gates(0)
    assert set(merged) == {"lat"} and merged["lat"].max == 500.0


def test_schema_is_json_schema_of_the_plan() -> None:
    r = run_cli("schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["required"]) >= {"name", "owner", "target", "load", "stages"}
    assert schema["additionalProperties"] is False


def test_schema_accepts_the_example_plan() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = json.loads(run_cli("schema").stdout)
    data = yaml.safe_load((EXAMPLES / "plan.yaml").read_text())
    jsonschema.validate(data, schema)
    bad = dict(data, colour="red")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_margins_rates_and_alphas_take_the_same_spellings(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    p["gates"] = {
        "errors": {"metric": "error_rate", "max": "2%", "alpha": "1%"},  # sequential by default
        "errors-old": {"metric": "error_rate", "max": "2%", "method": "threshold", "alpha": 0.01},
        "p95": {"metric": "p95", "max": "250ms", "pass_max": "200ms", "min_requests": 300},
        "pts": {"metric": "error_rate", "compare": "stable", "max_increase": "+1pt", "pass_increase": "0.5pt", "method": "sequential", "alpha": "0.5%"},
        "bare": {"metric": "error_rate", "compare": "stable", "max_increase": "1%"},  # documented: percentage points
        "ratio": {"metric": "error_rate", "compare": "stable", "max_ratio": 2, "method": "sequential"},
        "lat": {"metric": "p99", "compare": "stable", "max_increase": "+150%"},
    }
    g = load_plan(write_plan(tmp_path, p)).plan.gates
    assert (g["errors"].method, g["errors"].alpha, g["errors"].min_requests) == ("sequential", 0.01, 1)
    assert (g["errors-old"].method, g["errors-old"].min_requests) == ("threshold", 100)
    assert (g["p95"].method, g["p95"].pass_max, g["p95"].min_requests) == ("sequential", 200.0, 300)
    assert (g["pts"].max_increase, g["pts"].pass_increase, g["pts"].alpha) == (0.01, 0.005, 0.005)
    assert g["bare"].max_increase == 0.01 and g["bare"].method == "threshold"  # comparisons keep their default
    assert g["ratio"].max_ratio == 2.0 and g["ratio"].max_increase is None
    assert abs(g["lat"].max_increase - 1.5) < 1e-12


def test_a_hundred_percent_error_increase_is_refused_by_validate_not_at_run_time(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    p["gates"]["double"] = {"metric": "error_rate", "compare": "stable", "max_increase": "100%", "method": "sequential"}
    r = run_cli("validate", str(write_plan(tmp_path, p)))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "gates.double.max_increase" in r.stderr and "+1pt" in r.stderr and "max_ratio: 2" in r.stderr, r.stderr

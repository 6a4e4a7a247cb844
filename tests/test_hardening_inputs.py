"""Regression tests for the plan and flag findings of the adversarial audit (#12 "Plans and flags", #10 item 4).

Each finding is replayed as it was found and its outcome asserted: exit 2 (bad input) with a message
that names the line, the field and the rule -- fast, where the finding was a hang -- instead of a hang,
"internal error" (exit 70), or a plan accepted by `validate` that broke at run time.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.errors import PlanInvalid
from rollout.plan import load_plan
from rollout.plan.loader import MAX_DEPTH, MAX_NODES, MAX_PLAN_BYTES
from tests.conftest import ROOT, run_cli, write_plan

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""

# a hang used to be the outcome: these bounds only separate "refused at once" from "never returns"
FAST = 20.0


def _cli_timed(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    r = run_cli(*args, timeout=120)
    return r, time.monotonic() - t0


def _issues(path: Path) -> list[Any]:
    with pytest.raises(PlanInvalid) as exc:
        load_plan(path)
    return exc.value.issues


def _one(issues: list[Any], path: str) -> Any:
    found = [i for i in issues if i.path == path]
    assert found, f"no issue at {path}: {[i.render() for i in issues]}"
    return found[0]


def _no_raw_controls(text: str) -> None:
    assert not any(ch in text for ch in "\x00\x1b\r\x07\x9b"), repr(text)


# -- the YAML itself: hangs and internal errors --------------------------------------------------------


def test_alias_bomb_is_refused_at_once_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    t0 = time.monotonic()
    issues = _issues(path)
    assert time.monotonic() - t0 < 5.0
    assert issues[0].line is not None and 1 <= issues[0].line <= 9
    assert f"more than {MAX_NODES:,} values" in issues[0].found and "aliases" in issues[0].found
    r, took = _cli_timed("validate", str(path))
    assert r.returncode == 2 and took < FAST, r.stderr
    assert f"{path}:" in r.stderr and "aliases" in r.stderr and "internal error" not in r.stderr


def test_alias_bomb_under_an_unknown_key_is_refused_too(tmp_path: Path, base_plan: dict) -> None:
    text = yaml.safe_dump(base_plan, sort_keys=False) + "extra:\n" + "".join(f"  {line}\n" for line in BILLION_LAUGHS.splitlines())
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    r, took = _cli_timed("validate", str(path))
    assert r.returncode == 2 and took < FAST, r.stderr
    assert "aliases" in r.stderr


def test_small_aliases_and_merge_keys_still_work(tmp_path: Path, base_plan: dict) -> None:
    text = yaml.safe_dump(base_plan, sort_keys=False).replace("gates:\n", "x-lat: &lat {metric: p95, max: 300ms}\ngates:\n  lat: *lat\n  lat2: {<<: *lat, max: 400ms}\n", 1)
    text = text.replace("x-lat:", "description: shared gates\nx-lat:", 1)
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    issues = _issues(path)  # only the unknown key `x-lat` is wrong: the alias and the overriding merge are fine
    assert [i.path for i in issues] == ["x-lat"], [i.render() for i in issues]


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("name: svc\nloop: &a [1, *a]\n")
    issue = _issues(path)[0]
    assert issue.line == 2 and "recursive anchor" in issue.found


def test_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    r, took = _cli_timed("validate", str(fifo))
    assert r.returncode == 2 and took < FAST, r.stderr
    assert "a FIFO (named pipe)" in r.stderr and "a regular YAML file" in r.stderr


@pytest.mark.parametrize("target,kind", [("/dev/zero", "a character device"), ("DIR", "a directory")])
def test_devices_and_directories_are_refused(tmp_path: Path, target: str, kind: str) -> None:
    path = str(tmp_path) if target == "DIR" else target
    r, took = _cli_timed("validate", path)
    assert r.returncode == 2 and took < FAST, r.stderr
    assert kind in r.stderr


def test_a_file_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("# padding\n" * (MAX_PLAN_BYTES // 10 + 1))
    issue = _issues(path)[0]
    assert "bytes" in issue.found and "at most 256 KiB" in issue.expected


def test_nul_byte_is_a_plan_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"name: svc\nowner:\n  name: a\x00b\n")
    r = run_cli("validate", str(path))
    assert r.returncode == 2, r.stderr
    assert f"{path}:3:" in r.stderr and "\\x00" in r.stderr and "internal error" not in r.stderr
    _no_raw_controls(r.stderr)


def test_invalid_utf8_is_a_plan_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"name: svc\n\nowner: \xff\n")
    issue = _issues(path)[0]
    assert issue.line == 3 and "0xff" in issue.found


def test_3000_deep_block_nesting_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("name: svc\nstages:\n  " + "- " * 3000 + "x\n")
    r, took = _cli_timed("validate", str(path))
    assert r.returncode == 2 and took < FAST, r.stderr
    assert f"{path}:3:" in r.stderr and f"nested more than {MAX_DEPTH} levels" in r.stderr


def test_20000_deep_flow_nesting_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("name: svc\nstages: " + "[" * 20000 + "]" * 20000 + "\n")
    r, took = _cli_timed("validate", str(path))
    assert r.returncode == 2 and took < FAST, r.stderr
    assert f"{path}:2:" in r.stderr and "nested more than" in r.stderr


def test_values_yaml_cannot_build_are_located(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("name: svc\nusers: " + "9" * 6000 + "\nwhen: 2024-13-45\n")
    issue = _issues(path)[0]
    assert issue.line == 2 and "a value YAML cannot read" in issue.found


# -- accepted by validate, broken at run time ------------------------------------------------------------


def _bad_plan(tmp_path: Path, plan: dict, path: str) -> Any:
    return _one(_issues(write_plan(tmp_path, plan)), path)


def test_version_name_with_cr_lf_is_refused_with_the_rule(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    p["target"]["versions"]["v2\r\nX-Injected: 1"] = p["target"]["versions"].pop("v2")
    path = write_plan(tmp_path, p)
    issues = _issues(path)
    rule = [i for i in issues if "a version name" in i.expected]
    assert rule and rule[0].path == "target.versions.v2\\r\\nX-Injected: 1" and rule[0].line
    r = run_cli("validate", str(path))
    assert r.returncode == 2 and "a version name: 1-63 letters" in r.stderr
    _no_raw_controls(r.stderr)


@pytest.mark.parametrize("name", ["v 2", "v2/../../etc", "-v2", "v2.", "v" * 64, "vé"])
def test_other_bad_version_names(tmp_path: Path, base_plan: dict, name: str) -> None:
    p = copy.deepcopy(base_plan)
    p["target"]["versions"][name] = p["target"]["versions"].pop("v2")
    issues = _issues(write_plan(tmp_path, p))
    assert any("a version name" in i.expected for i in issues), [i.render() for i in issues]


def test_good_version_names_pass(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    for name in ("2.1.0-rc1", "V_2", "a"):
        p["target"]["versions"][name] = dict(p["target"]["versions"]["v2"])
    assert set(load_plan(write_plan(tmp_path, p)).plan.target.versions) >= {"2.1.0-rc1", "V_2", "a"}


def test_version_header_must_be_a_header_name(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    p["load"]["version_header"] = "X Version:"
    issue = _bad_plan(tmp_path, p, "load.version_header")
    assert "RFC 9110 token" in issue.expected and issue.line


def test_cohort_header_name_and_value(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    p["stages"][0]["cohort"] = {"x team": "payments"}
    issue = _bad_plan(tmp_path, p, "stages[0].cohort.x team")
    assert "RFC 9110 token" in issue.expected
    p["stages"][0]["cohort"] = {"x-team": "pay\r\nX-Admin: 1"}
    issues = _issues(write_plan(tmp_path, p))
    assert any(i.path == "stages[0].cohort.x-team" and "field-value" in i.expected for i in issues), [i.render() for i in issues]


def test_command_with_unbalanced_quote_fails_validate_not_run(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    p["target"]["versions"]["v2"]["command"] = "{python} s.py --port {port} --name 'unclosed"
    issue = _bad_plan(tmp_path, p, "target.versions.v2.command")
    assert "no closing quotation" in issue.expected and issue.line
    p["target"]["versions"]["v2"]["command"] = "   "
    assert "a program to run" in _bad_plan(tmp_path, p, "target.versions.v2.command").expected


def test_owner_with_nul_and_escape_sequences_is_refused_and_never_printed_raw(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    p["owner"]["name"] = "Mallory\x00\x1b[2J\x1b]0;pwned\x07\u202e"
    path = write_plan(tmp_path, p)  # safe_dump writes the escapes as YAML "\0", "\e"...
    issue = _bad_plan(tmp_path, p, "owner.name")
    assert "control characters" in issue.found and "\\x1b" in issue.found
    r = run_cli("validate", str(path))
    assert r.returncode == 2 and "owner.name" in r.stderr
    _no_raw_controls(r.stderr + r.stdout)
    assert "\u202e" not in r.stderr


def test_status_renders_state_strings_without_control_characters(tmp_path: Path, base_plan: dict) -> None:
    from rollout.engine.state import new_state
    from rollout.report.tables import status_text

    plan = load_plan(write_plan(tmp_path, base_plan)).plan
    state = new_state("svc", "v1", now=1000.0)
    state.reason = "aborted: \x1b[31mred\x1b[0m\r\nPhase:    promoted"  # e.g. from `rollout abort --reason`
    state.record("ops\x1b[2J", "abort", "line\rover", 1000.0)
    text = status_text(plan, state, None, "here")
    _no_raw_controls(text)
    assert "\\x1b[31mred" in text and "\\r\\nPhase:" in text
    assert [line for line in text.splitlines() if line.startswith("Phase:")] == [line for line in text.splitlines() if "aborted" in line and line.startswith("Phase:")]


def test_startup_timeout_nan_is_refused(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    p["target"]["versions"]["v1"]["startup_timeout"] = float("nan")
    issue = _bad_plan(tmp_path, p, "target.versions.v1.startup_timeout")
    assert "finite" in issue.expected and issue.line


def _k8s(tmp_path: Path, **target: Any) -> dict:
    from test_k8s_backend import plan_data

    return plan_data(tmp_path, "kubeconfig", "gateway-api", **target)


def test_kubernetes_integers_are_int32(tmp_path: Path) -> None:
    issue = _bad_plan(tmp_path, _k8s(tmp_path, canary_replicas=10**21), "target.canary_replicas")
    assert "2147483647" in issue.expected
    issue = _bad_plan(tmp_path, _k8s(tmp_path, replicas=2**31), "target.replicas")
    assert "2147483647" in issue.expected


def test_progress_deadline_zero_is_refused(tmp_path: Path) -> None:
    issue = _bad_plan(tmp_path, _k8s(tmp_path, progress_deadline="0s"), "target.progress_deadline")
    assert "a duration > 0" in issue.expected


def test_image_with_newline_is_refused(tmp_path: Path) -> None:
    data = _k8s(tmp_path)
    data["target"]["versions"]["v2"]["image"] = "registry.example.com/answer:2.0\nkind: Evil"
    issues = _issues(write_plan(tmp_path, data))
    assert any(i.path == "target.versions.v2.image" and "an image reference" in i.expected and i.line for i in issues)
    data["target"]["versions"]["v2"] = {"images": {"app": "registry.example.com/answer:2.0 "}}
    assert "an image reference" in _bad_plan(tmp_path, data, "target.versions.v2.images.app").expected


@pytest.mark.parametrize("field", ["entry_url", "canary_url"])
def test_urls_are_http_or_https_only(tmp_path: Path, field: str) -> None:
    issue = _bad_plan(tmp_path, _k8s(tmp_path, **{field: "javascript:alert(document.cookie)"}), f"target.{field}")
    assert "http:// or https://" in issue.expected


def test_prometheus_and_load_host_urls(tmp_path: Path, base_plan: dict) -> None:
    data = _k8s(tmp_path)
    data["load"]["host"] = "file:///etc/passwd"
    data["load"]["metrics"] = {"q": {"prometheus": {"url": "ftp://prom", "query": "up"}}}
    issues = _issues(write_plan(tmp_path, data))
    assert {"load.host", "load.metrics.q.prometheus.url"} <= {i.path for i in issues}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "1" * 400 + "ms"])
def test_latency_limit_must_be_finite(tmp_path: Path, base_plan: dict, value: Any) -> None:
    p = copy.deepcopy(base_plan)
    p["gates"]["lat"] = {"metric": "p95", "max": value}
    issue = _bad_plan(tmp_path, p, "gates.lat.max")
    assert "finite" in issue.expected or "at most" in issue.expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_stage_duration_must_be_finite(tmp_path: Path, base_plan: dict, value: float) -> None:
    p = copy.deepcopy(base_plan)
    p["stages"][0]["duration"] = value
    issue = _bad_plan(tmp_path, p, "stages[0].duration")
    assert issue.line and ("finite" in issue.expected or "≥ 0" in issue.expected)


def test_every_number_is_finite_and_in_range(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    p["stages"][0].update(duration="0s", spawn_rate=float("nan"), weight=float("nan"))
    p["load"].update(spawn_rate=float("inf"), max_requests=10**12)
    p["gates"]["errors"]["min_requests"] = 10**21
    p["review"] = {"timeout": float("inf")}
    paths = {i.path for i in _issues(write_plan(tmp_path, p))}
    assert {"stages[0].duration", "stages[0].spawn_rate", "stages[0].weight", "load.spawn_rate", "load.max_requests",
            "gates.errors.min_requests", "review.timeout"} <= paths, paths


def test_env_names_and_health_paths(tmp_path: Path, base_plan: dict) -> None:
    p = copy.deepcopy(base_plan)
    p["target"]["versions"]["v1"]["env"] = {"A=B": "1", "OK": "x\x00y"}
    p["target"]["versions"]["v1"]["health"] = "/healthz HTTP/1.1\r\nHost: evil"
    paths = {i.path for i in _issues(write_plan(tmp_path, p))}
    assert {"target.versions.v1.env.A=B", "target.versions.v1.env.OK", "target.versions.v1.health"} <= paths, paths


def test_a_command_without_port_is_a_warning(tmp_path: Path, base_plan: dict) -> None:
    """Decision: a warning, not an error: the port is also given as $PORT, which a program may read silently."""
    p = copy.deepcopy(base_plan)
    p["target"]["versions"]["v2"]["command"] = "{python} s.py --port 8080"
    path = write_plan(tmp_path, p)
    loaded = load_plan(path)
    assert [(w.path, w.found) for w in loaded.warnings] == [("target.versions.v2.command", "a command without {port}")]
    r = run_cli("validate", str(path))
    assert r.returncode == 0 and "Warning:" in r.stderr and "target.versions.v2.command" in r.stderr and "30s" in r.stderr
    p["target"]["versions"]["v2"]["command"] = "sh -c 'exec server --listen :$PORT'"
    assert load_plan(write_plan(tmp_path, p)).warnings == ()


# -- flags --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags,needle", [
    (["--users", "10000000"], "at most 100,000 users"),
    (["--spawn-rate", "nan"], "--spawn-rate nan"),
    (["--spawn-rate", "0"], "finite number > 0"),
    (["--duration", "inf"], "is not a duration"),
    (["--duration", "9" * 400 + "s"], "finite"),
    (["--workers", "1000"], "0 ≤ N ≤ 64"),
])
def test_gate_flags_are_finite_and_capped(tmp_path: Path, flags: list[str], needle: str) -> None:
    lf = tmp_path / "load.py"
    lf.write_text("from locust import HttpUser\n")
    args = ["gate", "--host", "http://127.0.0.1:9", "-f", str(lf), "--duration", "5s", "--gate", "p95<1s", *flags]
    r, took = _cli_timed(*args)
    assert r.returncode == 2 and took < FAST, r.stderr
    assert needle in r.stderr and "unreachable" not in r.stderr  # refused before the target is probed


def test_run_workers_flag_is_capped(tmp_path: Path, base_plan: dict) -> None:
    r = run_cli("run", str(write_plan(tmp_path, base_plan)), "--workers", "100000", "--state-dir", str(tmp_path / "st"))
    assert r.returncode == 2 and "--workers" in r.stderr


# -- run probes its targets first ---------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_run_with_an_unreachable_entry_point_exits_3_naming_it(tmp_path: Path) -> None:
    from test_k8s_backend import NS, plan_data

    from rollout.testing.apiserver import FakeApiServer

    entry = f"http://127.0.0.1:{_closed_port()}"
    with FakeApiServer(controller_delay=0) as fake:
        for f in ("app.yaml", "httproute.yaml"):
            for doc in yaml.safe_load_all((ROOT / "manifests" / f).read_text()):
                fake.create(doc)
        plan = write_plan(tmp_path, plan_data(tmp_path, fake.write_kubeconfig(namespace=NS), "gateway-api", entry_url=entry))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROLLOUT_ACTOR": "pytest"}
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "rollout", "run", str(plan), "--version", "v2"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
        assert r.returncode == 3, r.stdout + r.stderr
        assert f"entry point {entry} is unreachable" in r.stderr and took < 60
        assert "awaiting-review" not in r.stdout and "requests <" not in r.stdout + r.stderr
        s = subprocess.run([sys.executable, "-m", "rollout", "status", str(plan), "-o", "json"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
        import json

        state = json.loads(s.stdout)["state"]
        assert state["stages"] == [] and any(h["action"] == "unreachable" for h in state["history"])


@pytest.mark.parametrize("verb", ["run", "status", "down"])
def test_state_dir_that_is_not_a_directory_is_bad_input(tmp_path: Path, base_plan: dict, verb: str) -> None:
    r = run_cli(verb, str(write_plan(tmp_path, base_plan)), "--state-dir", "/dev/null")
    assert r.returncode == 2, r.stderr
    assert "--state-dir /dev/null: /dev/null exists and is not a directory" in r.stderr and "internal error" not in r.stderr


def test_run_with_an_unreachable_canary_url_exits_3_naming_it(tmp_path: Path) -> None:
    """The entry point answers; the canary URL a `load_to: canary` stage would load does not."""
    from test_k8s_backend import NS, plan_data

    from rollout.testing.apiserver import FakeApiServer

    canary = f"http://127.0.0.1:{_closed_port()}"
    with socket.socket() as listener, FakeApiServer(controller_delay=0) as fake:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        entry = f"http://127.0.0.1:{listener.getsockname()[1]}"
        for f in ("app.yaml", "httproute.yaml"):
            for doc in yaml.safe_load_all((ROOT / "manifests" / f).read_text()):
                fake.create(doc)
        data = plan_data(tmp_path, fake.write_kubeconfig(namespace=NS), "gateway-api", entry_url=entry, canary_url=canary)
        data["stages"].insert(0, {"name": "preflight", "weight": 0, "load_to": "canary", "duration": "5s"})
        plan = write_plan(tmp_path, data)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROLLOUT_ACTOR": "pytest"}
        r = subprocess.run([sys.executable, "-m", "rollout", "advance", str(plan), "--version", "v2"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 3, r.stdout + r.stderr
        assert f"canary URL {canary} is unreachable" in r.stderr and entry not in r.stderr


@pytest.mark.parametrize("expr", ["p95<+" + "9" * 400 + "%", "errors<+nan pt", "p95<+inf%"])
def test_baseline_gate_flags_out_of_range_are_bad_input(expr: str) -> None:
    from rollout.errors import UsageError
    from rollout.gates.baseline import parse_baseline_gate

    with pytest.raises(UsageError) as exc:
        parse_baseline_gate(expr, 100)
    assert "--baseline-gate" in exc.value.what


def test_legitimate_text_is_still_accepted(tmp_path: Path, base_plan: dict) -> None:
    """No over-refusal: Unicode names, tabs and multi-line text where text may span lines."""
    p = copy.deepcopy(base_plan)
    p["owner"] = {"name": "Zoë Ünïcode 日本 team", "contact": "#payments\toncall"}
    p["description"] = "line one\nline two\n"
    p["target"]["versions"]["v2"]["command"] = "{python} s.py\n  --port {port}"
    p["load"]["metrics"] = {"q": {"prometheus": {"url": "http://prom:9090", "query": "sum(rate(\n  x{version=\"{version}\"}[1m]))\n"}}}
    plan = load_plan(write_plan(tmp_path, p)).plan
    assert plan.owner.name == "Zoë Ünïcode 日本 team" and plan.description == "line one\nline two\n"

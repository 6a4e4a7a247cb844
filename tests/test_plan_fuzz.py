"""Fuzzing the plan loader: a seeded mutation loop over real plan files.

Each run mutates the example plans (local and Kubernetes) and the tests' small plan
>= 1,000 times, at two levels: the data (a value replaced by a hostile one -- NaN,
10^21, CR/LF, NUL, ESC, `javascript:`, a quote, a huge string --, a key dropped,
renamed or added, a subtree copied elsewhere) and the text (YAML syntax spliced
in: anchors, aliases, brackets, tags, tabs, NULs, directives; lines dropped,
duplicated or re-indented). Every mutated plan must end as a valid plan or a
PlanInvalid (what `rollout validate` turns into exit 0 or 2), each within a time
bound, never another exception; a sample goes through the CLI as users run it.

The seed is fixed (ROLLOUT_FUZZ_SEED overrides it, ROLLOUT_FUZZ_N the count), so a
failure names the seed and the mutated text to replay.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import yaml

from rollout.errors import PlanInvalid
from rollout.plan import load_plan
from tests.conftest import EXAMPLES, run_cli

SEED = int(os.environ.get("ROLLOUT_FUZZ_SEED", "20261203"))
N = int(os.environ.get("ROLLOUT_FUZZ_N", "1200"))
PER_PLAN_BOUND = 5.0  # seconds; a normal plan loads in milliseconds (wide margin for a busy machine)

HOSTILE: list[Any] = [
    float("nan"), float("inf"), float("-inf"), -1, 0, 1, 10**21, 2**31, -(10**30), 1e308, 0.5, True, False, None,
    "", " ", "0s", "5s", ".nan", "1%", "150%", "-5%", "300ms", "1e400s", "9" * 400 + "s", "x" * 5000,
    "v2\r\nX-Injected: 1", "a\x00b", "\x1b[2J\x1b]0;pwned\x07", "\u202eevil", "javascript:alert(1)", "file:///etc/passwd",
    "http://", "http://127.0.0.1:99999", "http://[::1", "{port}", "'unclosed", '"unclosed', "a\\", "X Version:", "x-team",
    "registry.example.com/app:2.0\nkind: Evil", "../../etc/passwd", "/dev/zero", "v2", "v1", "stable", "canary", "error_rate",
    "p95", "sequential", "threshold", "kubernetes", "local", [], {}, [1, 2], {"a": 1}, {"x-team": "pay\r\nments"},
]
KEYS = ["name", "weight", "duration", "max", "metric", "command", "image", "entry_url", "version_header", "cohort",
        "canary_replicas", "progress_deadline", "startup_timeout", "users", "spawn_rate", "alpha", "method", "compare",
        "max_increase", "env", "health", "unknown_field", "<<", "", "0"]
SNIPPETS = ["&a ", "*a", "*nope", "[", "]", "{", "}", ": ", ":", "- ", "? ", "!!binary ", "!!python/object:os.system ",
            "!!float ", "!!int ", "!!timestamp ", "!!set ", "\t", "\x00", "\x1b", "\ufeff", '"', "'", "\\", "%YAML 1.1\n",
            "---\n", "...\n", "<<: *a\n", "|\n", ">-\n", "#", "@", "`", "\r", "\u2028", ".nan", ".inf", "1e400",
            "2024-13-45", "0x_", "0o9", "~", "&a [*a]", "9" * 5000]


def _sources(tmp_path: Path) -> list[tuple[str, str]]:
    """(name, YAML text) of real plans, rewritten to live in tmp_path (their locustfiles exist there)."""
    (tmp_path / "load.py").write_text("from locust import HttpUser\n")
    out = []
    for f in ("plan.yaml", "k8s-plan.yaml"):
        data = yaml.safe_load((EXAMPLES / f).read_text())
        data["load"]["locustfile"] = "load.py"
        out.append((f, yaml.safe_dump(data, sort_keys=False)))
    small = {
        "name": "svc", "owner": {"name": "Team", "contact": "team@example.com"},
        "target": {"backend": "local", "stable": "v1", "versions": {"v1": {"command": "{python} s.py --port {port}"},
                                                                      "v2": {"command": "{python} s.py --port {port}"}}},
        "load": {"locustfile": "load.py", "users": 5},
        "gates": {"errors": {"metric": "error_rate", "max": "1%"}, "lat": {"metric": "p95", "compare": "stable", "max_increase": "20%"}},
        "stages": [{"name": "ten", "weight": 10, "duration": "5s", "cohort": {"x-team": "payments"}}],
    }
    out.append(("small", yaml.safe_dump(small, sort_keys=False)))
    return out


def _slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) in a plan's data, to pick a place to mutate."""
    if isinstance(node, dict):
        for k in list(node):
            out.append((node, k))
            _slots(node[k], out)
    elif isinstance(node, list):
        for i in range(len(node)):
            out.append((node, i))
            _slots(node[i], out)
    return out


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: the mutation is not what is measured
_PARSED: dict[str, Any] = {}


def _mutate_data(rng: random.Random, text: str) -> str:
    if text not in _PARSED:
        _PARSED[text] = yaml.safe_load(text)
    data = copy.deepcopy(_PARSED[text])
    for _ in range(rng.randint(1, 3)):
        slots = _slots(data, [])
        if not slots:
            break
        holder, key = rng.choice(slots)
        op = rng.random()
        if op < 0.55:
            holder[key] = copy.deepcopy(rng.choice(HOSTILE))
        elif op < 0.7 and isinstance(holder, dict):
            del holder[key]
        elif op < 0.8 and isinstance(holder, dict):
            new = rng.choice(KEYS + HOSTILE[14:40])
            holder[str(new) if not isinstance(new, str | int | float | bool) else new] = holder.pop(key)
        elif op < 0.9:
            donor_holder, donor_key = rng.choice(slots)
            holder[key] = copy.deepcopy(donor_holder[donor_key])
        elif isinstance(holder, list):
            holder.append(copy.deepcopy(rng.choice(HOSTILE)))
        else:
            holder[rng.choice(KEYS)] = copy.deepcopy(rng.choice(HOSTILE))
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, allow_unicode=rng.random() < 0.5)


def _mutate_text(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        lines = text.split("\n")
        if op < 0.45:
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(SNIPPETS) + text[at:]
        elif op < 0.6 and len(text) > 2:
            a = rng.randrange(len(text))
            text = text[:a] + text[a + rng.randint(1, 40):]
        elif op < 0.7:
            i = rng.randrange(len(lines))
            lines.insert(i, lines[rng.randrange(len(lines))])
            text = "\n".join(lines)
        elif op < 0.8:
            i = rng.randrange(len(lines))
            lines[i] = rng.choice(["", " ", "  ", "\t", "    "]) + lines[i].lstrip() if rng.random() < 0.5 else "  " + lines[i]
            text = "\n".join(lines)
        elif op < 0.9:
            i = rng.randrange(len(lines))
            del lines[i]
            text = "\n".join(lines)
        else:  # an anchor on one value, aliases to it elsewhere
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if ": " in lines[i] and ": " in lines[j]:
                lines[i] = lines[i].replace(": ", ": &fz ", 1)
                lines[j] = lines[j].split(": ", 1)[0] + ": *fz"
            text = "\n".join(lines)
    return text


def _mutants(tmp_path: Path, n: int, seed: int) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    sources = _sources(tmp_path)
    out = []
    for i in range(n):
        _name, text = sources[i % len(sources)]
        text = _mutate_data(rng, text) if rng.random() < 0.5 else _mutate_text(rng, text)
        if rng.random() < 0.15:  # both levels
            text = _mutate_text(rng, text)
        out.append((i, text))
    return out


def _check_one(path: Path) -> str:
    """'valid' or 'invalid'; anything else raises (the test fails with the plan's text)."""
    try:
        loaded = load_plan(path)
    except PlanInvalid as exc:
        assert exc.issues, "a PlanInvalid without issues"
        for issue in exc.issues:
            issue.render()
            json.dumps(issue.as_dict())
        return "invalid"
    from rollout.report.tables import plan_dict, plan_tables  # what `validate` prints for a valid plan

    plan_tables(loaded.plan)
    json.dumps(plan_dict(loaded.plan))
    return "valid"


def test_mutated_plans_end_valid_or_invalid_never_an_internal_error(tmp_path: Path) -> None:
    mutants = _mutants(tmp_path, N, SEED)
    assert len(mutants) >= 1000
    path = tmp_path / "plan.yaml"
    outcomes: dict[str, int] = {"valid": 0, "invalid": 0}
    slowest = 0.0
    for i, text in mutants:
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        t0 = time.monotonic()
        try:
            outcome = _check_one(path)
        except Exception as exc:  # noqa: BLE001 - the point: name any other exception with its replay
            raise AssertionError(f"mutant {i} (seed {SEED}) raised {type(exc).__name__}: {str(exc)[:500]}\n--- plan ---\n{text[:3000]}") from exc
        took = time.monotonic() - t0
        slowest = max(slowest, took)
        assert took < PER_PLAN_BOUND, f"mutant {i} (seed {SEED}) took {took:.1f}s\n{text[:3000]}"
        outcomes[outcome] += 1
    # the mutations must exercise both outcomes, or the loop tests nothing
    assert outcomes["invalid"] >= N // 4 and outcomes["valid"] >= 20, outcomes
    print(f"fuzz: {N} mutated plans, {outcomes}, slowest {slowest * 1000:.0f} ms")


def test_a_sample_of_mutated_plans_through_the_cli(tmp_path: Path) -> None:
    """The CLI as users run it: exit 0 or 2, never 70, no traceback, no raw control characters on the terminal."""
    mutants = _mutants(tmp_path, 400, SEED + 1)
    rng = random.Random(SEED + 2)
    sample = rng.sample(mutants, 5)
    codes = []
    for i, text in sample:
        path = tmp_path / f"mutant-{i}.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        r = run_cli("validate", str(path), timeout=60)
        assert r.returncode in (0, 2), f"mutant {i}: exit {r.returncode}\n{r.stderr}\n--- plan ---\n{text[:3000]}"
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr
        assert not any(ch in r.stderr for ch in "\x00\x1b\r"), r.stderr
        codes.append(r.returncode)
    assert 2 in codes

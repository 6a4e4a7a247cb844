"""No typo can jam a rollout (#8 item 3): every input of run/advance is checked before the state changes.

Each bad input is exit 2 with the valid versions named, and the recorded
state is byte-for-byte what it was (no lock taken, nothing started). A canary
that never came up can be aborted without leaving a rollout in the history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.backends.local.store import LocalStore
from rollout.engine.state import Phase, RolloutSummary, Split, StageRecord, StageStatus, new_state
from tests.conftest import ROOT, run_cli, write_plan

SERVICE = ROOT / "examples" / "service.py"


def _plan(tmp_path: Path, base_plan: dict[str, Any], **target: Any) -> Path:
    base_plan["target"]["versions"]["v3"] = {"command": "{python} s.py --port {port}"}
    base_plan["target"].update(target)
    return write_plan(tmp_path, base_plan)


def _seed(state_dir: Path, phase: Phase) -> bytes:
    """A recorded state of plan `svc` in `phase`; returns the file's bytes."""
    st = new_state("svc", "v1", now=1_000.0)
    st.record("alice", "start", "rollout #1: v2 replaces v1", now=1_001.0)
    st.rollout_number = 1
    if phase is Phase.PROGRESSING:
        st.phase, st.canary_version, st.started_at, st.split = phase, "v2", 1_001.0, Split(0.1)
        st.stages.append(StageRecord(index=0, name="ten", status=StageStatus.PASSED, started_at=1_002.0, ended_at=1_010.0))
        st.stage_index = 1
    else:
        st.phase = phase
        st.past.append(RolloutSummary(1, "v2", "v1", phase.value, "done", 1_001.0, 1_020.0))
    store = LocalStore(state_dir / "svc")
    store.save(st)
    return store.path.read_bytes()


BAD_VERSIONS = [
    ("nosuch", "unknown version 'nosuch'"),
    ("", "--version is empty"),
    ("  ", "--version is empty"),
    ("v2\x1b[31m", "contains control characters"),
    ("v2\n", "contains control characters"),
    ("v\x002", "contains control characters"),
    ("v 2", "contains white space"),
]


def test_bad_versions_are_exit_2_with_the_valid_ones_and_leave_the_state_byte_for_byte(tmp_path: Path, base_plan: dict) -> None:
    plan = _plan(tmp_path, base_plan)
    state_dir = tmp_path / "state"
    before = _seed(state_dir, Phase.PROGRESSING)
    env = {"ROLLOUT_STATE_DIR": str(state_dir)}
    cases = [("run", v, what) for v, what in BAD_VERSIONS] + [("advance", "nosuch", "unknown version"), ("advance", "", "is empty")]
    for verb, version, what in cases:
        if "\x00" in version:  # argv cannot carry NUL: the same rule, in-process
            from rollout.errors import UsageError
            from rollout.inputs import check_version_text

            with pytest.raises(UsageError, match="control characters"):
                check_version_text(version, ["v1", "v2"])
            continue
        r = run_cli(verb, str(plan), "--version", version, env=env)
        assert r.returncode == 2, (verb, version, r.stdout, r.stderr)
        assert r.stderr.startswith("Error: ") and what in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "v1, v2, v3" in r.stderr, r.stderr  # the valid versions, in the plan's order
        assert r.stdout == "", r.stdout  # nothing was started or announced
        assert (state_dir / "svc" / "state.json").read_bytes() == before, (verb, version)
    # --image on the local backend is bad input too, with the versions to use instead
    r = run_cli("run", str(plan), "--image", "app=registry.example.com/answer:2.1", env=env)
    assert r.returncode == 2 and "--image sets container images, which the local backend has not" in r.stderr
    assert "v1, v2, v3" in r.stderr
    assert (state_dir / "svc" / "state.json").read_bytes() == before
    assert sorted(p.name for p in (state_dir / "svc").iterdir()) == ["state.json"]  # no lock file, no logs: nothing ran
    # after a finished rollout too
    before = _seed(state_dir, Phase.PROMOTED)
    r = run_cli("run", str(plan), "--version", "v9", env=env)
    assert r.returncode == 2 and "unknown version 'v9'" in r.stderr and (state_dir / "svc" / "state.json").read_bytes() == before


def test_a_second_version_while_one_is_in_progress_is_refused_before_anything_changes(tmp_path: Path, base_plan: dict) -> None:
    plan = _plan(tmp_path, base_plan)
    state_dir = tmp_path / "state"
    before = _seed(state_dir, Phase.PROGRESSING)
    r = run_cli("run", str(plan), "--version", "v3", env={"ROLLOUT_STATE_DIR": str(state_dir)})
    assert r.returncode == 2
    assert "a rollout of v2 is in progress" in r.stderr and "`rollout abort`" in r.stderr, r.stderr
    assert (state_dir / "svc" / "state.json").read_bytes() == before


def test_nothing_to_roll_out_is_exit_2_not_a_green_no_op(tmp_path: Path, base_plan: dict) -> None:
    plan = _plan(tmp_path, base_plan)
    state_dir = tmp_path / "state"
    env = {"ROLLOUT_STATE_DIR": str(state_dir)}
    for verb in ("advance", "run"):  # no state at all: nothing is created
        r = run_cli(verb, str(plan), env=env)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("Error: nothing to roll out: name a version") and "--version V` with one of: v1, v2, v3" in r.stderr
        assert not state_dir.exists()
    before = _seed(state_dir, Phase.PROMOTED)  # a finished rollout, and the plan names no target.canary
    r = run_cli("advance", str(plan), env=env)
    assert r.returncode == 2 and "nothing to roll out: name a version (no rollout in progress (promoted)" in r.stderr, r.stderr
    assert (state_dir / "svc" / "state.json").read_bytes() == before


def test_kubernetes_typos_leave_the_state_configmap_untouched_and_take_no_lease(tmp_path: Path) -> None:
    """The same checks on Kubernetes: the ConfigMap keeps its resourceVersion, no Lease is created."""
    from rollout.backends.kubernetes.client import connect
    from rollout.backends.kubernetes.store import ConfigMapStore
    from rollout.testing.apiserver import FakeApiServer
    from tests.test_k8s_backend import NS, plan_data

    with FakeApiServer(controller_delay=0) as fake:
        for f in ("app.yaml", "httproute.yaml"):
            for doc in yaml.safe_load_all((ROOT / "manifests" / f).read_text()):
                fake.create(doc)
        kc = fake.write_kubeconfig(namespace=NS)
        plan = write_plan(tmp_path, plan_data(tmp_path, kc, "gateway-api"))
        kube = connect(kubeconfig=kc)
        st = new_state("answer", "v1", now=1_000.0)
        st.backend["images"] = {"2.1": {"app": "registry.example.com/answer:2.1"}}  # an earlier --image
        ConfigMapStore(kube, "answer").save(st)
        before = fake.get("configmaps", NS, "rollout-answer")
        assert before is not None
        for args, what in ((["--version", "nosuch"], "unknown version 'nosuch'"), (["--version", "v2\x07"], "control characters"),
                           (["--image", "app=registry.example.com/answer:2.2", "--version", "bad name"], "white space")):
            r = run_cli("run", str(plan), *args)
            assert r.returncode == 2 and what in r.stderr, (args, r.stderr)
            assert "v1, v2, v3, 2.1" in r.stderr, r.stderr  # the plan's versions, then the one recorded by --image
        after = fake.get("configmaps", NS, "rollout-answer")
        assert after is not None and after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        assert after["data"] == before["data"] and fake.get("leases", NS, "rollout-answer") is None
        kube.api.close()


def test_a_canary_that_never_started_is_aborted_without_a_phantom_rollout(tmp_path: Path, base_plan: dict) -> None:
    base_plan["target"]["versions"] = {
        "v1": {"command": f"{{python}} {SERVICE} --port {{port}} --version v1"},
        "v2": {"command": "{python} -c 'import sys; sys.exit(1)'"},  # exits at once: never healthy
    }
    plan = write_plan(tmp_path, base_plan)
    env = {"ROLLOUT_STATE_DIR": str(tmp_path / "state"), "ROLLOUT_ACTOR": "pytest"}
    try:
        r = run_cli("run", str(plan), "--version", "v2", env=env)
        assert r.returncode == 3 and "did not become healthy" in r.stderr, r.stderr
        r = run_cli("abort", str(plan), "--reason", "canary broken", env=env)
        assert r.returncode == 0 and "aborted" in r.stdout, r.stderr
        state = json.loads(run_cli("status", str(plan), "-o", "json", env=env).stdout)["state"]
        assert state["phase"] == "aborted" and state["canary_version"] is None and state["split"]["weight"] == 0
        assert state["past"] == [] and state["stages"] == []  # no rollout row, no stage
        assert [h["action"] for h in state["history"]] == ["start", "abort", "stable"]  # the audit trail keeps what happened
        r = run_cli("history", str(plan), env=env)
        assert r.returncode == 0 and "No finished rollout" in r.stdout
        r = run_cli("abort", str(plan), env=env)  # and again: nothing in progress, still fine
        assert r.returncode == 0 and "nothing to abort" in r.stdout
    finally:
        run_cli("down", str(plan), env=env)

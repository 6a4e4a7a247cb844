"""`rollout list` (#8 item 2): every rollout on disk (plans and state files) or in a cluster (state ConfigMaps)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any


from rollout.backends.local.store import LocalStore
from rollout.engine.state import Phase, RolloutSummary, Split, StageRecord, StageStatus, State, new_state
from tests.conftest import ROOT, run_cli, write_plan


def _plan(base: dict[str, Any], name: str, owner: str) -> dict[str, Any]:
    data = json.loads(json.dumps(base))
    data["name"], data["owner"]["name"] = name, owner
    data["stages"] = [{"name": "canary-only", "weight": 0, "load_to": "canary", "duration": "5s"},
                      {"name": "ten", "weight": 10, "duration": "5s"}, {"name": "half", "weight": 50, "duration": "5s"}]
    return data


def _promoted(name: str, now: float) -> State:
    st = new_state(name, "v1", now=now - 7200)
    st.phase, st.stable_version, st.rollout_number = Phase.PROMOTED, "v2", 1
    st.past.append(RolloutSummary(1, "v2", "v1", "promoted", "v2 is now stable", now - 7300, now - 3600))
    return st


def _rolled_back(name: str, now: float) -> State:
    st = new_state(name, "v1", now=now - 600)
    st.phase, st.rollout_number, st.reason = Phase.ROLLED_BACK, 1, "stage 2/3 `ten` failed"
    st.past.append(RolloutSummary(1, "v2", "v1", "rolled-back", "stage 2/3 `ten` failed", now - 700, now - 300))
    return st


def _progressing(name: str, now: float, info: dict[str, Any] | None = None) -> State:
    st = new_state(name, "v1", now=now - 100)
    st.phase, st.canary_version, st.rollout_number, st.started_at = Phase.PROGRESSING, "v2", 1, now - 90
    st.stage_index, st.split = 1, Split(0.1)
    st.stages = [StageRecord(index=0, name="canary-only", status=StageStatus.PASSED, started_at=now - 80),
                 StageRecord(index=1, name="ten", status=StageStatus.RUNNING, started_at=now - 10)]
    st.plan_info = info or {}
    return st


def test_three_local_plans_in_text_and_json(tmp_path: Path, base_plan: dict) -> None:
    now = time.time()
    for sub, name, owner, state in (("a", "checkout", "Payments", _promoted), ("b", "search", "Search team", _rolled_back),
                                    ("b/deep", "answers", "Answers", _progressing)):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / sub / "load.py").write_text((tmp_path / "load.py").read_text())
        write_plan(tmp_path / sub, _plan(base_plan, name, owner), name=f"{name}.yaml")
        LocalStore(tmp_path / sub / ".rollout" / name).save(state(name, now))  # where the plan's state lives by default
    write_plan(tmp_path / "a", _plan(base_plan, "fresh", "New team"), name="fresh.yml")  # never run
    (tmp_path / "a" / "notes.yaml").write_text("title: not a plan\nitems: [1, 2]\n")  # ignored
    k8s = _plan(base_plan, "cluster-one", "Ops")
    k8s["target"] = {"backend": "kubernetes", "stable": "v1", "versions": {"v1": {"image": "r/a:1"}, "v2": {"image": "r/a:2"}},
                     "deployments": {"stable": "a", "canary": "a-canary"}, "services": {"stable": "a", "canary": "a-canary"},
                     "router": "replicas", "port": 8080, "entry_url": "http://a.example.com"}
    k8s["stages"] = k8s["stages"][1:]  # a canary-only stage cannot be with the replicas router
    write_plan(tmp_path, k8s, name="k8s.yaml")
    r = run_cli("list", str(tmp_path), env={"ROLLOUT_STATE_DIR": ""})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["name", "owner", "phase", "stage", "stable", "→", "canary", "since"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert sorted(rows) == ["answers", "checkout", "fresh", "search"], r.stdout
    assert rows["answers"].split()[1:7] == ["Answers", "progressing", "2/3", "ten", "v1", "→"] and "v2" in rows["answers"]
    assert re.search(r"\((9\d|1[01]\d)s ago\)", rows["answers"]), rows["answers"]  # since the rollout started, 90 s ago
    assert "Payments" in rows["checkout"] and " promoted " in rows["checkout"] and "v1 → v2" in rows["checkout"] and "(60m ago)" in rows["checkout"]
    assert "Search team" in rows["search"] and " rolled-back " in rows["search"] and "v1 → v2" in rows["search"] and "(5m ago)" in rows["search"]
    assert "never run" in rows["fresh"]
    assert "k8s.yaml is a plan for another backend" in r.stderr

    r = run_cli("list", str(tmp_path), "-o", "json", env={"ROLLOUT_STATE_DIR": ""})
    assert r.returncode == 0, r.stderr
    got = {row["name"]: row for row in json.loads(r.stdout)}
    a = got["answers"]
    assert (a["owner"], a["phase"], a["stage"], a["stages"], a["stage_name"], a["stable"], a["canary"]) == ("Answers", "progressing", 2, 3, "ten", "v1", "v2")
    assert abs(a["since"] - (now - 90)) < 1 and a["plan"].endswith("answers.yaml") and a["location"].endswith(".rollout/answers/state.json")
    assert (got["checkout"]["phase"], got["checkout"]["stable"], got["checkout"]["canary"], got["checkout"]["stage"]) == ("promoted", "v1", "v2", None)
    assert got["search"]["phase"] == "rolled-back" and got["fresh"]["phase"] is None and got["fresh"]["location"] == "(no state yet)"

    # one plan named explicitly; a state directory alone (no plan file): owner and stages from the state's plan_info
    r = run_cli("list", str(tmp_path / "a" / "checkout.yaml"), "-o", "json")
    assert [row["name"] for row in json.loads(r.stdout)] == ["checkout"]
    states = tmp_path / "elsewhere"
    LocalStore(states / "orphan").save(_progressing("orphan", now, {"owner": "Orphans", "stages": ["one", "ten", "three"]}))
    r = run_cli("list", env={"ROLLOUT_STATE_DIR": str(states)}, cwd=tmp_path / "a")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[2:]}
    assert sorted(rows) == ["checkout", "fresh", "orphan"], r.stdout  # `.` (the plans here) and $ROLLOUT_STATE_DIR
    assert rows["orphan"].split()[1:5] == ["Orphans", "progressing", "2/3", "ten"]


def test_bad_paths_are_bad_input(tmp_path: Path) -> None:
    r = run_cli("list", str(tmp_path / "missing"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    (tmp_path / "broken.yaml").write_text("name: x\ntarget: {}\nstages: []\n")
    r = run_cli("list", str(tmp_path / "broken.yaml"))  # named explicitly: its problems are the answer
    assert r.returncode == 2 and "is not a valid rollout plan" in r.stderr
    r = run_cli("list", str(tmp_path))  # found while searching: skipped with a note
    assert r.returncode == 0 and "No rollout plan or state found" in r.stdout and "skipped an invalid plan" in r.stderr


def test_kubernetes_state_configmaps_in_one_namespace_or_all(tmp_path: Path, monkeypatch: Any) -> None:
    from rollout.backends.kubernetes.client import connect
    from rollout.backends.kubernetes.store import ConfigMapStore
    from rollout.testing.apiserver import FakeApiServer
    from tests.test_k8s_cli import _cli

    now = time.time()
    with FakeApiServer(controller_delay=0) as fake:
        for ns in ("shop", "search"):
            fake.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        info = {"owner": "Answers team", "stages": ["payments", "ten", "half"]}
        for ns, name, state in (("shop", "answer", _progressing("answer", now, info)), ("shop", "cart", _promoted("cart", now)),
                                ("search", "query", _rolled_back("query", now))):
            ConfigMapStore(connect(kubeconfig=fake.write_kubeconfig(namespace=ns)), name).save(state)
        # the in-cluster load runner's ConfigMap carries managed-by too, but no plan label: not a rollout
        fake.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "locust-x", "namespace": "shop",
                     "labels": {"app.kubernetes.io/managed-by": "rollout", "rollout.dev/load-run": "x"}}, "data": {"locustfile.py": ""}})
        monkeypatch.setenv("KUBECONFIG", fake.write_kubeconfig(namespace="shop"))
        code, out, err = _cli("list", "-k")
        assert code == 0, err
        rows = {line.split()[1]: line for line in out.splitlines()[2:]}
        assert sorted(rows) == ["answer", "cart"], out
        assert rows["answer"].split()[:8] == ["shop", "answer", "Answers", "team", "progressing", "2/3", "ten", "v1"]
        assert "promoted" in rows["cart"] and "v1 → v2" in rows["cart"]
        code, out, err = _cli("list", "-A", "-o", "json")
        assert code == 0, err
        got = {(r["namespace"], r["name"]): r for r in json.loads(out)}
        assert sorted(got) == [("search", "query"), ("shop", "answer"), ("shop", "cart")]
        assert got[("search", "query")]["phase"] == "rolled-back" and got[("search", "query")]["location"] == "ConfigMap search/rollout-query"
        code, out, err = _cli("list", "-n", "search")
        assert code == 0 and "query" in out and "answer" not in out, out + err
        code, out, err = _cli("list", "-n", "empty")
        assert code == 0 and out.strip() == "No rollout recorded in namespace empty.", out
        code, out, err = _cli("list", str(ROOT), "-k")
        assert code == 2 and "PATHS are for local rollouts" in err

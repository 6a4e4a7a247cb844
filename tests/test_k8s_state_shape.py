"""The Kubernetes state store checks the state's shape when loading, as the local store does: a corrupted
ConfigMap `rollout-<plan>` gives `Error: <what> — <what to do>` and exit 3 (a newer schema: "upgrade rollout"),
never a traceback or an internal error, and the advice works (delete it, then `rollout revert`). Against the
in-process fake API server, the CLI run in this process (commands that run no load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_k8s_backend import NS, ROOT, main_rule
from test_k8s_cli import _cli, k8s_plan

from rollout.backends.kubernetes.client import connect
from rollout.backends.kubernetes.listing import list_states
from rollout.backends.kubernetes.store import ConfigMapStore, parse_state
from rollout.engine.state import new_state, to_dict
from rollout.errors import StateError
from rollout.testing.apiserver import FakeApiServer

CM = "rollout-answer"


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer(controller_delay=0) as server:
        for f in ("app.yaml", "httproute.yaml"):
            for doc in yaml.safe_load_all((ROOT / "manifests" / f).read_text()):
                server.create(doc)
        yield server


def valid() -> dict[str, Any]:
    st = to_dict(new_state("answer", "v1", now=1000.0))
    st["backend"] = {"canary": {"version": "v2", "deployment": "answer-canary"}, "total": 4, "note": None,
                     "templates": [{"version": "v1", "template": {"spec": {"containers": [{"name": "app", "image": "a:1"}]}}}],
                     "images": {"v2": {"app": "registry.example.com/answer:2.0"}}}
    return st


def with_(path: str, value: Any) -> dict[str, Any]:
    st = valid()
    *parents, last = path.split(".")
    node = st
    for p in parents:
        node = node[p]
    node[last] = value
    return st


# (case, the state.json text, what the message names)
CORRUPT = [
    ("not JSON", "{not json", "unreadable (JSONDecodeError"),
    ("a list", "[]", "field `(the whole state)`: expected an object (State), found a list"),
    ("null", "null", "field `(the whole state)`: expected an object (State), found null"),
    ("a wrong type", json.dumps(with_("stages", "all of them")), "field `stages`: expected a list, found a string"),
    ("an unknown phase", json.dumps(with_("phase", "exploded")), "field `phase`: expected one of"),
    ("an unknown key in the backend record", json.dumps(with_("backend.canary", {"version": "v2", "deployment": "d", "pods": 3})),
     "field `backend.canary.pods`: unknown field"),
    ("a backend record missing a field", json.dumps(with_("backend.canary", {"version": "v2"})), "field `backend.canary.deployment`: missing"),
    ("a template that is not an object", json.dumps(with_("backend.templates", [{"version": "v1", "template": "x"}])),
     "field `backend.templates[0].template`: expected an object"),
    ("replicas as text", json.dumps(with_("backend.total", "four")), "field `backend.total`"),
    ("deep nesting", "[" * 100_000 + "]" * 100_000, "unreadable (RecursionError"),
]


def put_state(fake: FakeApiServer, text: str | None) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": CM, "namespace": NS, "labels": {"app.kubernetes.io/managed-by": "rollout", "rollout.dev/plan": "answer"}},
            "data": {} if text is None else {"state.json": text}}
    if fake.get("configmaps", NS, CM) is None:
        fake.create(body)
    else:
        fake.delete("configmaps", NS, CM)
        fake.create(body)


def test_a_valid_state_with_every_backend_field_loads() -> None:
    st = parse_state(json.dumps(valid()))
    assert st.backend["canary"] == {"version": "v2", "deployment": "answer-canary"}


@pytest.mark.parametrize("case,text,names", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_a_corrupted_state_configmap_is_a_clear_state_error(fake: FakeApiServer, case: str, text: str, names: str) -> None:
    put_state(fake, text)
    kube = connect(kubeconfig=fake.write_kubeconfig(namespace=NS))
    with pytest.raises(StateError) as err:
        ConfigMapStore(kube, "answer").load()
    assert f"the rollout state in ConfigMap {NS}/{CM}" in err.value.what and names in err.value.what, err.value.what
    assert f"kubectl -n {NS} delete configmap {CM}" in err.value.hint and "rollout revert" in err.value.hint
    found = list_states(kube)  # `rollout list -k` names the problem instead of failing
    mine = [f for f in found if f.name == CM]
    assert len(mine) == 1 and mine[0].state is None and mine[0].problem, found
    kube.api.close()


def test_a_configmap_without_the_state_key_is_not_taken_for_no_state(fake: FakeApiServer) -> None:
    put_state(fake, None)
    kube = connect(kubeconfig=fake.write_kubeconfig(namespace=NS))
    with pytest.raises(StateError) as err:
        ConfigMapStore(kube, "answer").load()
    assert "has no `state.json` key" in err.value.what
    kube.api.close()


def test_the_cli_says_error_and_what_to_do_with_exit_3_and_the_advice_works(tmp_path: Path, fake: FakeApiServer,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    plan = k8s_plan(tmp_path)
    monkeypatch.setenv("KUBECONFIG", fake.write_kubeconfig(namespace=NS))
    monkeypatch.setenv("ROLLOUT_ACTOR", "ops")
    # a recorded rollout, then its state corrupted
    code, out, err = _cli("revert", str(plan), "-n", NS)
    assert code == 0, out + err
    put_state(fake, json.dumps(with_("backend.canary", {"version": "v2", "deployment": "answer-canary", "replicas": 1})))
    for verb in (("status",), ("revert",), ("abort",), ("pause",), ("list", "-k")):  # (commands that run no load: in this process)
        code, out, err = _cli(verb[0], *([] if verb[0] == "list" else [str(plan)]), *verb[1:], "-n", NS)
        if verb[0] == "list":
            assert code == 0 and "backend.canary.replicas" in out + err, (verb, out, err)
            continue
        assert code == 3, (verb, code, out, err)
        assert err.startswith(f"Error: the rollout state in ConfigMap {NS}/{CM} is malformed: field `backend.canary.replicas`"), (verb, err)
        assert " — restore it" in err and "Traceback" not in err and "internal error" not in err, err
    # `run` (it would run Locust: in its own process)
    r = subprocess.run([sys.executable, "-m", "rollout", "run", str(plan), "--version", "v2", "-n", NS], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "KUBECONFIG": os.environ["KUBECONFIG"], "ROLLOUT_ACTOR": "ops"})
    assert r.returncode == 3 and "is malformed: field `backend.canary.replicas`" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # a newer schema: refused untouched, "upgrade"
    newer = valid()
    newer["schema"] = 99
    put_state(fake, json.dumps(newer))
    code, out, err = _cli("status", str(plan), "-n", NS)
    assert code == 3 and "was written by a newer rollout (schema 99" in err and "upgrade rollout" in err, err
    code, out, err = _cli("revert", str(plan), "-n", NS)
    assert code == 3 and json.loads(fake.get("configmaps", NS, CM)["data"]["state.json"])["schema"] == 99  # not changed
    # the advice: delete the ConfigMap, then `rollout revert` → all traffic on the plan's stable version
    fake.delete("configmaps", NS, CM)
    code, out, err = _cli("revert", str(plan), "-n", NS, "--reason", "after a corrupted state")
    assert code == 0, out + err
    assert [(r["name"], r["weight"]) for r in main_rule(fake)["backendRefs"]] == [("answer-stable", 100)]
    assert fake.get("deployments", NS, "answer-canary")["spec"]["replicas"] == 0
    code, out, err = _cli("status", str(plan), "-n", NS)
    assert code == 0 and "reverted by ops" in out, out + err


def test_list_shows_the_state_configmap_not_the_mailbox_or_the_watch_record(fake: FakeApiServer) -> None:
    from rollout.backends.kubernetes.mailbox import KubeMailbox
    from rollout.engine import requests as rq

    kube = connect(kubeconfig=fake.write_kubeconfig(namespace=NS))
    put_state(fake, json.dumps(valid()))
    rq.post(KubeMailbox(kube, "answer"), rq.Request.new("revert", "ops", "", 10))  # ConfigMap rollout-answer-requests
    fake.create({"apiVersion": "v1", "kind": "ConfigMap", "data": {"watch.json": "{}"},
                 "metadata": {"name": "rollout-answer-watch", "namespace": NS,
                              "labels": {"app.kubernetes.io/managed-by": "rollout", "rollout.dev/plan": "answer", "rollout.dev/part": "watch"}}})
    found = list_states(kube)
    assert [(f.name, f.problem) for f in found] == [(CM, "")], found
    kube.api.close()

"""--image for the canary, the revision history of pod templates (`revert`, `revert --to-revision N`),
and the Live lines of `rollout status` — the engine with a stub load against the in-process fake."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
from test_k8s_backend import (  # noqa: F401
    IMAGE,
    NS,
    QuietReporter,
    StubLoadEngine,
    dep,
    fake,
    fixed_load,
    image_of,
    kube,
    main_rule,
    make_backend,
    rolling,
)
from test_k8s_cli import cli, k8s_plan

from rollout.backends.kubernetes.store import ConfigMapStore
from rollout.engine.state import Phase, Split
from rollout.errors import UsageError
from rollout.testing.apiserver import FakeApiServer
from rollout.testing.apiserver.faults import WRITE_VERBS

TAGGED = "registry.example.com/answer:2.1"


def engine(b, kube, **kw):  # type: ignore[no-untyped-def]
    return StubLoadEngine(b.loaded, b, ConfigMapStore(kube, "answer"), QuietReporter(), "tester", load_runner=fixed_load(0), **kw)


def test_image_flag_sets_the_canary_and_is_remembered_by_later_commands(tmp_path: Path, fake: FakeApiServer, kube) -> None:  # type: ignore[no-untyped-def]
    b = make_backend(tmp_path, fake, kube, "gateway-api")
    b.set_images("2.1", {"app": TAGGED})  # `rollout advance --image app=...:2.1`
    e = engine(b, kube)
    with e.store.lock("advance"):
        out = e.drive("2.1", from_cli=True, one_stage=True)
    assert out.kind == "stage-passed", out
    assert image_of(dep(fake, "answer-canary")) == TAGGED
    assert dep(fake, "answer-canary")["metadata"]["annotations"]["rollout.dev/version"] == "2.1"
    canary_ref = [r for r in main_rule(fake)["backendRefs"] if r["name"] == "answer-canary"][0]
    assert canary_ref["filters"][0]["responseHeaderModifier"]["set"] == [{"name": "X-Version", "value": "2.1"}]
    # the same version name with other images, mid-rollout: refused, nothing changes
    b3 = make_backend(tmp_path, fake, kube, "gateway-api")
    b3.set_images("2.1", {"app": "elsewhere.example.com/answer:2.1"})
    with pytest.raises(UsageError, match="other images"):
        engine(b3, kube).drive("2.1", from_cli=True, one_stage=True)
    assert image_of(dep(fake, "answer-canary")) == TAGGED
    # a later `rollout run` without --image: the images come from the recorded state
    b2 = make_backend(tmp_path, fake, kube, "gateway-api")
    e2 = engine(b2, kube)
    assert e2.state.backend["images"] == {"2.1": {"app": TAGGED}}
    with e2.store.lock("run"):
        out = e2.drive(None, from_cli=False, one_stage=False)
    assert out.kind == "promoted", out
    stable = dep(fake, "answer")
    assert image_of(stable) == TAGGED and stable["metadata"]["annotations"]["rollout.dev/version"] == "2.1"
    assert e2.state.stable_version == "2.1" and [r.version for r in e2.state.revisions] == ["v1", "2.1"]


def test_revert_restores_kept_templates_after_two_promotions(tmp_path: Path, fake: FakeApiServer, kube,  # type: ignore[no-untyped-def]
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    original = copy.deepcopy(dep(fake, "answer")["spec"]["template"])
    b = make_backend(tmp_path, fake, kube, "gateway-api")
    e = engine(b, kube)
    with e.store.lock("run"):
        assert e.drive("v2", from_cli=True, one_stage=False).kind == "promoted"
    b.set_images("2.1", {"app": TAGGED})
    e = engine(b, kube)
    with e.store.lock("run"):
        assert e.drive("2.1", from_cli=True, one_stage=False).kind == "promoted"
    saved = e.store.load()
    assert saved is not None and [(r.number, r.version) for r in saved.revisions] == [(1, "v1"), (2, "v2"), (3, "2.1")]
    assert [t["version"] for t in saved.backend["templates"]] == ["v1", "v2", "2.1"]

    # someone changes the stable Deployment by hand: `rollout revert` brings back the last known-good template
    drifted = dep(fake, "answer")
    drifted["spec"]["template"]["spec"]["containers"][0]["image"] = IMAGE.format("9.9")
    fake.apply(drifted)
    e = engine(make_backend(tmp_path, fake, kube, "gateway-api"), kube)
    with e.store.lock("revert"):
        e.revert("drill")
    assert image_of(dep(fake, "answer")) == TAGGED and e.state.stable_version == "2.1"
    runs = len(e.state.past)

    # through the CLI: back to revision 1 (the plan's v1, its whole template), no stage runs
    plan = k8s_plan(tmp_path)
    kc = fake.write_kubeconfig(namespace=NS)
    code, out, err = cli(capsys, "revert", str(plan), "--kubeconfig", kc, "-n", NS, "--to-revision", "1", "--reason", "bad 2.1")
    assert code == 0, err
    stable = dep(fake, "answer")
    assert stable["spec"]["template"]["spec"] == original["spec"]  # readiness probe and all, not just the image
    assert stable["spec"]["template"]["metadata"]["labels"] == original["metadata"]["labels"]
    assert stable["status"]["availableReplicas"] == 4
    assert [(r["name"], r["weight"]) for r in main_rule(fake)["backendRefs"]] == [("answer-stable", 100)]
    saved = e.store.load()
    assert saved is not None and saved.stable_version == "v1" and saved.phase is Phase.ROLLED_BACK
    assert [(r.number, r.version) for r in saved.revisions][-1] == (4, "v1") and len(saved.past) == runs
    assert "back to revision 1 (v1, was 2.1)" in saved.reason

    code, _, err = cli(capsys, "revert", str(plan), "--kubeconfig", kc, "-n", NS, "--to-revision", "2")
    assert code == 0, err
    assert image_of(dep(fake, "answer")) == IMAGE.format("2.0")
    code, _, err = cli(capsys, "revert", str(plan), "--kubeconfig", kc, "-n", NS, "--to-revision", "9")
    assert code == 2 and "no revision 9" in err and "2 (v2)" in err
    with pytest.raises(UsageError):
        engine(b, kube).revert("", to_revision=0)


def test_status_live_line_reads_the_deployments_and_the_router_back(tmp_path: Path, fake: FakeApiServer, kube,  # type: ignore[no-untyped-def]
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    b = make_backend(tmp_path, fake, kube, "replicas")
    store = ConfigMapStore(kube, "answer")
    state = rolling()
    b.ensure(state)
    b.deploy_canary(state, "v2")
    b.apply_split(state, Split(weight=0.1))
    state.split = Split(weight=0.1)
    store.save(state)
    plan = k8s_plan(tmp_path, "replicas")
    kc = fake.write_kubeconfig(namespace=NS)
    fake.reset_requests()
    code, out, err = cli(capsys, "status", str(plan), "--kubeconfig", kc, "-n", NS)
    assert code == 0, err
    assert fake.count(WRITE_VERBS) == 0
    assert f"Live:     stable answer 3/3 ready ({IMAGE.format('1.0')}); canary answer-canary 1/1 ready ({IMAGE.format('2.0')})" in out
    assert "replicas: 25% to canary (read back from the ready pods)" in out and "NOT what" not in out
    assert "coarse weight: with 4 pods 10% is not possible: 1 of 4 pods = 25%" in out
    # the router says something else than the record: status says so
    fake.apply({**dep(fake, "answer"), "spec": {**dep(fake, "answer")["spec"], "replicas": 1}})
    deadline = time.monotonic() + 20
    while dep(fake, "answer")["status"].get("availableReplicas") != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    code, out, _ = cli(capsys, "status", str(plan), "--kubeconfig", kc, "-n", NS)
    assert "50% to canary (read back from the ready pods) — NOT what the state records (10% to canary)" in out

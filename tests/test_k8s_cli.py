"""The kubernetes backend through the CLI: kubectl-style connection flags, the lock's --force, `rollout plan`,
and --image validation — the CLI run in this process (commands that run no load) against the in-process fake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import write_plan
from test_k8s_backend import IMAGE, NS, ROOT, fake, main_rule, plan_data  # noqa: F401  (fixture)

from rollout.backends.kubernetes.store import micro_time
from rollout.testing.apiserver import FakeApiServer
from rollout.testing.apiserver.faults import WRITE_VERBS


def _cli(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _main(*args)
    return code, out.getvalue(), err.getvalue()


def _main(*args: str) -> int:
    import signal

    from rollout.cli import main

    before = signal.getsignal(signal.SIGTERM)
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        signal.signal(signal.SIGTERM, before)
    return 0


def two_context_kubeconfig(fake: FakeApiServer, other: FakeApiServer, path: Path) -> Path:
    """Current context `other` (another, empty cluster) with namespace `elsewhere`; context `fake` is the seeded one."""
    cfg = fake.kubeconfig(namespace="elsewhere")
    cfg["clusters"].append({"name": "other", "cluster": {"server": other.url}})
    cfg["users"].append({"name": "other", "user": {"token": "x"}})
    cfg["contexts"].append({"name": "other", "context": {"cluster": "other", "user": "other", "namespace": "elsewhere"}})
    cfg["current-context"] = "other"
    path.write_text(json.dumps(cfg))
    return path


def k8s_plan(tmp_path: Path, router: str = "gateway-api", **target: Any) -> Path:
    data = plan_data(tmp_path, "unused", router, **target)
    del data["target"]["kubeconfig"]
    data["target"]["namespace"] = "elsewhere"  # the command line's --namespace must win
    return write_plan(tmp_path, data)


def test_kubeconfig_context_and_namespace_flags_override_the_plan_and_env(tmp_path: Path, fake: FakeApiServer,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    plan = k8s_plan(tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))  # the flags win over the environment
    monkeypatch.setenv("ROLLOUT_ACTOR", "ops")
    with FakeApiServer(controller_delay=0) as other:
        cfg = two_context_kubeconfig(fake, other, tmp_path / "kubeconfig")
        code, out, err = _cli("revert", str(plan), "--kubeconfig", str(cfg), "--context", "fake", "-n", NS, "--reason", "flags")
        assert code == 0, out + err
        cm = fake.get("configmaps", NS, "rollout-answer")
        assert cm is not None and "ops" in cm["metadata"]["annotations"]["rollout.dev/written-by"]
        assert fake.get("configmaps", "elsewhere", "rollout-answer") is None and not other.list("configmaps", NS)
        assert [(r["name"], r["weight"]) for r in main_rule(fake)["backendRefs"]] == [("answer-stable", 100)]
        # without --context: the kubeconfig's current context, the other cluster, where nothing is recorded
        code, out, err = _cli("status", str(plan), "--kubeconfig", str(cfg), "--namespace", NS)
        assert code == 0 and "nothing recorded yet (ConfigMap shop/rollout-answer)" in out, err
        assert other.count("get", "configmaps") == 1
        code, _, err = _cli("status", str(plan), "--kubeconfig", str(tmp_path / "nope"))
        assert code == 3 and err.startswith("Error: the kubeconfig") and "nope does not exist" in err
        monkeypatch.setenv("KUBECONFIG", str(cfg))  # $KUBECONFIG with --context
        code, out, err = _cli("status", str(plan), "--context", "fake", "-n", NS)
        assert code == 0 and "reverted by ops: flags" in out, err
        code, out, err = _cli("status", str(plan), "--context", "fake")  # no -n: the plan's namespace (`elsewhere`)
        assert code == 0 and "nothing recorded yet (ConfigMap elsewhere/rollout-answer)" in out, err


def test_a_held_lock_names_its_holder_and_force_takes_it_over(tmp_path: Path, fake: FakeApiServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    plan = k8s_plan(tmp_path)
    now = micro_time()
    fake.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": "rollout-answer", "namespace": NS, "annotations": {"rollout.dev/command": "advance"}},
                 "spec": {"holderIdentity": "alice@laptop pid 4242", "leaseDurationSeconds": 600,
                          "acquireTime": now, "renewTime": now, "leaseTransitions": 0}})
    monkeypatch.setenv("KUBECONFIG", fake.write_kubeconfig(namespace=NS))
    monkeypatch.setenv("ROLLOUT_ACTOR", "bob")
    code, out, err = _cli("abort", str(plan), "-n", NS)
    assert code == 3, out + err
    assert "`rollout advance` by alice@laptop pid 4242" in err and "--force" in err
    code, out, err = _cli("revert", str(plan), "-n", NS, "--force")
    assert code == 0, out + err
    lease = fake.get("leases", NS, "rollout-answer")
    assert lease is not None and not lease["spec"].get("holderIdentity") and lease["spec"]["leaseTransitions"] == 1


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in this process (for commands that run no load, so Locust's gevent patching never enters pytest)."""
    import signal

    from rollout.cli import main

    before = signal.getsignal(signal.SIGTERM)
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        signal.signal(signal.SIGTERM, before)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_lists_every_patch_from_the_live_objects_and_writes_nothing(tmp_path: Path, fake: FakeApiServer,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    plan = k8s_plan(tmp_path)
    kc = fake.write_kubeconfig(namespace=NS)
    fake.reset_requests()
    code, out, err = cli(capsys, "plan", str(plan), "--kubeconfig", kc, "-n", NS, "--version", "v2", "-o", "json")
    assert code == 0, err
    assert fake.count(WRITE_VERBS) == 0 and fake.count("get") > 0  # read with `get`, nothing applied
    doc = json.loads(out)
    assert (doc["version"], doc["stable"], doc["images"], doc["applied"]) == ("v2", "v1", {"app": IMAGE.format("2.0")}, False)
    steps = {s["step"].split(":")[0].split(" —")[0]: s for s in doc["steps"]}
    prep = steps["prepare"]["patches"]
    assert [(p["kind"], p["name"], p["type"]) for p in prep] == [("HTTPRoute", "answer", "merge"), ("Deployment", "answer-canary", "strategic-merge")]
    assert prep[1]["body"] == {"metadata": {"annotations": {"rollout.dev/version": "v2"}},
                               "spec": {"template": {"spec": {"containers": [{"name": "app", "image": IMAGE.format("2.0")}]}}, "replicas": 1}}
    cohort = steps["stage 1 `payments`"]["patches"][0]["body"]["spec"]["rules"]
    assert cohort[0]["name"] == "rollout-cohort" and cohort[0]["matches"][0]["headers"] == [{"type": "Exact", "name": "x-team", "value": "payments"}]
    ten = steps["stage 2 `ten`"]["patches"][0]["body"]["spec"]["rules"]
    assert [(r["name"], r["weight"]) for r in ten[0]["backendRefs"]] == [("answer-stable", 90), ("answer-canary", 10)]
    promote = steps["promote v2"]["patches"]
    assert [(p["kind"], p["name"], p["type"]) for p in promote] == [
        ("Deployment", "answer", "update"), ("HTTPRoute", "answer", "merge"), ("Deployment", "answer-canary", "merge")]
    assert promote[0]["body"]["spec"]["template"]["metadata"]["labels"] == {"app": "answer", "track": "stable"}
    assert promote[0]["body"]["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE.format("2.0")
    assert promote[2]["body"] == {"spec": {"replicas": 0}}
    # the text form, same facts
    code, out, _ = cli(capsys, "plan", str(plan), "--kubeconfig", kc, "-n", NS, "--version", "v2")
    assert code == 0 and "HTTPRoute shop/answer: PATCH merge" in out and "Deployment shop/answer: PUT" in out
    assert fake.count(WRITE_VERBS) == 0
    # no dry run without reading the live objects: exit 3, naming what could not be read
    fake.forbid("get", "httproutes")
    code, out, err = cli(capsys, "plan", str(plan), "--kubeconfig", kc, "-n", NS, "--version", "v2")
    assert code == 3 and not out and 'verbs: ["get"]' in err and "httproutes" in err


def test_plan_says_when_the_pod_count_makes_a_weight_coarse(tmp_path: Path, fake: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    plan = k8s_plan(tmp_path, "replicas", replicas=4)
    kc = fake.write_kubeconfig(namespace=NS)
    code, out, err = cli(capsys, "plan", str(plan), "--kubeconfig", kc, "-n", NS, "--version", "v2", "-o", "json")
    assert code == 0, err
    steps = json.loads(out)["steps"]
    ten, half = steps[1], steps[2]
    assert [(p["name"], p["body"]) for p in ten["patches"]] == [("answer-canary", {"spec": {"replicas": 1}}), ("answer", {"spec": {"replicas": 3}})]
    assert any("10% is not possible: 1 of 4 pods = 25%" in n for n in ten["notes"])
    assert [(p["name"], p["body"]["spec"]["replicas"]) for p in half["patches"]] == [("answer-canary", 2), ("answer", 2)]
    assert not any("coarse" in n for n in half["notes"])
    assert fake.count(WRITE_VERBS) == 0
    code, out, _ = cli(capsys, "plan", str(plan), "--kubeconfig", kc, "-n", NS, "--version", "v2")
    assert "coarse weight: with 4 pods 10% is not possible" in out


def test_plan_on_the_local_backend_prints_the_router_split_per_stage(tmp_path: Path, base_plan: dict[str, Any],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    base_plan["stages"] = [{"name": "team", "cohort": {"x-team": "a"}, "weight": 0, "duration": "5s"},
                           {"name": "ten", "weight": "10%", "duration": "5s"}]
    plan = write_plan(tmp_path, base_plan)
    code, out, _ = cli(capsys, "plan", str(plan))
    assert code == 0
    assert "stage 1 `team`: router weight 0% to canary, cohort x-team: a to canary" in out
    assert "stage 2 `ten`: router weight 10% to canary" in out
    code, out, _ = cli(capsys, "plan", str(plan), "-o", "json")
    assert json.loads(out)["steps"][1]["router"] == {"weight": 0.1, "cohort": None}
    code, _, err = cli(capsys, "plan", str(plan), "--image", "app=registry.example.com/answer:2.1")
    assert code == 2 and "--image sets container images" in err


@pytest.mark.parametrize("flag, expected", [
    ("app", "is not NAME=REF"), ("=reg/app:1", "is not NAME=REF"), ("App=reg/app:1", "not a container name"),
    ("app=reg/app:1 x", "not an image reference"), ("app=reg/App:1", "not an image reference"),
])
def test_a_bad_image_flag_is_bad_input(tmp_path: Path, fake: FakeApiServer, capsys: pytest.CaptureFixture[str], flag: str, expected: str) -> None:
    code, _, err = cli(capsys, "plan", str(k8s_plan(tmp_path)), "--image", flag)
    assert code == 2 and expected in err and err.startswith("Error: ")


def test_an_image_for_a_container_the_deployment_has_not_is_bad_input(tmp_path: Path, fake: FakeApiServer,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    kc = fake.write_kubeconfig(namespace=NS)
    code, out, err = cli(capsys, "plan", str(k8s_plan(tmp_path)), "--kubeconfig", kc, "-n", NS, "--image", "sidecar=envoy:1.30")
    assert code == 2 and "names containers sidecar that Deployment shop/answer-canary does not have (app)" in err
    code, out, err = cli(capsys, "plan", str(k8s_plan(tmp_path)), "--kubeconfig", kc, "-n", NS, "--image", "app=envoy:1.30")
    assert code == 0 and json.loads(cli(capsys, "plan", str(k8s_plan(tmp_path)), "--kubeconfig", kc, "-n", NS,
                                        "--image", "app=envoy:1.30", "-o", "json")[1])["version"] == "1.30"


def test_image_flags_name_the_version_after_their_tag() -> None:
    from rollout.backends.kubernetes.images import parse
    from rollout.errors import UsageError

    assert parse(["app=registry.example.com:5000/team/answer:2.1"], None) == ("2.1", {"app": "registry.example.com:5000/team/answer:2.1"})
    assert parse(["app=answer:2.1", "proxy=envoy:2.1"], None)[0] == "2.1"
    assert parse(["app=answer@sha256:" + "ab" * 32], None)[0] == "sha256-abababababab"
    assert parse(["app=answer:2.1", "proxy=envoy:1.30"], "rel-7") == ("rel-7", {"app": "answer:2.1", "proxy": "envoy:1.30"})
    for bad in (["app=answer:2.1", "proxy=envoy:1.30"], ["app=answer"]):
        with pytest.raises(UsageError, match="share no tag") as err:
            parse(bad, None)
        assert "--version" in err.value.hint
    with pytest.raises(UsageError, match="twice"):
        parse(["app=a:1", "app=b:1"], None)


@pytest.mark.parametrize("router", ["gateway-api", "nginx", "replicas"])
def test_plan_says_which_failures_cannot_be_charged_to_a_version_and_what_to_add(tmp_path: Path, fake: FakeApiServer, router: str,
                                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Fail closed (#10): a failure charged to no version cannot fail the canary; `rollout plan` says where and what fixes it."""
    kc = fake.write_kubeconfig(namespace=NS)
    code, out, err = cli(capsys, "plan", str(k8s_plan(tmp_path, router, **({"replicas": 4} if router == "replicas" else {}))),
                         "--kubeconfig", kc, "-n", NS, "--version", "v2", "-o", "json")
    assert code == 0, err
    notes = json.loads(out)["notes"]
    unattributed = next(n for n in notes if n.startswith("unattributed failures:"))
    assert "is charged to no version, so it cannot fail the canary" in unattributed and "ten, half (load to the entry point)" in unattributed
    fix = next(n for n in notes if n.startswith("to charge them:"))
    assert "`load_to: canary`" in fix and "target.canary_url" in fix
    assert ("router: gateway-api" in fix) is (router != "gateway-api")
    assert any("no ready pod fails the stage at once" in n for n in notes)
    if router == "replicas":
        return  # no canary-only stage with this router (the plan is refused): the note says to change router
    # with a pre-flight on the canary's own URL, the plan says those failures are the canary's
    data = plan_data(tmp_path, kc, router, canary_url="http://answer-canary.shop:8080", **({"replicas": 4} if router == "replicas" else {}))
    data["stages"].insert(0, {"name": "preflight", "weight": 0, "load_to": "canary", "duration": "5s"})
    code, out, err = cli(capsys, "plan", str(write_plan(tmp_path, data, "preflight.yaml")), "--kubeconfig", kc, "-n", NS, "--version", "v2")
    assert code == 0, err
    assert "stage(s) preflight load target.canary_url alone: there every failure is the canary's" in out
    assert "to charge them:" not in out

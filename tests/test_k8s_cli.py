"""The kubernetes backend through the CLI: kubectl-style connection flags, the lock's --force, `rollout plan`,
--image, --to-revision and the Live line of `rollout status` (subprocesses against an in-process fake)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_cli, write_plan
from rollout.backends.kubernetes.store import micro_time
from rollout.testing.apiserver import FakeApiServer
from rollout.testing.apiserver.faults import WRITE_VERBS
from test_k8s_backend import IMAGE, NS, ROOT, dep, image_of, main_rule, plan_data

K = 30  # generous timeouts: a busy machine makes these slower, never red


@pytest.fixture
def fake() -> Iterator[FakeApiServer]:
    with FakeApiServer(controller_delay=0) as server:
        for f in ("app.yaml", "httproute.yaml", "ingress-nginx.yaml"):
            for doc in yaml.safe_load_all((ROOT / "manifests" / f).read_text()):
                server.create(doc)
        yield server


def two_context_kubeconfig(fake: FakeApiServer, path: Path) -> Path:
    """Current context `broken` (nothing listens there) with namespace `elsewhere`; context `fake` is the server."""
    cfg = fake.kubeconfig(namespace="elsewhere")
    cfg["clusters"].append({"name": "broken", "cluster": {"server": "http://127.0.0.1:9"}})
    cfg["users"].append({"name": "broken", "user": {"token": "x"}})
    cfg["contexts"].append({"name": "broken", "context": {"cluster": "broken", "user": "broken", "namespace": "elsewhere"}})
    cfg["current-context"] = "broken"
    path.write_text(json.dumps(cfg))
    return path


def k8s_plan(tmp_path: Path, router: str = "gateway-api", **target: Any) -> Path:
    data = plan_data(tmp_path, "unused", router, **target)
    del data["target"]["kubeconfig"]
    data["target"]["namespace"] = "elsewhere"  # the command line's --namespace must win
    return write_plan(tmp_path, data)


def test_kubeconfig_context_and_namespace_flags_override_the_plan_and_env(tmp_path: Path, fake: FakeApiServer) -> None:
    plan = k8s_plan(tmp_path)
    cfg = two_context_kubeconfig(fake, tmp_path / "kubeconfig")
    env = {"KUBECONFIG": str(tmp_path / "missing-kubeconfig"), "ROLLOUT_ACTOR": "ops"}
    done = run_cli("revert", str(plan), "--kubeconfig", str(cfg), "--context", "fake", "-n", NS, "--reason", "flags", env=env, timeout=K)
    assert done.returncode == 0, done.stdout + done.stderr
    cm = fake.get("configmaps", NS, "rollout-answer")
    assert cm is not None and fake.get("configmaps", "elsewhere", "rollout-answer") is None
    assert [(r["name"], r["weight"]) for r in main_rule(fake)["backendRefs"]] == [("answer-stable", 100)]
    # the current context (nothing listens there) is used without --context: an infrastructure error, exit 3
    bad = run_cli("status", str(plan), "--kubeconfig", str(cfg), "--namespace", NS, env=env, timeout=K)
    assert bad.returncode == 3 and bad.stderr.startswith("Error: ") and "Traceback" not in bad.stderr
    missing = run_cli("status", str(plan), "--kubeconfig", str(tmp_path / "nope"), env=env, timeout=K)
    assert missing.returncode == 3 and "nope does not exist" in missing.stderr


def test_a_held_lock_names_its_holder_and_force_takes_it_over(tmp_path: Path, fake: FakeApiServer) -> None:
    plan = k8s_plan(tmp_path)
    now = micro_time()
    fake.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": "rollout-answer", "namespace": NS, "annotations": {"rollout.dev/command": "advance"}},
                 "spec": {"holderIdentity": "alice@laptop pid 4242", "leaseDurationSeconds": 600,
                          "acquireTime": now, "renewTime": now, "leaseTransitions": 0}})
    env = {"KUBECONFIG": fake.write_kubeconfig(namespace=NS), "ROLLOUT_ACTOR": "bob"}
    held = run_cli("abort", str(plan), "-n", NS, env=env, timeout=K)
    assert held.returncode == 3, held.stdout + held.stderr
    assert "`rollout advance` by alice@laptop pid 4242" in held.stderr and "--force" in held.stderr
    forced = run_cli("revert", str(plan), "-n", NS, "--force", env=env, timeout=K)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    lease = fake.get("leases", NS, "rollout-answer")
    assert lease is not None and not lease["spec"].get("holderIdentity") and lease["spec"]["leaseTransitions"] == 1

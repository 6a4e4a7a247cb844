"""The README's Kubernetes walkthrough on the fake API server, run exactly as written.

The block after `<!-- walkthrough:fake-api-server` in README.md is extracted and run by bash (`-e`: any
failing command fails the test) from the repository's root, with this tree's `rollout` and `python` first on
PATH. So the README cannot go stale: a renamed flag, a manifest the fake cannot take, a plan that no longer
promotes, a gateway that no longer carries traffic, all fail here. The output is checked for what the README
promises: every manifest created, the version answering through the gateway before (v1), after the
promotion (v2) and after `rollout revert --to-revision 1` (v1).

The walkthrough uses fixed ports (18001, 18101, 18102, 18180: below the kernel's ephemeral range, which the
other tests' free ports come from) and /tmp/rollout-demo, as a reader would; an exclusive file lock keeps two
test runs on one machine (parallel worktrees) from sharing them, and the bash process group is killed at the
end whatever happened.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_tool

MARK = "<!-- walkthrough:fake-api-server"
PORTS = (18001, 18101, 18102, 18180)
LOCK = Path("/tmp/rollout-readme-walkthrough.lock")


def walkthrough_block() -> str:
    text = (ROOT / "README.md").read_text()
    at = text.index(MARK)
    m = re.compile(r"```sh\n(.*?)```", re.S).search(text, at)
    assert m is not None, "no ```sh block after the walkthrough marker"
    return m.group(1)


def port_free(port: int) -> bool:
    """Nobody listens there (TIME-WAIT leftovers of the last run do not count: the servers bind with SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_readme_block_is_the_walkthrough() -> None:
    """The extraction finds the whole walkthrough (a broken marker must not make the e2e test run nothing)."""
    block = walkthrough_block()
    for needle in ("python -m rollout.testing.apiserver", "kubectl apply --validate=false -f manifests/", "python -m rollout.testing.gateway",
                   "rollout plan examples/k8s-demo-plan.yaml", "rollout run examples/k8s-demo-plan.yaml",
                   "rollout status examples/k8s-demo-plan.yaml", "rollout revert examples/k8s-demo-plan.yaml", "kill $(jobs -p)"):
        assert needle in block, needle


@pytest.mark.slow
def test_the_fake_api_server_walkthrough_runs_as_written() -> None:
    require_tool("kubectl", "kubectl")
    require_tool("curl", "curl")
    block = walkthrough_block()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "ROLLOUT_ACTOR": "pytest", "GITHUB_STEP_SUMMARY": ""}
    env.pop("KUBECONFIG", None)
    LOCK.touch(exist_ok=True)
    with open(LOCK) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worktree's run waits here (each run takes ~1 min)
        deadline = time.monotonic() + 30  # a previous run's processes may still be exiting
        while not all(port_free(p) for p in PORTS) and time.monotonic() < deadline:
            time.sleep(0.5)
        busy = [p for p in PORTS if not port_free(p)]
        assert not busy, f"the walkthrough's ports {busy} are in use on this machine"
        proc = subprocess.Popen(["bash", "-e", "-c", block], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=300)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the walkthrough's own background processes, if it stopped early
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
    assert proc.returncode == 0, out[-6000:]
    for created in ("deployment.apps/answer created", "service/answer-canary created", "httproute.gateway.networking.k8s.io/answer created",
                    "job.batch/rollout-answer created", "serviceaccount/rollout created", "role.rbac.authorization.k8s.io/rollout created",
                    "rolebinding.rbac.authorization.k8s.io/rollout created"):
        assert created in out, (created, out[-6000:])
    versions = re.findall(r"(?im)^x-version: (\S+)", out)
    assert versions == ["v1", "v2", "v1"], (versions, out[-6000:])
    assert "promoted: v2 promoted" in out and "v2 is now stable (was v1)" in out, out[-6000:]
    assert "back to revision 1 (v1, was v2)" in out, out[-6000:]
    assert "Traceback" not in out, out[-6000:]


@pytest.mark.parametrize("args, message", [
    (["-n", "shop", "--httproute", "answer", "--kubeconfig", "/nonexistent/kc", "--backend", "a=1", "--backend", "b=2"], "/nonexistent/kc"),
    (["-n", "shop", "--httproute", "answer", "--kubeconfig", "KC", "--image", "registry.example.com/answer:1.0"], "expected NAME=PORT"),
    (["-n", "shop", "--httproute", "answer", "--kubeconfig", "KC"], "give either backends"),
    (["-n", "shop", "--kubeconfig", "KC", "--backend", "a=1", "--backend", "b=2"], "route_name is required"),
    (["-n", "shop", "--httproute", "answer", "--kubeconfig", "KC", "--services", "only-one", "--image", "i=1"], "expected STABLE,CANARY"),
])
def test_the_gateway_command_refuses_bad_input_with_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    kc = tmp_path / "kc"
    kc.write_text("apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
                  "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\nusers: [{name: u, user: {token: t}}]\n")
    args = [str(kc) if a == "KC" else a for a in args]
    r = subprocess.run([sys.executable, "-m", "rollout.testing.gateway", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and message in r.stderr and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr, r.stderr

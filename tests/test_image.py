"""The container image, checked without a container engine (CI machines have none): the Dockerfile parses,
is multi-stage, runs as non-root with `rollout` as its entrypoint and copies only files that exist; the
package it installs carries its data files; every manifest that runs the image runs a real `rollout` command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent


def parsed() -> list[dict]:
    return DockerfileParser(path=str(ROOT / "Dockerfile")).structure


def test_the_dockerfile_is_multi_stage_non_root_with_rollout_as_entrypoint() -> None:
    instr = parsed()
    froms = [i for i in instr if i["instruction"] == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a slim final one"
    final = instr[instr.index(froms[-1]):]
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the final stage runs as a non-root user"
    (entry,) = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    assert entry.strip() == '["rollout"]'
    assert any("COPY --from=build" in i["content"] for i in final), "the final stage copies the built virtualenv only"
    assert any(i["instruction"] == "ENV" and "HOME=/tmp" in i["value"] for i in final), "writes only under /tmp (read-only root)"


def test_the_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
    for i in parsed():
        if i["instruction"] != "COPY" or "--from=" in i["value"]:
            continue
        *sources, _dest = i["value"].split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: no such file"
            assert src not in ignored


@pytest.mark.slow
def test_the_package_the_image_installs_carries_its_data(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("rollout-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "rollout/report/report.schema.json" in names
    assert {n for n in names if n.startswith("rollout/backends/kubernetes/templates/")}, "the in-cluster load templates"
    assert any(n.endswith("entry_points.txt") for n in names)


def test_every_manifest_running_the_image_runs_a_real_rollout_command() -> None:
    """manifests/ and the in-cluster load templates (rendered as the runner renders them): rollout's image,
    entrypoint `rollout`, args a real command with real flags."""
    from rollout.backends.kubernetes.load_runner import render

    seen = 0
    docs = [(path, doc) for path in sorted((ROOT / "manifests").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]
    docs += [(Path(f"template {o['metadata']['name']}"), o)
             for o in render("rollout-load-t", "ns", "t", "registry.example.com/rollout:0.1", 2, "from locust import HttpUser\n")]
    for path, doc in docs:
        if not doc or doc.get("kind") not in ("Job", "Deployment"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if "rollout" not in c["image"]:
                continue
            seen += 1
            args = c["args"]
            r = subprocess.run([sys.executable, "-m", "rollout", args[0], "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert r.returncode == 0, f"{path.name}: `rollout {args[0]}`: {r.stderr}"
            for flag in (a.split("=")[0] for a in args[1:] if a.startswith("--")):
                assert flag in r.stdout, f"{path.name}: `rollout {args[0]}` has no {flag}"
    assert seen >= 4  # the Job, the watch, the load master and workers

"""Every input of `run`/`advance` checked against the plan and the recorded state, before anything changes.

Why one place: a typo must never jam a rollout. Before this check existed,
`rollout run PLAN --version nosuch` recorded "rolling out nosuch" and only
then failed to start it, so every later `run` was refused until an `abort`,
which left a phantom rollout in the history. Now the version, the images and
"is there anything to do at all" are all judged here, from the plan and a
read of the state (no lock taken, nothing written), and a bad input is exit 2
with the list of valid versions while the state stays byte-for-byte as it was.
The engine re-reads the state under the lock, so a state that changed in
between is still judged by `decide` (which refuses a second version too).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from rollout.engine.state import State
from rollout.errors import UsageError
from rollout.plan.loader import LoadedPlan

# a version named on the command line for new images (--image): the grammar of an image tag,
# which is also safe in an HTTP header value and a Kubernetes annotation
VERSION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")


def valid_versions(loaded: LoadedPlan, state: State | None) -> list[str]:
    """Versions a rollout can name: the plan's target.versions, then (Kubernetes) versions whose images
    an earlier `--image` or a promotion recorded in the state."""
    names = list(loaded.plan.target.versions)
    if state is not None and loaded.plan.target.backend == "kubernetes":
        recorded = list((state.backend.get("images") or {})) + [str(t.get("version")) for t in state.backend.get("templates") or []]
        names += [v for v in recorded if v and v not in names]
    return names


def _listed(names: list[str]) -> str:
    return ", ".join(names) if names else "(none)"


def check_version_text(version: str, valid: list[str], flag: str = "--version") -> None:
    """Empty, blank or control characters: never a version, whatever the backend."""
    if not version.strip():
        raise UsageError(f"{flag} is empty", f"name a version: one of {_listed(valid)}")
    bad = [c for c in version if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    if bad:
        raise UsageError(f"{flag} {version!r} contains control characters ({', '.join(repr(c) for c in dict.fromkeys(bad))})",
                         f"name a version: one of {_listed(valid)}")
    if any(c.isspace() for c in version):
        raise UsageError(f"{flag} {version!r} contains white space", f"name a version: one of {_listed(valid)}")


@dataclass
class DriveRequest:
    """What `run`/`advance` were asked to roll out; `check` fills in the version to drive and the images."""

    verb: str
    given: str | None = None  # --version as given
    image: list[str] | None = None  # --image as given
    version: str | None = field(default=None, init=False)  # after `check`: the version to drive (None: the one in progress)
    images: tuple[str, dict[str, str]] | None = field(default=None, init=False)  # parsed --image: (version, images)
    from_cli: bool = field(default=False, init=False)  # the version was named on the command line

    def check(self, loaded: LoadedPlan, state: State | None) -> None:
        """UsageError (exit 2) for anything that cannot be rolled out; nothing is written either way.
        Idempotent: may run again on a fresher read of the state."""
        target = loaded.plan.target
        self.version, self.images = self.given, None
        valid = valid_versions(loaded, state)
        if self.image and target.backend != "kubernetes":
            raise UsageError(f"--image sets container images, which the {target.backend} backend has not",
                             f"leave it out and name a version with --version: one of {_listed(valid)}")
        if self.version is not None:
            check_version_text(self.version, valid)
        if self.image:
            from rollout.backends.kubernetes.images import parse  # import-light: no kubernetes client

            self.images = parse(self.image, self.version)
            self.version = self.images[0]
            if not VERSION_NAME.match(self.version):
                raise UsageError(f"{self.version!r} cannot name a version (letters, digits, '_', '.', '+', '-'; at most 128)",
                                 "name it with --version, e.g. --version 2.1")
        elif self.version is not None and self.version not in valid:
            raise UsageError(f"unknown version {self.version!r}: the plan `{loaded.plan.name}` has no such version",
                             f"valid versions: {_listed(valid)} (target.versions in {loaded.path.name})"
                             + ("; or give its images with --image NAME=REF" if target.backend == "kubernetes" else ""))
        self.from_cli = self.version is not None
        in_progress = state is not None and state.phase.active
        if self.version is not None and in_progress and state is not None and self.version != state.canary_version:
            n = len(loaded.plan.stages)
            raise UsageError(f"a rollout of {state.canary_version} is in progress (stage {min(state.stage_index + 1, n)}/{n}); "
                             f"{self.version} cannot start before it ends",
                             f"finish it (`rollout {self.verb} {loaded.path.name}` without --version), "
                             "or stop it first with `rollout abort` or `rollout revert`")
        if self.version is None:
            self.version = target.canary
        unfinished = state is not None and state.transition is not None
        if self.version is None and not in_progress and not unfinished:
            what = f"no rollout in progress ({state.phase.value})" if state is not None else "no rollout recorded yet"
            raise UsageError(f"nothing to roll out: name a version ({what}, and the plan names no target.canary)",
                             f"`rollout {self.verb} {loaded.path.name} --version V` with one of: {_listed(valid)}")

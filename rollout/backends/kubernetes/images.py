"""`--image NAME=REF` (repeatable): a container name and an image reference, checked before anything runs.

Pure and import-light (the CLI parses flags before it connects anywhere). The
version name recorded for the rollout is `--version` when given, else the
references' common tag (`registry/app:2.1` -> `2.1`), else their common digest
(`app@sha256:ab12...` -> `sha256-ab12...`, 12 hex digits).
"""

from __future__ import annotations

import re

from rollout.errors import UsageError

CONTAINER = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # DNS-1123 label, as the API requires of container names
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REFERENCE = re.compile(
    r"^(?P<repo>(?:[A-Za-z0-9][A-Za-z0-9.-]*(?::[0-9]+)?/)?" + _COMPONENT + r"(?:/" + _COMPONENT + r")*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}))?$"
)
HINT = "write --image CONTAINER=IMAGE, e.g. --image app=registry.example.com/answer:2.1 (once per container)"


def parse(values: list[str], version: str | None) -> tuple[str, dict[str, str]]:
    """(version, {container: image}) from the --image flags; UsageError (exit 2) for anything malformed."""
    images: dict[str, str] = {}
    tags: set[str] = set()
    digests: set[str] = set()
    for raw in values:
        name, sep, ref = raw.partition("=")
        name, ref = name.strip(), ref.strip()
        if not sep or not name or not ref:
            raise UsageError(f"--image {raw!r} is not NAME=REF", HINT)
        if not CONTAINER.match(name):
            raise UsageError(f"--image {raw!r}: {name!r} is not a container name (lowercase letters, digits and '-', at most 63)", HINT)
        m = REFERENCE.match(ref)
        if not m:
            raise UsageError(f"--image {raw!r}: {ref!r} is not an image reference ([registry/]repository[:tag][@digest])", HINT)
        if name in images:
            raise UsageError(f"--image names container {name!r} twice ({images[name]} and {ref})", "give each container once")
        images[name] = ref
        if m["tag"]:
            tags.add(m["tag"])
        if m["digest"]:
            digests.add(m["digest"])
    if not images:
        raise UsageError("--image needs at least one NAME=REF", HINT)
    if version:
        return version, images
    if len(tags) == 1 and all(REFERENCE.match(r)["tag"] for r in images.values()):  # type: ignore[index]
        return tags.pop(), images
    if len(digests) == 1 and all(REFERENCE.match(r)["digest"] for r in images.values()):  # type: ignore[index]
        algo, _, hexd = digests.pop().partition(":")
        return f"{algo}-{hexd[:12]}", images
    raise UsageError("cannot name the version after the images: they share no tag (or digest)",
                     "name it with --version, e.g. --version 2.1")

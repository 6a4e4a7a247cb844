"""Out-of-band control under /_fake/, for a fake running in another process
(`python -m rollout.testing.apiserver`), where the Python API is out of
reach: read/reset request counts, add/clear faults, set the controller
delay, compact the watch history, dump objects. Not part of the Kubernetes
API and never counted as API requests.

    GET    /_fake/requests            {"total": n, "counts": {"patch deployments.apps": 2}}
    DELETE /_fake/requests            reset counts
    POST   /_fake/faults              {"status": 503, "verb": "patch", "resource": "deployments", "times": 2}
    DELETE /_fake/faults
    POST   /_fake/deployment-faults   {"fault": "never-ready", "image": "*:v2", "progressDeadline": 1}
    DELETE /_fake/deployment-faults
    PUT    /_fake/controller          {"delay": 0.5}
    POST   /_fake/compact
    GET    /_fake/objects
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .server import FakeApiServer


def _snake(d: dict) -> dict:
    return {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): v for k, v in d.items()}


def handle_admin(fake: "FakeApiServer", method: str, path: str, body: bytes) -> tuple[int, Any]:
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        return 400, {"error": "body must be JSON"}
    try:
        if path == "/_fake/requests" and method == "GET":
            return 200, {"total": fake.log.total, "counts": fake.log.counts()}
        if path == "/_fake/requests" and method == "DELETE":
            fake.log.reset()
            return 200, {"ok": True}
        if path == "/_fake/faults" and method == "POST":
            rule = fake.inject_fault(**_snake(data))
            return 200, {"ok": True, "rule": repr(rule)}
        if path == "/_fake/faults" and method == "DELETE":
            fake.clear_faults()
            return 200, {"ok": True}
        if path == "/_fake/deployment-faults" and method == "POST":
            d = _snake(data)
            fake.set_deployment_fault(d.pop("fault"), **d)
            return 200, {"ok": True}
        if path == "/_fake/deployment-faults" and method == "DELETE":
            fake.clear_deployment_faults()
            return 200, {"ok": True}
        if path == "/_fake/controller" and method in ("PUT", "POST"):
            if "delay" in data:
                fake.controller_delay = float(data["delay"])
            return 200, {"ok": True, "delay": fake.controller_delay}
        if path == "/_fake/compact" and method == "POST":
            return 200, {"resourceVersion": str(fake.compact())}
        if path == "/_fake/objects" and method == "GET":
            return 200, fake.store.snapshot()
        return 404, {"error": f"no admin endpoint {method} {path}"}
    except (TypeError, ValueError, KeyError) as e:
        return 400, {"error": str(e)}

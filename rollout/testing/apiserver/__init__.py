"""A faithful fake Kubernetes API server for tests and benchmarks.

    from rollout.testing.apiserver import FakeApiServer

    with FakeApiServer() as api:                  # 127.0.0.1, free port
        kubeconfig = api.write_kubeconfig()       # hand this to the code under test
        api.set_deployment_fault("never-ready", image="*:v2")
        api.inject_fault(503, verb="patch", resource="deployments", times=2)
        ...
        api.get("deployments", "default", "web")  # assert on stored objects
        api.count("patch", "deployments")         # API requests seen

Or standalone: ``python -m rollout.testing.apiserver --port 8001``.

It is stdlib-only and never imports `kubernetes`: the official client is the
thing under test, so the server must not share its code. See the modules:
`registry` (REST semantics), `store` (resourceVersion + watch history),
`patch`, `selectors`, `controller` (simulated Deployment controller),
`faults` (fault injection + request log), `handler` (HTTP).
"""

from .controller import (DEADLINE_ANNOTATION, FAULT_ANNOTATION, READY_AFTER_ANNOTATION,
                         DeploymentFault)
from .errors import ApiError
from .faults import FaultRule, RequestInfo, RequestRecord
from .resources import ResourceType
from .server import DEFAULT_TOKEN, DEFAULT_USER, FakeApiServer

__all__ = [
    "FakeApiServer", "FaultRule", "DeploymentFault", "RequestInfo", "RequestRecord",
    "ResourceType", "ApiError", "FAULT_ANNOTATION", "READY_AFTER_ANNOTATION",
    "DEADLINE_ANNOTATION", "DEFAULT_USER", "DEFAULT_TOKEN",
]

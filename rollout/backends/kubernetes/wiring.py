"""Building the backend and the store from a plan (called by rollout.backends.factory)."""

from __future__ import annotations

import math
import os

from rollout.backends.kubernetes.backend import KubernetesBackend
from rollout.backends.kubernetes.client import Kube, RetryPolicy, connect
from rollout.backends.kubernetes.store import ConfigMapStore
from rollout.plan.loader import LoadedPlan
from rollout.plan.model import KubernetesTarget


def kube_for(loaded: LoadedPlan, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None,
             request_timeout: float | None = None) -> Kube:
    """Connect as kubectl users expect: the command line's --kubeconfig/--context/--namespace first,
    then the plan's target.kubeconfig/context/namespace, then $KUBECONFIG / ~/.kube/config / in-cluster
    (the namespace last of all from the context, else `default`). A --kubeconfig path is relative to
    the working directory, the plan's to the plan file. No request is made yet.
    Each request times out after --request-timeout (else target.request_timeout); transient failures
    are retried within target.retry_budget."""
    t = loaded.plan.target
    assert isinstance(t, KubernetesTarget)
    if kubeconfig:
        path: str | None = os.path.abspath(kubeconfig)
    else:
        path = str(loaded.resolve(t.kubeconfig)) if t.kubeconfig else None
    return connect(kubeconfig=path, context=context or t.context, namespace=namespace or t.namespace,
                   retry=RetryPolicy(max_total=t.retry_budget), request_timeout=request_timeout or t.request_timeout)


def _store(loaded: LoadedPlan, kube: Kube) -> ConfigMapStore:
    t = loaded.plan.target
    assert isinstance(t, KubernetesTarget)
    return ConfigMapStore(kube, loaded.plan.name, lease_seconds=max(1, math.ceil(t.lease_duration)))


def make(loaded: LoadedPlan, step_timeout: float | None = None, request_timeout: float | None = None,
         **conn: str | None) -> tuple[KubernetesBackend, ConfigMapStore]:
    kube = kube_for(loaded, request_timeout=request_timeout, **conn)
    return KubernetesBackend(loaded, kube, step_timeout=step_timeout), _store(loaded, kube)


def make_store(loaded: LoadedPlan, step_timeout: float | None = None, request_timeout: float | None = None,
               **conn: str | None) -> ConfigMapStore:
    return _store(loaded, kube_for(loaded, request_timeout=request_timeout, **conn))

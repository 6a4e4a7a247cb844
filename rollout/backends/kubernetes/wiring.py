"""Building the backend and the store from a plan (called by rollout.backends.factory)."""

from __future__ import annotations

import os

from rollout.backends.kubernetes.backend import KubernetesBackend
from rollout.backends.kubernetes.client import Kube, connect
from rollout.backends.kubernetes.store import ConfigMapStore
from rollout.plan.loader import LoadedPlan
from rollout.plan.model import KubernetesTarget


def kube_for(loaded: LoadedPlan, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None) -> Kube:
    """Connect as kubectl users expect: the command line's --kubeconfig/--context/--namespace first,
    then the plan's target.kubeconfig/context/namespace, then $KUBECONFIG / ~/.kube/config / in-cluster
    (the namespace last of all from the context, else `default`). A --kubeconfig path is relative to
    the working directory, the plan's to the plan file. No request is made yet."""
    t = loaded.plan.target
    assert isinstance(t, KubernetesTarget)
    if kubeconfig:
        path: str | None = os.path.abspath(kubeconfig)
    else:
        path = str(loaded.resolve(t.kubeconfig)) if t.kubeconfig else None
    return connect(kubeconfig=path, context=context or t.context, namespace=namespace or t.namespace)


def _lease_seconds(loaded: LoadedPlan) -> int:
    t = loaded.plan.target
    assert isinstance(t, KubernetesTarget)
    return max(1, round(float(t.lease_duration)))


def make(loaded: LoadedPlan, **conn: str | None) -> tuple[KubernetesBackend, ConfigMapStore]:
    kube = kube_for(loaded, **conn)
    return KubernetesBackend(loaded, kube), ConfigMapStore(kube, loaded.plan.name, lease_seconds=_lease_seconds(loaded))


def make_store(loaded: LoadedPlan, **conn: str | None) -> ConfigMapStore:
    return ConfigMapStore(kube_for(loaded, **conn), loaded.plan.name, lease_seconds=_lease_seconds(loaded))

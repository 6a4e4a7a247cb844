"""Building the backend and the store from a plan (called by rollout.backends.factory)."""

from __future__ import annotations

from rollout.backends.kubernetes.backend import KubernetesBackend
from rollout.backends.kubernetes.client import Kube, connect
from rollout.backends.kubernetes.store import ConfigMapStore
from rollout.plan.loader import LoadedPlan
from rollout.plan.model import KubernetesTarget


def kube_for(loaded: LoadedPlan) -> Kube:
    """Connect as the plan says (target.kubeconfig/context/namespace), else $KUBECONFIG / in-cluster.
    Relative kubeconfig paths are relative to the plan file. No request is made yet."""
    t = loaded.plan.target
    assert isinstance(t, KubernetesTarget)
    path = str(loaded.resolve(t.kubeconfig)) if t.kubeconfig else None
    return connect(kubeconfig=path, context=t.context, namespace=t.namespace)


def make(loaded: LoadedPlan) -> tuple[KubernetesBackend, ConfigMapStore]:
    kube = kube_for(loaded)
    return KubernetesBackend(loaded, kube), ConfigMapStore(kube, loaded.plan.name)


def make_store(loaded: LoadedPlan) -> ConfigMapStore:
    return ConfigMapStore(kube_for(loaded), loaded.plan.name)

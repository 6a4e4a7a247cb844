"""Test doubles that ship with `rollout`.

They live in the package (not under tests/) so benchmarks, demos and other
projects' tests can start them too. The main one is
`rollout.testing.apiserver`, a fake Kubernetes API server spoken to over real
HTTP by the unmodified official `kubernetes` client; `rollout.testing.kubelet`
(opt-in there) runs its Deployments of rollout's image as local processes and
serves the service proxy; `rollout.testing.gateway` carries real traffic the
way the cluster's routing objects say.
"""

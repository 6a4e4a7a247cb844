"""The one module that imports `kubernetes`: connecting, and one wrapper for every call.

Why one wrapper: every API call can fail in the same handful of ways, and each
needs the same treatment everywhere —
  * 409 Conflict (a resourceVersion mismatch, or AlreadyExists) is not an
    error but a signal: the caller re-reads and decides (`Conflict`);
  * 429 / 5xx / connection problems are transient: retried with exponential
    backoff, bounded in tries *and* in total time (`RetryPolicy`);
  * 401 / 403 / 404 / 422 cannot be fixed by retrying: they become a
    `BackendError` naming the verb and the resource, and for 403 the exact
    RBAC rule that is missing, so the fix can be pasted into the Role.
urllib3's own status retries are switched off (it would retry GETs on
429/503 after Retry-After by itself, multiplying our bound); connect retries stay.
Objects cross this module as plain dicts (the API's JSON, camelCase).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from rollout.errors import BackendError

MERGE_PATCH = "application/merge-patch+json"
RETRYABLE = {429, 500, 502, 503, 504}
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read (seconds)


@dataclass(frozen=True)
class Res:
    """A resource as RBAC names it: API group ("" for core) and plural."""

    group: str
    plural: str

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


DEPLOYMENTS = Res("apps", "deployments")
CONFIGMAPS = Res("", "configmaps")
LEASES = Res("coordination.k8s.io", "leases")
INGRESSES = Res("networking.k8s.io", "ingresses")
HTTPROUTES = Res("gateway.networking.k8s.io", "httproutes")
EVENTS = Res("", "events")


class Conflict(Exception):
    """409: the object changed since it was read (or already exists). Re-read and decide."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "Conflict" | "AlreadyExists"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: at most `tries` attempts and `max_total` seconds of sleeping."""

    tries: int = 5
    base: float = 0.2
    max_total: float = 10.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)


def _status_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.body or exc.reason)


def rbac_rule(verb: str, res: Res) -> str:
    return f'apiGroups: ["{res.group}"], resources: ["{res.plural}"], verbs: ["{verb}"]'


@dataclass
class Kube:
    """An API client bound to one namespace, with the retry policy every call goes through."""

    api: k8s.ApiClient
    namespace: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    where: str = ""  # the cluster, for messages

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    @property
    def apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self.api)

    @property
    def coord(self) -> k8s.CoordinationV1Api:
        return k8s.CoordinationV1Api(self.api)

    @property
    def net(self) -> k8s.NetworkingV1Api:
        return k8s.NetworkingV1Api(self.api)

    @property
    def custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self.api)

    def call(self, verb: str, res: Res, name: str | None, fn: Callable[..., Any], *args: Any,
             missing_ok: bool = False, **kw: Any) -> Any:
        """`fn(*args, **kw)` with the error policy above; returns the result as a plain dict
        (None for a 404 when `missing_ok`)."""
        kw.setdefault("_request_timeout", REQUEST_TIMEOUT)
        what = f'{verb} {res} "{name}"' if name else f"{verb} {res}"
        where = f'in namespace "{self.namespace}"' + (f" of {self.where}" if self.where else "")
        last, tries, slept = "", 0, 0.0
        while True:
            tries += 1
            try:
                out = fn(*args, **kw)
                return out if isinstance(out, dict) or out is None else self.api.sanitize_for_serialization(out)
            except ApiException as exc:
                code, msg = exc.status or 0, _status_message(exc)
                if code == 409:
                    reason = "AlreadyExists" if "already exists" in msg else "Conflict"
                    raise Conflict(reason, msg) from None
                if code == 404 and missing_ok:
                    return None
                if code == 401:
                    raise BackendError(f"cannot {what} {where}: the cluster does not accept the credentials ({msg})",
                                       "log in again or refresh the kubeconfig's token") from None
                if code == 403:
                    raise BackendError(f"cannot {what} {where}: forbidden ({msg})",
                                       f"the Role bound to this user needs the rule {{{rbac_rule(verb, res)}}} "
                                       "(see manifests/rbac.yaml)") from None
                if code == 404:
                    raise BackendError(f"cannot {what} {where}: it does not exist ({msg})",
                                       "create it first (see manifests/), or fix the name in the plan") from None
                if code not in RETRYABLE:
                    raise BackendError(f"cannot {what} {where}: {code} {msg}", "fix the object or the plan, then retry") from None
                last = f"{code} {msg}"
                retry_after = (exc.headers or {}).get("Retry-After") if exc.headers else None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                last, retry_after = f"{type(exc).__name__}: {exc}", None
            delay = self.retry.base * 2 ** (tries - 1)
            if retry_after and str(retry_after).isdigit():
                delay = max(delay, float(retry_after))  # the server's word, within our budget
            delay = min(delay, self.retry.max_total - slept)
            if tries >= self.retry.tries or delay <= 0:
                break
            self.retry.sleep(delay)
            slept += delay
        raise BackendError(f"cannot {what} {where}: the API server kept failing ({tries} tries in {slept:.1f}s; last: {last})",
                           "check the cluster's health, then run the command again (it resumes where it stopped)")


def connect(kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None,
            retry: RetryPolicy | None = None) -> Kube:
    """A client from an explicit kubeconfig, $KUBECONFIG, ~/.kube/config, or the in-cluster service account.

    The namespace is the explicit one, else the context's, else `default`.
    """
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
    cfg = k8s.Configuration()
    ctx_ns: str | None = None
    where = ""
    if kubeconfig and not os.path.exists(kubeconfig):  # asked for by name: never fall back to another identity
        raise BackendError(f"the kubeconfig {kubeconfig} does not exist", "fix --kubeconfig (or target.kubeconfig in the plan)")
    try:
        if os.path.exists(path):
            k8s_config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
            contexts, current = k8s_config.list_kube_config_contexts(config_file=path)
            chosen = next((c for c in contexts if c["name"] == context), None) if context else current
            ctx_ns = ((chosen or {}).get("context") or {}).get("namespace")
            where = f'context "{(chosen or {}).get("name", "?")}"'
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=cfg)
            try:
                with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as f:
                    ctx_ns = f.read().strip() or None
            except OSError:
                pass
            where = "this cluster (in-cluster)"
        else:
            raise BackendError(f"no kubeconfig at {path} and not running in a cluster",
                               "set target.kubeconfig or $KUBECONFIG, or run inside the cluster")
    except k8s_config.ConfigException as exc:
        raise BackendError(f"cannot use the kubeconfig {path}: {exc}", "check its contexts (`kubectl config get-contexts`)") from None
    # status retries are ours (bounded); urllib3 keeps only connect retries
    cfg.retries = urllib3.Retry(total=3, connect=3, read=0, status=0, redirect=0, respect_retry_after_header=False)
    return Kube(k8s.ApiClient(cfg), namespace or ctx_ns or "default", retry or RetryPolicy(), where)

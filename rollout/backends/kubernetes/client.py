"""The one module that imports `kubernetes`: connecting, and one wrapper for every call.

Why one wrapper: every API call can fail in the same handful of ways, and each
needs the same treatment everywhere —
  * 409 Conflict (a resourceVersion mismatch, or AlreadyExists) is not an
    error but a signal: the caller re-reads and decides (`Conflict`);
  * 429 / 5xx / connection problems and timeouts are transient: retried with
    exponential backoff (or after the server's `Retry-After`), bounded by a
    retry budget in time (`RetryPolicy.max_total`, default 30 s per call,
    `target.retry_budget`); a budget spent is a `BackendError` naming the call;
  * 401 / 403 / 404 / 422 cannot be fixed by retrying: they become a
    `BackendError` naming the verb and the resource, and for 403 the exact
    RBAC rule that is missing, so the fix can be pasted into the Role.
urllib3's own status retries are switched off (it would retry GETs on
429/503 after Retry-After by itself, multiplying our bound); connect retries stay.
Objects cross this module as plain dicts (the API's JSON, camelCase).

Time bounds, so a slow cluster cannot outlast a command:
  * every request has a client-side timeout (the official client's
    `_request_timeout`: connect ≤ 5 s, read `Kube.request_timeout`, default
    30 s, `target.request_timeout` / `--request-timeout`);
  * a *step* (deploy the canary, shift traffic, promote, roll back) runs under
    `Kube.deadline()`: every request's timeout, every retry's wait and every
    poll is cut to what is left of it, and past it the step stops with
    `StepTimeout` (exit 3). The deadline is per thread, so the Lease's renewal
    thread is never cut short by the main thread's step;
  * `Kube.before_write` (set by the Lease lock) is asked before every write but
    the Lease's own, so a command that lost its lock stops before changing anything.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from rollout.errors import BackendError

MERGE_PATCH = "application/merge-patch+json"
RETRYABLE = {429, 500, 502, 503, 504}
CONNECT_TIMEOUT = 5.0  # seconds; a connect never waits longer, whatever the read timeout
DEFAULT_REQUEST_TIMEOUT = 30.0  # read timeout of one request (target.request_timeout, --request-timeout)
DEFAULT_RETRY_BUDGET = 30.0  # time one call may spend on retries (target.retry_budget)
REQUEST_TIMEOUT = (CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT)  # connect, read (seconds)
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
WATCH_SECONDS = 60  # server-side timeout of one watch request (then it is renewed from where it stopped)


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
    """Exponential backoff within a budget: a call spends at most `max_total` seconds (waiting
    plus the retried requests' own time) and `tries` attempts on transient failures.

    A `Retry-After` from the server replaces the backoff (the server knows its load, as
    client-go assumes) as long as it fits in what is left of the budget; one that does not
    is given up on at once (waiting less than asked would only earn another 429)."""

    tries: int = 30
    base: float = 0.2
    max_total: float = DEFAULT_RETRY_BUDGET
    max_delay: float = 5.0  # one backoff wait at most (Retry-After may ask for more)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)


class StepTimeout(BackendError):
    """A step ran past its deadline; what it may have half done is in the state (its transition)."""


@dataclass(frozen=True)
class Deadline:
    """The end of one step, on the monotonic clock."""

    step: str
    seconds: float
    at: float

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def expired(self, doing: str, last: str = "") -> StepTimeout:
        tail = f" (last answer: {last})" if last else ""
        return StepTimeout(
            f"{self.step} did not finish within its deadline of {round(self.seconds, 2):g}s; it was stopped while waiting to {doing}{tail}",
            "it may be half done, and the state says what: `rollout status` shows it, `rollout run` finishes it, "
            "`rollout revert` puts all traffic back on stable; if the cluster is only slow, raise the deadline "
            "(--step-timeout, or target.step_timeout in the plan)")


def retry_after_seconds(value: Any) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date (RFC 9110 §10.2.3); None when absent or unreadable."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        secs = float(text)
        return secs if secs >= 0 and secs == secs and secs != float("inf") else None
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


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
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT  # read timeout of each request, seconds
    # asked before every write but the Lease's own; raises to stop a command that lost its lock (fencing)
    before_write: Callable[[], None] | None = None
    _local: threading.local = field(default_factory=threading.local, repr=False, compare=False)

    # -- deadlines ---------------------------------------------------------------

    @contextmanager
    def deadline(self, step: str, seconds: float | None) -> Iterator[None]:
        """Calls in this thread inside the block end by `seconds` from now (None: no deadline).
        Nested deadlines never extend an outer one: the earlier end wins."""
        prev: Deadline | None = getattr(self._local, "deadline", None)
        if seconds is None:
            yield
            return
        new = Deadline(step, seconds, time.monotonic() + seconds)
        self._local.deadline = prev if prev is not None and prev.at <= new.at else new
        try:
            yield
        finally:
            self._local.deadline = prev

    def current_deadline(self) -> Deadline | None:
        return getattr(self._local, "deadline", None)

    def _timeout(self, left: float | None) -> tuple[float, float]:
        connect, read = min(CONNECT_TIMEOUT, self.request_timeout), self.request_timeout
        if left is not None:
            connect, read = min(connect, left), min(read, left)
        return max(connect, 0.001), max(read, 0.001)

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
        what = f'{verb} {res} "{name}"' if name else f"{verb} {res}"
        where = f'in namespace "{self.namespace}"' + (f" of {self.where}" if self.where else "")
        if verb in WRITE_VERBS and res != LEASES and self.before_write is not None:
            self.before_write()  # fencing: raises when this command no longer holds its lock
        fixed_timeout = "_request_timeout" in kw
        dl = self.current_deadline()
        last, tries, used = "", 0, 0.0  # used: seconds of the retry budget spent (waits + retried requests)
        gave_up = ""
        while True:
            tries += 1
            left = dl.remaining() if dl is not None else None
            if left is not None and left <= 0:
                raise dl.expired(what, last)  # type: ignore[union-attr]
            if not fixed_timeout:
                kw["_request_timeout"] = self._timeout(left)
            started = time.monotonic()
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
                retry_after = retry_after_seconds((exc.headers or {}).get("Retry-After") if exc.headers else None)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if dl is not None and dl.remaining() <= 0:
                    raise dl.expired(what, _transport_error(exc)) from None
                last, retry_after = _transport_error(exc), None
            if tries > 1:
                used += time.monotonic() - started  # the first attempt is the call, not a retry
            delay = min(self.retry.base * 2 ** (tries - 1), self.retry.max_delay)
            left_budget = self.retry.max_total - used
            if retry_after is not None:
                if retry_after > left_budget:
                    gave_up = f"; the server asked to wait {retry_after:g}s more, beyond the {max(left_budget, 0):.1f}s left of the budget"
                    break
                delay = max(retry_after, 0.05)  # the server's word (as client-go takes it), within our budget
            delay = min(delay, left_budget)
            if tries >= self.retry.tries or delay <= 0:
                break
            if dl is not None and delay >= dl.remaining():  # waiting would outlast the step
                raise dl.expired(what, last)
            self.retry.sleep(delay)
            used += delay
        raise BackendError(f"cannot {what} {where}: the API server kept failing ({tries} tries in {used:.1f}s, "
                           f"retry budget {self.retry.max_total:g}s{gave_up}; last: {last})",
                           "check the cluster's health (a busy cluster: raise target.retry_budget), "
                           "then run the command again (it resumes where it stopped)")


class ConfigMapWatch:
    """Counts the changes of one ConfigMap, from a watch in a background thread: `changes` grows at
    every ADDED/MODIFIED/DELETED event, so a caller polling it every 0.1 s learns of a write within
    ~0.1 s for the price of one open connection (a GET every 0.1 s would be ten requests a second).

    Never misses a change: the first watch (no resourceVersion) starts with the object as ADDED
    (one change counted, so whatever was written before the watch opened is seen too); each renewal
    resumes from the last resourceVersion; a 410 (history gone) lists afresh, again with an ADDED.
    Transient failures are retried with backoff; a refusal that retrying cannot fix (401/403/404:
    e.g. a Role without `watch` on configmaps) ends the thread with `error` set, and `changes`
    stays still — the caller's slower path (a read at every load tick) still works.

    Thread safety: the thread has its own ApiClient (its own connection pool), so it shares no
    connection or pool with the calls of the command's main thread; `changes` has one writer.
    Under gevent (Locust patches threading) the thread is a greenlet and its blocking read yields.
    `stop()` shuts the watch's socket down (kubernetes' Watch.stop), so the thread ends at once."""

    def __init__(self, kube: Kube, name: str) -> None:
        self.kube = kube
        self.name = name
        self.changes = 0
        self.events = 0  # every event, bookmarks included (for tests)
        self.error: str | None = None
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._loop, name=f"watch-configmap-{name}", daemon=True)

    def start(self) -> ConfigMapWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        w = self._watch
        if w is not None:
            w.stop()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        api = k8s.ApiClient(self.kube.api.configuration)
        core = k8s.CoreV1Api(api)
        rv: str | None = None
        backoff = 0.2
        try:
            while not self._stop.is_set():
                w = self._watch = k8s_watch.Watch()
                kw: dict[str, Any] = {"field_selector": f"metadata.name={self.name}", "timeout_seconds": WATCH_SECONDS,
                                      "allow_watch_bookmarks": True, "_request_timeout": (CONNECT_TIMEOUT, WATCH_SECONDS + 15)}
                if rv is not None:
                    kw["resource_version"] = rv
                try:
                    for event in w.stream(core.list_namespaced_config_map, self.kube.namespace, **kw):
                        if self._stop.is_set():
                            break
                        self.events += 1
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            self.changes += 1
                        rv = w.resource_version or rv
                        backoff = 0.2
                    rv = w.resource_version or rv
                except ApiException as exc:
                    if exc.status == 410:  # too old to resume: list afresh (the object comes as ADDED)
                        rv = None
                        continue
                    if exc.status in (401, 403, 404):
                        self.error = (f"cannot watch configmaps \"{self.name}\" in namespace \"{self.kube.namespace}\": "
                                      f"{exc.status} {_status_message(exc)}")
                        return
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                except (urllib3.exceptions.HTTPError, OSError, ValueError):
                    if self._stop.is_set():
                        return
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                except Exception as exc:  # noqa: BLE001  (unforeseen: give up watching, the slower path remains)
                    self.error = f"watching configmaps \"{self.name}\" failed: {type(exc).__name__}: {exc}"
                    return
        finally:
            self._watch = None
            api.close()


def _transport_error(exc: BaseException) -> str:
    """A timeout or connection failure, said plainly (urllib3 wraps it in MaxRetryError)."""
    reason = getattr(exc, "reason", None)
    inner = reason if isinstance(reason, BaseException) else exc
    if isinstance(inner, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return f"no answer within the request timeout ({type(inner).__name__})"
    return f"{type(inner).__name__}: {inner}"


def connect(kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None,
            retry: RetryPolicy | None = None, request_timeout: float | None = None) -> Kube:
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
    return Kube(k8s.ApiClient(cfg), namespace or ctx_ns or "default", retry or RetryPolicy(), where,
                request_timeout=request_timeout or DEFAULT_REQUEST_TIMEOUT)

"""HTTP: routing API paths to the registry, and streaming watches.

Stdlib only (`http.server` on HTTP/1.1 with keep-alive), so the fake runs
anywhere the package does and never shares code with the client under test.
Every response carries Content-Length, except watches, which use chunked
transfer encoding with one JSON event per line, as the real server does.
The order of checks mirrors the real filter chain: authentication, then
injected faults (where authorization / priority & fairness would reject),
then the handler.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from . import errors as E
from .admin import handle_admin
from .errors import ApiError
from .faults import FaultRule, RequestInfo, RequestRecord
from .resources import ResourceType
from .watch import open_watch

if TYPE_CHECKING:  # pragma: no cover
    from .server import FakeApiServer

_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}


def _bool(v: str | None, name: str) -> bool:
    if v is None or v == "":
        return False
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise E.bad_request(f'invalid value for {name}: strconv.ParseBool: parsing "{v}": invalid syntax')


@dataclass
class Route:
    kind: str  # "resource" | "discovery" | "nonresource"
    info: RequestInfo
    rt: ResourceType | None = None
    doc: Any = None
    watch_name: str = ""


def route_request(fake: "FakeApiServer", method: str, path: str, query: dict[str, str],
                  user: str) -> Route:
    segs = [s for s in path.split("/") if s]
    types = fake.types

    def nonres(doc: Any = None) -> Route:
        verb = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(method, method.lower())
        return Route("discovery" if doc is not None else "nonresource",
                     RequestInfo(method, path, verb, user=user), doc=doc)

    if not segs:
        return nonres({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"]
                       + sorted(f"/apis/{g}" for g in types.groups())})
    if segs[0] == "version" and len(segs) == 1:
        return nonres(fake.version_info())
    if segs[0] in ("healthz", "livez", "readyz") and len(segs) == 1:
        return nonres("ok")
    if segs[0] == "api":
        if len(segs) == 1:
            return nonres(types.api_versions(f"{fake.host}:{fake.port}"))
        group, version, rest = "", segs[1], segs[2:]
    elif segs[0] == "apis":
        if len(segs) == 1:
            return nonres(types.api_group_list())
        if len(segs) == 2:
            doc = types.api_group(segs[1])
            return nonres(doc) if doc else nonres()
        group, version, rest = segs[1], segs[2], segs[3:]
    else:
        return nonres()
    if not rest:
        doc = types.api_resource_list(group, version)
        return nonres(doc) if doc else nonres()

    watch_prefix = rest[0] == "watch"
    if watch_prefix:
        rest = rest[1:]
    ns = ""
    if rest and rest[0] == "namespaces" and len(rest) >= 3 and not (
            group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")):
        ns, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return nonres()
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    rt = types.lookup(group, version, plural)
    if rt is None or (ns and not rt.namespaced) or (rt.namespaced and name and not ns):
        return nonres()
    if sub and not ((sub == "status" and rt.status_subresource) or (sub == "scale" and rt.scale_subresource)):
        return nonres()
    watch_q = _bool(query.get("watch"), "watch")
    if method == "GET":
        if watch_prefix or watch_q:
            verb = "watch"
        else:
            verb = "get" if name else "list"
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = method.lower()
    info = RequestInfo(method, path, verb, group, version, plural, sub, ns, name, user)
    r = Route("resource", info, rt=rt)
    if verb == "watch" and name:
        r.watch_name = name
    return r


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], fake: "FakeApiServer") -> None:
        self.fake = fake
        self.conns: set[socket.socket] = set()
        self.threads: set[threading.Thread] = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, Handler)
        self._wake_r, self._wake_w = socket.socketpair()

    def serve_until_stopped(self, stopping: threading.Event) -> None:
        """Accept loop woken by `wake()`: stopping takes no polling delay."""
        import selectors
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self, selectors.EVENT_READ)
                sel.register(self._wake_r, selectors.EVENT_READ)
                while not stopping.is_set():
                    for key, _ in sel.select():
                        if key.fileobj is self and not stopping.is_set():
                            self._handle_request_noblock()
        finally:
            self._wake_r.close()
            self._wake_w.close()

    def wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (AttributeError, OSError):
            pass

    def close_connections(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join_threads(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.conns_lock:
            threads = list(self.threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-kube-apiserver"
    sys_version = ""
    timeout = 300  # idle keep-alive connections are closed after this
    server: _HTTPServer

    # ------------------------------------------------------------ plumbing
    def setup(self) -> None:
        super().setup()
        # Headers and body are separate writes: without NODELAY, Nagle plus
        # the client's delayed ACK add ~40 ms to every response.
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        with self.server.conns_lock:
            self.server.conns.add(self.connection)
            self.server.threads.add(threading.current_thread())
        if self.server.fake._stopping.is_set():
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def finish(self) -> None:
        with self.server.conns_lock:
            self.server.conns.discard(self.connection)
            self.server.threads.discard(threading.current_thread())
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.fake.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, code: int, payload: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self._record(code)  # before the client can see the answer
        try:
            self._write_response(code, payload, content_type, headers)
        except OSError:  # the client went away; nothing to tell it
            self.close_connection = True

    def _write_response(self, code: int, payload: bytes, content_type: str,
                        headers: dict[str, str] | None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.command != "HEAD":
            # One write for headers and body.
            self._headers_buffer.append(b"\r\n" + payload)
            self.flush_headers()
        else:
            self.end_headers()

    def _send_json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj, separators=(",", ":")).encode())

    def _send_error(self, err: ApiError) -> None:
        payload, ctype = err.body()
        self._send(err.code, payload, ctype, err.headers)

    # ------------------------------------------------------------ dispatch
    _pending: tuple | None = None

    def _record(self, code: int) -> None:
        if self._pending is not None:
            info, started, fault = self._pending
            self._pending = None
            self.server.fake.log.add(RequestRecord(info, code, started, time.monotonic() - started, fault))

    def _user(self) -> tuple[str, bool]:
        fake = self.server.fake
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer ") and auth[7:].strip():
            token = auth[7:].strip()
            return fake.users.get(token, fake.default_user), True
        return "system:anonymous", False

    def _dispatch(self) -> None:
        fake = self.server.fake
        started = time.monotonic()
        url = urlsplit(self.path)
        path = url.path if url.path == "/" else url.path.rstrip("/")
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        if path.startswith("/_fake"):
            code, doc = handle_admin(fake, self.command, path, body)
            self._send_json(code, doc)
            return
        if fake.kubelet is not None and "/proxy" in path and fake.kubelet.proxy(self, body):  # opt-in (rollout.testing.kubelet)
            return
        user, has_token = self._user()
        try:
            route = route_request(fake, self.command, path, query, user)
        except ApiError as e:
            self._send_error(e)
            return
        self._pending = (route.info, started, False)
        status = 500
        try:
            if fake.require_auth and not has_token:
                raise E.unauthorized()
            rule = fake.faults.pick(route.info)
            if rule is not None:
                self._pending = (route.info, started, True)
                status = self._apply_fault(rule, route)
                if status is not None:
                    return
            status = self._serve(route, query, body, started)
        except ApiError as e:
            status = e.code
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug in the fake: answer like the server would
            status = 500
            try:
                self._send_error(E.internal_error(f"fake apiserver bug: {type(e).__name__}: {e}"))
            except OSError:
                pass
            if fake.verbose:
                raise
        finally:
            self._record(status or 0)  # no answer was sent (dropped, broken pipe)

    def _apply_fault(self, rule: FaultRule, route: Route) -> int | None:
        """Act on a fired rule; returns the status sent, or None to go on."""
        fake = self.server.fake
        if rule.action == "delay":
            fake._stopping.wait(rule.delay)
            return None
        if rule.action == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return 0
        if rule.delay:
            fake._stopping.wait(rule.delay)
        info = route.info
        rt = route.rt
        err = E.for_code(
            rule.status, group=info.group, plural=info.resource, subresource=info.subresource or None,
            name=info.name or None, namespace=info.namespace or None, user=info.user, verb=info.verb,
            message=rule.message, retry_after=rule.retry_after, as_status=rule.as_status)
        if rt is not None and rule.status == 409 and info.verb == "create":
            err = E.already_exists(info.group, info.resource, info.name)
        raise err

    def _serve(self, route: Route, query: dict[str, str], body: bytes, started: float) -> int:
        fake = self.server.fake
        if route.kind == "discovery":
            if self.command != "GET":
                raise E.method_not_allowed()
            if isinstance(route.doc, str):
                self._send(200, route.doc.encode(), "text/plain; charset=utf-8")
            else:
                self._send_json(200, route.doc)
            return 200
        if route.kind == "nonresource":
            raise E.path_not_found()
        info, rt = route.info, route.rt
        assert rt is not None
        reg = fake.registry
        ns = info.namespace or None
        version = info.version
        dry_run = False
        if "dryRun" in query:
            if query["dryRun"] != "All":
                raise E.bad_request(f'dryRun: Unsupported value: "{query["dryRun"]}": supported values: "All"')
            dry_run = True
        verb = info.verb

        if verb == "get":
            if info.subresource == "scale":
                out = reg.get_scale(rt, ns, info.name)
            else:
                out = reg.get(rt, ns, info.name, version)
            self._send_json(200, out)
            return 200
        if verb == "list":
            limit = query.get("limit")
            try:
                lim = int(limit) if limit else None
            except ValueError:
                raise E.bad_request(f"limit: Invalid value: {limit!r}") from None
            out = reg.list(rt, ns, label_selector=query.get("labelSelector"),
                           field_selector=query.get("fieldSelector"), limit=lim,
                           continue_=query.get("continue") or None, version=version)
            self._send_json(200, out)
            return 200
        if verb == "watch":
            return self._watch(route, query, started)
        if verb == "create":
            if info.name:
                raise E.method_not_allowed()
            obj = reg.create(rt, ns, self._json(body), version=version, dry_run=dry_run)
            self._send_json(201, obj)
            return 201
        if verb == "update":
            if not info.name:
                raise E.method_not_allowed()
            obj, created = reg.update(rt, ns, info.name, self._json(body),
                                      subresource=info.subresource or None, version=version,
                                      dry_run=dry_run)
            code = 201 if created else 200
            self._send_json(code, obj)
            return code
        if verb == "patch":
            if not info.name:
                raise E.method_not_allowed()
            ctype = self.headers.get("Content-Type", "")
            base = ctype.split(";")[0].strip().lower()
            if base not in reg.accepted_patch_types(rt):
                raise E.unsupported_media_type(reg.accepted_patch_types(rt))
            try:
                patch = json.loads(body or b"null")
            except ValueError:
                if base.startswith("application/apply-patch"):
                    raise E.bad_request("fake apiserver: apply patches must be sent as JSON "
                                        "(JSON is valid YAML)") from None
                raise E.bad_request("error decoding patch: invalid character in JSON") from None
            obj, created = reg.patch(rt, ns, info.name, ctype, patch,
                                     subresource=info.subresource or None, version=version,
                                     dry_run=dry_run, field_manager=query.get("fieldManager"))
            code = 201 if created else 200
            self._send_json(code, obj)
            return code
        if verb == "delete":
            opts = self._json(body) if body.strip() else None
            out = reg.delete(rt, ns, info.name, opts, version=version, dry_run=dry_run)
            self._send_json(200, out)
            return 200
        if verb == "deletecollection":
            out = reg.delete_collection(rt, ns, label_selector=query.get("labelSelector"),
                                        field_selector=query.get("fieldSelector"), version=version,
                                        dry_run=dry_run)
            self._send_json(200, out)
            return 200
        raise E.method_not_allowed()

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except ValueError as e:
            raise E.bad_request(f"couldn't get version/kind; json parse error: {e}") from None

    # ------------------------------------------------------------ watch
    def _chunk(self, obj: Any) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        """True once the client closed an idle watch (EOF on the socket), so
        abandoned watches do not hold a thread until their timeout."""
        import select
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _watch(self, route: Route, query: dict[str, str], started: float) -> int:
        fake = self.server.fake
        info, rt = route.info, route.rt
        assert rt is not None
        fsel = query.get("fieldSelector") or ""
        if route.watch_name:
            fsel = ",".join(x for x in (fsel, f"metadata.name={route.watch_name}") if x)
        try:
            tmo = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else fake.default_watch_timeout
        except ValueError:
            raise E.bad_request(f"timeoutSeconds: Invalid value: {query.get('timeoutSeconds')!r}") from None
        bookmarks = _bool(query.get("allowWatchBookmarks"), "allowWatchBookmarks")
        initial = _bool(query.get("sendInitialEvents"), "sendInitialEvents")
        watcher = open_watch(fake.registry, rt, info.namespace or None,
                             label_selector=query.get("labelSelector"), field_selector=fsel,
                             resource_version=query.get("resourceVersion"),
                             version=info.version, send_initial_events=initial)
        self._record(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.end_headers()

        def bookmark(extra_ann: dict | None = None) -> dict:
            meta: dict[str, Any] = {"resourceVersion": str(watcher.last), "creationTimestamp": None}
            if extra_ann:
                meta["annotations"] = extra_ann
            return {"type": "BOOKMARK",
                    "object": {"kind": rt.kind, "apiVersion": rt.api_version(info.version), "metadata": meta}}

        deadline = time.monotonic() + max(tmo, 0.0)
        next_bm = time.monotonic() + fake.bookmark_interval
        try:
            if initial and watcher.expired is None:
                for ev in watcher.poll(0):
                    self._chunk(ev)
                if bookmarks:
                    self._chunk(bookmark({"k8s.io/initial-events-end": "true"}))
            while not fake._stopping.is_set():
                now = time.monotonic()
                if now >= deadline:
                    break
                wait = min(deadline - now, 0.5)
                if bookmarks:
                    wait = max(0.0, min(wait, next_bm - now))
                try:
                    events = watcher.poll(wait)
                except ApiError as e:
                    self._chunk({"type": "ERROR", "object": e.status()})
                    break
                for ev in events:
                    self._chunk(ev)
                if not events and self._client_gone():
                    break
                if bookmarks and time.monotonic() >= next_bm:
                    self._chunk(bookmark())
                    next_bm = time.monotonic() + fake.bookmark_interval
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
        if fake._stopping.is_set():
            self.close_connection = True
        return 200

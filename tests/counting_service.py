"""A version that counts what it served, so a test can compare the gates' numbers with the service's own.

    python tests/counting_service.py --port 8001 --version v1 --count-dir DIR [--error-every 3]

GET /api/... answers 200 {"version"} with X-Version (every --error-every-th request: 500, also with the
header); each such request appends one byte to DIR/<version>.count ("." served ok, "x" served an error)
before the answer is written, with O_APPEND — the count survives any kill, and a request the client saw
is always counted. GET /healthz answers 200 and is not counted (the local backend's health checks).
"""

from __future__ import annotations

import argparse
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--count-dir", required=True)
    p.add_argument("--error-every", type=int, default=0)
    args = p.parse_args()
    fd = os.open(os.path.join(args.count_dir, f"{args.version}.count"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    lock = threading.Lock()
    served = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if not self.path.startswith("/api/"):
                self._reply(200, b"ok\n")
                return
            with lock:
                served[0] += 1
                error = args.error_every > 0 and served[0] % args.error_every == 0
                os.write(fd, b"x" if error else b".")
            self._reply(500 if error else 200, b'{"version": "%s"}' % args.version.encode())

        def _reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("X-Version", args.version)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    import signal

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()

"""A canary that is broken on purpose: health checks fine, /api/answer faulty (stdlib asyncio only).

    python tests/faulty_service.py --port 8002 --version v2 --fault hang

Faults (on /api/answer; GET /healthz always answers 200 "ok", as a liveness probe would see it):
    ok         200 {"version", "answer", "confidence"} with X-Version after --latency (a healthy version)
    hang       reads the request, never answers (the connection stays open)
    partial-hang  --hang-share of the /api/answer requests (0.3: 3 in every 10, spread evenly) are
               read and never answered; the others answer as ok
    reset      resets the connection (RST) as soon as the request is read
    garbage    200 with X-Version and a body that is not JSON
    raw        answers bytes that are not HTTP, then closes
    noheader   500 with a plain-text error page and no version header (a front proxy's error page)
    unlabelled a healthy answer (as ok) without the version header: the router adds it

SIGTERM/SIGINT: exit 0 at once (hung connections are dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import struct
import sys

FAULTS = ("ok", "hang", "partial-hang", "reset", "garbage", "raw", "noheader", "unlabelled")


class Hanger:
    """Which requests a partial hang leaves unanswered: exactly `share` of them, evenly spread
    (request n hangs when floor((n+1)*share) > floor(n*share)), so a test knows the count."""

    def __init__(self, share: float) -> None:
        self.share, self.n = share, 0

    def next(self) -> bool:
        n, self.n = self.n, self.n + 1
        return int((n + 1) * self.share) > int(n * self.share)


def response(status: str, body: bytes, headers: list[tuple[str, str]]) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, args: argparse.Namespace, hanger: Hanger) -> None:
    version = [("X-Version", args.version)]
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1] if len(lines[0].split(" ")) == 3 else "/"
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length" and value.strip().isdigit():
                    await reader.readexactly(int(value.strip()))
            if path.startswith("/healthz"):
                writer.write(response("200 OK", b"ok\n", [("Content-Type", "text/plain"), *version]))
                await writer.drain()
                continue
            if not path.startswith("/api/answer"):
                writer.write(response("404 Not Found", b"{}", [("Content-Type", "application/json"), *version]))
                await writer.drain()
                continue
            fault = args.fault
            if fault == "hang" or (fault == "partial-hang" and hanger.next()):
                await asyncio.Event().wait()  # forever: until the process is stopped
            if fault == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if fault == "raw":
                writer.write(b"\x16\x03\x01\x00\xa5 this is not HTTP at all \x00\xff\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            if args.latency > 0:
                await asyncio.sleep(args.latency / 1000.0)
            if fault == "garbage":
                writer.write(response("200 OK", b"<html><body>Oops, something went wrong</body></html>", [("Content-Type", "text/html"), *version]))
            elif fault == "noheader":
                writer.write(response("500 Internal Server Error", b"upstream error\n", [("Content-Type", "text/plain")]))
            else:
                body = json.dumps({"version": args.version, "answer": "42", "confidence": 0.9}).encode()
                labels = [] if fault == "unlabelled" else version
                writer.write(response("200 OK", body, [("Content-Type", "application/json"), *labels]))
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main_async(args: argparse.Namespace) -> None:
    hanger = Hanger(args.hang_share)
    server = await asyncio.start_server(lambda r, w: serve(r, w, args, hanger), "127.0.0.1", args.port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--fault", choices=FAULTS, default="ok")
    p.add_argument("--latency", type=float, default=5.0, help="milliseconds before an answer (ok, garbage, noheader)")
    p.add_argument("--hang-share", type=float, default=0.3, help="partial-hang: the share of requests never answered")
    args = p.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A target that outruns the load generator: one asyncio process on 127.0.0.1 answering every request at once.

bench_workers.py measures how Locust worker processes scale, so the service must not be the bottleneck:
Locust's HttpUser (python-requests) makes ~1.5-2k requests/s per core, this server answers well over ten
thousand on one (no parsing beyond finding the end of each head, one canned answer per request, keep-alive).
It alternates `X-Version: v1` / `v2` so the workers' recorders keep two per-version histograms, as a
canary-vs-stable stage does. `GET /count` answers how many requests it served (the bench checks the gate's
totals against it). Bounded: it exits after --seconds.

    python bench/fast_target.py --port 8123 [--seconds 600]
"""

from __future__ import annotations

import argparse
import asyncio

ANSWERS = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Version: " + v + b"\r\nContent-Type: text/plain\r\n\r\nok" for v in (b"v1", b"v2")]


class Served:
    n = 0


class Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, self.buf = self.buf[:end], self.buf[end + 4:]  # GETs only: no body follows the head
            if head.startswith(b"GET /count "):
                body = str(Served.n).encode()
                out.append(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                continue
            out.append(ANSWERS[Served.n & 1])
            Served.n += 1
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


async def main(port: int, seconds: float) -> None:
    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", port, backlog=1024)
    async with server:
        await asyncio.sleep(seconds)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=600)
    a = ap.parse_args()
    asyncio.run(main(a.port, a.seconds))

"""What does reading request heads line by line cost the router? (#12: bare-LF heads answered 400 at once)

    .venv/bin/python bench/bench_head_reader.py            # a few seconds

The router used to read a head with one `readuntil(b"\\r\\n\\r\\n")`, which never
returns for a bare-LF head (it waited for the 75 s idle timeout). It now takes
one readuntil when the whole head is already buffered (`_head_buffered`,
nearly always), else reads line by line, refusing a bare-LF line as soon as
it arrives (`_read_head`). The third figure is the line-by-line path alone
(a head split across reads). Both readers parse the same typical Locust request head (7 lines,
~250 bytes) from an already filled StreamReader, alternating, several rounds;
prints µs per head for each and the ratio. The CPU per proxied request is
~70 µs (bench_router.py), so the difference is read against that.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from rollout.backends.local.router import _head_buffered, _read_head

HEAD = (
    b"GET /api/answer?q=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: python-requests/2.32.3\r\n"
    b"Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\nX-Team: payments\r\n\r\n"
)
N = 20_000


async def one_round(mode: str) -> float:
    reader = asyncio.StreamReader(limit=64 * 1024)
    reader.feed_data(HEAD * N)
    t0 = time.perf_counter()
    if mode == "new":  # as Router._serve_client does it
        for _ in range(N):
            if _head_buffered(reader):
                await reader.readuntil(b"\r\n\r\n")
            else:
                await _read_head(reader)
    elif mode == "lines":
        for _ in range(N):
            await _read_head(reader)
    else:
        for _ in range(N):
            await reader.readuntil(b"\r\n\r\n")
    return (time.perf_counter() - t0) / N * 1e6


async def main() -> None:
    runs: dict[str, list[float]] = {"old": [], "new": [], "lines": []}
    for _ in range(7):
        for mode in runs:
            runs[mode].append(await one_round(mode))
    o, n, l = (statistics.median(runs[m]) for m in ("old", "new", "lines"))
    print(f"one readuntil (before):     {o:.2f} µs/head (median of 7 rounds of {N})")
    print(f"_read_head, head buffered:  {n:.2f} µs/head  ratio {n / o:.2f}x")
    print(f"_read_head, line by line:   {l:.2f} µs/head  ratio {l / o:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())

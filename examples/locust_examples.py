"""Run Locust's own example locustfiles under plain `locust --headless` and under `rollout gate`; print a table.

    python examples/locust_examples.py --examples DIR [--seconds 5] [--users 5] [--workers 0] [--json OUT]

The examples are not shipped with this project (nor in the locust wheel): DIR is a copy of the locust
repository's examples/ (or a subset of it); it defaults to $LOCUST_EXAMPLES, else an `examples/` directory beside
the installed locust package; without one the script says so and exits 0. Files that need external services
(grpc, mqtt, databases, web UI extensions, ...) are the caller's to leave out of DIR.

Each example is copied to a scratch directory with only its hosts changed: every `http(s)://host[:port]` literal
(127.0.0.1:8089, postman-echo.com, example.com, ...) becomes a local echo server on 127.0.0.1 started by this
script, and $API_HOST (multiple_hosts.py) points at it too -- so no request leaves the machine. The echo server
answers any method and path with 200 and a postman-echo-like JSON body ({"args", "data", "json", "url"}), except
paths containing "does_not_exist" (404), so examples that read a response still work.

Each example then runs for --seconds both ways, from the same copy, with the same users: plain
`locust --headless -u U -r U -t Ss --json-file` (a LoadTestShape ignores -t under plain Locust, so that run gets
Ctrl+C --seconds after its first request; Locust then writes its report) and `rollout gate -u U -t Ss --json` (a shape
ends it at -t or when the shape returns None). A row gives requests / failures each way and whether they behave
alike: neither crashed, both made requests or both made none (the gate then says so, exit 3), failure shares within
10 points plus three standard errors and, once both made
at least 20 requests, request counts within a factor of 2 (the two runs start users at slightly different
moments, and most examples wait seconds between tasks).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOST_LITERAL = re.compile(r"https?://[A-Za-z0-9.\-]+(?::\d+)?")


def examples_dir(given: str | None) -> Path | None:
    if given:
        return Path(given)
    if os.environ.get("LOCUST_EXAMPLES"):
        return Path(os.environ["LOCUST_EXAMPLES"])
    import importlib.util

    spec = importlib.util.find_spec("locust")
    if spec and spec.origin:
        for cand in (Path(spec.origin).parent / "examples", Path(spec.origin).parent.parent / "examples"):
            if cand.is_dir() and any(cand.glob("*.py")):
                return cand
    return None


class EchoHandler(BaseHTTPRequestHandler):
    """postman-echo-like: 200 with the query and body echoed as JSON; a path with `does_not_exist` is 404."""

    protocol_version = "HTTP/1.1"
    first_request_at: float | None = None  # monotonic time of the first request since the last reset

    def _answer(self) -> None:
        if EchoHandler.first_request_at is None:
            EchoHandler.first_request_at = time.monotonic()
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n).decode("utf-8", "replace") if n else ""
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        url = urlsplit(self.path)
        status = 404 if "does_not_exist" in url.path else 200
        body = json.dumps({"args": dict(parse_qsl(url.query)), "data": parsed if parsed is not None else raw, "json": parsed,
                           "url": self.path}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Version", "v1")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # a load run killed mid-request: not news
            super().handle_error(request, client_address)


def start_echo() -> tuple[ThreadingHTTPServer, str]:
    server = EchoServer(("127.0.0.1", 0), EchoHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def localize(src: Path, root: Path, work: Path, host: str) -> Path:
    """Copy the example into `work` (same relative path) with every URL host literal pointed at `host`."""
    dst = work / src.relative_to(root)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(HOST_LITERAL.sub(host, src.read_text(errors="replace")))
    return dst


def has_shape(lf: Path) -> bool:
    return "LoadTestShape" in lf.read_text(errors="replace")


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:140] if lines else "?"


def plain(lf: Path, host: str, seconds: int, users: int, work: Path, env: dict[str, str]) -> dict[str, Any]:
    out = work / "plain.json"
    cmd = [sys.executable, "-m", "locust", "-f", str(lf), "--headless", "--host", host, "-u", str(users), "-r", str(users),
           "-t", f"{seconds}s", "--json-file", str(out.with_suffix("")), "--loglevel", "WARNING", "--stop-timeout", "1"]
    EchoHandler.first_request_at = None
    # SIGINT back to its default in the child: started from a background job, it would inherit "ignore" and the
    # Ctrl+C below would do nothing
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stopped = False
    if has_shape(lf):
        # a shape ignores -t under plain locust (and SIGTERM before the shape ends kills it without a report):
        # interrupt it (Ctrl+C, which writes the report) --seconds after its first request
        deadline = time.monotonic() + seconds + 30
        while p.poll() is None and time.monotonic() < deadline:
            first = EchoHandler.first_request_at
            if first is not None and time.monotonic() >= first + seconds:
                break
            time.sleep(0.05)
        if p.poll() is None:
            stopped = True
            p.send_signal(signal.SIGINT)
    try:
        so, se = p.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        p.kill()
        so, se = p.communicate()
    res: dict[str, Any] = {"exit": p.returncode, "interrupted": stopped}
    try:
        rows = json.loads(out.read_text())
        res.update(requests=sum(x["num_requests"] for x in rows), failures=sum(x["num_failures"] for x in rows),
                   endpoints=sorted({f"{x['method']} {x['name']}" for x in rows}))
    except (OSError, ValueError, KeyError, TypeError):
        res.update(requests=0, failures=0, endpoints=[], error=last_line(se))
    if "Traceback" in se and "error" not in res and not stopped:  # a Ctrl+C'd run logs its users' KeyboardInterrupt
        res["error"] = last_line(se)
    return res


def gate(lf: Path, host: str, seconds: int, users: int, workers: int, work: Path, env: dict[str, str]) -> dict[str, Any]:
    out = work / "gate.json"
    cmd = [sys.executable, "-m", "rollout", "gate", "--quiet", "--host", host, "-f", str(lf), "-u", str(users), "-t", f"{seconds}s",
           "--gate", "errors<100%", "--min-requests", "1", "--workers", str(workers), "--json", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, cwd=work,
                       env={**env, "PYTHONPATH": str(ROOT), "GITHUB_STEP_SUMMARY": ""})
    res: dict[str, Any] = {"exit": r.returncode}
    try:
        st = json.loads(out.read_text())["stages"][0]["stats"]
        res.update(requests=st["all"]["requests"], failures=st["all"]["failures"],
                   endpoints=sorted({f"{e['method']} {e['name']}" for e in (st.get("endpoints") or {}).get("endpoints") or []}))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        res.update(requests=0, failures=0, endpoints=[], error=last_line(r.stderr or r.stdout))
    if r.returncode not in (0, 1) and "error" not in res:
        res["error"] = last_line(r.stderr or r.stdout)
    return res


def made_none(g: dict[str, Any]) -> bool:
    """The gate's plain answer to a locustfile that made no requests (#9): exit 3 with that message."""
    return g["exit"] == 3 and "made no requests" in str(g.get("error", ""))


def alike(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, str]:
    """Whether the gate run `b` behaved as the plain run `a`, and if not, why.

    Failure shares are compared with a 10-point margin plus three standard errors of the difference, so a
    handful of requests with a random task mix (a third of basic.py's tasks are 404s) is not called a difference.
    """
    ra, rb = int(a["requests"]), int(b["requests"])
    if ra == 0 and rb == 0:
        crashed = a["exit"] not in (0, 1) and not a.get("interrupted")
        if made_none(b) or b["exit"] in (0, 1):
            return True, "both made no requests" + (f" (plain locust exit {a['exit']})" if crashed else "")
        return False, f"both made no requests, rollout gate exit {b['exit']}"
    if a["exit"] not in (0, 1) and not a.get("interrupted"):
        return False, f"plain locust exit {a['exit']}"
    if b["exit"] not in (0, 1):
        return False, f"rollout gate exit {b['exit']}"
    if (ra == 0) != (rb == 0):
        return False, "only one made requests"
    fa, fb = int(a["failures"]) / ra, int(b["failures"]) / rb
    pooled = (int(a["failures"]) + int(b["failures"])) / (ra + rb)
    margin = 0.10 + 3 * (pooled * (1 - pooled) * (1 / ra + 1 / rb)) ** 0.5
    if abs(fa - fb) > margin:
        return False, f"failure share {fa:.0%} vs {fb:.0%}"
    if min(ra, rb) >= 20 and not 0.5 <= rb / ra <= 2.0:
        return False, f"requests x{rb / ra:.2f}"
    return True, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--users", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0, help="rollout gate --workers (0: load in the gate's own process)")
    ap.add_argument("--json", help="write the rows (results only) to this file")
    a = ap.parse_args()
    d = examples_dir(a.examples)
    if d is None or not d.is_dir():
        print("skipped: the installed locust ships no examples/ (give --examples DIR, a copy of locust's examples/)")
        return 0
    from importlib.metadata import version

    locust_version = version("locust")
    server, host = start_echo()
    env = {**os.environ, "API_HOST": host, "PYTHONUNBUFFERED": "1"}
    rows: list[dict[str, Any]] = []
    print(f"locust {locust_version}, {a.seconds} s, {a.users} users, rollout gate --workers {a.workers}")
    print("| example | locust --headless: requests / failures | rollout gate: requests / failures | alike |")
    print("|---|---:|---:|---|")
    try:
        for src in sorted(d.rglob("*.py")):
            if src.name.startswith("_") or "class " not in src.read_text(errors="replace"):
                continue
            w = Path(tempfile.mkdtemp(prefix="lx-"))
            try:
                lf = localize(src, d, w, host)
                t0 = time.monotonic()
                p = plain(lf, host, a.seconds, a.users, w, env)
                g = gate(lf, host, a.seconds, a.users, a.workers, w, env)
            finally:
                shutil.rmtree(w, ignore_errors=True)
            ok, why = alike(p, g)
            notes = "; ".join(x for x in (why, f"plain: {p['error']}" if p.get("error") else "",
                                          f"gate: {g['error']}" if g.get("error") else "") if x)
            rows.append({"example": str(src.relative_to(d)), "plain": p, "gate": g, "alike": ok, "note": notes,
                         "seconds_both": round(time.monotonic() - t0, 1)})
            print(f"| {src.relative_to(d)} | {p['requests']:,} / {p['failures']:,} | {g['requests']:,} / {g['failures']:,} | "
                  f"{'yes' if ok else 'no'}{f' ({notes})' if notes else ''} |", flush=True)
    finally:
        server.shutdown()
    if a.json:
        # one file for every --workers value: a run replaces only the entry of its own
        out = Path(a.json)
        try:
            runs = json.loads(out.read_text()).get("runs", {})
        except (OSError, ValueError, AttributeError):
            runs = {}
        runs[f"workers={a.workers}"] = {"locust": locust_version, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "seconds": a.seconds, "users": a.users, "workers": a.workers,
                                        "command": " ".join(["python", "examples/locust_examples.py", *sys.argv[1:]]),
                                        "alike": sum(r["alike"] for r in rows), "examples": len(rows), "rows": rows}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"note": "results only: Locust's example files are not in this repository", "runs": runs}, indent=2))
    print(f"{sum(r['alike'] for r in rows)} of {len(rows)} behave alike")
    return 0


if __name__ == "__main__":
    sys.exit(main())

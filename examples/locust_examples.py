"""Run Locust's own example locustfiles under plain `locust --headless` and under `rollout gate`; print a table.

    python examples/locust_examples.py [--examples DIR] [--seconds 5] [--users 5]

DIR defaults to $LOCUST_EXAMPLES, else an `examples/` directory shipped beside the installed locust package.
The installed locust 2.47.0 wheel ships none: the script then says so and exits 0 (point --examples at a
checkout of the locust repository's examples/ to run them). Each example is pointed at the sample service
(examples/service.py) on 127.0.0.1 — only the host changes — and runs for a few seconds both ways (a shape
ends it sooner); a row says how many requests and failures each made, and whether they behave alike: both
made requests or both made none, failure shares within 10 points, and neither crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


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


def plain(lf: Path, host: str, seconds: int, users: int, work: Path) -> dict[str, object]:
    r = subprocess.run([sys.executable, "-m", "locust", "-f", str(lf), "--headless", "--host", host, "-u", str(users), "-r", str(users),
                        "-t", f"{seconds}s", "--json", "--only-summary", "--loglevel", "ERROR"], capture_output=True, text=True, timeout=seconds + 60, cwd=work)
    try:
        rows = json.loads(r.stdout)
        return {"exit": r.returncode, "requests": sum(x["num_requests"] for x in rows), "failures": sum(x["num_failures"] for x in rows)}
    except (ValueError, KeyError, TypeError):
        return {"exit": r.returncode, "requests": 0, "failures": 0, "error": (r.stderr.strip().splitlines() or ["?"])[-1][:120]}


def gate(lf: Path, host: str, seconds: int, users: int, work: Path) -> dict[str, object]:
    out = work / "r.json"
    r = subprocess.run([sys.executable, "-m", "rollout", "gate", "--quiet", "--host", host, "-f", str(lf), "-u", str(users), "-t", f"{seconds}s",
                        "--gate", "errors<100%", "--min-requests", "1", "--json", str(out)], capture_output=True, text=True, timeout=seconds + 90,
                       cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT), "GITHUB_STEP_SUMMARY": ""})
    try:
        stats = json.loads(out.read_text())["stages"][0]["stats"]["all"]
        return {"exit": r.returncode, "requests": stats["requests"], "failures": stats["failures"]}
    except (OSError, ValueError, KeyError, IndexError):
        return {"exit": r.returncode, "requests": 0, "failures": 0, "error": (r.stderr.strip().splitlines() or ["?"])[-1][:120]}


def alike(a: dict[str, object], b: dict[str, object]) -> bool:
    ra, rb = int(a["requests"]), int(b["requests"])  # type: ignore[call-overload]
    if (ra == 0) != (rb == 0):
        return False
    if ra == 0:
        return True
    return abs(int(a["failures"]) / ra - int(b["failures"]) / rb) <= 0.10  # type: ignore[call-overload]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--users", type=int, default=5)
    a = ap.parse_args()
    d = examples_dir(a.examples)
    if d is None:
        print("skipped: the installed locust ships no examples/ (give --examples DIR, a checkout of locust's examples/)")
        return 0
    from bench.common import start_service

    proc, port = start_service()
    host = f"http://127.0.0.1:{port}"
    print("| example | locust --headless: requests / failures | rollout gate: requests / failures | alike |")
    print("|---|---:|---:|---|")
    try:
        for lf in sorted(d.rglob("*.py")):
            if lf.name.startswith("_") or "class " not in lf.read_text(errors="replace"):
                continue
            with tempfile.TemporaryDirectory() as w:
                p, g = plain(lf, host, a.seconds, a.users, Path(w)), gate(lf, host, a.seconds, a.users, Path(w))
            note = f" ({g.get('error') or p.get('error')})" if g.get("error") or p.get("error") else ""
            print(f"| {lf.relative_to(d)} | {p['requests']:,} / {p['failures']:,} | {g['requests']:,} / {g['failures']:,} | "
                  f"{'yes' if alike(p, g) else 'no'}{note} |", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

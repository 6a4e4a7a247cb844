"""A real Prometheus server for tests (Debian's `prometheus`), on 127.0.0.1 with a 1 s scrape interval.

Targets come from a file_sd JSON file that the test writes when it knows the ports (the local backend
picks free ports at run time); Prometheus watches the file and picks changes up within about a second.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import require_tool
from tests.helpers import wait_until_up


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, url: str, targets: Path) -> None:
        self.url = url
        self.targets = targets

    def set_targets(self, groups: list[tuple[str, dict[str, str]]]) -> None:
        """[(host:port, labels)] → the file_sd file (written atomically: Prometheus may read it any time)."""
        doc = [{"targets": [addr], "labels": labels} for addr, labels in groups]
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.targets)

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        r.raise_for_status()
        return list(r.json()["data"]["result"])

    def wait_for(self, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.query(promql)
            if got or time.monotonic() > deadline:
                return got
            time.sleep(0.5)


@contextmanager
def prometheus(tmp: Path, extra_scrape: list[dict[str, Any]] | None = None, targets_file: Path | None = None) -> Iterator[Prometheus]:
    """`targets_file`: a file_sd file someone else writes (e.g. the local backend's prometheus-targets.json)."""
    binary = require_tool("prometheus", "prometheus")
    targets = targets_file or tmp / "targets.json"
    if targets_file is None:
        targets.write_text("[]")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "services", "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}]},
                           *(extra_scrape or [])],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config))
    port = _free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(lambda: httpx.get(f"{url}/-/ready", timeout=1).status_code == 200, proc, tmp / "prometheus.log", "prometheus", 60)
        yield Prometheus(url, targets)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

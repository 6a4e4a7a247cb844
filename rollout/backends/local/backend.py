"""The local backend: start versions, drive the router, promote and roll back.

Runtime facts live in `state.backend`:
    {"stable": ProcRecord, "canary": ProcRecord | None, "router": RouterRecord}
Every change outside this process (a process started or stopped, the router
reconfigured) is followed by `checkpoint()`, so the saved state always names
what exists; `ensure` brings back whatever the state says should be running.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from rollout.backends.local import processes as procs
from rollout.backends.local.processes import ProcRecord
from rollout.backends.local.router_client import RouterUnreachable, get_config, put_config
from rollout.engine.state import Split, State
from rollout.errors import BackendError
from rollout.plan.loader import LoadedPlan
from rollout.plan.model import LocalTarget

ROUTER_READY_TIMEOUT = 15.0


class LocalBackend:
    name = "local"

    def __init__(self, loaded: LoadedPlan, state_dir: Path) -> None:
        assert isinstance(loaded.plan.target, LocalTarget)
        self.loaded = loaded
        self.target: LocalTarget = loaded.plan.target
        self.dir = state_dir
        self.checkpoint: Callable[[], None] = lambda: None

    # -- records -----------------------------------------------------------

    @staticmethod
    def _rec(state: State, role: str) -> ProcRecord | None:
        return ProcRecord.from_dict(state.backend.get(role))

    def _set(self, state: State, role: str, rec: ProcRecord | None) -> None:
        state.backend[role] = rec.as_dict() if rec else None
        self.checkpoint()
        self._write_scrape_targets(state)

    def _write_scrape_targets(self, state: State) -> None:
        """`prometheus-targets.json` in the state directory, in Prometheus' file_sd format: every running version
        with labels version and role, so a Prometheus (file_sd_configs) scrapes exactly what runs, ports and all."""
        groups = []
        for role in ("stable", "canary"):
            rec = self._rec(state, role)
            if rec is not None:
                groups.append({"targets": [f"127.0.0.1:{rec.port}"], "labels": {"version": rec.version, "role": role, "plan": self.loaded.plan.name}})
        path = self.dir / "prometheus-targets.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(groups))
            tmp.replace(path)
        except OSError:
            pass  # a convenience for scrapers: never a reason to fail a rollout

    # -- versions ----------------------------------------------------------

    def _start_version(self, version: str) -> ProcRecord:
        spec = self.target.versions.get(version)
        if spec is None:
            raise BackendError(
                f"version {version} is not in the plan's target.versions ({', '.join(self.target.versions)})",
                "add it to the plan or name one of those",
            )
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between our probe and the bind
            port = procs.free_port()
            argv = procs.command_argv(spec.command, port, version)
            log = self.dir / "logs" / f"{version}-{port}.log"
            proc = procs.spawn(argv, self.loaded.base_dir, log, {**spec.env, "PORT": str(port), "ROLLOUT_VERSION": version})
            rec = ProcRecord(pid=proc.pid, start_ticks=procs.start_ticks(proc.pid), port=port, version=version, command=spec.command, log=str(log))
            ok, last_error = self._wait_healthy(rec, proc, spec.health, spec.startup_timeout)
            if ok:
                return rec
            procs.stop(rec)
        raise BackendError(f"version {version} did not become healthy: {last_error}", f"check its command and log ({self.dir / 'logs'})")

    @staticmethod
    def _wait_healthy(rec: ProcRecord, proc: Any, path: str, timeout: float) -> tuple[bool, str]:
        url = f"http://127.0.0.1:{rec.port}{path}"
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                code = proc.poll()
                if code is not None:
                    return False, f"it exited with code {code} ({procs.tail(rec.log) or 'no output'})"
                try:
                    r = client.get(url)
                    if 200 <= r.status_code < 300:
                        return True, ""
                    last = f"GET {path} answered {r.status_code}"
                except httpx.HTTPError as exc:
                    last = f"GET {url}: {type(exc).__name__}"
                time.sleep(0.1)
        return False, f"no healthy answer within {timeout:g}s (last: {last})"

    # -- router ------------------------------------------------------------

    def _router(self, state: State) -> dict[str, Any] | None:
        r = state.backend.get("router")
        if not r:
            return None
        rec = ProcRecord.from_dict(r["proc"])
        return r if procs.is_alive(rec) else None

    def _router_config(self, state: State, split: Split) -> dict[str, Any]:
        stable, canary = self._rec(state, "stable"), self._rec(state, "canary")
        assert stable is not None
        return {
            "stable": {"version": stable.version, "port": stable.port},
            "canary": {"version": canary.version, "port": canary.port} if canary else None,
            "weight": split.weight if canary else 0.0,
            "cohort": {"header": split.cohort[0], "value": split.cohort[1]} if (split.cohort and canary) else None,
            "version_header": self.loaded.plan.load.version_header,
        }

    def _start_router(self, state: State, split: Split) -> None:
        old = state.backend.get("router") or {}
        port = int(old.get("port") or self.target.port or 0)
        config_path = self.dir / "router.json"
        ready = self.dir / "router.ready"
        ready.unlink(missing_ok=True)
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(self._router_config(state, split)))
        argv = [sys.executable, "-m", "rollout.backends.local.router", "--port", str(port), "--admin-port", "0",
                "--config", str(config_path), "--ready-file", str(ready)]
        log = self.dir / "logs" / "router.log"
        proc = procs.spawn(argv, self.dir, log, {})
        rec = ProcRecord(pid=proc.pid, start_ticks=procs.start_ticks(proc.pid), port=port, version="router", command=" ".join(argv), log=str(log))
        deadline = time.monotonic() + ROUTER_READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                hint = f"port {port} may be in use by another program; free it or change target.port" if port else "see the router log"
                raise BackendError(f"the local router exited at start ({procs.tail(str(log)) or 'no output'})", hint)
            try:
                info = json.loads(ready.read_text())
                if info.get("pid") == proc.pid:
                    state.backend["router"] = {"proc": {**rec.as_dict(), "port": info["port"]}, "port": info["port"], "admin_port": info["admin_port"]}
                    self.checkpoint()
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        procs.stop(rec)
        raise BackendError(f"the local router did not start within {ROUTER_READY_TIMEOUT:g}s", f"see {log}")

    # -- Backend protocol --------------------------------------------------

    def ensure(self, state: State, canary: bool = True) -> None:
        stable = self._rec(state, "stable")
        if stable is not None and stable.version != state.stable_version:
            # an interrupted promotion swapped the records: that process is not the known-good version
            if self._rec(state, "canary") is None:
                self._set(state, "canary", stable)
            else:
                procs.stop(stable)
            self._set(state, "stable", None)
        if not procs.is_alive(self._rec(state, "stable")):
            self._set(state, "stable", self._start_version(state.stable_version))
            router = self._router(state)
            if router is not None:  # point the router at the new stable process
                self._put(state, state.split)
        current = self._rec(state, "canary")
        if current is not None and not procs.is_alive(current):
            if canary and state.phase.active and state.canary_version:
                self._set(state, "canary", self._start_version(state.canary_version))
            else:
                self._set(state, "canary", None)
        if self._router(state) is None:
            self._start_router(state, state.split)
        else:
            cfg = self._read(state)
            want = self._router_config(state, state.split)
            if any(cfg.get(k) != want[k] for k in ("stable", "canary", "weight", "cohort")):
                self._put(state, state.split)

    def deploy_canary(self, state: State, version: str) -> None:
        current = self._rec(state, "canary")
        if current is not None and current.version == version and procs.is_alive(current):
            return
        if current is not None:
            self._put_without_canary(state)
            procs.stop(current)
            self._set(state, "canary", None)
        self._set(state, "canary", self._start_version(version))

    def apply_split(self, state: State, split: Split) -> None:
        if self._router(state) is None:
            self._start_router(state, split)
            return
        self._put(state, split)

    def stop_canary(self, state: State) -> None:
        rec = self._rec(state, "canary")
        if rec is None:
            return
        self._put_without_canary(state)
        procs.stop(rec)
        self._set(state, "canary", None)

    def promote(self, state: State) -> None:
        canary = self._rec(state, "canary")
        if canary is None:
            stable = self._rec(state, "stable")
            if stable is not None and stable.version == state.canary_version and procs.is_alive(stable):
                return  # already promoted (a killed command is finishing)
            raise BackendError(f"cannot promote: the canary {state.canary_version} is not running", "run `rollout revert`, then roll it out again")
        if not procs.is_alive(canary):
            raise BackendError(f"cannot promote: the canary {canary.version} (pid {canary.pid}) has exited ({procs.tail(canary.log)})",
                               "run `rollout revert`, then roll it out again")
        old = self._rec(state, "stable")
        state.backend["stable"], state.backend["canary"] = canary.as_dict(), None
        state.backend["retired"] = old.as_dict() if old else None
        self.checkpoint()
        self._put(state, Split())  # the former canary now serves everyone, in one router update
        procs.stop(old)
        state.backend["retired"] = None
        self.checkpoint()

    def entry_url(self, state: State) -> str:
        router = state.backend.get("router")
        if not router:
            raise BackendError("the local router is not running", "run `rollout revert` to bring the stable version back")
        return f"http://127.0.0.1:{router['port']}"

    def canary_url(self, state: State) -> str:
        rec = self._rec(state, "canary")
        if rec is None:
            raise BackendError("the canary is not running", "run `rollout advance` to deploy it")
        return f"http://127.0.0.1:{rec.port}"

    def inspect(self, state: State) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for role in ("stable", "canary"):
            rec = self._rec(state, role)
            out[role] = None if rec is None else {"version": rec.version, "pid": rec.pid, "port": rec.port, "alive": procs.is_alive(rec)}
        router = state.backend.get("router")
        if router:
            alive = self._router(state) is not None
            info: dict[str, Any] = {"port": router["port"], "pid": router["proc"]["pid"], "alive": alive}
            if alive:
                try:
                    info["live"] = get_config(router["admin_port"], timeout=2.0)
                except RouterUnreachable as exc:
                    info["error"] = str(exc)
            out["router"] = info
        else:
            out["router"] = None
        return out

    def down(self, state: State) -> None:
        router = state.backend.get("router")
        if router:
            procs.stop(ProcRecord.from_dict(router["proc"]))
            state.backend["router"] = None
            self.checkpoint()
        for role in ("canary", "retired", "stable"):
            rec = self._rec(state, role)
            if rec is not None:
                procs.stop(rec)
                self._set(state, role, None)

    # -- router I/O --------------------------------------------------------

    def _read(self, state: State) -> dict[str, Any]:
        router = state.backend["router"]
        try:
            return get_config(router["admin_port"], timeout=5.0)
        except RouterUnreachable as exc:
            raise BackendError(f"the local router (port {router['port']}) does not answer: {exc}", "run `rollout revert` to restart it") from None

    def _put(self, state: State, split: Split) -> None:
        router = state.backend["router"]
        want = self._router_config(state, split)
        try:
            put_config(router["admin_port"], want, timeout=5.0)
        except RouterUnreachable as exc:
            raise BackendError(f"the local router (port {router['port']}) did not take the new split: {exc}", "run `rollout revert` to restart it") from None
        got = self._read(state)  # read back: effective means the router says so
        if any(got.get(k) != want[k] for k in ("stable", "canary", "weight", "cohort")):
            raise BackendError(f"the local router reports {got.get('weight')} to canary after being set to {want['weight']}", "run `rollout revert`")

    def _put_without_canary(self, state: State) -> None:
        if self._router(state) is None:
            return
        saved = state.backend.get("canary")
        state.backend["canary"] = None
        try:
            self._put(state, Split())
        finally:
            state.backend["canary"] = saved

"""The local backend: start versions, drive the router, promote and roll back.

Runtime facts live in `state.backend`:
    {"stable": ProcRecord, "canary": ProcRecord | None, "retired": ProcRecord | None,
     "router": {"proc": ProcRecord, "port": int, "admin_port": int | None}}
Every change outside this process (a process started or stopped, the router
reconfigured) is followed by `checkpoint()`, so the saved state always names
what exists; `ensure` brings back whatever the state says should be running.

A process is recorded and checkpointed right after it is spawned, *before* it
is waited on (spawn → record + save → wait for health), and each carries the
marker ``<plan-id>/<name>`` (see processes.py), so a command killed at any
instant leaves nothing unfound: `ensure` (run by every command that acts,
revert included) stops any marked process the state does not name, and
`down` stops every marked process of the plan.

The router's admin API takes a random token (`router.token` in the state
directory, owner-only) on every request; see router.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from rollout.backends.local import processes as procs
from rollout.backends.local.processes import ProcRecord
from rollout.backends.local.router_client import AdminEndpoint, RouterUnreachable, get_config, put_config
from rollout.engine.state import Split, State
from rollout.errors import BackendError
from rollout.gates.liveness import CanaryProbe
from rollout.plan.loader import LoadedPlan
from rollout.plan.model import LocalTarget
from rollout.testing.killpoints import kill_point

ROUTER_READY_TIMEOUT = 15.0


class LocalBackend:
    name = "local"

    def __init__(self, loaded: LoadedPlan, state_dir: Path) -> None:
        assert isinstance(loaded.plan.target, LocalTarget)
        self.loaded = loaded
        self.target: LocalTarget = loaded.plan.target
        self.dir = state_dir
        self.checkpoint: Callable[[], None] = lambda: None
        self.marker_prefix = plan_marker(loaded.plan.name, state_dir)

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

    def _known_pids(self, state: State) -> set[int]:
        """The recorded processes that really run (pid, start time and marker checked)."""
        recs = [self._rec(state, role) for role in ("stable", "canary", "retired")]
        router = state.backend.get("router")
        if router and router.get("proc"):
            recs.append(ProcRecord.from_dict(router["proc"]))
        return {rec.pid for rec in recs if rec is not None and procs.is_alive(rec)}

    def orphans(self, state: State | None) -> list[dict[str, Any]]:
        """Processes carrying this plan's marker that the state does not record (left by a crash between a spawn
        and its checkpoint, or by a lost state file): pid, role (from the marker), command, start time.
        `rollout down` stops them (backend.down ends with `stop_marked`)."""
        keep = self._known_pids(state) if state is not None else set()
        out = []
        for pid, ticks, marker in procs.unrecorded(self.marker_prefix, keep):
            out.append({"pid": pid, "role": marker[len(self.marker_prefix):], "command": procs.command_line(pid),
                        "started_at": procs.started_at(ticks)})
        return out

    def _stop_strays(self, state: State) -> None:
        """Stop this plan's marked processes the state does not name (a command killed between a
        spawn and its checkpoint, or a record lost with a state file)."""
        procs.stop_marked(self.marker_prefix, keep=self._known_pids(state))

    # -- versions ----------------------------------------------------------

    def _start_version(self, state: State, role: str, version: str) -> ProcRecord:
        """Start `version` as `role`: recorded (and saved) before it is waited on; stopped and
        unrecorded if it is not healthy within the version's startup_timeout (one deadline in all)."""
        spec = self.target.versions.get(version)
        if spec is None:
            raise BackendError(
                f"version {version} is not in the plan's target.versions ({', '.join(self.target.versions)})",
                "add it to the plan or name one of those",
            )
        deadline = time.monotonic() + spec.startup_timeout
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between our probe and the bind: retry an early exit
            port = procs.free_port()
            argv = procs.command_argv(spec.command, port, version)
            log = self.dir / "logs" / f"{version}-{port}.log"
            marker = f"{self.marker_prefix}{role}-{version}"
            proc = procs.spawn(argv, self.loaded.base_dir, log, {**spec.env, "PORT": str(port), "ROLLOUT_VERSION": version}, marker)
            kill_point(f"{role}-spawned")
            rec = procs.record(proc, port, version, spec.command, log, marker)
            self._set(state, role, rec)
            kill_point(f"{role}-recorded")
            ok, last_error, exited = self._wait_healthy(rec, proc, spec.health, deadline, spec.startup_timeout)
            if ok:
                return rec
            procs.stop(rec)
            proc.poll()
            self._set(state, role, None)
            if not exited or time.monotonic() >= deadline:
                break
        raise BackendError(f"version {version} did not become healthy: {last_error}", f"check its command and log ({self.dir / 'logs'})")

    @staticmethod
    def _wait_healthy(rec: ProcRecord, proc: Any, path: str, deadline: float, timeout: float) -> tuple[bool, str, bool]:
        """(healthy, why not, it exited) — polling until the monotonic `deadline`."""
        url = f"http://127.0.0.1:{rec.port}{path}"
        last = "no answer"
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                code = proc.poll()
                if code is not None:
                    return False, f"it exited with code {code} ({procs.tail(rec.log) or 'no output'})", True
                try:
                    client.timeout = httpx.Timeout(max(0.05, min(2.0, deadline - time.monotonic())))
                    r = client.get(url)
                    if 200 <= r.status_code < 300:
                        return True, "", False
                    last = f"GET {path} answered {r.status_code}"
                except httpx.HTTPError as exc:
                    last = f"GET {url}: {type(exc).__name__}"
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return False, f"no healthy answer within the startup_timeout of {timeout:g}s (last: {last})", False

    # -- router ------------------------------------------------------------

    def _router(self, state: State) -> dict[str, Any] | None:
        """The router record when that router runs and was ready (its admin port known)."""
        r = state.backend.get("router")
        if not r or not r.get("admin_port"):
            return None
        rec = ProcRecord.from_dict(r["proc"])
        return r if procs.is_alive(rec) else None

    def _token(self) -> str:
        """The admin API's token: random, in an owner-only file of the state directory (made once)."""
        path = self.dir / "router.token"
        try:
            token = path.read_text(encoding="ascii").strip()
            if len(token) >= 32:
                return token
        except (OSError, UnicodeDecodeError):
            pass
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        tmp = self.dir / f"router.token.tmp.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
        return token

    def _admin(self, router: dict[str, Any]) -> AdminEndpoint:
        return AdminEndpoint(int(router["admin_port"]), self._token())

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
        if old.get("proc"):  # a router that never became ready (its starter was killed): replace it
            procs.stop(ProcRecord.from_dict(old["proc"]))
        config_path = self.dir / "router.json"
        ready = self.dir / "router.ready"
        ready.unlink(missing_ok=True)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        token_file = self.dir / "router.token"
        self._token()
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(self._router_config(state, split)))
        argv = [sys.executable, "-m", "rollout.backends.local.router", "--port", str(port), "--admin-port", "0",
                "--canary-port", "0", "--config", str(config_path), "--ready-file", str(ready), "--token-file", str(token_file)]
        log = self.dir / "logs" / "router.log"
        marker = f"{self.marker_prefix}router"
        proc = procs.spawn(argv, self.dir, log, {}, marker)
        kill_point("router-spawned")
        rec = procs.record(proc, port, "router", " ".join(argv), log, marker)
        state.backend["router"] = {"proc": rec.as_dict(), "port": port, "admin_port": None}
        self.checkpoint()  # recorded before it is waited on
        kill_point("router-recorded")
        deadline = time.monotonic() + ROUTER_READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                state.backend["router"] = None
                self.checkpoint()
                hint = f"port {port} may be in use by another program; free it or change target.port" if port else "see the router log"
                raise BackendError(f"the local router exited at start ({procs.tail(str(log)) or 'no output'})", hint)
            try:
                info = json.loads(ready.read_text())
                if info.get("pid") == proc.pid:
                    state.backend["router"] = {"proc": {**rec.as_dict(), "port": info["port"]}, "port": info["port"], "admin_port": info["admin_port"],
                                               "canary_port": info.get("canary_port") or None}
                    self.checkpoint()
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        procs.stop(rec)
        state.backend["router"] = None
        self.checkpoint()
        raise BackendError(f"the local router did not start within {ROUTER_READY_TIMEOUT:g}s", f"see {log}")

    # -- Backend protocol --------------------------------------------------

    def ensure(self, state: State, canary: bool = True) -> None:
        self._stop_strays(state)
        stable = self._rec(state, "stable")
        retired = self._rec(state, "retired")
        if stable is not None and stable.version != state.stable_version:
            # an interrupted promotion swapped the records: that process is not the known-good version
            if self._rec(state, "canary") is None:
                self._set(state, "canary", stable)
            else:
                procs.stop(stable)
            self._set(state, "stable", None)
        if retired is not None:
            # a promotion killed before it stopped the old stable: bring it back if it is the
            # known-good version (a revert of that promotion), otherwise finish stopping it
            if self._rec(state, "stable") is None and retired.version == state.stable_version and procs.is_alive(retired):
                state.backend["stable"] = retired.as_dict()
            else:
                procs.stop(retired)
            self._set(state, "retired", None)
        if not procs.is_alive(self._rec(state, "stable")):
            old = self._rec(state, "stable")
            if old is not None:  # recorded but not running (or not ours): forget it before starting anew
                self._set(state, "stable", None)
            self._start_version(state, "stable", state.stable_version)
            router = self._router(state)
            if router is not None:  # point the router at the new stable process
                self._put(state, state.split)
        current = self._rec(state, "canary")
        if current is not None and not procs.is_alive(current):
            if canary and state.phase.active and state.canary_version:
                self._set(state, "canary", None)
                self._start_version(state, "canary", state.canary_version)
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
        self._start_version(state, "canary", version)
        kill_point("canary-healthy")
        if self._router(state) is not None:  # the router's canary-only listener needs it; the split is unchanged
            self._put(state, state.split)

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
                retired = self._rec(state, "retired")
                if retired is not None:  # killed before the old stable was stopped
                    procs.stop(retired)
                    self._set(state, "retired", None)
                return  # already promoted (a killed command is finishing)
            raise BackendError(f"cannot promote: the canary {state.canary_version} is not running", "run `rollout revert`, then roll it out again")
        if not procs.is_alive(canary):
            raise BackendError(f"cannot promote: the canary {canary.version} (pid {canary.pid}) has exited ({procs.tail(canary.log)})",
                               "run `rollout revert`, then roll it out again")
        old = self._rec(state, "stable")
        state.backend["stable"], state.backend["canary"] = canary.as_dict(), None
        state.backend["retired"] = old.as_dict() if old else None
        self.checkpoint()
        kill_point("promote-swapped")
        self._put(state, Split())  # the former canary now serves everyone, in one router update
        kill_point("promote-routed")
        procs.stop(old)
        state.backend["retired"] = None
        self.checkpoint()

    def entry_url(self, state: State) -> str:
        router = state.backend.get("router")
        if not router:
            raise BackendError("the local router is not running", "run `rollout revert` to bring the stable version back")
        return f"http://127.0.0.1:{router['port']}"

    def canary_url(self, state: State) -> str:
        """The router's canary-only listener: load for the canary alone is counted per version there too
        (refused, reset, hung requests); the process's own port for a router started without one."""
        rec = self._rec(state, "canary")
        if rec is None:
            raise BackendError("the canary is not running", "run `rollout advance` to deploy it")
        router = state.backend.get("router") or {}
        if router.get("canary_port") and self._router(state) is not None:
            return f"http://127.0.0.1:{router['canary_port']}"
        return f"http://127.0.0.1:{rec.port}"

    def canary_probe(self, state: State) -> CanaryProbe | None:
        """Fail closed, every tick: the canary process by pid and start time, and the router's per-version counters."""
        version = state.canary_version
        rec = self._rec(state, "canary")
        down = None
        if rec is None:
            if version:
                down = "no canary process is recorded"
        elif not procs.is_alive(rec):
            down = procs.exit_description(rec)
        counters = None
        stuck_after = None
        router = state.backend.get("router")
        if router:
            try:
                got = get_config(self._admin(router), timeout=2.0)
            except RouterUnreachable:
                got = {}  # the router's own failure is not the canary's: `ensure` and the rollback handle it
            counters = got.get("versions")
            after = (got.get("router") or {}).get("stuck_after_s")
            stuck_after = float(after) if isinstance(after, int | float) and after > 0 else None
        return CanaryProbe(version, down, counters if isinstance(counters, dict) else None, stuck_after)

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
                    info["live"] = get_config(self._admin(router), timeout=2.0)
                except (RouterUnreachable, OSError) as exc:
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
        procs.stop_marked(self.marker_prefix)  # whatever else carries this plan's marker

    def down_by_marker(self) -> list[int]:
        """`rollout down --force` without a usable state: stop every process marked as this plan's."""
        return procs.stop_marked(self.marker_prefix)

    # -- router I/O --------------------------------------------------------

    def _read(self, state: State) -> dict[str, Any]:
        router = state.backend["router"]
        try:
            return get_config(self._admin(router), timeout=5.0)
        except RouterUnreachable as exc:
            raise BackendError(f"the local router (port {router['port']}) does not answer: {exc}", "run `rollout revert` to restart it") from None

    def _put(self, state: State, split: Split) -> None:
        router = state.backend["router"]
        want = self._router_config(state, split)
        try:
            put_config(self._admin(router), want, timeout=5.0)
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


def plan_marker(plan_name: str, state_dir: Path) -> str:
    """`<plan>@<hash of the state directory>/`: the prefix of every marker this plan's processes carry.
    The state directory is part of it, so two checkouts of one plan never touch each other's processes."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    return f"{plan_name}@{digest}/"

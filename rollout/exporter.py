"""The tool's own Prometheus metrics (`--metrics-port` on run, advance and watch), with prometheus_client.

What a dashboard or an alert rule wants from a running rollout: its phase, stage and traffic weight, the
per-version numbers exactly as the gates judged them, each gate's statistic and verdict, and the alerts it
sent or failed to send; from a watch: each watched rate, its CUSUM statistic against its threshold, what is
firing, whether the watch is blind, and how often it reverted. A Grafana dashboard over these is
manifests/grafana-dashboard.json.

The registry is private (no process/platform collectors of the library's global one), served by
prometheus_client's own HTTP server on 127.0.0.1 unless HOST:PORT says otherwise. Values are set from
the same objects the console shows, never recomputed.
"""

from __future__ import annotations

from typing import Any

PHASES = ("idle", "progressing", "paused", "awaiting-review", "promoted", "rolled-back", "aborted")
VERDICTS = ("pass", "fail", "pending", "inconclusive")


def parse_address(value: str) -> tuple[str, int]:
    """`9464` → (127.0.0.1, 9464); `0.0.0.0:9464` → as given (in a pod, for Prometheus to reach it)."""
    host, sep, port = value.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError("a port (9464) or HOST:PORT (0.0.0.0:9464)") from None
    if not 0 <= number <= 65535:
        raise ValueError("a port between 0 and 65535")
    return (host.strip("[]") if sep and host else "127.0.0.1"), number


class Exporter:
    def __init__(self, plan: str, address: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.plan = plan
        self.registry = r = CollectorRegistry(auto_describe=True)
        L = ["plan"]
        self.phase = Gauge("rollout_phase", "1 for the rollout's current phase, 0 for the others.", L + ["phase"], registry=r)
        self.stage = Gauge("rollout_stage_index", "The stage running or next (1-based; 0 before the first).", L, registry=r)
        self.weight = Gauge("rollout_canary_weight", "Share of traffic to the canary (0..1).", L, registry=r)
        self.requests = Gauge("rollout_stage_requests", "Requests judged in the current stage, per version.", L + ["role", "version"], registry=r)
        self.errors = Gauge("rollout_stage_errors", "Failed requests judged in the current stage, per version.", L + ["role", "version"], registry=r)
        self.latency = Gauge("rollout_stage_latency_seconds", "Latency percentiles judged in the current stage.", L + ["role", "quantile"], registry=r)
        self.gate_value = Gauge("rollout_gate_observed", "Each gate's observed statistic (its own unit: ms, share, value).", L + ["gate"], registry=r)
        self.gate_limit = Gauge("rollout_gate_threshold", "Each gate's threshold.", L + ["gate"], registry=r)
        self.gate_verdict = Gauge("rollout_gate_verdict", "1 for each gate's current verdict, 0 for the others.", L + ["gate", "status"], registry=r)
        self.alerts = Gauge("rollout_alerts", "Alerts by outcome (ok, failed, pending) since the command started.", L + ["status"], registry=r)
        self.watch_rate = Gauge("rollout_watch_rate", "A watched rate over its evidence window.", L + ["gate", "version"], registry=r)
        self.watch_cusum = Gauge("rollout_watch_cusum", "A watch gate's CUSUM statistic.", L + ["gate"], registry=r)
        self.watch_threshold = Gauge("rollout_watch_threshold", "The CUSUM threshold of a watch gate.", L + ["gate"], registry=r)
        self.watch_firing = Gauge("rollout_watch_firing", "1 while a watch gate's breach is firing.", L + ["gate"], registry=r)
        self.watch_blind = Gauge("rollout_watch_blind", "1 while the watch has no data.", L, registry=r)
        self.watch_paused = Gauge("rollout_watch_paused", "1 while an operator has paused the watch's reverts (`rollout pause --watch`).", L, registry=r)
        self.watch_reverts = Counter("rollout_watch_reverts", "Reverts done by the watch.", L, registry=r)
        host, port = parse_address(address)
        started = start_http_server(port, addr=host, registry=r)
        self._server = started[0] if isinstance(started, tuple) else None
        self.port = self._server.server_port if self._server is not None else port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- a rollout ------------------------------------------------------------------------

    def rollout(self, state: Any) -> None:
        if state is None:
            return
        for p in PHASES:
            self.phase.labels(self.plan, p).set(1.0 if state.phase.value == p else 0.0)
        self.stage.labels(self.plan).set(float(state.stage_index + (1 if state.phase.active else 0)))
        self.weight.labels(self.plan).set(float(state.split.weight))

    def stage_numbers(self, stats: Any, verdicts: list[Any], versions: dict[str, str]) -> None:
        for role in ("stable", "canary"):
            vs = stats.role(role)
            version = versions.get(role, role)
            self.requests.labels(self.plan, role, version).set(vs.requests)
            self.errors.labels(self.plan, role, version).set(vs.failures)
            if vs.requests:
                for q in (0.5, 0.95, 0.99):
                    self.latency.labels(self.plan, role, f"{q:g}").set(vs.percentile(q * 100) / 1000.0)
        for v in verdicts:
            if v.observed is not None:
                self.gate_value.labels(self.plan, v.gate).set(v.observed)
            if v.threshold is not None:
                self.gate_limit.labels(self.plan, v.gate).set(v.threshold)
            for s in VERDICTS:
                self.gate_verdict.labels(self.plan, v.gate, s).set(1.0 if v.status.value == s else 0.0)

    def notifier(self, notifier: Any) -> None:
        counts = {"ok": 0, "failed": 0, "pending": 0}
        for d in notifier.results():
            counts[d.status] = counts.get(d.status, 0) + 1
        for status, n in counts.items():
            self.alerts.labels(self.plan, status).set(n)

    # -- a watch ---------------------------------------------------------------------------

    def watch(self, monitor: Any) -> None:
        for name, rec in monitor.gates.items():
            d = rec.detector
            self.watch_rate.labels(self.plan, name, monitor.version or "").set(d.evidence().rate)
            self.watch_cusum.labels(self.plan, name).set(d.statistic)
            self.watch_threshold.labels(self.plan, name).set(d.threshold_each)
            self.watch_firing.labels(self.plan, name).set(1.0 if d.firing else 0.0)
        self.watch_blind.labels(self.plan).set(1.0 if monitor.blind_since is not None else 0.0)


class MetricsReporter:
    """Wraps the console reporter: forwards everything, and sets the exporter's gauges on the way."""

    def __init__(self, inner: Any, exporter: Exporter, engine: Any) -> None:
        self.inner, self.exporter, self.engine = inner, exporter, engine

    def _versions(self) -> dict[str, str]:
        st = self.engine.state
        return {"stable": st.stable_version, "canary": st.canary_version or "-"}

    def event(self, message: str) -> None:
        self.inner.event(message)
        self.exporter.rollout(self.engine.state)
        self.exporter.notifier(self.engine.notifier)

    def progress(self, stage: Any, index: int, total: int, stats: Any, verdicts: list[Any], duration: float) -> None:
        self.inner.progress(stage, index, total, stats, verdicts, duration)
        self.exporter.rollout(self.engine.state)
        self.exporter.stage_numbers(stats, verdicts, self._versions())

    def stage_done(self, record: Any) -> None:
        self.inner.stage_done(record)
        self.exporter.rollout(self.engine.state)

    def __getattr__(self, name: str) -> Any:  # anything else the console reporter offers
        return getattr(self.inner, name)

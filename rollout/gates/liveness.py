"""Is the canary serving at all? A critical check in every tick of a stage (fail closed).

Gates weigh evidence about a canary that serves; this check catches one that
cannot serve, where waiting for `min_requests` or a test's verdict would keep
users on a broken version while nothing can be learnt. Evidence that the
canary cannot serve fails the stage at once (it rolls back, never goes to
review), whatever the gates' minimums:

- **down**: the backend says the canary is gone: its process exited (local:
  checked by the recorded pid and start time), its Deployment has no ready
  pod (Kubernetes: readyReplicas 0 while replicas > 0);
- **not answering**: over the last `window` seconds the router answered none
  of the requests it sent to the canary (refused, reset, timed out, malformed,
  or still waiting), with at least `min_routed` of them;
- **not succeeding**: over the last `window` seconds none of the requests the
  load generator charged to the canary succeeded (errors, a body that is not
  what the locustfile or a json metric expects), with at least `min_requests`.
- **hanging some requests**: over the last `stuck_window` seconds (the stage
  so far, at its start) a credible share of the requests routed to the canary
  got no answer within the router's `stuck_after` (2 s), while stable's did.
  Those requests would reach the gates only as 504s, after the router's 30 s
  upstream timeout, and a closed-loop load generator loses every user that
  waits on one, so the evidence must be taken from the router while it is
  fresh. Conservative on purpose, since a slow but healthy canary must pass:
  at least `MIN_STUCK` stuck requests and `MIN_STUCK_SHARE` of the canary's,
  at least `MIN_STUCK` of them *still waiting* at every tick of the last
  `HUNG_PERSIST` seconds (the router's `stuck_now` gauge: a hung request stays
  in it until the upstream timeout, a slow one leaves it when answered; without
  this, a healthy canary with 5 % of its answers past 2 s was failed in 72 % of
  5-minute stages, see bench/bench_partial_hang.py),
  stable's share under `STABLE_SHARE_RATIO` of the canary's, and a one-sided
  Fisher exact test (canary stuck more often than stable) below `STUCK_ALPHA`;
  never judged without stable traffic to compare with (`MIN_STABLE_DUE`): a
  slow dependency both share is not the canary's fault (and with no stable
  traffic, a `load_to: canary` stage, it cannot be told apart). Off when the
  stage's own absolute latency limits reach half of `stuck_after` (`slowest_ms`):
  a plan that accepts a p95 of 1 s accepts a tail past 2 s, and a canary within
  its limits must still be promoted.

Not blamed on the canary: the same silence from the stable version in the same
window (something they share is down; the gates and health checks say so).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from rollout.gates.verdict import Status, Verdict
from rollout.load.stats import StageStats

NAME = "canary-alive"
WINDOW_SECONDS = 3.0
MIN_ROUTED = 3  # unanswered requests routed to the canary in the window: each waited up to `window`
MIN_REQUESTS = 5  # failed requests charged to the canary by the load generator in the window
TICK_SLACK = 0.25  # ticks drift a little past each second: a snapshot this much late still opens the window

FAILURE_KINDS = ("refused", "reset", "timeout", "malformed", "aborted")

# hanging some requests (see the module docstring); the router's VersionCounters `due`/`stuck`
STUCK_WINDOW = 10.0  # seconds of evidence: the stage so far, at its start (hung users stop a closed-loop load)
DEFAULT_STUCK_AFTER = 2.0  # the router's --stuck-after, when it does not say
MIN_STUCK = 4  # stuck canary requests in the window, at least
MIN_STUCK_SHARE = 0.10  # of the canary's requests due in the window
STABLE_SHARE_RATIO = 0.2  # stable's stuck share must be under a fifth of the canary's
STUCK_ALPHA = 1e-4  # one-sided Fisher exact test, canary vs stable, every tick
MIN_STABLE_DUE = 20  # stable requests due in the window: without them there is nothing to compare with
# ...and still waiting: at least MIN_STUCK canary requests unanswered past `stuck_after` at every tick of the last
# HUNG_PERSIST seconds (the router's `stuck_now` gauge). A hung request stays in that gauge until the upstream
# timeout (28 s more); a slow one leaves it when it is answered — what tells a hang from a long tail (bench_partial_hang.py).
HUNG_PERSIST = 2.0
GAUGES = ("in_flight", "stuck_now", "oldest_wait_ms")  # router numbers that are not cumulative counters


@dataclass(frozen=True)
class CanaryProbe:
    """What a backend can tell about the canary right now (`Backend.canary_probe`).

    `down`: why the canary cannot serve at all ("process 1234 exited with -9
    (killed by SIGKILL)"), or None. `counters`: the router's cumulative
    per-version counts (rollout.backends.local.router.VersionCounters, by
    version name), or None when the backend's router cannot tell.
    `stuck_after`: the router's --stuck-after (seconds), when it says.
    """

    version: str | None
    down: str | None = None
    counters: dict[str, dict[str, int]] | None = None
    stuck_after: float | None = None


@dataclass
class _Snapshot:
    t: float
    client: dict[str, tuple[int, int]]  # role -> (requests, failures), as the load generator charged them
    router: dict[str, dict[str, int]] | None  # role -> the router's counters for that role's version


def _delta(now: dict[str, int], then: dict[str, int] | None, key: str) -> int:
    return int(now.get(key, 0)) - int((then or {}).get(key, 0))


class CanaryLiveness:
    """Fed every tick with the stage's statistics and a backend probe; says FAIL once the canary cannot serve."""

    def __init__(self, canary: str | None, stable: str, window: float = WINDOW_SECONDS,
                 min_routed: int = MIN_ROUTED, min_requests: int = MIN_REQUESTS,
                 stuck_window: float = STUCK_WINDOW, slowest_ms: float | None = None) -> None:
        self.canary, self.stable = canary, stable
        self.window, self.min_routed, self.min_requests = window, min_routed, min_requests
        self.stuck_window = stuck_window
        self.slowest_ms = slowest_ms  # the stage's largest absolute latency limit, if any
        self.stuck_after = DEFAULT_STUCK_AFTER
        self.snaps: deque[_Snapshot] = deque()
        self.start_router: dict[str, dict[str, int]] | None = None
        self.failed: Verdict | None = None

    # -- feeding -----------------------------------------------------------

    def _router_by_role(self, probe: CanaryProbe | None) -> dict[str, dict[str, int]] | None:
        if probe is None or probe.counters is None:
            return None
        out = {}
        for role, version in (("canary", self.canary), ("stable", self.stable)):
            if version is not None:
                out[role] = dict(probe.counters.get(version) or {})
        return out

    def observe(self, t: float, stats: StageStats, probe: CanaryProbe | None, final: bool = False) -> Verdict:
        """Record this tick's numbers and judge; `t` is the stage's elapsed seconds."""
        router = self._router_by_role(probe)
        client = {role: (stats.role(role).requests, stats.role(role).failures) for role in ("canary", "stable")}
        snap = _Snapshot(t, client, router)
        if router is not None and self.start_router is None:
            self.start_router = router
        if router is not None and self.start_router is not None:  # what the router did during this stage, for the record
            stats.router = {role: {k: _delta(c, self.start_router.get(role), k) for k in c if k not in GAUGES}
                            | {k: int(c[k]) for k in GAUGES if k in c} for role, c in router.items()}
        if probe is not None and probe.stuck_after:
            self.stuck_after = float(probe.stuck_after)
        self.snaps.append(snap)
        keep = max(self.window, self.stuck_window)
        while len(self.snaps) > 2 and self.snaps[1].t <= t - keep + TICK_SLACK:
            self.snaps.popleft()  # keep the newest snapshot that still opens the longest window
        if self.failed is not None:
            return self.failed
        verdict = self._judge(snap, stats, probe, final)
        if verdict.status is Status.FAIL:
            self.failed = verdict
        return verdict

    # -- judging -----------------------------------------------------------

    def _base(self, now: _Snapshot, window: float | None = None) -> tuple[_Snapshot, bool]:
        """The snapshot that opens the window (the newest one old enough, else the oldest kept),
        and whether the window is complete."""
        limit = now.t - (self.window if window is None else window) + TICK_SLACK
        base = self.snaps[0]
        for snap in self.snaps:
            if snap.t > limit:
                break
            base = snap
        return base, base.t <= limit

    def _router_window(self, base: _Snapshot, now: _Snapshot, role: str) -> tuple[int, int, dict[str, int]] | None:
        """(requests the version could have answered in the window, answered, failures by kind) from the router."""
        if now.router is None or base.router is None or role not in now.router:
            return None
        c1, c0 = now.router[role], base.router.get(role) or {}
        could = int(c0.get("in_flight", 0)) + _delta(c1, c0, "routed")
        kinds = {k: _delta(c1, c0, k) for k in FAILURE_KINDS if _delta(c1, c0, k)}
        if c1.get("in_flight"):
            kinds["still waiting"] = int(c1["in_flight"])
        if _delta(c1, c0, "no_header"):
            kinds["without the version header"] = _delta(c1, c0, "no_header")
        return could, _delta(c1, c0, "answered"), kinds

    def _client_window(self, base: _Snapshot, now: _Snapshot, role: str) -> tuple[int, int]:
        (r1, f1), (r0, f0) = now.client[role], base.client[role]
        return r1 - r0, f1 - f0

    def _judge(self, now: _Snapshot, stats: StageStats, probe: CanaryProbe | None, final: bool) -> Verdict:
        who = f"canary {self.canary}" if self.canary else "canary"
        base, full = self._base(now)
        span = now.t - base.t
        router = self._router_window(base, now, "canary")
        evidence = ""
        if router is not None and router[0]:
            could, answered, kinds = router
            detail = ", ".join(f"{n} {k}" for k, n in kinds.items())
            evidence = f"{answered} of {could} requests routed to it answered in {span:.0f} s" + (f" ({detail})" if detail else "")
        if probe is not None and probe.down:
            msg = f"{who} is down: {probe.down}" + (f"; {evidence}" if evidence else "")
            return Verdict(NAME, Status.FAIL, msg, "canary", 0.0, None, router[0] if router else 0)
        if full and router is not None:
            could, answered, kinds = router
            if answered == 0 and could >= self.min_routed and not self._stable_silent_too(base, now):
                detail = ", ".join(f"{n} {k}" for k, n in kinds.items())
                msg = f"{who} stopped answering: 0 of {could} requests routed to it answered in {span:.0f} s" + (f" ({detail})" if detail else "")
                return Verdict(NAME, Status.FAIL, msg, "canary", 0.0, None, could)
        if full:
            n, failures = self._client_window(base, now, "canary")
            if n >= self.min_requests and failures == n and not self._stable_failing_too(base, now):
                last = stats.last_failure.get("canary", "")
                msg = f"{who} stopped serving: 0 of {n} requests to it succeeded in {span:.0f} s" + (f"; last failure: {last}" if last else "")
                if router is not None and router[2]:
                    msg += " (router: " + ", ".join(f"{k} {v}" for k, v in router[2].items()) + ")"
                return Verdict(NAME, Status.FAIL, msg, "canary", 0.0, None, n)
        hung = self._partial_hang(now, who)
        if hung is not None:
            return hung
        status = Status.PASS if final else Status.PENDING
        if evidence:
            msg = f"{who} answering: {evidence}"
        else:
            n, failures = self._client_window(base, now, "canary")
            msg = f"{who} answering: {n - failures} of {n} requests to it succeeded in the last {span:.0f} s"
        return Verdict(NAME, status, msg, "canary", None, None, router[0] if router else 0)

    def _stuck_counts(self, base: _Snapshot, now: _Snapshot, role: str) -> tuple[int, int]:
        """(requests routed to the role's version whose answer came due in the window, those still unanswered then)."""
        if now.router is None or base.router is None or role not in now.router:
            return 0, 0
        c1, c0 = now.router[role], base.router.get(role) or {}
        return _delta(c1, c0, "due"), _delta(c1, c0, "stuck")

    def _partial_hang(self, now: _Snapshot, who: str) -> Verdict | None:
        """FAIL when a credible share of the canary's requests got no answer within `stuck_after`
        while stable's did (see the module docstring); None when there is no such evidence."""
        if self.slowest_ms is not None and self.slowest_ms * 2 >= self.stuck_after * 1000:
            return None  # the plan accepts answers this slow: a wait past `stuck_after` is no evidence of a hang
        base, _ = self._base(now, self.stuck_window)
        due, stuck = self._stuck_counts(base, now, "canary")
        if stuck < MIN_STUCK or due <= 0 or stuck < MIN_STUCK_SHARE * due:
            return None
        s_due, s_stuck = self._stuck_counts(base, now, "stable")
        if s_due < MIN_STABLE_DUE or s_stuck / s_due >= STABLE_SHARE_RATIO * stuck / due:
            return None
        if not self._still_waiting(now):
            return None  # answered late, not hung: a slow tail (the latency gates judge that)
        p = stuck_test(stuck, due, s_stuck, s_due)
        if p >= STUCK_ALPHA:
            return None
        span = now.t - base.t
        c = (now.router or {}).get("canary") or {}
        msg = (f"{who} leaves requests unanswered: {stuck} of {due} requests routed to it in {span:.0f} s still unanswered "
               f"after {self.stuck_after:g} s; stable {self.stable}: {s_stuck} of {s_due}")
        if c.get("stuck_now"):
            msg += f" ({c['stuck_now']} waiting now, the oldest for {int(c.get('oldest_wait_ms', 0)) / 1000:.1f} s)"
        return Verdict(NAME, Status.FAIL, msg, "canary", stuck / due, None, due)

    def _still_waiting(self, now: _Snapshot) -> bool:
        """At least MIN_STUCK canary requests waiting past `stuck_after` at every tick of the last HUNG_PERSIST s
        (each of those at the window's end has waited `stuck_after` + HUNG_PERSIST at least, or was replaced by
        another: the hang goes on)."""
        if HUNG_PERSIST <= 0:
            return True
        recent = [s for s in self.snaps if s.t >= now.t - HUNG_PERSIST - TICK_SLACK]
        if not recent or recent[0].t > now.t - HUNG_PERSIST + TICK_SLACK:
            return False  # not watched that long yet
        return all(int(((s.router or {}).get("canary") or {}).get("stuck_now", 0)) >= MIN_STUCK for s in recent)

    def describe(self, stats: StageStats) -> str:
        """What happened to the canary's requests during the stage, when something went wrong with them:
        appended to the reason of a stage that a gate failed first, so that the reason still names the fault."""
        who = f"canary {self.canary}" if self.canary else "canary"
        parts = []
        c = stats.router.get("canary")
        if c and c.get("routed"):
            kinds = {k: c.get(k, 0) for k in FAILURE_KINDS if c.get(k)}
            if c.get("in_flight"):
                kinds["still waiting"] = c["in_flight"]
            if c.get("no_header"):
                kinds["without the version header"] = c["no_header"]
            if c.get("stuck"):
                kinds[f"unanswered after {self.stuck_after:g} s"] = c["stuck"]
            if kinds:
                parts.append(f"{c.get('answered', 0)} of {c['routed']} requests routed to it answered ("
                             + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ")")
        last = stats.last_failure.get("canary")
        if last:
            parts.append(f"last failure: {last}")
        return f"{who} in this stage: " + "; ".join(parts) if parts else ""

    def _stable_silent_too(self, base: _Snapshot, now: _Snapshot) -> bool:
        got = self._router_window(base, now, "stable")
        return got is not None and got[0] >= self.min_routed and got[1] == 0

    def _stable_failing_too(self, base: _Snapshot, now: _Snapshot) -> bool:
        n, failures = self._client_window(base, now, "stable")
        return n >= self.min_requests and failures == n


def stuck_test(stuck: int, due: int, s_stuck: int, s_due: int) -> float:
    """One-sided Fisher exact test: the p-value of the canary's requests getting stuck at least this much
    more often than stable's, were both equally likely to (hypergeometric tail). Exact for small counts,
    which is what a few seconds of a 10 % canary give."""
    from scipy.stats import hypergeom  # only when there is something to test

    total, stuck_all = due + s_due, stuck + s_stuck
    return float(hypergeom.sf(stuck - 1, total, stuck_all, due))

"""The one exception tree of `rollout`.

Every error the tool can raise on purpose is a `RolloutError` carrying two
sentences: what happened and what to do about it. The CLI turns them into
`Error: <what> — <what to do>` and an exit code in exactly one place
(`rollout.cli`), so no command prints its own tracebacks or picks its own
codes. Anything that is *not* a RolloutError reaching the CLI is a bug and is
reported as such (exit 70), never silently.

Exit codes (also in README.md and `rollout --help`):

    0  success: promoted, stage passed, gate passed, command done
    1  a gate failed: the canary was rolled back (or `gate` failed)
    2  bad input: invalid plan, flag or argument
    3  infrastructure: a backend, network, process or lock problem
    4  paused: waiting for a person (`rollout approve` / `rollout reject`)
    5  `rollout status --watch --timeout D`: D passed while the rollout was still moving
    130 interrupted (Ctrl-C / SIGTERM); the state records where it stopped
"""

from __future__ import annotations

from dataclasses import dataclass, field

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INFRA = 3
EXIT_PAUSED = 4
EXIT_WATCH_TIMEOUT = 5
EXIT_INTERRUPTED = 130
EXIT_BUG = 70

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success: promoted, stage passed, gate passed, command done",
    EXIT_GATE_FAILED: "a gate failed: the canary was rolled back (or `rollout gate` failed)",
    EXIT_BAD_INPUT: "bad input: invalid plan, flag or argument",
    EXIT_INFRA: "infrastructure failure: backend, network, process or lock",
    EXIT_PAUSED: "paused: waiting for `rollout approve` (or `rollout reject`)",
    EXIT_WATCH_TIMEOUT: "`status --watch --timeout`: the time passed while the rollout was still moving",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C/SIGTERM); the state says where it stopped",
}


class RolloutError(Exception):
    """Base of every deliberate error: `what` happened, `hint` says what to do."""

    exit_code: int = EXIT_INFRA

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint

    def render(self) -> str:
        return f"Error: {self.what}" + (f" — {self.hint}" if self.hint else "")


# -- bad input (exit 2) -------------------------------------------------------


class BadInput(RolloutError):
    exit_code = EXIT_BAD_INPUT


@dataclass(frozen=True)
class PlanIssue:
    """One problem in a plan file, located as precisely as the YAML allows."""

    file: str
    line: int | None
    path: str  # e.g. "stages[2].gates.p95.max"
    found: str
    expected: str

    def render(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        found = f"found {self.found}; " if self.found else ""
        return f"{where}: {self.path or '(top level)'}: {found}expected {self.expected}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "path": self.path,
            "found": self.found,
            "expected": self.expected,
        }


class PlanInvalid(BadInput):
    """The plan has one or more problems; all of them are listed, not just the first."""

    def __init__(self, file: str, issues: list[PlanIssue]) -> None:
        n = len(issues)
        super().__init__(
            f"{file} is not a valid rollout plan ({n} problem{'s' if n != 1 else ''})",
            "fix the fields listed above, then run `rollout validate` again",
        )
        self.file = file
        self.issues = issues


class UsageError(BadInput):
    """A flag or argument that cannot work with this plan or state."""


# -- gate failed (exit 1) -----------------------------------------------------


class GateFailed(RolloutError):
    exit_code = EXIT_GATE_FAILED


# -- waiting for a person (exit 4) -------------------------------------------


class Paused(RolloutError):
    exit_code = EXIT_PAUSED


# -- infrastructure (exit 3) --------------------------------------------------


class InfraError(RolloutError):
    exit_code = EXIT_INFRA


class BackendError(InfraError):
    """The backend (processes, router, cluster) did not do what was asked."""


class LoadError(InfraError):
    """The load generator could not run (bad locustfile, unreachable target)."""


class LockHeld(InfraError):
    """Another command is acting on the same rollout right now."""


class StateError(InfraError):
    """The recorded state cannot be read or written."""


@dataclass
class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived; raised to unwind to the CLI after the state was saved."""

    signal_name: str = "SIGINT"
    detail: str = field(default="")

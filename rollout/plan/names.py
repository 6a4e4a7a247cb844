"""Rules for the strings a plan (or a flag) hands to headers, processes, clusters and terminals.

Each string the tool passes on ends up somewhere with its own grammar: a
version name goes into a response header, a file name and a process's
environment; a header name must be an RFC 9110 token; a command line is split
by the local backend; an image reference and an integer go to the Kubernetes
API; everything ends up on a terminal. A string accepted here cannot break
the place it goes to, so it is refused once, at `rollout validate`, with the
rule in the message -- never half-way through a rollout.

Every check returns the problem as text (the "expected ..." of a plan error or
a flag's message) or None when the value is fine, so the plan models, the
loader and the CLI (`--version`, `--users`, ...) share one wording.
`printable()` is the other half: whatever still reaches a terminal (state
files written by older versions, `--reason` text) is shown with its control
characters escaped, never interpreted.
"""

from __future__ import annotations

import math
import re
import shlex
import unicodedata
from urllib.parse import urlsplit

from rollout.plan.limits import INT32_MAX

# -- names -----------------------------------------------------------------------

VERSION_RULE = (
    "a version name: 1-63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit "
    "(e.g. v2 or 2.1.0-rc1)"
)
VERSION_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")  # the Kubernetes label-value rule

HEADER_NAME_RULE = "a header name: an RFC 9110 token (letters, digits and !#$%&'*+-.^_`|~, no spaces)"
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

HEADER_VALUE_RULE = "a header value: visible characters, spaces and tabs on one line (RFC 9110 field-value)"

ENV_NAME_RULE = "an environment variable name: letters, digits and _, not starting with a digit"
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# an image reference as the distribution spec defines it: [registry[:port]/]repository[:tag][@digest]
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_RE = re.compile(
    r"(?:[A-Za-z0-9][A-Za-z0-9.-]*(?::[0-9]+)?/)?" + _COMPONENT + r"(?:/" + _COMPONENT + r")*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,})?"
)
IMAGE_RULE = "an image reference: [registry[:port]/]repository[:tag][@digest], e.g. registry.example.com/app:2.1"

URL_RULE = "an http:// or https:// URL with a host, e.g. http://127.0.0.1:8080"


# C0 and C1 controls, DEL, and the Unicode controls that reorder or hide text on a terminal
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


__all__ = ["INT32_MAX", "check_command", "check_env_name", "check_header_name", "check_header_value", "check_image",
           "check_url", "check_version_name", "control_chars", "is_control", "printable"]


def is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc" or ch in _BIDI


def control_chars(text: str, allow: str = "") -> list[str]:
    """The control characters in `text` (except those in `allow`), each once, escaped for a message."""
    seen: list[str] = []
    for ch in text:
        if ch not in allow and is_control(ch):
            esc = _escape(ch)
            if esc not in seen:
                seen.append(esc)
    return seen


_SHORT = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def printable(text: object, keep_newlines: bool = False) -> str:
    """`text` safe for a terminal: control characters shown as \\xNN escapes, never sent raw.

    A name with ESC sequences cannot recolour or clear the screen, a CR cannot
    overwrite a line, a LF cannot forge a line of `rollout status`.
    With `keep_newlines`, LF and TAB stay (for multi-line output assembled by the tool).
    """
    s = str(text)
    if not any(is_control(ch) for ch in s):
        return s
    keep = "\n\t" if keep_newlines else ""
    return "".join(_escape(ch) if (is_control(ch) and ch not in keep) else ch for ch in s)


def check_version_name(name: object) -> str | None:
    """None when `name` may name a version; else the rule (shared by the plan and `--version`)."""
    if not isinstance(name, str) or not VERSION_RE.fullmatch(name):
        return VERSION_RULE
    return None


def check_header_name(name: object) -> str | None:
    if not isinstance(name, str) or not HEADER_NAME_RE.fullmatch(name):
        return HEADER_NAME_RULE
    return None


def check_header_value(value: object) -> str | None:
    if not isinstance(value, str):
        return HEADER_VALUE_RULE
    if any(ch != "\t" and is_control(ch) for ch in value) or value != value.strip(" \t"):
        return HEADER_VALUE_RULE + ", without leading or trailing blanks"
    return None


def check_env_name(name: object) -> str | None:
    if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
        return ENV_NAME_RULE
    return None


def check_image(ref: object) -> str | None:
    if not isinstance(ref, str) or len(ref) > 4096 or not IMAGE_RE.fullmatch(ref):
        return IMAGE_RULE
    return None


def check_url(url: object) -> str | None:
    """http(s) only: a `javascript:` or `file:` URL must not reach the load generator or a webhook."""
    if not isinstance(url, str) or any(ch.isspace() or is_control(ch) for ch in url):
        return URL_RULE + " (no spaces or control characters)"
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        return URL_RULE + " (the port is not a number from 1 to 65535)"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return URL_RULE
    if not port_ok:
        return URL_RULE + " (the port is not a number from 1 to 65535)"
    return None


def check_command(command: object, placeholders: dict[str, str]) -> str | None:
    """A local version's command as the local backend will split it (`shlex.split`, no shell).

    `placeholders` stand in for {port}, {version} and {python}, as at start-up.
    """
    if not isinstance(command, str):
        return "a command line"
    bad = control_chars(command, allow="\t\n")
    if bad:
        return f"a command line without control characters (found {', '.join(bad)})"
    text = command
    for key, value in placeholders.items():
        text = text.replace("{" + key + "}", value)
    try:
        argv = shlex.split(text)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        return f"a command line that splits into arguments as a POSIX shell would ({str(exc).lower()}); quote each argument once"
    if not argv:
        return "a command line with a program to run"
    return None


def check_finite(value: float, what: str = "a number") -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{what} (finite: not .nan or .inf)"
    return None

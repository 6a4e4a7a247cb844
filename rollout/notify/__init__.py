"""Alerts: webhooks declared in the plan, told when a rollout changes.

`Webhook` is the plan's declaration (its URL and header values are secrets,
shown only redacted); `Notifier` sends in the background — `emit` never blocks
or raises, `flush(timeout)` waits a bounded time at command end, `results()`
says what was delivered. Nothing here imports httpx (or ssl) at import time.
"""

from __future__ import annotations

import logging

from rollout.notify.model import EVENTS, Event, SecretUrl, Webhook, redact
from rollout.notify.payload import EMOJI
from rollout.notify.sender import Delivery, Notifier

logging.getLogger("rollout.notify").addHandler(logging.NullHandler())

__all__ = ["EMOJI", "EVENTS", "Delivery", "Event", "Notifier", "SecretUrl", "Webhook", "redact"]

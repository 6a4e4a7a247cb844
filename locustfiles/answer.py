"""Load profile for the sample "answer" service (examples/service.py).

Each simulated user asks a question on GET /api/answer?q=... about every
0.1 s (think time uniformly 50-150 ms), so 20 users make roughly 150-200
requests per second on a fast service. Requests are grouped under one name,
"/api/answer", whatever the question, so the statistics have one row.

What counts as a failure: Locust's default for FastHttpUser, any status >= 400
(the service's simulated errors are 500s) or no response at all, plus a 200
whose body is not the JSON answer the service promises (a version that
answers garbage fails too, not only one that errors).

Which version served a request is not this file's business: `rollout` reads
the version header (X-Version, `load.version_header` in the plan) from every
response, and adds a cohort header itself to a share of the users during
cohort stages. So this file is a plain Locust file and also runs as is:

    locust -f locustfiles/answer.py --headless -u 20 -r 20 -t 30s --host http://127.0.0.1:8001
"""

from __future__ import annotations

import random

from locust import FastHttpUser, between, task

QUESTIONS = (
    "what is the answer",
    "should we ship on friday",
    "is the canary healthy",
    "how big should the first stage be",
    "why is p99 higher than p95",
    "when do we roll back",
)


class AnswerUser(FastHttpUser):
    wait_time = between(0.05, 0.15)

    @task
    def ask(self) -> None:
        q = random.choice(QUESTIONS)
        with self.client.get("/api/answer", params={"q": q}, name="/api/answer", catch_response=True) as resp:
            if resp.status_code != 200:
                return  # already a failure (status >= 400) or a redirect Locust reports as is
            try:
                body = resp.json()
            except ValueError:
                resp.failure("the answer is not JSON")
                return
            if not isinstance(body, dict) or "answer" not in body:
                resp.failure("the answer has no 'answer' field")

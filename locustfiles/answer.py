"""Load profile for the sample answer service: users asking questions with a short think time.

FastHttpUser keeps one keep-alive connection per user and is several times
cheaper per request than HttpUser, so one core drives more realistic
concurrency. The think time (`wait_time`) lives here, not in the plan.
"""

from locust import FastHttpUser, between, task


class AnswerUser(FastHttpUser):
    wait_time = between(0.05, 0.15)

    @task
    def ask(self) -> None:
        self.client.get("/api/answer?q=how+do+canaries+work", name="/api/answer")

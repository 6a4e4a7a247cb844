"""A locustfile with no think time: measures how many requests a load generator can drive."""

from locust import FastHttpUser, constant, task


class NoWait(FastHttpUser):
    wait_time = constant(0)

    @task
    def ask(self) -> None:
        self.client.get("/api/answer", name="/api/answer")

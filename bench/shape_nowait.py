"""A no-think-time locustfile whose LoadTestShape steps the users up: 5, 10, then 20 users, for
$BENCH_SHAPE_SECONDS seconds in all (default 12), then the shape ends the run."""

import os

from locust import FastHttpUser, LoadTestShape, constant, task

SECONDS = float(os.environ.get("BENCH_SHAPE_SECONDS", "12"))


class NoWait(FastHttpUser):
    wait_time = constant(0)

    @task
    def ask(self) -> None:
        self.client.get("/api/answer", name="/api/answer")


class Steps(LoadTestShape):
    def tick(self):
        t = self.get_run_time()
        if t >= SECONDS:
            return None
        return (5 if t < SECONDS / 3 else 10 if t < 2 * SECONDS / 3 else 20, 100)

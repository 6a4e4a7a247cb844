"""Numeric limits shared by the plan and the command line, in a module light enough for `rollout --help`.

One number per limit, so `rollout gate --users` cannot accept what `load.users`
refuses (10,000,000 users exhausted memory and ignored SIGTERM).
"""

MAX_USERS = 100_000  # concurrent Locust users (load.users, stages[].users, --users), and users started per second
MAX_WORKERS = 64  # local Locust worker processes (load.workers, --workers)
INT32_MAX = 2**31 - 1  # Kubernetes integers (replicas) are int32; also the bound of request counts

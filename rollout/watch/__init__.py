"""`rollout watch`: continuous, change-detecting judgement of the live version (see rollout.watch.monitor)."""

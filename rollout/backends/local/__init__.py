"""The embedded local backend: versions as processes behind a weighted router on 127.0.0.1.

Like a cluster it outlives a command: processes run in their own sessions,
and their pids, ports and start times are recorded in the state, so any later
command (and `rollout revert` after a crash) finds them.
"""

"""Backends: where the versions run and how traffic is split between them.

The engine talks to a backend through `rollout.backends.base.Backend` only;
each backend also offers the store that keeps the rollout's state and the
lock that lets one command act at a time.
"""

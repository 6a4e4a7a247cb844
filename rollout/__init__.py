"""rollout: staged rollouts with real load, statistical gates and a rollback that always works."""

__version__ = "0.1.0"

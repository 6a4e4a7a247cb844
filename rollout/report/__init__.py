"""Turning states, stages and verdicts into what people and machines read."""

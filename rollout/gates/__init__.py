"""Gates: judging a stage's live statistics, with verdicts that carry their numbers."""

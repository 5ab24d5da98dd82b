"""Runs: the store (all SQL for runs, experiments, metrics, jobs), run folders, retraining, experiments."""

"""Training on cached bottlenecks (the head), fine-tuning, evaluation and verdicts on a history."""

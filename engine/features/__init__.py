"""Bottleneck features: decoding, the batched forward pass, and their SQLite cache."""

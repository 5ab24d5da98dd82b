"""Backbones (the registry) and what the Architectures page computes from the real Keras models."""

"""The knobs of head training and fine-tuning (one dataclass saved with every run) and the history's keys."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any

from engine.errors import InvalidArgument

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "exponential", "cosine")
# One row per evaluation, in this order: what train_head and fine_tune record, what the run store's
# metrics table holds, what summaries read.
HISTORY_KEYS = (
    "step",
    "train_accuracy",
    "train_cross_entropy",
    "validation_accuracy",
    "validation_cross_entropy",
    "elapsed",
)

# Upper bounds that catch typos and hostile input (1e308, 10**12 steps) before they reach TensorFlow.
# Generous: the pages offer learning rates up to 10 and retrain.py's runs use thousands of steps.
MAX_LEARNING_RATE = 10.0
MAX_STEPS = 1_000_000
MAX_BATCH_SIZE = 65_536  # examples of bottleneck features per step: ~0.3 GB at 1280 dimensions
MAX_FINE_TUNE_BATCH_SIZE = 1_024  # images through the backbone per step
MAX_FINE_TUNE_LAYERS = 10_000


@dataclass
class TrainConfig:
    """Head-training and fine-tuning knobs; retrain.py's defaults. Saved with every run."""

    # retrain.py's --learning_rate: how far each step moves the weights; 1.0 diverges, 0.005 crawls
    learning_rate: float = 0.01
    # retrain.py's --how_many_training_steps: each step trains on one random batch
    steps: int = 4000
    # retrain.py's --train_batch_size: examples per step, drawn with replacement (may exceed the set)
    batch_size: int = 100
    # retrain.py's --eval_step_interval: steps between history rows and progress events (+ last step)
    eval_interval: int = 10
    # "sgd" is retrain.py's GradientDescentOptimizer; "adam" is less sensitive to the learning rate
    optimizer: str = "sgd"
    # fixes the head's initial weights, batch sampling and distortions: same seed -> same history
    seed: int = 0
    # learning rate over the steps: "constant" (retrain.py), "exponential" or "cosine" decay
    schedule: str = "constant"
    # where "exponential" and "cosine" end, as a fraction of learning_rate (unused by "constant")
    final_lr_fraction: float = 0.1
    # fine-tuning: how many of the backbone's top weighted layers to unfreeze (0 = head only)
    fine_tune_layers: int = 0
    # fine-tuning runs every image through the backbone, so it needs far fewer steps...
    fine_tune_steps: int = 100
    # ...and smaller batches: each image costs a forward and backward pass through the backbone
    fine_tune_batch_size: int = 16
    # pretrained weights are easily wrecked, so fine-tuning moves them more gently than the head
    fine_tune_learning_rate: float = 0.001
    # retrain.py's distortions (fine-tuning only): mirror images left-right at random
    flip_left_right: bool = False
    # retrain.py's --random_crop: percent margin around the image to crop away at random
    random_crop: int = 0
    # retrain.py's --random_scale: percent by which the image is randomly scaled up
    random_scale: int = 0
    # retrain.py's --random_brightness: percent by which pixel values are multiplied up or down
    random_brightness: int = 0

    def __post_init__(self) -> None:
        for key in ("learning_rate", "fine_tune_learning_rate"):
            setattr(self, key, _positive_float(key, getattr(self, key), MAX_LEARNING_RATE))
        for key, high in (
            ("steps", MAX_STEPS),
            ("batch_size", MAX_BATCH_SIZE),
            ("eval_interval", MAX_STEPS),
            ("fine_tune_steps", MAX_STEPS),
            ("fine_tune_batch_size", MAX_FINE_TUNE_BATCH_SIZE),
        ):
            setattr(self, key, _int_in(key, getattr(self, key), 1, high))
        self.fine_tune_layers = _int_in("fine_tune_layers", self.fine_tune_layers, 0, MAX_FINE_TUNE_LAYERS)
        self.seed = _int_in("seed", self.seed, 0, 2**31 - 1)
        for key, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if getattr(self, key) not in choices:
                raise InvalidArgument(f"{key} must be one of {choices}, got {key}={getattr(self, key)!r}")
        self.final_lr_fraction = _positive_float("final_lr_fraction", self.final_lr_fraction, 1.0)
        if not isinstance(self.flip_left_right, bool):
            raise InvalidArgument(
                f"flip_left_right must be True or False, got flip_left_right={self.flip_left_right!r}"
            )
        for key in ("random_crop", "random_scale", "random_brightness"):
            setattr(self, key, _int_in(key, getattr(self, key), 0, 100))

    @property
    def distorts(self) -> bool:
        """Whether any retrain.py distortion is on (they only apply when fine-tuning)."""
        return self.flip_left_right or bool(self.random_crop or self.random_scale or self.random_brightness)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from `asdict(config)`; unknown keys are refused rather than silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**data)


def _positive_float(key: str, value: Any, high: float) -> float:
    """`value` as a float in (0, high]; NaN, infinities, zero, negatives and non-numbers are refused."""
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or not 0 < value <= high:
        raise InvalidArgument(f"{key} must be a number above 0 and at most {high:g}, got {key}={value!r}")
    return float(value)


def _int_in(key: str, value: Any, low: int, high: int) -> int:
    """`value` as an int in [low, high]; floats (even 100.0), bools and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise InvalidArgument(f"{key} must be an integer from {low} to {high:,}, got {key}={value!r}")
    return int(value)

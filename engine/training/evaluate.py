"""Scoring: the history rows recorded while training, and a head or classifier scored on a test set."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import InvalidArgument
from engine.training.config import HISTORY_KEYS


def history_row(
    step: int,
    train_accuracy: float,
    train_cross_entropy: float,
    validation_accuracy: float | None,
    validation_cross_entropy: float | None,
    started: float,
) -> dict[str, Any]:
    """One history row (keys HISTORY_KEYS, in order) measured at `step`, `started` a perf_counter().

    Validation metrics are None when there is no validation set; a diverged run keeps NaN/inf.
    """
    val_acc = None if validation_accuracy is None else float(validation_accuracy)
    val_xent = None if validation_cross_entropy is None else float(validation_cross_entropy)
    elapsed = round(time.perf_counter() - started, 4)
    values = (int(step), float(train_accuracy), float(train_cross_entropy), val_acc, val_xent, elapsed)
    return dict(zip(HISTORY_KEYS, values, strict=True))


def history_message(row: dict[str, Any], total: int) -> str:
    """One human line for a history row, like retrain.py's log lines."""
    val = row["validation_accuracy"]
    val_text = "n/a" if val is None else f"{val * 100:.1f}%"
    return (
        f"Step {row['step']}/{total}: train accuracy {row['train_accuracy'] * 100:.1f}%, "
        f"cross-entropy {row['train_cross_entropy']:.4f}, validation accuracy {val_text}"
    )


def head_probabilities(kernel: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Softmax probabilities (N, C) of the head on features x (N, D), in numpy."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != np.shape(kernel)[0]:
        raise InvalidArgument(
            f"features must be (N, {np.shape(kernel)[0]}) for this head, got x.shape={x.shape}"
        )
    logits = x @ np.asarray(kernel, np.float32) + np.asarray(bias, np.float32)
    logits -= logits.max(axis=1, keepdims=True)  # stable softmax
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class EvalResult:
    """Accuracy, per-class accuracy and confusion matrix of predictions against labels."""

    accuracy: float | None  # None when there are no examples
    per_class_accuracy: dict[str, float | None]  # None for a class with no examples
    confusion: list[list[int]]  # confusion[true][predicted] counts
    predicted: np.ndarray  # (N,) predicted class indices

    def misclassified(self, labels: np.ndarray) -> np.ndarray:
        """Indices of the examples whose prediction differs from `labels`."""
        return np.flatnonzero(self.predicted != np.asarray(labels))


def evaluate(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> EvalResult:
    """Score class probabilities (N, C) against integer labels (N,) for C named classes.

    Raises:
        InvalidArgument: shapes disagree or labels out of range.
    """
    probs = np.asarray(probabilities)
    labels = np.asarray(labels).astype(np.int64)
    count = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != count or labels.shape != (len(probs),):
        raise InvalidArgument(
            f"probabilities must be (N, {count}) with N labels, got probabilities.shape={probs.shape} "
            f"and labels.shape={labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= count):
        raise InvalidArgument(f"labels must be in [0, {count}), got {labels.min()} to {labels.max()}")
    predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    confusion = np.zeros((count, count), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        total = int(confusion[i].sum())
        per_class[name] = float(confusion[i, i] / total) if total else None
    accuracy = float((predicted == labels).mean()) if len(labels) else None
    return EvalResult(accuracy, per_class, confusion.tolist(), predicted)

"""Head training on cached bottlenecks (retrain.py's final layer), learning-rate schedules, evaluation.

The head is one linear softmax layer trained with SGD or Adam on bottleneck features held in memory,
as retrain.py's `add_final_retrain_ops` did. For speed, the `eval_interval` steps between two
evaluations run inside one compiled function: batches are sampled in-graph from tensors already on
the device with a stateless RNG keyed by (seed, step), and the optimizer math is written with tf
ops, so Python runs once per evaluation, not once per step, and a seed fixes the whole history.
Fine-tuning through the backbone lives in engine/finetune.py and is re-exported here.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from engine.errors import InvalidArgument
from engine.progress import CancelFn, ProgressFn, check_cancel, emit

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "exponential", "cosine")
HISTORY_KEYS = (
    "step",
    "train_accuracy",
    "train_cross_entropy",
    "validation_accuracy",
    "validation_cross_entropy",
    "elapsed",
)
# Adam's constants: Keras' defaults (beta_1, beta_2, epsilon)
_ADAM = (0.9, 0.999, 1e-7)
# retrain.py initialises the final layer's weights with truncated_normal(stddev=0.001), biases at 0
_INIT_STDDEV = 0.001


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
    # fine-tuning runs every image through the backbone, so it needs far fewer, smaller steps
    fine_tune_steps: int = 100
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
            setattr(self, key, _positive_float(key, getattr(self, key)))
        for key in ("steps", "batch_size", "eval_interval", "fine_tune_steps", "fine_tune_batch_size"):
            setattr(self, key, _int_at_least(key, getattr(self, key), 1))
        self.fine_tune_layers = _int_at_least("fine_tune_layers", self.fine_tune_layers, 0)
        self.seed = _int_at_least("seed", self.seed, 0)
        if self.seed >= 2**31:
            raise InvalidArgument(f"seed must be below 2**31, got seed={self.seed!r}")
        for key, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if getattr(self, key) not in choices:
                raise InvalidArgument(f"{key} must be one of {choices}, got {key}={getattr(self, key)!r}")
        frac = _positive_float("final_lr_fraction", self.final_lr_fraction)
        if frac > 1:
            raise InvalidArgument(f"final_lr_fraction must be in (0, 1], got final_lr_fraction={frac!r}")
        self.final_lr_fraction = frac
        if not isinstance(self.flip_left_right, bool):
            raise InvalidArgument(
                f"flip_left_right must be True or False, got flip_left_right={self.flip_left_right!r}"
            )
        for key in ("random_crop", "random_scale", "random_brightness"):
            value = _int_at_least(key, getattr(self, key), 0)
            if value > 100:
                raise InvalidArgument(f"{key} must be a percentage in [0, 100], got {key}={value!r}")
            setattr(self, key, value)

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


def _positive_float(key: str, value: Any) -> float:
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"{key} must be a positive finite number, got {key}={value!r}")
    return float(value)


def _int_at_least(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InvalidArgument(f"{key} must be an integer >= {low}, got {key}={value!r}")
    return int(value)


@dataclass
class HeadResult:
    """A trained softmax head: probabilities = softmax(features @ kernel + bias)."""

    kernel: np.ndarray  # (feature_dim, num_classes) float32
    bias: np.ndarray  # (num_classes,) float32
    history: list[dict[str, Any]]  # one row per evaluation, keys HISTORY_KEYS
    seconds: float  # wall time of the whole training, tracing included


# ---------------------------------------------------------------------------------------------
# In-graph pieces shared with engine/finetune.py


def schedule_lr(schedule: str, lr, end, step, total):
    """The learning rate at 0-based `step` of `total` steps; decays end at `lr * end`.

    `lr`, `end`, `step` and `total` may be tensors, so one trace serves every rate.
    """
    import tensorflow as tf

    if schedule == "constant":
        return lr
    frac = tf.cast(step, tf.float32) / tf.cast(total, tf.float32)
    if schedule == "exponential":
        return lr * tf.pow(end, frac)
    return lr * (end + (1.0 - end) * 0.5 * (1.0 + tf.cos(math.pi * frac)))


def optimizer_update(optimizer: str, params, grads, slots, lr, step):
    """One SGD or Adam update written with tf ops, functional so it runs inside a while loop.

    Args:
        params, grads: lists of tensors. slots: (first moments, second moments), lists like params
            (carried but unused by SGD, so the loop state has one shape for both optimizers).
        lr: learning rate tensor. step: 0-based step index tensor.

    Returns:
        (new params, new slots).
    """
    import tensorflow as tf

    if optimizer == "sgd":
        return [p - lr * g for p, g in zip(params, grads, strict=True)], slots
    beta1, beta2, eps = _ADAM
    t = tf.cast(step, tf.float32) + 1.0
    lr_t = lr * tf.sqrt(1.0 - tf.pow(beta2, t)) / (1.0 - tf.pow(beta1, t))
    ms = [beta1 * m + (1.0 - beta1) * g for m, g in zip(slots[0], grads, strict=True)]
    vs = [beta2 * v + (1.0 - beta2) * tf.square(g) for v, g in zip(slots[1], grads, strict=True)]
    new = [p - lr_t * m / (tf.sqrt(v) + eps) for p, m, v in zip(params, ms, vs, strict=True)]
    return new, (ms, vs)


def _head_metrics(x, y, kernel, bias):
    """(accuracy, mean cross-entropy) of the head on x, y; NaN for an empty set."""
    import tensorflow as tf

    logits = tf.matmul(x, kernel) + bias
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), tf.float32)
    return tf.reduce_mean(correct), tf.reduce_mean(xent)


_CHUNK_FNS: dict[tuple[str, str], Any] = {}


def _chunk_fn(config: TrainConfig):
    """A compiled function running `count` training steps then one evaluation; cached per process.

    Keyed only by what changes the graph (optimizer, schedule), so a learning-rate race or a second
    dataset reuses the trace: sizes and hyper-parameters are tensor inputs.
    """
    key = (config.optimizer, config.schedule)
    if key in _CHUNK_FNS:
        return _CHUNK_FNS[key]
    import tensorflow as tf

    f32, i32 = tf.float32, tf.int32
    mat, vec = tf.TensorSpec([None, None], f32), tf.TensorSpec([None], f32)
    ints, scalar = tf.TensorSpec([None], i32), tf.TensorSpec([], i32)
    state = [mat, vec, mat, vec, mat, vec]  # kernel, bias and Adam's moments of each
    data = [mat, ints, mat, ints]  # train x, y, validation x, y
    ints5 = [scalar] * 5  # start step, steps in this chunk, total steps, batch size, seed
    rates = [tf.TensorSpec([], f32)] * 2  # learning rate, final_lr_fraction

    @tf.function(input_signature=state + data + ints5 + rates)
    def chunk(kernel, bias, mk, mb, vk, vb, x, y, vx, vy, start, count, total, batch, seed, lr, end):
        n = tf.shape(x)[0]
        classes = tf.shape(kernel)[1]

        def sample(step):
            # with replacement, like retrain.py's get_random_cached_bottlenecks
            idx = tf.random.stateless_uniform(
                [batch], seed=tf.stack([seed, step]), minval=0, maxval=n, dtype=i32
            )
            return tf.gather(x, idx), tf.gather(y, idx)

        def body(i, kernel, bias, mk, mb, vk, vb):
            step = start + i
            xb, yb = sample(step)
            probs = tf.nn.softmax(tf.matmul(xb, kernel) + bias)
            # gradient of the mean softmax cross-entropy of a linear layer, written out
            dlogits = (probs - tf.one_hot(yb, classes)) / tf.cast(batch, f32)
            grads = [tf.matmul(xb, dlogits, transpose_a=True), tf.reduce_sum(dlogits, axis=0)]
            rate = schedule_lr(config.schedule, lr, end, step, total)
            (kernel, bias), ((mk, mb), (vk, vb)) = optimizer_update(
                config.optimizer, [kernel, bias], grads, ([mk, mb], [vk, vb]), rate, step
            )
            return i + 1, kernel, bias, mk, mb, vk, vb

        _, kernel, bias, mk, mb, vk, vb = tf.while_loop(
            lambda i, *_: i < count, body, [tf.constant(0), kernel, bias, mk, mb, vk, vb]
        )
        # retrain.py evaluates the batch it just trained on, after the update, and the validation set
        xb, yb = sample(start + count - 1)
        train_acc, train_xent = _head_metrics(xb, yb, kernel, bias)
        val_acc, val_xent = _head_metrics(vx, vy, kernel, bias)
        metrics = tf.stack([train_acc, train_xent, val_acc, val_xent])
        return kernel, bias, mk, mb, vk, vb, metrics

    _CHUNK_FNS[key] = chunk
    return chunk


# ---------------------------------------------------------------------------------------------
# Public API


def _check_features(name: str, x: Any, y: Any, num_classes: int, dim: int | None) -> tuple:
    x = np.asarray(x if x is not None else np.zeros((0, dim or 0)), dtype=np.float32)
    y = np.asarray(y if y is not None else np.zeros((0,)), dtype=np.int32)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise InvalidArgument(
            f"{name} features must be (N, D) with N labels, got {name}_x.shape={x.shape} "
            f"and {name}_y.shape={y.shape}"
        )
    if dim is not None and len(x) and x.shape[1] != dim:
        raise InvalidArgument(f"{name} features have {x.shape[1]} dimensions, train features have {dim}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise InvalidArgument(
            f"{name} labels must be in [0, {num_classes}), got labels from {y.min()} to {y.max()}"
        )
    return x, y


def _metric(value: float, empty: bool) -> float | None:
    # an empty validation set has no metrics (None); a diverged run keeps its NaN/inf as measured
    return None if empty else float(value)


def history_message(row: dict[str, Any], total: int) -> str:
    """One human line for a history row, like retrain.py's log lines."""
    val = row["validation_accuracy"]
    val_text = "n/a" if val is None else f"{val * 100:.1f}%"
    return (
        f"Step {row['step']}/{total}: train accuracy {row['train_accuracy'] * 100:.1f}%, "
        f"cross-entropy {row['train_cross_entropy']:.4f}, validation accuracy {val_text}"
    )


def train_head(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray | None,
    val_y: np.ndarray | None,
    num_classes: int,
    config: TrainConfig | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> HeadResult:
    """Train a linear softmax head on bottleneck features, retrain.py style.

    Every step trains on `batch_size` examples drawn with replacement (so a batch may be larger than
    the training set). After every `eval_interval` steps and after the last step, one history row
    is recorded: train accuracy and cross-entropy on the step's batch, validation accuracy and
    cross-entropy on the whole validation set (None when it is empty). A non-finite loss does not
    stop training; the row records NaN/inf as measured. Each row is also sent as a progress event
    (phase "train", done=step, total=steps) whose extra keys are the row's keys plus `row`.

    Args:
        train_x, train_y: (N, D) float features and N integer labels in [0, num_classes).
        val_x, val_y: the validation set, may be empty or None.
        num_classes: number of classes (>= 2), the head's output size.
        config: the knobs; `TrainConfig()` (retrain.py's defaults) when None.
        progress, cancel: see engine.progress; cancel is checked after every evaluation.

    Returns:
        HeadResult with numpy kernel (D, C) and bias (C,), the history and the wall seconds.

    Raises:
        InvalidArgument: bad shapes, labels or class count. Cancelled: cancel() returned True.
    """
    config = config or TrainConfig()
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise InvalidArgument(f"a classifier needs at least 2 classes, got num_classes={num_classes!r}")
    train_x, train_y = _check_features("train", train_x, train_y, num_classes, None)
    if len(train_x) == 0:
        raise InvalidArgument("no training examples: train_x is empty")
    dim = train_x.shape[1]
    val_x, val_y = _check_features("validation", val_x, val_y, num_classes, dim)
    if len(val_x) == 0:
        val_x = np.zeros((0, dim), np.float32)
    return _train(train_x, train_y, val_x, val_y, int(num_classes), config, progress, cancel)


def _train(train_x, train_y, val_x, val_y, num_classes, config, progress, cancel) -> HeadResult:
    import tensorflow as tf

    start_time = time.perf_counter()
    check_cancel(cancel)
    chunk = _chunk_fn(config)
    dim = train_x.shape[1]
    x, y = tf.constant(train_x), tf.constant(train_y)
    vx, vy = tf.constant(val_x), tf.constant(val_y)
    kernel = tf.random.stateless_truncated_normal(
        [dim, num_classes], seed=[config.seed, -1], stddev=_INIT_STDDEV
    )
    bias = tf.zeros([num_classes])
    zeros = (tf.zeros_like(kernel), tf.zeros_like(bias))
    state = (kernel, bias, *zeros, *zeros)  # Adam's first and second moments start at zero
    total, batch, seed = (tf.constant(v, tf.int32) for v in (config.steps, config.batch_size, config.seed))
    rates = (tf.constant(config.learning_rate), tf.constant(config.final_lr_fraction))
    no_val = len(val_x) == 0
    history: list[dict[str, Any]] = []
    step = 0
    while step < config.steps:
        count = min(config.eval_interval, config.steps - step)
        where = (tf.constant(step), tf.constant(count), total, batch, seed)
        *state, metrics = chunk(*state, x, y, vx, vy, *where, *rates)
        step += count
        m = metrics.numpy()
        row = {
            "step": step,
            "train_accuracy": float(m[0]),
            "train_cross_entropy": float(m[1]),
            "validation_accuracy": _metric(m[2], no_val),
            "validation_cross_entropy": _metric(m[3], no_val),
            "elapsed": round(time.perf_counter() - start_time, 4),
        }
        history.append(row)
        emit(progress, "train", step, config.steps, history_message(row, config.steps), row=row, **row)
        check_cancel(cancel)
    return HeadResult(
        kernel=state[0].numpy(),
        bias=state[1].numpy(),
        history=history,
        seconds=time.perf_counter() - start_time,
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


def __getattr__(name: str):
    # fine-tuning needs Keras models and image pipelines; import it only when asked for
    if name in ("fine_tune", "FineTuneResult", "distort_image"):
        from engine.training import finetune

        return getattr(finetune, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

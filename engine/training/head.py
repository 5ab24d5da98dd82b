"""Head training on cached bottlenecks: retrain.py's final layer, trained by one compiled loop.

The head is one linear softmax layer trained with SGD or Adam on bottleneck features held in memory,
as retrain.py's `add_final_retrain_ops` did. For speed, the `eval_interval` steps between two
evaluations run inside one compiled function: batches are sampled in-graph from tensors already on
the device with a stateless RNG keyed by (seed, step), and the optimizer math (engine/training/optim.py)
is written with tf ops, so Python runs once per evaluation, not once per step, and a seed fixes the
whole history. Fine-tuning through the backbone lives in engine/training/finetune.py.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import InvalidArgument
from engine.progress import CancelFn, ProgressFn, check_cancel, emit
from engine.training.config import TrainConfig
from engine.training.evaluate import history_message, history_row
from engine.training.optim import optimizer_update, schedule_lr

# retrain.py initialises the final layer's weights with truncated_normal(stddev=0.001), biases at 0
_INIT_STDDEV = 0.001


@dataclass
class HeadResult:
    """A trained softmax head: probabilities = softmax(features @ kernel + bias)."""

    kernel: np.ndarray  # (feature_dim, num_classes) float32
    bias: np.ndarray  # (num_classes,) float32
    history: list[dict[str, Any]]  # one row per evaluation, keys HISTORY_KEYS
    seconds: float  # wall time of the whole training, tracing included


# ---------------------------------------------------------------------------------------------
# The compiled loop


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
        # an empty validation set has no metrics (None); a diverged run keeps its NaN/inf as measured
        val = (None, None) if no_val else (m[2], m[3])
        row = history_row(step, m[0], m[1], *val, start_time)
        history.append(row)
        emit(progress, "train", step, config.steps, history_message(row, config.steps), row=row, **row)
        check_cancel(cancel)
    return HeadResult(
        kernel=state[0].numpy(),
        bias=state[1].numpy(),
        history=history,
        seconds=time.perf_counter() - start_time,
    )

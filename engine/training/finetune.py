"""Fine-tuning: train the backbone's top layers and the head end to end on distorted images.

retrain.py's distortions (`add_input_distortions`: random crop, scale, left-right flip and
brightness) change the pixels at every step, so bottlenecks cannot be cached: this path runs every
image through the backbone and bypasses the bottleneck cache. BatchNorm layers stay frozen and in
inference mode, as Keras' transfer-learning guide advises, so small batches cannot wreck their
statistics. Starts from the head that `engine.training.head.train_head` trained on cached features.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from engine.errors import InvalidArgument
from engine.models.backbones import build_feature_extractor, get_backbone
from engine.progress import CancelFn, ProgressFn, check_cancel, emit
from engine.training.config import TrainConfig
from engine.training.evaluate import history_message, history_row
from engine.training.head import HeadResult
from engine.training.model import assemble_classifier
from engine.training.optim import optimizer_update, schedule_lr

BYPASS_NOTE = (
    "Fine-tuning trains end to end on (distorted) images, so it bypasses the bottleneck cache: "
    "every step runs the backbone."
)
_SHUFFLE_BUFFER = 2048  # images held for shuffling a stream whose length is unknown
_CACHE_LIMIT_BYTES = 512 * 2**20  # decoded training images kept in memory below this size
_EVAL_BATCH = 64


@dataclass
class FineTuneResult:
    """A fine-tuned classifier. Unpacks as `model, history` (the API contract's pair)."""

    model: Any  # keras.Model: 0..255 float pixels -> class probabilities (backbone + head)
    kernel: np.ndarray  # the head's final weights (feature_dim, num_classes)
    bias: np.ndarray  # (num_classes,)
    history: list[dict[str, Any]]  # the same rows as head training; step counts fine-tuning steps
    seconds: float
    unfrozen_layers: list[str]  # backbone layers that were trained, bottom to top
    trainable_params: int  # backbone + head parameters that were trained
    bypasses_cache: bool = True  # always: distorted images need fresh bottlenecks every step
    note: str = field(default=BYPASS_NOTE)

    def __iter__(self):
        return iter((self.model, self.history))


# ---------------------------------------------------------------------------------------------
# Distortions


def precrop_size(size: int, config: TrainConfig) -> int:
    """The largest side an image reaches before retrain.py's random crop."""
    return math.ceil(size * (1 + config.random_crop / 100) * (1 + config.random_scale / 100))


def distort_image(image, size: int, config: TrainConfig, seed):
    """retrain.py's distortions of one image, deterministic for a given `seed` (shape [2] ints).

    The image (H, W, 3, 0..255) is resized to `size` x (1 + random_crop%) x a random scale in
    [1, 1 + random_scale%], a `size` x `size` window is cropped at random, mirrored left-right at
    random if flip_left_right, and multiplied by a random brightness in 1 +- random_brightness%.
    Unlike retrain.py the result is clipped to 0..255, the range the backbone's preprocessing expects.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    image = tf.cast(image, tf.float32)
    scale = tf.random.stateless_uniform([], seeds[0], 1.0, 1.0 + config.random_scale / 100)
    side = tf.cast(tf.math.ceil(size * (1.0 + config.random_crop / 100) * scale), tf.int32)
    image = tf.image.resize(image, tf.stack([side, side]))
    image = tf.image.stateless_random_crop(image, [size, size, 3], seeds[1])
    if config.flip_left_right:
        image = tf.image.stateless_random_flip_left_right(image, seeds[2])
    if config.random_brightness:
        low, high = 1.0 - config.random_brightness / 100, 1.0 + config.random_brightness / 100
        image = image * tf.random.stateless_uniform([], seeds[3], low, high)
    return tf.clip_by_value(image, 0.0, 255.0)


# ---------------------------------------------------------------------------------------------
# Image sources: an engine.data.datasets.Dataset, (images, labels) arrays, or a tf.data pipeline


class _Source(NamedTuple):
    """Unbatched (image, label) elements, their count if known, and whether to cache them decoded."""

    data: Any  # tf.data.Dataset
    length: int | None
    cache: bool


def _arrays_source(pair, name: str, num_classes: int) -> _Source:
    import tensorflow as tf

    if not isinstance(pair, tuple | list) or len(pair) != 2:
        kind = type(pair).__name__
        raise InvalidArgument(f"{name} must be (images, labels) or a tf.data.Dataset, got {kind}")
    images, labels = np.asarray(pair[0], np.float32), np.asarray(pair[1], np.int32)
    if images.ndim != 4 or images.shape[-1] != 3 or labels.shape != (len(images),):
        raise InvalidArgument(
            f"{name} images must be (N, H, W, 3) with N labels, got images.shape={images.shape} "
            f"and labels.shape={labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        low, high = labels.min(), labels.max()
        raise InvalidArgument(f"{name} labels must be in [0, {num_classes}), got labels {low}..{high}")
    return _Source(tf.data.Dataset.from_tensor_slices((images, labels)), len(images), cache=False)


def _records_source(records, label_index: dict[str, int], side: int) -> _Source:
    """Images of dataset records decoded by engine.data.images (EXIF, colour modes) at side x side."""
    import tensorflow as tf

    from engine.data.images import load_image

    paths = [r.path for r in records]
    labels = np.array([label_index[r.label] for r in records], np.int32)

    def load(path):
        return load_image(path.numpy().decode(), size=side)

    def load_tf(path, label):
        image = tf.py_function(load, [path], tf.uint8)
        return tf.ensure_shape(image, [side, side, 3]), label

    data = tf.data.Dataset.from_tensor_slices((paths, labels))
    data = data.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE)
    small = len(paths) * side * side * 3 <= _CACHE_LIMIT_BYTES
    return _Source(data, len(paths), cache=small)


def _sources(data, size: int, config: TrainConfig, num_classes: int) -> tuple[_Source, _Source | None]:
    """The training and validation sources (validation None when there is none)."""
    import tensorflow as tf

    if hasattr(data, "split") and hasattr(data, "label_index"):  # engine.data.datasets.Dataset
        train = _records_source(data.split("train"), data.label_index, precrop_size(size, config))
        val_records = data.split("validation")
        val = _records_source(val_records, data.label_index, size) if val_records else None
    elif isinstance(data, Mapping) and "train" in data:

        def source(value, name):
            if value is None:
                return None
            if isinstance(value, tf.data.Dataset):
                return _Source(value, None, cache=False)  # the caller owns its caching
            return _arrays_source(value, name, num_classes)

        train, val = source(data["train"], "train"), source(data.get("validation"), "validation")
    else:
        raise InvalidArgument(
            "fine_tune needs an engine.data.datasets.Dataset or a dict with 'train' (and optionally "
            f"'validation'), got {type(data).__name__}"
        )
    if train is None or train.length == 0:
        raise InvalidArgument("fine_tune needs training images, got an empty training set")
    return train, val


def _train_stream(train: _Source, size: int, config: TrainConfig):
    """Endless batches of distorted training images, fixed by config.seed."""
    import tensorflow as tf

    data = train.data.cache() if train.cache else train.data  # decode each image once
    buffer = min(train.length, _SHUFFLE_BUFFER) if train.length else _SHUFFLE_BUFFER
    # epochs of shuffled images (retrain.py drew images with replacement; both are uniform)
    data = data.shuffle(buffer, seed=config.seed, reshuffle_each_iteration=True).repeat()

    def distort(index, element):
        image, label = element
        seed = tf.stack([tf.constant(config.seed, tf.int64), index])
        return distort_image(image, size, config, seed), tf.cast(label, tf.int32)

    data = data.enumerate().map(distort, num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(config.fine_tune_batch_size, drop_remainder=True).prefetch(2)


def _val_stream(val, size: int):
    import tensorflow as tf

    def prepare(image, label):
        return tf.image.resize(tf.cast(image, tf.float32), [size, size]), tf.cast(label, tf.int32)

    return val.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(_EVAL_BATCH).cache()


# ---------------------------------------------------------------------------------------------
# Unfreezing and training


def unfreeze_top_layers(feature_model, count: int) -> list[str]:
    """Make only the top `count` weighted non-BatchNorm layers of the backbone trainable.

    BatchNorm layers stay frozen (Keras 3 then runs them in inference mode).

    Returns:
        The names of the unfrozen layers, bottom to top.

    Raises:
        InvalidArgument: the backbone has fewer such layers than `count`.
    """
    import keras

    layers = _leaf_layers(feature_model)
    candidates = [
        layer for layer in layers if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    if count > len(candidates):
        raise InvalidArgument(
            f"fine_tune_layers must be at most {len(candidates)} for {feature_model.name}, "
            f"got fine_tune_layers={count!r}"
        )
    feature_model.trainable = True  # nested models: a frozen parent would override its layers
    chosen = candidates[len(candidates) - count :] if count else []
    for layer in layers:
        layer.trainable = any(layer is c for c in chosen)
    return [layer.name for layer in chosen]


def _leaf_layers(model) -> list:
    """Every non-container layer of a (possibly nested) Keras model, input to output."""
    leaves = []
    for layer in model.layers:
        leaves.extend(_leaf_layers(layer) if getattr(layer, "layers", None) else [layer])
    return leaves


def _head_arrays(head, dim: int) -> tuple[np.ndarray, np.ndarray]:
    kernel, bias = (head.kernel, head.bias) if isinstance(head, HeadResult) else head
    kernel, bias = np.asarray(kernel, np.float32), np.asarray(bias, np.float32)
    if kernel.ndim != 2 or kernel.shape[0] != dim or bias.shape != (kernel.shape[1],):
        raise InvalidArgument(
            f"the head must be a ({dim}, C) kernel and (C,) bias for this backbone, "
            f"got kernel.shape={kernel.shape} and bias.shape={bias.shape}"
        )
    return kernel, bias


def fine_tune(
    data,
    backbone: str,
    weights: str = "imagenet",
    config: TrainConfig | None = None,
    head: HeadResult | tuple[np.ndarray, np.ndarray] | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    feature_model=None,
) -> FineTuneResult:
    """Train the top `config.fine_tune_layers` backbone layers and the head on distorted images.

    Args:
        data: an `engine.data.datasets.Dataset` (its "train" and "validation" splits are read from disk),
            or a dict {"train": T, "validation": V (optional)} where each is (images, labels) arrays
            of 0..255 float pixels (N, H, W, 3) and integer labels, or a tf.data.Dataset of
            unbatched (image, label) pairs. Images of any size are resized to the backbone's input.
        backbone, weights: the registry name and "imagenet" | "random" of the feature model to build.
        config: fine_tune_layers, fine_tune_steps, fine_tune_batch_size, fine_tune_learning_rate,
            optimizer, schedule, eval_interval, seed and the distortion percentages are used.
        head: the trained head to start from (a HeadResult or (kernel, bias)); required.
        progress, cancel: see engine.progress; phase "fine_tune", one event per history row.
        feature_model: an already built `build_feature_extractor(backbone, weights)` to reuse.

    Returns:
        FineTuneResult (unpacks as `model, history`); `bypasses_cache` is True.

    Raises:
        InvalidArgument: bad data, head shape or layer count. Cancelled: cancel() returned True.
    """
    config = config or TrainConfig()
    if head is None:
        raise InvalidArgument("fine_tune starts from a trained head; pass head=train_head(...)")
    started = time.perf_counter()
    size = get_backbone(backbone).input_size
    if feature_model is None:  # building (and loading weights) takes seconds: say so before
        emit(progress, "fine_tune", 0, config.fine_tune_steps, f"Building {backbone} for fine-tuning")
        feature_model = build_feature_extractor(backbone, weights=weights, seed=config.seed)
    kernel, bias = _head_arrays(head, int(feature_model.output.shape[-1]))
    train, val = _sources(data, size, config, num_classes=kernel.shape[1])
    unfrozen = unfreeze_top_layers(feature_model, config.fine_tune_layers)
    total = config.fine_tune_steps
    emit(progress, "fine_tune", 0, total, f"Unfroze {len(unfrozen)} layers. {BYPASS_NOTE}")
    check_cancel(cancel)

    net = _EndToEnd(feature_model, kernel, bias, config)
    emit(progress, "fine_tune", 0, total, "Preparing the image pipeline (decoding and distorting)")
    stream = iter(_train_stream(train, size, config))
    val_batches = _val_stream(val.data, size) if val is not None else None
    history = _run_steps(net, stream, val_batches, config, progress, cancel, started)
    kernel, bias = net.kernel.numpy(), net.bias.numpy()
    return FineTuneResult(
        model=assemble_classifier(feature_model, kernel, bias, backbone),
        kernel=kernel,
        bias=bias,
        history=history,
        seconds=time.perf_counter() - started,
        unfrozen_layers=unfrozen,
        trainable_params=int(sum(np.prod(v.shape) for v in net.variables)),
    )


class _EndToEnd:
    """The backbone's trainable layers and the head as variables, with a compiled step and scorer."""

    def __init__(self, feature_model, kernel: np.ndarray, bias: np.ndarray, config: TrainConfig) -> None:
        import tensorflow as tf

        self.model, self.config = feature_model, config
        self.kernel = tf.Variable(kernel, name="head_kernel")
        self.bias = tf.Variable(bias, name="head_bias")
        self.variables = [*feature_model.trainable_variables, self.kernel, self.bias]
        self.slots: tuple[list, list] = ([], [])  # Adam's first and second moments; SGD has none
        if config.optimizer == "adam":
            self.slots = tuple(
                [tf.Variable(tf.zeros(v.shape, v.dtype)) for v in self.variables] for _ in range(2)
            )
        rates = (config.fine_tune_learning_rate, config.final_lr_fraction)
        self.rate, self.end = (tf.constant(v, tf.float32) for v in rates)
        self.total = tf.constant(config.fine_tune_steps)
        self.train_step = tf.function(self._train_step)
        self.score = tf.function(self._score)

    def _logits(self, images):
        import tensorflow as tf

        # training=False keeps BatchNorm in inference mode while the unfrozen weights still learn
        return tf.matmul(self.model(images, training=False), self.kernel) + self.bias

    def _score(self, images, labels):
        """(correct predictions, summed cross-entropy) on one batch."""
        import tensorflow as tf

        logits = self._logits(images)
        xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels), tf.float32)
        return tf.reduce_sum(correct), tf.reduce_sum(xent)

    def _train_step(self, images, labels, step):
        import tensorflow as tf

        config, slots = self.config, self.slots
        with tf.GradientTape() as tape:
            logits = self._logits(images)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
        grads = tape.gradient(loss, self.variables)
        rate = schedule_lr(config.schedule, self.rate, self.end, step, self.total)
        params = [tf.convert_to_tensor(v) for v in self.variables]
        moments = ([m.value() for m in slots[0]], [v.value() for v in slots[1]])
        new, moments = optimizer_update(config.optimizer, params, grads, moments, rate, step)
        pairs = zip([*self.variables, *slots[0], *slots[1]], [*new, *moments[0], *moments[1]], strict=True)
        for var, value in pairs:
            var.assign(value)


def _run_steps(net: _EndToEnd, stream, val_batches, config: TrainConfig, progress, cancel, started) -> list:
    """Train `fine_tune_steps` steps, recording a history row after the first step (so the curves start
    at once), every `eval_interval` steps and at the end; every step reports its progress."""
    import tensorflow as tf

    history: list[dict[str, Any]] = []
    total = config.fine_tune_steps
    for step in range(total):
        if step == 0:  # the first step traces and compiles the graph: seconds, worth saying
            emit(progress, "fine_tune", 0, total, "Compiling the training step (the first step builds it)")
        images, labels = next(stream)
        net.train_step(images, labels, tf.constant(step))
        check_cancel(cancel)
        done = step + 1
        if done != 1 and done % config.eval_interval and done != total:
            emit(progress, "fine_tune", done, total, f"Fine-tuning step {done:,} of {total:,}")
            continue
        row = _measure(net, images, labels, val_batches, done, started)
        history.append(row)
        emit(progress, "fine_tune", done, total, history_message(row, total), row=row, **row)
    return history


def _measure(net: _EndToEnd, images, labels, val_batches, step: int, started: float) -> dict[str, Any]:
    """The history row after `step`: the batch just trained on, then the whole validation set."""
    correct, xent = (float(v) / len(labels) for v in net.score(images, labels))
    val_acc = val_xent = None
    if val_batches is not None:
        sums = np.zeros(3)
        for vimages, vlabels in val_batches:
            sums += [*(float(v) for v in net.score(vimages, vlabels)), len(vlabels)]
        if sums[2]:
            val_acc, val_xent = sums[0] / sums[2], sums[1] / sums[2]
    return history_row(step, correct, xent, val_acc, val_xent, started)

"""The tf.data decode pipeline: image files -> batches of resized float32 pixels, in input order.

Images TensorFlow decodes like Pillow does are read, decoded and resized by TensorFlow ops in
parallel; the others go through `images.load_image` inside the same pipeline. `PIPELINE_VERSION`
names what these pixels are, so cached bottlenecks of an older decoder stop matching.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.data import images
from engine.errors import InvalidArgument

# Bump when decoding or resizing changes: the cached vectors of older versions stop matching.
PIPELINE_VERSION = "decode-v2"  # JPEG draft scaling, antialiased bilinear, rounded


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class PipelineSettings:
    """Threading of the decode pipeline; `bench/bench_extract.py --sweep` measures the choices.

    On 2 cores (quiet rounds, x the decode+forward limit): these defaults 1.00; autotuning on 0.53
    in about half the runs (the iterator-deletion stall); 1 decoder 0.91; op fan-out 0.97; shared
    pool or 4 decoders within noise of the defaults; batch 8 0.84, 16 0.96, 64 1.01, 128 0.98.
    """

    # images decoded at once (map's num_parallel_calls); -1 = tf.data AUTOTUNE
    decode_threads: int = field(default_factory=_cores)
    # a thread pool only the decoders use, so they never queue behind the model's inter-op work
    # (no measurable gain on 2 cores, a safeguard on more); 0 = share TensorFlow's inter-op pool
    private_pool: int = field(default_factory=_cores)
    # threads one decode/resize may fan out to; 1 because parallelism comes from decoding several
    # images at once, and op-level fan-out would fight the model's intra-op threads; 0 = default
    op_threads: int = 1
    # batches decoded ahead of the model; -1 = AUTOTUNE (grows buffers, costs memory, no speed here)
    prefetch: int = 2
    # tf.data's autotuning thread; off because the sizes above are fixed, and with it on, deleting
    # the iterator waits up to ~0.6 s for that thread (nearly as long as a 200-image extraction)
    autotune: bool = False


SETTINGS = PipelineSettings()


def _dataset_options(settings: PipelineSettings):
    import tensorflow as tf

    options = tf.data.Options()
    if settings.op_threads:
        options.threading.max_intra_op_parallelism = settings.op_threads
    if settings.private_pool:
        options.threading.private_threadpool_size = settings.private_pool
    options.autotune.enabled = settings.autotune or settings.decode_threads < 0 or settings.prefetch < 0
    options.deterministic = True  # errors and vectors come back in input order
    return options


def _resize(image, size: int):
    import tensorflow as tf

    # Antialiased bilinear then rounded to integers: the pixels Pillow's bilinear resize gives
    # (images.load_image, which classification uses), so training and inference see alike inputs.
    resized = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def _decode_jpeg_scaled(data, size: int):
    """Decode a JPEG at 1/2, 1/4 or 1/8 scale when it is that much larger than `size`.

    The same choice Pillow's `draft` makes in images.load_image: a 12-megapixel photo decodes
    ~8x faster, and the pixels stay close to what classification sees.
    """
    import tensorflow as tf

    shape = tf.io.extract_jpeg_shape(data)
    fits = tf.minimum(shape[0], shape[1]) // size  # how many times `size` fits the short side
    branch = tf.reduce_sum(tf.cast(fits >= tf.constant([2, 4, 8], fits.dtype), tf.int32))
    return tf.switch_case(
        branch, [functools.partial(tf.io.decode_jpeg, data, channels=3, ratio=r) for r in (1, 2, 4, 8)]
    )


def decode_dataset(
    paths: Sequence[str],
    needs_pil: Sequence[bool],
    size: int,
    batch_size: int = 32,
    settings: PipelineSettings | None = None,
):
    """The tf.data pipeline `extract_features` runs: batches of float32 0..255 (b, size, size, 3).

    Images TensorFlow decodes like Pillow does (`needs_pil` False) are read, decoded and resized by
    TensorFlow ops in parallel; the others go through `images.load_image` (EXIF, CMYK, 16-bit,
    palette, alpha) inside the same pipeline, so order is kept and batches stay whole.
    `settings` defaults to the module's `SETTINGS`.
    """
    import tensorflow as tf

    settings = settings or SETTINGS
    parallel = tf.data.AUTOTUNE if settings.decode_threads < 0 else settings.decode_threads
    prefetch = tf.data.AUTOTUNE if settings.prefetch < 0 else settings.prefetch

    def tf_decode(path):
        data = tf.io.read_file(path)
        image = tf.cond(
            tf.io.is_jpeg(data),
            lambda: _decode_jpeg_scaled(data, size),
            lambda: tf.io.decode_png(data, channels=3),
        )
        image.set_shape([None, None, 3])
        return _resize(image, size)

    def pil_decode(path):
        image = tf.numpy_function(lambda p: images.load_image(p.decode(), size), [path], tf.uint8)
        image.set_shape([size, size, 3])
        return tf.cast(image, tf.float32)

    flags = [bool(f) for f in needs_pil]
    if len(flags) != len(paths):
        raise InvalidArgument(f"need one needs_pil flag per path, got {len(flags)} for {len(paths)}")
    if not any(flags):
        ds = tf.data.Dataset.from_tensor_slices(list(map(str, paths))).map(
            tf_decode, num_parallel_calls=parallel
        )
    elif all(flags):
        ds = tf.data.Dataset.from_tensor_slices(list(map(str, paths))).map(
            pil_decode, num_parallel_calls=parallel
        )
    else:
        ds = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), flags)).map(
            lambda p, pil: tf.cond(pil, lambda: pil_decode(p), lambda: tf_decode(p)),
            num_parallel_calls=parallel,
        )
    return ds.batch(batch_size).prefetch(prefetch).with_options(_dataset_options(settings))

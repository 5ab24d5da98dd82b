"""Batched bottleneck extraction with an on-disk cache keyed by backbone, weights and image content.

retrain.py ran the backbone once per image and cached one text file per image and architecture;
here a tf.data pipeline decodes and resizes in parallel, one compiled forward function runs whole
batches, and the vectors land in one SQLite file keyed by (model key, content hash), so a second
run, or another dataset holding the same images, extracts nothing.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from engine import config
from engine.data import images
from engine.errors import BadImage, InvalidArgument
from engine.models import backbones
from engine.progress import CancelFn, ProgressFn, check_cancel, emit

# Bump when decoding or resizing changes: the cached vectors of older versions stop matching.
PIPELINE_VERSION = "decode-v2"  # JPEG draft scaling, antialiased bilinear, rounded
CACHE_FILE = "features.sqlite"

# SQLite caps the number of "?" in one statement; lookups go in chunks below that.
_SQL_CHUNK = 500
_BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS features (
    model_key  TEXT NOT NULL,
    image_hash TEXT NOT NULL,
    dim        INTEGER NOT NULL,
    vector     BLOB NOT NULL,
    created    REAL NOT NULL,
    PRIMARY KEY (model_key, image_hash)
);
CREATE TABLE IF NOT EXISTS timings (
    model_key          TEXT PRIMARY KEY,
    seconds_per_image  REAL NOT NULL,
    images             INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class ExtractionStats:
    """What one `extract_features` call did and what the cache saved."""

    hits: int  # inputs served from the cache (incl. repeats of an image extracted in this call)
    misses: int  # distinct images that went through the backbone in this call
    seconds: float  # wall time of the whole call (hashing, lookup, model, cache writes)
    seconds_saved: float  # estimate: hits x seconds per image measured now or by an earlier call
    cache_bytes: int  # size of the cache file on disk afterwards
    images_per_second: float  # misses / seconds spent extracting them (0.0 when nothing was extracted)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FeatureSet:
    """Bottleneck vectors in input order, with the content hash of each input."""

    features: np.ndarray  # (N, feature_dim) float32
    hashes: list[str]
    stats: ExtractionStats


def file_hash(path: str | Path) -> str:
    """SHA-256 (hex) of the file's bytes: the identity of an image whatever its name or folder.

    Raises:
        BadImage: the file cannot be read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise BadImage(f"{path.name}: cannot read file ({exc.strerror or exc})") from None


@functools.lru_cache(maxsize=32)
def _weights_digest(path: str, size: int, mtime_ns: int) -> str:
    # keyed by size and mtime so a replaced file is hashed again; large files hash in ~0.1 s
    del size, mtime_ns
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def model_key(backbone: str, weights: str = "imagenet", seed: int | None = 0) -> str:
    """The cache key of a feature extractor: architecture, exact weights, and pipeline version.

    ImageNet weights are identified by file name, size and content hash (a re-downloaded or
    different file gives new keys); random weights by seed and the Keras version, since the
    initialisers may draw differently across releases.

    Raises:
        NotFound: unknown backbone.  InvalidArgument: bad weights.  WeightsMissing: not cached, offline.
    """
    entry = backbones.get_backbone(backbone)
    backbones.check_weights(weights)
    if weights == "imagenet":
        path = backbones.ensure_weights(backbone)
        st = path.stat()
        digest = _weights_digest(str(path), st.st_size, st.st_mtime_ns)
        ident = f"imagenet:{path.name}:{st.st_size}:{digest}"
    else:
        ident = f"random:seed={seed}:keras={metadata.version('keras')}"
    return f"{entry.name}|{entry.input_size}|{ident}|{PIPELINE_VERSION}"


class FeatureCache:
    """Float32 vectors in one SQLite file, keyed (model_key, image_hash).

    WAL mode plus a busy timeout makes it safe for several processes (jobs, the app) at once;
    each call opens its own short-lived connection, so instances may be shared between threads.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else config.cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / CACHE_FILE
        with closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable enough for a cache, far fewer fsyncs
        return conn

    def get_many(self, model_key: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `hashes` (missing ones are simply absent from the result)."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        with closing(self._connect()) as conn:
            for start in range(0, len(wanted), _SQL_CHUNK):
                chunk = wanted[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT image_hash, dim, vector FROM features "
                    f"WHERE model_key = ? AND image_hash IN ({marks})",
                    [model_key, *chunk],
                )
                for image_hash, dim, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.size == dim:  # a torn or foreign row is treated as a miss
                        found[image_hash] = vector
        return found

    def put_many(self, model_key: str, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Store one vector per hash (rows of `vectors`), replacing what was there, in one transaction."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(hashes) != len(vectors):
            raise InvalidArgument(
                f"put_many needs one row per hash, got {len(hashes)} hashes and shape {vectors.shape}"
            )
        now = time.time()
        rows = [
            (model_key, h, int(v.size), np.ascontiguousarray(v).tobytes(), now)
            for h, v in zip(hashes, vectors, strict=True)
        ]
        with closing(self._connect()) as conn, conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?)", rows)

    def count(self, model_key: str | None = None) -> int:
        """Number of cached vectors, for one model key or in total."""
        with closing(self._connect()) as conn:
            if model_key is None:
                return conn.execute("SELECT COUNT(*) FROM features").fetchone()[0]
            sql = "SELECT COUNT(*) FROM features WHERE model_key = ?"
            return conn.execute(sql, (model_key,)).fetchone()[0]

    def clear(self, model_key: str | None = None) -> None:
        """Forget the vectors of one model key, or everything."""
        with closing(self._connect()) as conn, conn:
            if model_key is None:
                conn.execute("DELETE FROM features")
                conn.execute("DELETE FROM timings")
            else:
                conn.execute("DELETE FROM features WHERE model_key = ?", (model_key,))
                conn.execute("DELETE FROM timings WHERE model_key = ?", (model_key,))
        if model_key is None:
            with closing(self._connect()) as conn:
                conn.execute("VACUUM")

    def size_bytes(self) -> int:
        """Bytes on disk: the database plus its write-ahead log."""
        return sum(
            p.stat().st_size
            for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
            if p.exists()
        )

    def timing(self, model_key: str) -> tuple[float, int] | None:
        """(seconds per image, images measured) of the last sizeable extraction for `model_key`."""
        with closing(self._connect()) as conn:
            row = conn.execute(
                "SELECT seconds_per_image, images FROM timings WHERE model_key = ?", (model_key,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def set_timing(self, model_key: str, seconds_per_image: float, sample: int) -> None:
        """Remember the cost per image measured on `sample` images, to estimate what hits save."""
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "INSERT OR REPLACE INTO timings VALUES (?, ?, ?)", (model_key, seconds_per_image, sample)
            )


# ---------------------------------------------------------------------------------------------
# The compiled extractor and the decode pipeline


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


@dataclass(frozen=True)
class Extractor:
    """A built backbone behind one compiled forward function (0..255 pixels -> features)."""

    name: str
    key: str  # model_key(...) of the weights it was built with
    input_size: int
    feature_dim: int
    model: Any  # the keras.Model (backbones.build_feature_extractor)
    forward: Any  # tf.function over `model`: float32 (batch, size, size, 3) -> (batch, feature_dim)
    build_seconds: float  # building the model plus tracing the forward function


def feature_extractor(backbone: str, weights: str = "imagenet", seed: int | None = 0) -> Extractor:
    """The compiled extractor for (backbone, weights, seed); the last two stay built in memory."""
    return _build_extractor(backbone, weights, seed, model_key(backbone, weights, seed))


@functools.lru_cache(maxsize=2)
def _build_extractor(name: str, weights: str, seed: int | None, key: str) -> Extractor:
    import tensorflow as tf

    start = time.perf_counter()
    entry = backbones.get_backbone(name)
    model = backbones.build_feature_extractor(name, weights=weights, seed=seed)
    spec = tf.TensorSpec([None, entry.input_size, entry.input_size, 3], tf.float32)
    # one signature with a free batch dimension: the short last batch does not retrace
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    forward.get_concrete_function()
    seconds = time.perf_counter() - start
    return Extractor(name, key, entry.input_size, entry.feature_dim, model, forward, seconds)


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


# ---------------------------------------------------------------------------------------------
# extract_features


@dataclass
class _Todo:
    """One distinct image still to extract."""

    image_hash: str
    path: str
    needs_pil: bool


def _inputs(records_or_paths: Iterable[Any]) -> list[tuple[str, bool | None]]:
    """(path, needs_pil) per input; None when a plain path still has to be probed."""
    items = []
    for item in records_or_paths:
        if hasattr(item, "path") and hasattr(item, "needs_pil"):  # an ImageRecord
            items.append((str(item.path), bool(item.needs_pil)))
        elif isinstance(item, str | os.PathLike):
            items.append((os.fspath(item), None))
        else:
            raise InvalidArgument(f"expected image records or paths, got {type(item).__name__}: {item!r}")
    return items


def _check_args(backbone: str, weights: str, batch_size: int) -> None:
    backbones.get_backbone(backbone)
    backbones.check_weights(weights)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgument(f"batch_size must be a positive integer, got batch_size={batch_size!r}")


def extract_features(
    records_or_paths: Iterable[Any],
    backbone: str,
    weights: str = "imagenet",
    *,
    seed: int | None = 0,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    cache: FeatureCache | None = None,
) -> FeatureSet:
    """Bottleneck features of each image, in input order, reusing and filling the cache.

    Args:
        records_or_paths: `datasets.ImageRecord`s (their `needs_pil` picks the decoder) or paths
            (probed with `images.probe_image`).
        backbone: registry name.  weights: "imagenet" or "random".  seed: for random weights.
        batch_size: images per forward call.
        progress: receives phase "extract" events (done/total images, hits, misses).
        cancel: checked between batches; batches already extracted stay cached.
        cache: defaults to `FeatureCache()` under `config.cache_dir()`.

    Returns:
        FeatureSet with features (N, feature_dim) float32, the content hashes, and stats.

    Raises:
        BadImage (names the file), Cancelled, NotFound, InvalidArgument, WeightsMissing.
    """
    start = time.perf_counter()
    _check_args(backbone, weights, batch_size)
    items = _inputs(records_or_paths)
    cache = cache if cache is not None else FeatureCache()
    key = model_key(backbone, weights, seed)
    dim = backbones.get_backbone(backbone).feature_dim
    total = len(items)

    hashes = [file_hash(path) for path, _ in items]
    found = {h: v for h, v in cache.get_many(key, hashes).items() if v.size == dim}
    todo: dict[str, _Todo] = {}
    for (path, pil), h in zip(items, hashes, strict=True):
        if h not in found and h not in todo:
            todo[h] = _Todo(h, path, images.probe_image(path).needs_pil if pil is None else pil)
    uses = Counter(hashes)
    done = sum(uses[h] for h in found)
    misses = len(todo)
    hits = total - sum(uses[h] for h in todo)
    emit(
        progress,
        "extract",
        done,
        total,
        f"{hits} of {total} images cached, extracting {misses}",
        hits=hits,
        misses=misses,
    )

    extract_seconds = 0.0
    if todo:
        extractor = feature_extractor(backbone, weights, seed)
        t0 = time.perf_counter()
        # Writes go to one background thread so the next batch's forward pass overlaps them;
        # leaving the block (also on Cancelled or BadImage) waits for every queued write.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-cache") as writer:
            writes = []
            for batch_hashes, vectors in _extract_batches(list(todo.values()), extractor, batch_size, cancel):
                writes.append(writer.submit(cache.put_many, key, batch_hashes, vectors))
                found.update(zip(batch_hashes, vectors, strict=True))
                done += sum(uses[h] for h in batch_hashes)
                message = f"Extracted {done} of {total} bottlenecks"
                emit(progress, "extract", done, total, message, hits=hits, misses=misses)
        for write in writes:
            write.result()  # a failed write raises here
        extract_seconds = time.perf_counter() - t0

    features = (
        np.stack([found[h] for h in hashes]).astype(np.float32, copy=False)
        if hashes
        else np.zeros((0, dim), np.float32)
    )
    stats = _stats(cache, key, total, misses, extract_seconds, time.perf_counter() - start)
    return FeatureSet(features=features, hashes=hashes, stats=stats)


def _stats(cache: FeatureCache, key: str, total: int, misses: int, extract_seconds: float, seconds: float):
    # the per-image cost measured now, or remembered from an earlier sizeable extraction
    if misses >= 16 or (misses and cache.timing(key) is None):
        cache.set_timing(key, extract_seconds / misses, misses)
    known = cache.timing(key)
    per_image = extract_seconds / misses if misses else (known[0] if known else 0.0)
    hits = total - misses
    return ExtractionStats(
        hits=hits,
        misses=misses,
        seconds=round(seconds, 4),
        seconds_saved=round(hits * per_image, 4),
        cache_bytes=cache.size_bytes(),
        images_per_second=round(misses / extract_seconds, 2) if extract_seconds > 0 else 0.0,
    )


def _extract_batches(todo: list[_Todo], extractor: Extractor, batch_size: int, cancel: CancelFn | None):
    """Yield (hashes, vectors) per batch, in order.

    A batch TensorFlow cannot decode is checked image by image with Pillow: a broken file raises
    `BadImage` naming it; otherwise the batch is decoded by Pillow and the pipeline resumes there.
    """
    import tensorflow as tf

    pos = 0
    switched: set[int] = set()  # batch starts moved to the Pillow decoder after TensorFlow failed
    while pos < len(todo):
        rest = todo[pos:]
        paths, flags = [t.path for t in rest], [t.needs_pil for t in rest]
        batches = iter(decode_dataset(paths, flags, extractor.input_size, batch_size))
        while pos < len(todo):
            check_cancel(cancel)
            try:
                pixels = next(batches)
            except tf.errors.OpError as exc:
                _recover(todo[pos : pos + batch_size], extractor.input_size, exc, pos in switched)
                switched.add(pos)
                break
            vectors = extractor.forward(pixels).numpy()
            chunk = todo[pos : pos + len(vectors)]
            yield [t.image_hash for t in chunk], vectors
            pos += len(chunk)


def _recover(chunk: list[_Todo], size: int, exc: Exception, already_switched: bool) -> None:
    if already_switched:
        names = ", ".join(Path(t.path).name for t in chunk)
        raise BadImage(f"cannot decode one of {names}: {getattr(exc, 'message', exc)}") from None
    for item in chunk:  # raises BadImage with Pillow's reason for the broken file, if there is one
        images.load_image(item.path, size)
    for item in chunk:
        item.needs_pil = True

"""Batched bottleneck extraction: one compiled forward pass over decoded batches, filling the cache.

retrain.py ran the backbone once per image and cached one text file per image and architecture;
here the tf.data pipeline of engine/features/decode.py decodes and resizes in parallel, one
compiled forward function runs whole batches, and the vectors land in the SQLite cache of
engine/features/cache.py, so a second run, or another dataset holding the same images, extracts
nothing. An image that cannot be read or decoded is skipped with its reason, never the whole call.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from engine.data import images
from engine.errors import BadImage, InvalidArgument, LabError
from engine.features import litert, onnx_forward
from engine.features.cache import FeatureCache, file_hash, model_key
from engine.features.decode import decode_dataset
from engine.models import backbones
from engine.progress import CancelFn, ProgressFn, check_cancel, emit


@dataclass(frozen=True)
class ExtractionStats:
    """What one `extract_features` call did and what the cache saved."""

    hits: int  # inputs served from the cache (incl. repeats of an image extracted in this call)
    misses: int  # distinct images that went through the backbone in this call
    seconds: float  # wall time of the whole call (hashing, lookup, model, cache writes)
    seconds_saved: float  # estimate: hits x seconds per image measured now or by an earlier call
    cache_bytes: int  # size of the cache file on disk afterwards
    images_per_second: float  # misses / seconds spent extracting them (0.0 when nothing was extracted)
    # inputs left out because their file could not be read or decoded: {"path", "reason"} each,
    # so a run lists them instead of failing on one truncated or corrupt image
    skipped: tuple[dict[str, str], ...] = ()
    # which runtime ran the backbone ("litert", "onnx" or "tensorflow"; "" when nothing was
    # extracted), and why neither converted runtime when TensorFlow did
    runtime: str = ""
    fallback_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FeatureSet:
    """Bottleneck vectors in input order, with the content hash of each input.

    Inputs in `stats.skipped` have no row: `kept` maps each row back to its input's index.
    """

    features: np.ndarray  # (N kept, feature_dim) float32
    hashes: list[str]  # content hash of each row's image
    stats: ExtractionStats
    kept: np.ndarray  # (N kept,) int index of each row's input; all inputs unless some were skipped


@dataclass(frozen=True)
class Extractor:
    """A built backbone behind one forward function (0..255 pixels -> features).

    `runtime` says which runtime runs it: "litert" or "onnx" (the converted backbone of
    engine/features/litert, XNNPACK, or engine/features/onnx_forward, ONNX Runtime's CPU provider;
    `model` is None, the Keras model was not even built) or "tensorflow" (one compiled tf.function
    over `model`), with `fallback_reason` saying why no converted runtime was used.
    """

    name: str
    key: str  # model_key(...) of the weights it was built with
    input_size: int
    feature_dim: int
    model: Any  # the keras.Model (backbones.build_feature_extractor); None for LiteRT and ONNX
    forward: Any  # float32 (batch, size, size, 3) -> (batch, feature_dim), a tensor or an array
    build_seconds: float  # building (or loading, or converting) plus tracing the forward function
    runtime: str = "tensorflow"
    fallback_reason: str = ""

    def run(self, pixels) -> np.ndarray:
        """Features of a batch of pixels, as a float32 array."""
        out = self.forward(pixels if self.runtime == "tensorflow" else np.asarray(pixels))
        return out.numpy() if hasattr(out, "numpy") else out


# the converted runtimes, each a module with available/known_failure/cached/details/load/convert
CONVERTED = {"litert": litert, "onnx": onnx_forward}
# "auto" compares recorded CPU ms per image times this factor: ONNX Runtime runs only when its figure
# is more than 10% below LiteRT's. Closer than that is noise between two conversions measured on a
# shared machine, and LiteRT measured as fast or faster at batch 32 on both timed backbones
# (mobilenet_0.25_224: 1.6 vs 1.8 CPU ms/img; inception_v3: 145 vs 140-167).
HANDICAP = {"litert": 1.0, "onnx": 1.1}
RUNTIMES = ("auto", *CONVERTED, "tensorflow")
# "auto" converts a backbone only for a call with at least this many images to extract:
# converting costs several seconds once (then it is on disk for every later call), more than a
# small extraction saves; an already converted backbone is used for any number of images.
CONVERT_MIN_IMAGES = 1000


def feature_extractor(
    backbone: str,
    weights: str = "imagenet",
    seed: int | None = 0,
    *,
    runtime: str = "auto",
    images: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> Extractor:
    """The extractor for (backbone, weights, seed); the last two of each runtime stay in memory.

    runtime "tensorflow": TensorFlow's compiled forward. "litert" / "onnx": that converted
    backbone, converted first when it is not on disk (progress phase "convert", cancellable between
    steps); raises LabError when it cannot be used. "auto": the faster converted runtime, by the
    rule of `_auto_extractor` (each conversion times its forward pass on the same probe batch, in
    process CPU ms per image, and records it next to its file; the lower figure wins); converting
    only when `images` (to extract) is None or >= CONVERT_MIN_IMAGES. When neither can be had,
    TensorFlow with `fallback_reason` set.
    """
    if runtime not in RUNTIMES:
        raise InvalidArgument(f"runtime must be one of {', '.join(RUNTIMES)}, got runtime={runtime!r}")
    key = model_key(backbone, weights, seed)
    if runtime == "tensorflow":
        return _build_extractor(backbone, weights, seed, key)
    if runtime in CONVERTED:
        fast = _converted_extractor(runtime, backbone, weights, seed, key, progress, cancel)
        if isinstance(fast, Extractor):
            return fast
        label = "LiteRT" if runtime == "litert" else "ONNX Runtime"
        raise LabError(f"{backbone} cannot run in {label}: {fast}")
    return _auto_extractor(backbone, weights, seed, key, images, progress, cancel)


def _auto_extractor(name, weights, seed, key, images, progress, cancel) -> Extractor:
    """Runtime "auto": the faster converted runtime for `key`, else TensorFlow with the reasons.

    The rule: a runtime that cannot run here, or whose conversion was refused before, is out. When
    `images` is None or >= CONVERT_MIN_IMAGES, each remaining one is converted if it is not on disk
    yet (a conversion times its forward pass on the probe batch and records the CPU ms per image
    next to its file); otherwise only those already on disk count. Of these, the one with the lower
    recorded figure x HANDICAP runs (a file without a figure sorts last).
    """
    reasons: list[str] = []
    usable = []
    convert = images is None or images >= CONVERT_MIN_IMAGES
    for runtime, module in CONVERTED.items():
        reason = module.available() or module.known_failure(key)
        if reason:
            reasons.append(reason)
        elif convert or module.cached(key):
            usable.append(runtime)
    if not usable and not reasons:
        reasons.append(f"not converted yet, and {images} images do not repay converting")
    loaded = {}
    for runtime in [r for r in usable if convert and not CONVERTED[r].cached(key)]:
        made = _converted_extractor(runtime, name, weights, seed, key, progress, cancel)
        if isinstance(made, Extractor):
            loaded[runtime] = made
        else:
            reasons.append(made)
            usable.remove(runtime)
    for runtime in sorted(usable, key=lambda r: _recorded_cost(r, key)):
        fast = loaded.get(runtime) or _converted_extractor(
            runtime, name, weights, seed, key, progress, cancel
        )
        if isinstance(fast, Extractor):
            return fast
        reasons.append(fast)
    return replace(_build_extractor(name, weights, seed, key), fallback_reason="; ".join(reasons))


def _recorded_cost(runtime: str, key: str) -> float:
    """The CPU ms per image the conversion of `key` to `runtime` measured, x HANDICAP (inf if none)."""
    figure = CONVERTED[runtime].details(key).get("cpu_ms_per_image")
    ok = isinstance(figure, int | float) and figure > 0
    return float(figure) * HANDICAP[runtime] if ok else float("inf")


# runtime -> {model key -> loaded converted extractor} (the last two of each runtime)
_FAST: dict[str, dict[str, Extractor]] = {runtime: {} for runtime in CONVERTED}


def _converted_extractor(runtime, name, weights, seed, key, progress, cancel) -> Extractor | str:
    """The `runtime` ("litert"/"onnx") extractor of `key`, converting first if needed; or why not."""
    kept = _FAST[runtime]
    if key in kept:
        return kept[key]
    module = CONVERTED[runtime]
    reason = module.available() or module.known_failure(key)
    if reason:
        return reason
    start = time.perf_counter()
    entry = backbones.get_backbone(name)
    forward = module.load(key)
    if forward is None:
        model = _build_extractor(name, weights, seed, key).model
        forward, reason, _ = module.convert(key, model, entry.input_size, progress, cancel)
        if forward is None:
            return reason
    seconds = time.perf_counter() - start
    entry_dims = (entry.input_size, entry.feature_dim)
    extractor = Extractor(entry.name, key, *entry_dims, None, forward, seconds, runtime)
    while len(kept) >= 2:
        kept.pop(next(iter(kept)))
    kept[key] = extractor
    return extractor


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
    return Extractor(entry.name, key, entry.input_size, entry.feature_dim, model, forward, seconds)


# ---------------------------------------------------------------------------------------------
# extract_features


@dataclass
class _Todo:
    """One distinct image still to extract."""

    image_hash: str
    path: str
    needs_pil: bool


def _inputs(records_or_paths: Iterable[Any]) -> list[tuple[str, bool | None, str]]:
    """(path, needs_pil, content hash) per input; None and "" when a plain path is still to be
    probed and hashed (a record's scan may have hashed it already)."""
    items = []
    for item in records_or_paths:
        if hasattr(item, "path") and hasattr(item, "needs_pil"):  # an ImageRecord
            items.append((str(item.path), bool(item.needs_pil), getattr(item, "sha256", "")))
        elif isinstance(item, str | os.PathLike):
            items.append((os.fspath(item), None, ""))
        else:
            raise InvalidArgument(f"expected image records or paths, got {type(item).__name__}: {item!r}")
    return items


def _check_args(backbone: str, weights: str, batch_size: int) -> None:
    backbones.get_backbone(backbone)
    backbones.check_weights(weights)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgument(f"batch_size must be a positive integer, got batch_size={batch_size!r}")


def _hash_inputs(items: list[tuple[str, bool | None, str]]) -> tuple[list[str | None], dict[int, str]]:
    """The content hash of each input (None when unreadable) and the reason per unreadable input."""
    hashes: list[str | None] = []
    unreadable: dict[int, str] = {}
    for i, (path, _, known) in enumerate(items):
        try:
            hashes.append(known or file_hash(path))
        except BadImage as exc:
            hashes.append(None)
            unreadable[i] = images.strip_name(str(exc), path)
    return hashes, unreadable


def _plan(items, hashes, found, bad: dict[str, str]) -> dict[str, _Todo]:
    """The distinct images still to extract; a plain path whose probe fails goes to `bad`."""
    todo: dict[str, _Todo] = {}
    for (path, pil, _), h in zip(items, hashes, strict=True):
        if h is None or h in found or h in todo or h in bad:
            continue
        if pil is None:
            try:
                pil = images.probe_image(path).needs_pil
            except BadImage as exc:
                bad[h] = images.strip_name(str(exc), path)
                continue
        todo[h] = _Todo(h, path, pil)
    return todo


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
    runtime: str = "auto",
) -> FeatureSet:
    """Bottleneck features of each image, in input order, reusing and filling the cache.

    An image that cannot be read, probed or decoded (truncated, corrupt pixel data) is skipped:
    it gets no row, and `stats.skipped` names it with the reason.

    Args:
        records_or_paths: `datasets.ImageRecord`s (their `needs_pil` picks the decoder) or paths
            (probed with `images.probe_image`).
        backbone: registry name.  weights: "imagenet" or "random".  seed: for random weights.
        batch_size: images per forward call.
        progress: receives phase "extract" events (done/total images, hits, misses).
        cancel: checked between batches; batches already extracted stay cached.
        cache: defaults to `FeatureCache()` under `config.cache_dir()`.
        runtime: "auto", "litert", "onnx" or "tensorflow" (see `feature_extractor`); all give
            features within 1e-4 (litert/onnx_forward.TOLERANCE) of TensorFlow's, so they share
            the cache key.

    Returns:
        FeatureSet with features (N kept, feature_dim) float32, the content hashes, the kept input
        indices and stats (skipped inputs included).

    Raises:
        Cancelled, NotFound, InvalidArgument, WeightsMissing; LabError (runtime "litert" or "onnx" only).
    """
    start = time.perf_counter()
    _check_args(backbone, weights, batch_size)
    if runtime not in RUNTIMES:
        raise InvalidArgument(f"runtime must be one of {', '.join(RUNTIMES)}, got runtime={runtime!r}")
    items = _inputs(records_or_paths)
    cache = cache if cache is not None else FeatureCache()
    key = model_key(backbone, weights, seed)
    dim = backbones.get_backbone(backbone).feature_dim
    total = len(items)

    hashes, unreadable = _hash_inputs(items)
    found = {h: v for h, v in cache.get_many(key, filter(None, hashes)).items() if v.size == dim}
    bad: dict[str, str] = {}  # content hash -> why that image cannot be decoded
    todo = _plan(items, hashes, found, bad)
    uses = Counter(hashes)
    done = sum(uses[h] for h in found)
    misses = len(todo)
    hits = done
    emit(
        progress,
        "extract",
        done,
        total,
        f"{hits} of {total} images cached, extracting {misses}",
        hits=hits,
        misses=misses,
    )
    done += len(unreadable) + sum(uses[h] for h in bad)

    extract_seconds = 0.0
    ran: tuple[str, str] = ("", "")
    if todo:
        extractor = feature_extractor(
            backbone, weights, seed, runtime=runtime, images=misses, progress=progress, cancel=cancel
        )
        ran = (extractor.runtime, extractor.fallback_reason)
        t0 = time.perf_counter()
        # Writes go to one background thread so the next batch's forward pass overlaps them;
        # leaving the block (also on Cancelled) waits for every queued write.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-cache") as writer:
            writes = []
            batches = _extract_batches(list(todo.values()), extractor, batch_size, cancel, bad)
            for finished, batch_hashes, vectors in batches:
                if batch_hashes:
                    writes.append(writer.submit(cache.put_many, key, batch_hashes, vectors))
                    found.update(zip(batch_hashes, vectors, strict=True))
                done += sum(uses[h] for h in finished)
                message = f"Extracted {done} of {total} bottlenecks"
                emit(progress, "extract", done, total, message, hits=hits, misses=misses)
        for write in writes:
            write.result()  # a failed write raises here
        extract_seconds = time.perf_counter() - t0

    kept, skipped = _kept_and_skipped(items, hashes, unreadable, bad)
    rows = [hashes[i] for i in kept] if skipped else hashes
    features = (
        np.stack([found[h] for h in rows]).astype(np.float32, copy=False)
        if rows
        else np.zeros((0, dim), np.float32)
    )
    extracted = len([h for h in todo if h not in bad])
    served = total - extracted - len(skipped)  # from the cache, or a copy of an image extracted now
    stats = _stats(cache, key, served, extracted, extract_seconds, time.perf_counter() - start, skipped)
    stats = replace(stats, runtime=ran[0], fallback_reason=ran[1])
    return FeatureSet(features=features, hashes=rows, stats=stats, kept=kept)


def _kept_and_skipped(items, hashes, unreadable, bad) -> tuple[np.ndarray, tuple[dict[str, str], ...]]:
    """Indices of the inputs that have a vector, and {"path", "reason"} for each one that has not."""
    if not unreadable and not bad:
        return np.arange(len(items)), ()
    kept, skipped = [], []
    for i, ((path, _, _), h) in enumerate(zip(items, hashes, strict=True)):
        if h is None or h in bad:
            skipped.append({"path": path, "reason": unreadable[i] if h is None else bad[h]})
        else:
            kept.append(i)
    return np.array(kept, dtype=np.int64), tuple(skipped)


def drop_skipped(data, feats: FeatureSet):
    """`data` (the `datasets.Dataset` whose records `feats` was extracted from) without the records
    whose image was skipped; they join `data.skipped` with their reason, so the run lists them.

    Raises:
        InvalidArgument: `feats` was extracted from other records.
    """
    if len(feats.kept) + len(feats.stats.skipped) != len(data.records):
        raise InvalidArgument(
            f"these features cover {len(feats.kept) + len(feats.stats.skipped)} images, "
            f"the dataset has {len(data.records)}"
        )
    if not feats.stats.skipped:
        return data
    from engine.data.datasets import SkippedFile

    more = [SkippedFile(s["path"], s["reason"]) for s in feats.stats.skipped]
    return replace(data, records=[data.records[i] for i in feats.kept], skipped=[*data.skipped, *more])


def _stats(cache: FeatureCache, key: str, hits, misses, extract_seconds, seconds, skipped) -> ExtractionStats:
    # the per-image cost measured now, or remembered from an earlier sizeable extraction
    if misses >= 16 or (misses and cache.timing(key) is None):
        cache.set_timing(key, extract_seconds / misses, misses)
    known = cache.timing(key)
    per_image = extract_seconds / misses if misses else (known[0] if known else 0.0)
    return ExtractionStats(
        hits=hits,
        misses=misses,
        seconds=round(seconds, 4),
        seconds_saved=round(hits * per_image, 4),
        cache_bytes=cache.size_bytes(),
        images_per_second=round(misses / extract_seconds, 2) if extract_seconds > 0 else 0.0,
        skipped=skipped,
    )


def _extract_batches(todo: list[_Todo], extractor: Extractor, batch_size: int, cancel, bad: dict[str, str]):
    """Yield (hashes done, hashes extracted, vectors) per batch, in order.

    A batch the pipeline cannot decode is decoded again image by image with Pillow: a broken file
    goes to `bad` with Pillow's reason, the others go through the model, and the pipeline resumes
    after that batch. Only this recovery runs Python per image.
    """
    import tensorflow as tf

    pos = 0
    while pos < len(todo):
        rest = todo[pos:]
        batches = iter(
            decode_dataset(
                [t.path for t in rest], [t.needs_pil for t in rest], extractor.input_size, batch_size
            )
        )
        while pos < len(todo):
            check_cancel(cancel)
            try:
                pixels = next(batches)
            except tf.errors.OpError:
                chunk = todo[pos : pos + batch_size]
                good, pixels = _decode_with_pillow(chunk, extractor.input_size, bad)
                vectors = extractor.run(pixels) if good else np.zeros((0, extractor.feature_dim))
                yield [t.image_hash for t in chunk], good, vectors
                pos += len(chunk)
                break  # a failed iterator is done: start a new pipeline after this batch
            vectors = extractor.run(pixels)
            chunk = [t.image_hash for t in todo[pos : pos + len(vectors)]]
            yield chunk, chunk, vectors
            pos += len(chunk)


def _decode_with_pillow(chunk: list[_Todo], size: int, bad: dict[str, str]) -> tuple[list[str], Any]:
    """(hashes decoded, their pixels) of a batch the pipeline failed on; failures go to `bad`."""
    good, pixels = [], []
    for item in chunk:
        image, reason = images.decode_or_reason(item.path, size)
        if image is None:
            bad[item.image_hash] = reason
        else:
            good.append(item.image_hash)
            pixels.append(image)
    return good, (np.stack(pixels).astype(np.float32) if pixels else None)

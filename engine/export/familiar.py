""" "None of these": is a photo unlike everything a run was trained on?

A softmax classifier always names one of its classes, even for a cat shown to a flowers model. Here
the photo's bottleneck (the run's own backbone, weights and preprocessing: the bottleneck cache key)
is compared with the run's cached TRAINING bottlenecks: its distance is the mean cosine distance to
the K nearest training photos. The threshold is calibrated on the run's VALIDATION photos (the
PERCENTILE-th percentile of their distances), so about 5% of photos like the training data are
flagged by chance. The calibration (threshold and which training photos) is kept in the run folder
(RunFolder.familiarity), keyed by the cache key, so a changed backbone or weights file recomputes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.data import images
from engine.errors import Cancelled, LabError
from engine.progress import CancelFn, check_cancel

K = 5  # nearest training photos averaged: one near-duplicate alone does not make a photo familiar
PERCENTILE = 95.0  # of validation distances: ~5% of in-distribution photos are flagged by chance
MIN_TRAIN = K + 1
VERSION = 1
BATCH = 32  # photos per forward pass of the backbone


@dataclass(frozen=True)
class Reference:
    """What a run's photos are judged against: unit training vectors and the calibrated threshold."""

    model_key: str
    train: np.ndarray  # (N, D) L2-normalised training bottlenecks
    threshold: float
    calibrated_on: str  # "validation" (or "test" when the run has no validation split)
    calibration_photos: int


def knn_distance(train: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Mean cosine distance of each query to its k nearest rows of `train` (both L2-normalised)."""
    sims = np.asarray(queries, np.float32) @ np.asarray(train, np.float32).T  # (Q, N)
    k = min(k, sims.shape[1])
    nearest = -np.partition(-sims, k - 1, axis=1)[:, :k]
    return np.clip(1.0 - nearest.mean(axis=1), 0.0, 2.0)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _run_facts(folder) -> tuple[str, str, int | None, dict[str, Any]]:
    config = folder.config()
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    seed = train.get("seed", 0)
    return str(config.get("architecture")), str(config.get("weights", "imagenet")), seed, config


def _stored(folder, key: str, cache) -> Reference | None:
    """The calibration in the run folder, if made for `key` and its training vectors are still cached."""
    data = folder.familiarity()
    if not data or data.get("version") != VERSION or data.get("model_key") != key:
        return None
    hashes, threshold = data.get("train_hashes"), data.get("threshold")
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 2:
        return None
    found = cache.get_many(key, hashes)
    if len(found) < max(MIN_TRAIN, len(hashes) // 2):  # cache cleared meanwhile: calibrate again
        return None
    train = _unit(np.stack([found[h] for h in hashes if h in found]))
    return Reference(
        key,
        train,
        float(threshold),
        str(data.get("calibrated_on", "validation")),
        int(data.get("calibration_photos", 0) or 0),
    )


def _recorded_split_hash(folder) -> str | None:
    """The split hash of the photos the run trained on (metrics.json), or None when not recorded."""
    try:
        metrics = folder.metrics() or {}
    except LabError:
        return None
    results = metrics.get("results") if isinstance(metrics, dict) else None
    dataset = results.get("dataset") if isinstance(results, dict) else None
    fingerprint = dataset.get("fingerprint") if isinstance(dataset, dict) else None
    value = fingerprint.get("split_hash") if isinstance(fingerprint, dict) else None
    return value if isinstance(value, str) else None


def _calibrate(folder, key: str, config: dict[str, Any], cache, cancel) -> Reference:
    """Scan the run's dataset again, take its cached train/validation bottlenecks, store the threshold.

    Raises:
        LabError: the dataset is gone, or its training bottlenecks are not in the cache.
    """
    from engine.data import datasets

    try:
        root = datasets.resolve_source(config.get("source"), cancel=cancel)
        data = datasets.scan_image_dir(
            root, config.get("validation_percentage", 10), config.get("testing_percentage", 10)
        )
    except Cancelled:
        raise
    except LabError as exc:
        raise LabError(f"its training photos are not available here ({exc})") from None
    check_cancel(cancel)
    recorded = _recorded_split_hash(folder)
    if recorded is not None and datasets.dataset_fingerprint(data)["split_hash"] != recorded:
        raise LabError(
            f"the dataset at {root} is not the one it trained on (other photos, classes or splits)"
        )
    by_split: dict[str, list[str]] = {}
    for record in data.records:
        if record.sha256:
            by_split.setdefault(record.split, []).append(record.sha256)
    found = cache.get_many(key, [h for hs in by_split.values() for h in hs])
    train_hashes = [h for h in dict.fromkeys(by_split.get("train", [])) if h in found]
    if len(train_hashes) < MIN_TRAIN:
        raise LabError(
            f"its training bottlenecks are not cached ({len(train_hashes)} found, {MIN_TRAIN} needed); "
            "retrain it on this machine to fill the cache"
        )
    train = _unit(np.stack([found[h] for h in train_hashes]))
    train_set = set(train_hashes)
    for split in ("validation", "test"):
        held = [h for h in dict.fromkeys(by_split.get(split, [])) if h in found and h not in train_set]
        if held:
            break
    else:
        raise LabError("it has no validation or test photos to calibrate a threshold on")
    distances = knn_distance(train, _unit(np.stack([found[h] for h in held])))
    threshold = float(np.percentile(distances, PERCENTILE))
    folder.write_familiarity(
        {
            "version": VERSION,
            "model_key": key,
            "k": K,
            "percentile": PERCENTILE,
            "threshold": threshold,
            "calibrated_on": split,
            "calibration_photos": len(held),
            "calibration_median": float(np.median(distances)),
            "train_hashes": train_hashes,
        }
    )
    return Reference(key, train, threshold, split, len(held))


def reference(run_id: str, store=None, cancel: CancelFn | None = None) -> Reference:
    """The run's training vectors and threshold: from the run folder, or calibrated now and stored.

    Raises:
        NotFound: no such run.  LabError: why the run cannot be judged (no cached bottlenecks, ...).
    """
    from engine.features.cache import FeatureCache, model_key
    from engine.runs.folder import RunFolder

    folder = RunFolder.of(run_id, store)
    architecture, weights, seed, config = _run_facts(folder)
    key = model_key(architecture, weights, seed)
    cache = FeatureCache()
    return _stored(folder, key, cache) or _calibrate(folder, key, config, cache, cancel)


def _pixels(item: Any, size: int) -> np.ndarray | None:
    """The photo decoded exactly as Classifier.classify decodes it, or None when it cannot be read."""
    try:
        if isinstance(item, str | Path):
            return images.load_image(item, size)
        data = item if isinstance(item, bytes) else item.getvalue()
        return images.decode_image_bytes(data, size, name=str(getattr(item, "name", "upload")))
    except Exception:  # the classifier reports the photo's error; no verdict for it here
        return None


def cannot_judge(reason: str) -> dict[str, Any]:
    """The verdict of a run that cannot be judged: no flag, and a note saying why."""
    return {
        "distance": None,
        "threshold": None,
        "unfamiliar": False,
        "note": f"Cannot tell whether this photo is like the run's training photos: {reason}.",
    }


def verdict(distance: float, ref: Reference) -> dict[str, Any]:
    """{"distance", "threshold", "unfamiliar", "note"} for one photo's distance."""
    distance = round(float(distance), 4)
    threshold = round(ref.threshold, 4)
    unfamiliar = distance > ref.threshold
    if unfamiliar:
        note = (
            f"Unlike the run's training photos: distance {distance:.3f} to its {K} nearest, beyond the "
            f"{threshold:.3f} that {PERCENTILE:.0f}% of {ref.calibrated_on} photos stay within; the top "
            "classes may be a guess among classes it knows (none of these?)."
        )
    else:
        note = (
            f"Like the run's training photos: distance {distance:.3f} to its {K} nearest, within the "
            f"{threshold:.3f} that {PERCENTILE:.0f}% of {ref.calibrated_on} photos stay within."
        )
    return {"distance": distance, "threshold": threshold, "unfamiliar": bool(unfamiliar), "note": note}


def judge(
    run_id: str, items: list[Any], store=None, cancel: CancelFn | None = None
) -> list[dict[str, Any] | None]:
    """One verdict per photo (path, bytes or uploaded file); None for a photo that cannot be read.

    A run that cannot be judged (no cached training bottlenecks, dataset gone, weights missing) gets
    `cannot_judge(reason)` for every photo: no flag, a note.
    """
    from engine.features import extract
    from engine.runs.folder import RunFolder

    items = list(items)
    try:
        ref = reference(run_id, store, cancel)
        folder = RunFolder.of(run_id, store)
        architecture, weights, seed, _ = _run_facts(folder)
        extractor = extract.feature_extractor(architecture, weights, seed, images=len(items))
    except Cancelled:
        raise
    except LabError as exc:
        return [cannot_judge(str(exc).rstrip("."))] * len(items)
    out: list[dict[str, Any] | None] = [None] * len(items)
    decoded = [
        (i, px) for i, item in enumerate(items) if (px := _pixels(item, extractor.input_size)) is not None
    ]
    for start in range(0, len(decoded), BATCH):
        check_cancel(cancel)
        chunk = decoded[start : start + BATCH]
        feats = extractor.run(np.stack([px for _, px in chunk]).astype(np.float32))
        for (i, _), distance in zip(chunk, knn_distance(ref.train, _unit(feats)), strict=True):
            out[i] = verdict(distance, ref)
    return out

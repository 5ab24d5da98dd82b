"""Data health: duplicates, near-duplicates, class balance and likely mislabels of an image dataset.

Exact duplicates come from the dataset scan (`datasets.find_duplicates`, content hashes). Near-duplicates
(a resized or re-encoded copy) are found in two steps: the cached bottleneck features of the default backbone
propose candidates (each photo's nearest neighbours by cosine), and a 32 x 32 grey-level signature of both
photos confirms them (a copy keeps its pixels' layout, two photos of similar flowers do not). Likely mislabels
are photos whose k nearest neighbours in bottleneck space mostly carry one other label. `run_leakage` asks
the same question of a finished run: how many of its test photos have a near-duplicate in its training split.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.data import datasets, images
from engine.errors import InvalidArgument, LabError
from engine.features.cache import FeatureCache, model_key
from engine.features.extract import drop_skipped, extract_features
from engine.models import backbones
from engine.progress import CancelFn, ProgressFn, check_cancel, emit


@dataclass(frozen=True)
class HealthThresholds:
    """Every threshold of the health report, in one place (measured on the shared 200 flower photos with
    mobilenet_0.25_224 and with resized, JPEG q30 and one-third-size PNG copies planted in them)."""

    # candidates for a near-duplicate: each photo's nearest neighbours in bottleneck space, this many...
    candidate_neighbours: int = 10
    # ...whose cosine reaches this. A copy at a third of the size or re-encoded at JPEG q30 fell to 0.83
    # on MobileNet 0.25, while distinct flower photos reach 0.95: cosine alone cannot decide, it only
    # proposes, so this is set low enough to keep every planted copy
    candidate_cosine: float = 0.75
    # a candidate pair is a near-duplicate when the grey-level signatures correlate at least this much:
    # every planted copy scored >= 0.989, the closest distinct pair of the clean flowers 0.83
    pixel_correlation: float = 0.95
    # side of the grey-level signature (pixels): small enough to ignore JPEG noise and resizing
    signature_size: int = 32
    # likely mislabel: at least `mislabel_votes` of a photo's `mislabel_k` nearest neighbours share one
    # other label. 5 of 7 flags ~3 of 100 clean flower photos (ambiguous ones) and 10 of 15 photos moved
    # into a wrong class at random; a bigger k drowns small classes, a lower vote raises false alarms
    mislabel_k: int = 7
    mislabel_votes: int = 5
    # a class with fewer photos than this gets a noisy accuracy (retrain.py's warning)
    small_class: int = datasets.MIN_IMAGES_PER_CLASS
    # largest class / smallest class above which overall accuracy mostly reflects the big classes
    imbalance_ratio: float = datasets.IMBALANCE_RATIO
    # photos listed per finding in a report (counts always cover all of them)
    max_items: int = 100


THRESHOLDS = HealthThresholds()
# what THRESHOLDS give on the 200 clean shared flower photos (tests/test_health.py pins it): the false-alarm
# rate a user can compare a report with
CLEAN_FLOWERS_PER_100 = {"near_duplicate_pairs": 0.0, "mislabel_flags": 3.0}
HEALTH_BACKBONE = backbones.DEFAULT_BACKBONE  # the thresholds above were measured on it
_BLOCK = 512  # rows of the similarity matrix computed at once: memory O(_BLOCK x images)


def _photo(record: datasets.ImageRecord) -> dict[str, str]:
    return {"path": record.path, "label": record.label, "split": record.split}


def _leaks(a: dict[str, str], b: dict[str, str]) -> bool:
    """One photo trains, its copy is evaluated (validation or test)."""
    return {a["split"], b["split"]} != {"train"} and "train" in {a["split"], b["split"]}


# -- the numbers ---------------------------------------------------------------------------------
def _unit(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(
    queries: np.ndarray, pool: np.ndarray, k: int, same: bool, cancel: CancelFn | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosines) of each query's k nearest pool rows, nearest first.

    Args:
        queries, pool: (Q, D) and (P, D) features (normalised here).
        same: queries are the pool itself: a row is never its own neighbour.
    """
    q, p = _unit(queries), _unit(pool)
    k = max(0, min(k, len(p) - (1 if same else 0)))
    idx = np.zeros((len(q), k), dtype=np.int64)
    sims = np.zeros((len(q), k), dtype=np.float32)
    if k == 0:
        return idx, sims
    for start in range(0, len(q), _BLOCK):
        check_cancel(cancel)
        block = q[start : start + _BLOCK] @ p.T
        if same:
            rows = np.arange(len(block))
            block[rows, rows + start] = -np.inf
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-vals, axis=1)
        idx[start : start + len(block)] = np.take_along_axis(part, order, axis=1)
        sims[start : start + len(block)] = np.take_along_axis(vals, order, axis=1)
    return idx, sims


def pixel_signature(path: str, size: int = THRESHOLDS.signature_size) -> np.ndarray | None:
    """A photo's grey levels at size x size, zero mean and unit length; None when it cannot be decoded."""
    pixels, _ = images.decode_or_reason(path, size)
    if pixels is None:
        return None
    grey = pixels.astype(np.float32).mean(axis=-1).ravel()
    grey -= grey.mean()
    return grey / max(float(np.linalg.norm(grey)), 1e-6)


def confirm_pairs(
    pairs: list[tuple[int, int, float]],
    paths: list[str],
    th: HealthThresholds = THRESHOLDS,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> list[tuple[int, int, float, float]]:
    """The candidate pairs (i, j, cosine) whose pixel signatures correlate >= th.pixel_correlation,
    as (i, j, cosine, correlation)."""
    wanted = sorted({i for i, _, _ in pairs} | {j for _, j, _ in pairs})
    signatures: dict[int, np.ndarray | None] = {}
    for n, i in enumerate(wanted):
        if n % 50 == 0:
            check_cancel(cancel)
            emit(progress, "health", n, len(wanted), f"Comparing pixels of {n} / {len(wanted)} photos")
        signatures[i] = pixel_signature(paths[i], th.signature_size)
    confirmed = []
    for i, j, cosine in pairs:
        a, b = signatures[i], signatures[j]
        if a is None or b is None:
            continue
        corr = float(a @ b)
        if corr >= th.pixel_correlation:
            confirmed.append((i, j, cosine, corr))
    emit(progress, "health", len(wanted), len(wanted), f"{len(confirmed)} near-duplicate pairs confirmed")
    return confirmed


def _candidates(idx: np.ndarray, sims: np.ndarray, th: HealthThresholds) -> list[tuple[int, int, float]]:
    """Each unordered pair once, from a neighbour table of the pool against itself."""
    seen: dict[tuple[int, int], float] = {}
    for i in range(len(idx)):
        for j, s in zip(idx[i, : th.candidate_neighbours], sims[i, : th.candidate_neighbours], strict=True):
            if s >= th.candidate_cosine:
                seen.setdefault((min(i, int(j)), max(i, int(j))), float(s))
    return [(i, j, s) for (i, j), s in seen.items()]


def _sentences(parts: list[str]) -> str:
    """Parts of advice as sentences, each ending with a full stop."""
    return " ".join(p.rstrip(".") + "." for p in parts)


# -- the findings --------------------------------------------------------------------------------
def exact_duplicates(data: datasets.Dataset, th: HealthThresholds = THRESHOLDS) -> dict[str, Any]:
    """The scan's byte-identical groups, counted and explained."""
    groups = data.duplicates
    items = [
        {
            "sha256": g.sha256,
            "files": [_photo(r) for r in g.records],
            "across_splits": g.crosses_splits,
            "across_classes": g.crosses_classes,
        }
        for g in groups
    ]
    advice = _sentences(datasets.duplicate_warnings(groups)) or "No photo is stored twice."
    return {
        "groups": len(groups),
        "extra_copies": sum(len(g.records) - 1 for g in groups),
        "across_splits": sum(g.crosses_splits for g in groups),
        "across_classes": sum(g.crosses_classes for g in groups),
        "items": items[: th.max_items],
        "advice": advice,
    }


def near_duplicates(
    records: list[datasets.ImageRecord],
    features: np.ndarray,
    idx: np.ndarray,
    sims: np.ndarray,
    th: HealthThresholds = THRESHOLDS,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """Pairs of different files showing the same photo (resized, re-encoded), from the neighbour table."""
    del features
    pairs = [(i, j, s) for i, j, s in _candidates(idx, sims, th) if records[i].sha256 != records[j].sha256]
    confirmed = confirm_pairs(pairs, [r.path for r in records], th, progress, cancel)
    confirmed.sort(key=lambda p: (-p[3], -p[2]))
    items = []
    for i, j, cosine, corr in confirmed:
        a, b = _photo(records[i]), _photo(records[j])
        items.append(
            {
                "a": a,
                "b": b,
                "cosine": round(cosine, 4),
                "pixel_correlation": round(corr, 4),
                "across_splits": _leaks(a, b),
                "across_classes": a["label"] != b["label"],
            }
        )
    leaks = sum(p["across_splits"] for p in items)
    confused = sum(p["across_classes"] for p in items)
    advice = []
    if leaks:
        advice.append(
            f"{leaks} pair{'s' * (leaks != 1)} put a copy of a training photo into validation or test: "
            "the model is scored on photos it has as good as seen, so accuracy is too optimistic; "
            "delete one photo of each pair"
        )
    if confused:
        advice.append(
            f"{confused} pair{'s' * (confused != 1)} show the same photo under two classes: at most one "
            "label is right; keep the photo in one class"
        )
    if items and not advice:
        advice.append("The copies sit in one class and one split: they only count twice; delete one of each")
    return {
        "pairs": len(items),
        "across_splits": leaks,
        "across_classes": confused,
        "candidates_checked": len(pairs),
        "items": items[: th.max_items],
        "advice": _sentences(advice) or "No resized or re-encoded copies found.",
    }


def class_balance(data: datasets.Dataset, th: HealthThresholds = THRESHOLDS) -> dict[str, Any]:
    """Photos per class, the small classes, and the largest-to-smallest ratio."""
    counts = {label: sum(row.values()) for label, row in data.counts().items()}
    small = sorted((label for label, n in counts.items() if n < th.small_class), key=counts.get)
    big, least = max(counts, key=counts.get), min(counts, key=counts.get)
    ratio = counts[big] / max(counts[least], 1)
    advice = []
    if small:
        advice.append(
            f"{len(small)} class{'es' * (len(small) != 1)} ha{'ve' if len(small) != 1 else 's'} fewer than "
            f"{th.small_class} photos ({', '.join(small)}): their test accuracy rests on a handful of "
            "photos and jumps with each one; add photos"
        )
    if ratio > th.imbalance_ratio:
        advice.append(
            f"{big!r} has {ratio:.1f}x the photos of {least!r} (above {th.imbalance_ratio:g}x): overall "
            "accuracy mostly reflects the large classes; look at per-class accuracy or even the classes out"
        )
    return {
        "counts": counts,
        "small_classes": small,
        "small_threshold": th.small_class,
        "largest": big,
        "smallest": least,
        "ratio": round(ratio, 2),
        "imbalanced": ratio > th.imbalance_ratio,
        "imbalance_threshold": th.imbalance_ratio,
        "advice": _sentences(advice) or "Every class has enough photos and none dominates.",
    }


def likely_mislabels(
    records: list[datasets.ImageRecord],
    idx: np.ndarray,
    th: HealthThresholds = THRESHOLDS,
) -> dict[str, Any]:
    """Photos whose nearest neighbours in bottleneck space mostly carry one other label."""
    labels = np.array([r.label for r in records])
    hashes = [r.sha256 for r in records]
    items = []
    for i, row in enumerate(idx):
        # copies of the photo itself (same bytes) are exact duplicates, reported there
        near = [j for j in row if hashes[j] != hashes[i] or not hashes[i]][: th.mislabel_k]
        others = [labels[j] for j in near if labels[j] != labels[i]]
        if not others:
            continue
        values, votes = np.unique(others, return_counts=True)
        best = int(votes.argmax())
        if votes[best] >= th.mislabel_votes:
            items.append(
                {
                    **_photo(records[i]),
                    "looks_like": str(values[best]),
                    "votes": int(votes[best]),
                    "k": len(near),
                }
            )
    items.sort(key=lambda m: (-m["votes"], m["label"], m["path"]))
    advice = (
        f"{len(items)} photo{'s look' if len(items) != 1 else ' looks'} like another class to the backbone "
        f"({th.mislabel_votes} or more of its {th.mislabel_k} nearest photos carry that label): open each; "
        "move it if it is in the wrong folder, delete it if it shows no single class, keep it if it is a "
        "hard but right example."
        if items
        else "Every photo's nearest neighbours mostly share its label."
    )
    return {"count": len(items), "items": items[: th.max_items], "advice": advice}


# -- the report ----------------------------------------------------------------------------------
def _features(data, progress, cancel):
    feats = extract_features(data.records, HEALTH_BACKBONE, "imagenet", progress=progress, cancel=cancel)
    return drop_skipped(data, feats), feats


def health_report(
    image_dir: str | Path,
    validation_percentage: float = 10,
    testing_percentage: float = 10,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    th: HealthThresholds = THRESHOLDS,
) -> dict[str, Any]:
    """The health of a dataset: exact and near-duplicates, class balance, likely mislabels.

    Args:
        image_dir: a folder of class subfolders, or "flowers" | "beans" | "demo".
        progress: phases "scan", "extract" (bottlenecks, cached), "health" (pixel checks).
        cancel: checked between files and blocks.

    Returns:
        A JSON-able dict: dataset, backbone, thresholds, exact_duplicates, near_duplicates, classes,
        mislabels (each with counts, items and advice), per_100 (near-duplicate pairs and mislabel flags
        per 100 photos), extraction (cache hits, seconds), summary (one line per finding).

    Raises:
        InvalidArgument, NotFound, DatasetError (the scan); WeightsMissing (the backbone's weights);
        Cancelled.
    """
    datasets.check_percentages(validation_percentage, testing_percentage)
    root = datasets.resolve_source(str(image_dir), progress=progress, cancel=cancel)
    data = datasets.scan_image_dir(
        root, validation_percentage, testing_percentage, progress=progress, cancel=cancel
    )
    check_cancel(cancel)
    data, feats = _features(data, progress, cancel)
    k = max(th.candidate_neighbours, th.mislabel_k + 2)  # +2: a photo's own copies are skipped for votes
    emit(progress, "health", 0, 1, "Finding nearest neighbours in bottleneck space")
    idx, sims = nearest_neighbours(feats.features, feats.features, k, same=True, cancel=cancel)
    near = near_duplicates(data.records, feats.features, idx, sims, th, progress, cancel)
    exact = exact_duplicates(data, th)
    balance = class_balance(data, th)
    mislabels = likely_mislabels(data.records, idx, th)
    n = max(len(data.records), 1)
    return {
        "dataset": {
            "name": data.name,
            "root": data.root,
            "classes": data.classes,
            "num_images": len(data.records),
            "validation_percentage": validation_percentage,
            "testing_percentage": testing_percentage,
            "skipped": len(data.skipped),
        },
        "backbone": HEALTH_BACKBONE,
        "thresholds": asdict(th),
        "exact_duplicates": exact,
        "near_duplicates": near,
        "classes": balance,
        "mislabels": mislabels,
        "per_100": {
            "near_duplicate_pairs": round(100 * near["pairs"] / n, 2),
            "mislabel_flags": round(100 * mislabels["count"] / n, 2),
        },
        "clean_flowers_per_100": CLEAN_FLOWERS_PER_100,
        "extraction": {k: v for k, v in feats.stats.as_dict().items() if k != "skipped"},
        "summary": summary_lines(exact, near, balance, mislabels),
    }


def summary_lines(exact, near, balance, mislabels) -> list[str]:
    """One plain line per finding, for the CLI and the page's headline."""
    return [
        f"Exact duplicates: {exact['extra_copies']} extra cop{'ies' if exact['extra_copies'] != 1 else 'y'} "
        f"in {exact['groups']} group{'s' * (exact['groups'] != 1)} ({exact['across_splits']} across splits, "
        f"{exact['across_classes']} across classes)",
        f"Near-duplicates: {near['pairs']} pair{'s' * (near['pairs'] != 1)} ({near['across_splits']} across "
        f"splits, {near['across_classes']} across classes)",
        f"Classes: {len(balance['counts'])}, {balance['smallest']} smallest, ratio {balance['ratio']:g}x"
        + (f"; small: {', '.join(balance['small_classes'])}" if balance["small_classes"] else ""),
        f"Likely mislabels: {mislabels['count']}",
    ]


def run_job(params: dict[str, Any], progress=None, cancel=None, store=None) -> dict[str, Any]:
    """Job entry point (kind "health"): params {"image_dir", "validation_percentage",
    "testing_percentage"}."""
    del store
    image_dir = params.get("image_dir")
    if not isinstance(image_dir, str) or not image_dir.strip():
        raise InvalidArgument(f"a health check needs an image folder, got image_dir={image_dir!r}")
    return health_report(
        image_dir,
        params.get("validation_percentage", 10),
        params.get("testing_percentage", 10),
        progress=progress,
        cancel=cancel,
    )


# -- a run's test photos against its training photos -----------------------------------------------
def run_leakage(run_id: str, store=None, th: HealthThresholds = THRESHOLDS) -> dict[str, Any]:
    """How many of a finished run's test photos have a near-duplicate (or exact copy) in its training split.

    Uses only what is cached: the run's own bottlenecks (its backbone and weights) propose candidates and
    pixel signatures confirm them. Nothing is extracted, so it is quick enough for a page.

    Returns:
        {"checked": bool, "reason": str (why not checked, else ""), "test_photos": n,
        "with_near_duplicate_in_train": m, "exact": e (of m, byte-identical), "examples": [{"test", "train",
        "cosine", "pixel_correlation"}, ...]}
    """
    from engine.runs.results import RunResults
    from engine.runs.store import RunStore

    run = (store or RunStore()).get_run(run_id)
    results = RunResults.of(run)
    config = run.config or {}
    root = results.dataset.get("root")
    fingerprint = (results.dataset.get("fingerprint") or {}).get("split_hash")
    if run.status != "finished" or not root or not fingerprint:
        return _unchecked("the run did not finish or did not record its dataset")
    try:
        signature = _folder_signature(root)
        return dict(
            _leakage(
                root,
                int(config.get("validation_percentage", 10)),
                int(config.get("testing_percentage", 10)),
                fingerprint,
                str(config.get("architecture", HEALTH_BACKBONE)),
                str(config.get("weights", "imagenet")),
                int((config.get("train") or {}).get("seed", 0)),
                signature,
                th,
            )
        )
    except LabError as exc:
        return _unchecked(str(exc))


def _unchecked(reason: str) -> dict[str, Any]:
    return {
        "checked": False,
        "reason": reason,
        "test_photos": 0,
        "with_near_duplicate_in_train": 0,
        "exact": 0,
        "examples": [],
    }


def _folder_signature(root: str) -> tuple:
    """Changes when class folders gain or lose files (their mtimes)."""
    try:
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in Path(root).iterdir() if p.is_dir()))
    except OSError as exc:
        where = images.printable(root)
        raise InvalidArgument(f"the run's dataset folder {where} cannot be read: {exc}") from None


@functools.lru_cache(maxsize=64)
def _leakage(root, validation, testing, fingerprint, architecture, weights, seed, signature, th):
    del signature  # part of the memo's key only
    data = datasets.scan_image_dir(root, validation, testing)
    if datasets.dataset_fingerprint(data)["split_hash"] != fingerprint:
        return _unchecked("the dataset folder changed since the run (other photos or splits)")
    key = model_key(architecture, weights, seed)
    test = data.split("test")
    train = data.split("train")
    found = FeatureCache().get_many(key, [r.sha256 for r in test + train])
    if any(r.sha256 not in found for r in test + train):
        return _unchecked("the run's bottlenecks are no longer in the cache")
    if not test or not train:
        return {**_unchecked(""), "checked": True, "test_photos": len(test)}
    q = np.stack([found[r.sha256] for r in test])
    p = np.stack([found[r.sha256] for r in train])
    idx, sims = nearest_neighbours(q, p, th.candidate_neighbours, same=False)
    paths = [r.path for r in test] + [r.path for r in train]
    exact_pairs, pairs = {}, []
    for i, record in enumerate(test):
        for j, s in zip(idx[i], sims[i], strict=True):
            if train[j].sha256 == record.sha256:
                exact_pairs.setdefault(i, (i, len(test) + int(j), float(s), 1.0))
            elif s >= th.candidate_cosine:
                pairs.append((i, len(test) + int(j), float(s)))
    confirmed = {}
    for i, j, s, c in confirm_pairs([p for p in pairs if p[0] not in exact_pairs], paths, th):
        confirmed.setdefault(i, (i, j, s, c))
    hits = {**confirmed, **exact_pairs}
    examples = [
        {"test": paths[i], "train": paths[j], "cosine": round(s, 4), "pixel_correlation": round(c, 4)}
        for i, j, s, c in sorted(hits.values(), key=lambda h: -h[3])
    ]
    return {
        "checked": True,
        "reason": "",
        "test_photos": len(test),
        "with_near_duplicate_in_train": len(hits),
        "exact": len(exact_pairs),
        "examples": examples[: th.max_items],
    }


def leakage_note(leak: dict[str, Any], test_accuracy: float | None) -> str | None:
    """A sentence for beside a run's accuracy when test photos have near-duplicates in training, else None."""
    m, n = leak.get("with_near_duplicate_in_train", 0), leak.get("test_photos", 0)
    if not leak.get("checked") or not m:
        return None
    shown = "n/a" if test_accuracy is None else f"{test_accuracy:.1%}"
    example = leak["examples"][0]
    return (
        f"Test accuracy {shown} is partly memory: {m} of its {n} test photos "
        f"({m / max(n, 1):.0%}) have a near-duplicate or copy in its training split (e.g. "
        f"{Path(example['test']).name} ~ {Path(example['train']).name}); expect less on new photos. "
        "The Data page's Health section lists them."
    )

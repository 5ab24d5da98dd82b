"""The comparison matrix: every format of one run measured on that run's own test split.

Per format: file size, load time, warm single-image latency (p50/p95), batch throughput, test
accuracy, top-1 agreement with the Keras model and the largest probability difference from it;
plus the "prediction flips", test images whose predicted label changes between formats. The
report is saved as `exports/comparison.json` in the run folder, with the machine it ran on.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from engine.errors import LabError
from engine.export import convert, runtimes
from engine.export.runtimes import RuntimeUnavailable
from engine.machine import machine_facts
from engine.progress import CancelFn, ProgressFn, check_cancel, emit

SINGLE_RUNS = 30  # timed single-image calls per format (after warm-up)
BATCH_SIZE = 32
BATCH_REPEATS = 3


def held_out_split(
    run: convert.RunModel, cancel: CancelFn | None = None
) -> tuple[list, np.ndarray, np.ndarray]:
    """The run's held-out test records, their decoded pixels (N, size, size, 3) float32 and label indices."""
    from engine.data import datasets, images

    cfg = run.config
    try:
        root = datasets.resolve_source(cfg.get("source"), cancel=cancel)
        data = datasets.scan_image_dir(
            root, cfg.get("validation_percentage", 10), cfg.get("testing_percentage", 10)
        )
    except LabError as exc:
        raise LabError(
            f"The comparison needs the run's test images (source {cfg.get('source')!r}): {exc}"
        ) from exc
    index = {name: i for i, name in enumerate(run.class_names)}
    records = [r for r in data.split("test") if r.label in index]
    if not records:
        raise LabError(f"The run's test split is empty (source {cfg.get('source')!r}): nothing to compare on")
    pixels = np.stack([images.load_image(r.path, run.input_size) for r in records]).astype(np.float32)
    labels = np.array([index[r.label] for r in records], dtype=np.int64)
    return records, pixels, labels


def _predict_all(runtime: runtimes.Runtime, pixels: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([runtime.predict(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])


def _latencies(runtime: runtimes.Runtime, one: np.ndarray, runs: int) -> np.ndarray:
    for _ in range(3):
        runtime.predict(one)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runtime.predict(one)
        times.append((time.perf_counter() - start) * 1000)
    return np.array(times)


def _throughput(runtime: runtimes.Runtime, pixels: np.ndarray, batch: int, repeats: int) -> float:
    reps = int(np.ceil(batch / len(pixels)))
    block = np.concatenate([pixels] * reps)[:batch]
    runtime.predict(block)
    start = time.perf_counter()
    for _ in range(repeats):
        runtime.predict(block)
    return repeats * batch / (time.perf_counter() - start)


def measure_format(
    run: convert.RunModel,
    fmt: str,
    pixels: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray | None,
    single_runs: int = SINGLE_RUNS,
    batch_size: int = BATCH_SIZE,
    store=None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """One row of the matrix and the format's test probabilities (None when it cannot run)."""
    row: dict[str, Any] = {"format": fmt, "status": "ok"}
    try:
        path = convert.ensure_export(run.run_id, fmt, store)
        cache = run.exports / fmt / "engines" if fmt in runtimes.TENSORRT_FORMATS else None
        start = time.perf_counter()
        runtime = runtimes.load_runtime(fmt, path, run.input_size, cache_dir=cache)
        row["load_seconds"] = time.perf_counter() - start
    except RuntimeUnavailable as exc:
        return {**row, "status": "unavailable", "reason": str(exc)}, None
    manifest = convert.read_manifest(run, fmt) or {}
    probs = _predict_all(runtime, pixels, batch_size)
    lat = _latencies(runtime, pixels[:1], single_runs)
    predicted = probs.argmax(1)
    row.update(
        backend=runtime.backend,
        notes=runtime.notes,
        size_bytes=manifest.get("size_bytes"),
        latency_p50_ms=float(np.percentile(lat, 50)),
        latency_p95_ms=float(np.percentile(lat, 95)),
        throughput_ips=_throughput(runtime, pixels, batch_size, BATCH_REPEATS),
        accuracy=float((predicted == labels).mean()),
        agreement=None if reference is None else float((predicted == reference.argmax(1)).mean()),
        max_prob_diff=None if reference is None else float(np.abs(probs - reference).max()),
    )
    return row, probs


def compare_formats(
    run_id: str,
    formats: list[str] | str = ("keras", *convert.DEFAULT_FORMATS),
    store=None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    single_runs: int = SINGLE_RUNS,
    batch_size: int = BATCH_SIZE,
) -> dict[str, Any]:
    """Measure each format on the run's test split against the Keras model; saves and returns the report.

    Returns:
        {"run_id", "test_count", "rows": [row per format], "flips": [...], "machine": {...}, "created"}.
        A format that cannot run here (TensorRT without a GPU) has status "unavailable" and a reason.
    """
    formats = convert.parse_formats(formats)
    formats = ["keras", *[f for f in formats if f != "keras"]]  # Keras is the reference
    run = convert.open_run(run_id, store)
    emit(progress, "bench", 0, len(formats), "Decoding the test split")
    records, pixels, labels = held_out_split(run, cancel)
    rows, predictions, reference = [], {}, None
    for i, fmt in enumerate(formats):
        check_cancel(cancel)
        emit(progress, "bench", i, len(formats), f"Measuring {fmt} on {len(records)} test images", format=fmt)
        row, probs = measure_format(run, fmt, pixels, labels, reference, single_runs, batch_size, store)
        if fmt == "keras":
            reference = probs
            row.update(agreement=1.0, max_prob_diff=0.0)
        rows.append(row)
        if probs is not None:
            predictions[fmt] = probs
    emit(progress, "bench", len(formats), len(formats), "Comparison done")
    report = {
        "run_id": run.run_id,
        "test_count": len(records),
        "class_names": run.class_names,
        "rows": rows,
        "flips": find_flips(records, labels, predictions, run.class_names),
        "machine": machine_facts(),
        "created": time.time(),
    }
    run.exports.mkdir(parents=True, exist_ok=True)
    (run.exports / "comparison.json").write_text(json.dumps(report, indent=2, default=float))
    return report


def find_flips(records, labels, predictions: dict[str, np.ndarray], class_names) -> list[dict[str, Any]]:
    """Test images whose top-1 label is not the same in every format."""
    if not predictions:
        return []
    tops = {fmt: p.argmax(1) for fmt, p in predictions.items()}
    flips = []
    for i, rec in enumerate(records):
        labels_here = {fmt: int(t[i]) for fmt, t in tops.items()}
        if len(set(labels_here.values())) > 1:
            flips.append(
                {
                    "path": rec.path,
                    "true": class_names[int(labels[i])],
                    "predicted": {fmt: class_names[k] for fmt, k in labels_here.items()},
                    "probability": {fmt: round(float(predictions[fmt][i].max()), 4) for fmt in tops},
                }
            )
    return flips


MAX_COMPARISON_BYTES = 20_000_000  # rows per format plus one entry per flipped test image


def load_comparison(run_id: str, store=None) -> dict[str, Any] | None:
    """The last saved comparison of a run, or None.

    Raises:
        LabError: the file is there but damaged or edited into another shape (a run folder is
            untrusted once it travels); the message names it and how to write it anew.
    """
    path = convert.open_run(run_id, store).exports / "comparison.json"
    if not path.exists():
        return None
    try:
        if not path.is_file() or path.stat().st_size > MAX_COMPARISON_BYTES:
            raise ValueError("not a regular file of a sane size")
        report = json.loads(path.read_text(encoding="utf-8"))
        _check_comparison(report)
    except (OSError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise LabError(
            f"The saved comparison {path} is damaged ({reason}): measure the formats again to rewrite it"
        ) from None
    return report


def _check_comparison(report: Any) -> None:
    """The shape the Convert page reads; raises ValueError naming the first field that is off."""
    if not isinstance(report, dict):
        raise ValueError("the top level is not an object")
    if not isinstance(report.get("test_count"), int) or not isinstance(report.get("machine"), dict):
        raise ValueError("'test_count' or 'machine' is missing")
    rows, flips = report.get("rows"), report.get("flips")
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("status"), str) for r in rows
    ):
        raise ValueError("'rows' is not a list of rows with a status")
    if not isinstance(flips, list) or not all(isinstance(f, dict) for f in flips):
        raise ValueError("'flips' is not a list of objects")

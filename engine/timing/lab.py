"""The timing lab: the same work phase by phase on the CPU and (when visible) the GPU.

Phases: JPEG decode + resize, bottleneck extraction (batched forward), head training, single-image
inference and batch inference, for chosen backbones (MobileNet against InceptionV3). Every report
carries the machine and software it ran on, is saved under `config.timings_dir()`, and can be
exported and imported on another machine (a classmate's GPU) as JSON with a validated schema.
Timing does not depend on weight values, so backbones are built with random weights (no download).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine import config
from engine.errors import InvalidArgument, NotFound
from engine.machine import machine_facts
from engine.models import backbones
from engine.progress import CancelFn, ProgressFn, check_cancel, emit

SCHEMA, SCHEMA_VERSION = "classifier-lab/timings", 1
PHASES = ("decode", "extract", "train", "single", "batch")
PHASE_LABELS = {
    "decode": "Decode + resize (JPEG)",
    "extract": "Bottleneck extraction",
    "train": "Head training",
    "single": "Single-image inference",
    "batch": "Batch inference",
}
DEVICES = ("cpu", "gpu")
DEFAULT_BACKBONES = ("mobilenet_0.25_224", "inception_v3")
MAX_IMPORT_BYTES = 2_000_000


class TimingsError(InvalidArgument):
    """An imported timings file does not match the schema; the message says where and why."""


def gpu_names() -> list[str]:
    """GPUs TensorFlow can use here (empty on a CPU-only machine)."""
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


def _row(backbone: str, phase: str, device: str, seconds: float, items: int, **extra) -> dict[str, Any]:
    return {
        "backbone": backbone,
        "phase": phase,
        "device": device,
        "seconds": round(seconds, 6),
        "items": int(items),
        "per_item_ms": round(seconds / items * 1000, 4),
        "items_per_second": round(items / seconds, 3) if seconds > 0 else None,
        **extra,
    }


def _timed(fn, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return time.perf_counter() - start


def _decode(paths: list[str], size: int) -> tuple[np.ndarray, float]:
    from engine.data import images

    start = time.perf_counter()
    pixels = np.stack([images.load_image(p, size) for p in paths]).astype(np.float32)
    return pixels, time.perf_counter() - start


def _forward_fn(model, size: int):
    import tensorflow as tf

    spec = tf.TensorSpec([None, size, size, 3], tf.float32)
    return tf.function(lambda x: model(x, training=False), input_signature=[spec])


# Progress is counted in estimated seconds, so the bar moves inside a slow backbone and the ETA (the
# worker's: units left x seconds per unit so far) holds from the first backbone to the last. The costs
# were fitted on a 2-core CPU (MobileNet 0.25 and InceptionV3 with the lab's defaults: 12 s and 128 s,
# predicted 10.5 s and 136 s); on a faster machine every step shrinks and the shares stay close. A step's
# cost grows with the backbone's GMACs (multiply-accumulates per image, in billions).
_S_DECODE = 0.005  # one image decoded and resized
_S_IMAGE, _S_IMAGE_PER_GMAC = 0.015, 0.09  # one image through a batched forward pass
_S_CALL, _S_CALL_PER_GMAC = 0.01, 0.045  # one single-image call
_S_BUILD, _S_BUILD_PER_GMAC = 1.0, 1.0  # building a backbone (random weights) and its classifier
_S_TRACE, _S_TRACE_PER_GMAC = 1.4, 1.5  # tracing a model's first call (the extractor, then the classifier)
_S_TRAIN, _S_TRAIN_STEP = 1.5, 0.005  # head training: tracing, then each step on cached vectors


class _Work:
    """The lab's progress in estimated seconds (see _S_*); emits phase "bench" events with units="work"."""

    def __init__(self, progress: ProgressFn | None, total: float) -> None:
        self.progress, self.total, self.done = progress, total, 0.0
        self.message = ""

    def begin(self, message: str, **extra: Any) -> None:
        """Say what starts now (the bar stays where it is)."""
        self.message = message
        self._emit(**extra)

    def add(self, units: float, **extra: Any) -> None:
        """Count `units` of work as done."""
        self.done = min(self.total, self.done + units)
        self._emit(**extra)

    def _emit(self, **extra: Any) -> None:
        done, total = int(round(self.done * 100)), int(round(self.total * 100))
        emit(self.progress, "bench", done, total, self.message, units="work", **extra)


def _gmacs(name: str) -> float:
    """Multiply-accumulates of one forward pass of `name`, in G (counted once, then cached on disk)."""
    from engine.models import architecture

    return architecture.analyze(name).macs / 1e9


def _device_units(gmacs: float, images: int, batch: int, single_runs: int, steps: int) -> dict[str, float]:
    """The estimated seconds of each step of `_device_phases` for one backbone on one device."""
    image = _S_IMAGE + _S_IMAGE_PER_GMAC * gmacs
    trace = _S_TRACE + _S_TRACE_PER_GMAC * gmacs
    return {
        "build": _S_BUILD + _S_BUILD_PER_GMAC * gmacs,
        "trace": trace + image,
        "warm": batch * image,
        "extract": images * image,
        "train": _S_TRAIN + (10 + steps) * _S_TRAIN_STEP,
        "single_trace": trace,
        "single": (3 + single_runs) * (_S_CALL + _S_CALL_PER_GMAC * gmacs),
        "batch": 4 * batch * image,
    }


def _device_phases(
    name, device, pixels, batch, single_runs, train_steps, cancel, work: _Work | None = None, units=None
) -> list[dict[str, Any]]:
    """extract, train, single and batch timings of one backbone on one device."""
    import keras
    import tensorflow as tf

    from engine.training.config import TrainConfig
    from engine.training.head import train_head

    size, dim = pixels.shape[1], backbones.get_backbone(name).feature_dim
    work = work or _Work(None, 1.0)
    units = units or _device_units(0.0, len(pixels), batch, single_runs, train_steps)
    where = f"{name} on the {device.upper()}"
    rows = []
    with tf.device(f"/{device.upper()}:0"):
        work.begin(f"{where}: building the model", device=device)
        extractor = backbones.build_feature_extractor(name, weights="random", seed=0)
        head = keras.layers.Dense(5, activation="softmax", name="head")
        classifier = keras.Model(extractor.input, head(extractor.output))
        extract, classify = _forward_fn(extractor, size), _forward_fn(classifier, size)
        work.add(units["build"])
        check_cancel(cancel)
        work.begin(f"{where}: tracing the first call")
        first = _timed(lambda: extract(pixels[:1]).numpy())  # tracing and graph set-up, one image
        work.add(units["trace"])
        work.begin(f"{where}: a first batch of {batch} (warm-up, not timed)")
        extract(pixels[:batch]).numpy()
        work.add(units["warm"])
        chunks = [pixels[i : i + batch] for i in range(0, len(pixels), batch)]
        work.begin(f"{where}: extracting bottlenecks of {len(pixels)} images")
        seconds = 0.0
        for chunk in chunks:  # timed chunk by chunk, so the bar moves (a chunk is one batch)
            seconds += _timed(lambda chunk=chunk: extract(chunk).numpy())
            work.add(units["extract"] * len(chunk) / len(pixels))
            check_cancel(cancel)
        rows.append(_row(name, "extract", device, seconds, len(pixels), batch_size=batch, first_call_s=first))
        work.begin(f"{where}: training a head for {train_steps} steps")
        rng = np.random.default_rng(0)
        x = rng.normal(size=(400, dim)).astype(np.float32)
        y = rng.integers(0, 5, 400).astype(np.int32)
        cfg = TrainConfig(steps=train_steps, batch_size=100, eval_interval=10)
        warm = TrainConfig(steps=10, batch_size=100, eval_interval=10)
        train_head(x[:300], y[:300], x[300:], y[300:], 5, warm)
        seconds = _timed(lambda: train_head(x[:300], y[:300], x[300:], y[300:], 5, cfg))
        rows.append(_row(name, "train", device, seconds, train_steps, batch_size=100, eval_interval=10))
        work.add(units["train"])
        check_cancel(cancel)
        work.begin(f"{where}: {single_runs} single-image calls")
        one = pixels[:1]
        for _ in range(3):  # the first traces the classifier
            classify(one).numpy()
        work.add(units["single_trace"] + units["single"] * 3 / (3 + single_runs))
        times = []
        for _ in range(single_runs):
            times.append(_timed(lambda: classify(one).numpy()))
            work.add(units["single"] / (3 + single_runs))
        rows.append(
            _row(name, "single", device, sum(times), single_runs, p50_ms=float(np.median(times)) * 1000)
        )
        check_cancel(cancel)
        work.begin(f"{where}: batches of {batch}")
        block = np.concatenate([pixels] * math.ceil(batch / len(pixels)))[:batch]
        classify(block).numpy()
        work.add(units["batch"] / 4)
        seconds = 0.0
        for _ in range(3):
            seconds += _timed(lambda: classify(block).numpy())
            work.add(units["batch"] / 4)
            check_cancel(cancel)
        rows.append(_row(name, "batch", device, seconds, 3 * batch, batch_size=batch))
    return rows


def lab_images(source: str = "demo", count: int = 32) -> list[str]:
    """Up to `count` image files of a dataset source (spread over its classes, stable order)."""
    from engine.data import datasets

    data = datasets.scan_image_dir(datasets.resolve_source(source))
    records = sorted(data.records, key=lambda r: (r.path.rsplit("/", 1)[-1], r.label))
    return [r.path for r in records[:count]]


def run_lab(
    backbone_names: list[str] | tuple[str, ...] = DEFAULT_BACKBONES,
    source: str = "demo",
    images: int = 32,
    batch_size: int = 32,
    single_runs: int = 20,
    train_steps: int = 200,
    devices: list[str] | None = None,
    label: str = "this machine",
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Time every phase for each backbone on each device and return (and save) the report.

    Args:
        devices: "cpu" and/or "gpu"; default: cpu, plus gpu when TensorFlow sees one. Asking for
            "gpu" without one raises InvalidArgument saying so.
    """
    for name in backbone_names:
        backbones.get_backbone(name)
    for key, value in (("images", images), ("batch_size", batch_size), ("single_runs", single_runs)):
        if not isinstance(value, int) or value < 1:
            raise InvalidArgument(f"{key} must be a positive integer, got {key}={value!r}")
    if not isinstance(train_steps, int) or train_steps < 10:
        raise InvalidArgument(f"train_steps must be an integer >= 10, got train_steps={train_steps!r}")
    gpus = gpu_names()
    devices = list(devices or (["cpu", "gpu"] if gpus else ["cpu"]))
    if "gpu" in devices and not gpus:
        raise InvalidArgument("devices includes 'gpu' but TensorFlow sees no GPU on this machine")
    paths = lab_images(source, images)
    for path in paths:  # read once so decode timings measure decoding, not a cold disk
        Path(path).read_bytes()
    emit(progress, "bench", 0, 0, "Estimating the work (multiply-accumulates per backbone)", units="work")
    plans = {}
    for name in backbone_names:
        check_cancel(cancel)
        plans[name] = _device_units(_gmacs(name), len(paths), batch_size, single_runs, train_steps)
    total = sum(len(paths) * _S_DECODE + len(devices) * sum(u.values()) for u in plans.values())
    work, rows = _Work(progress, total), []
    for name in backbone_names:
        size = backbones.get_backbone(name).input_size
        work.begin(f"{name}: decoding {len(paths)} images")
        pixels, seconds = _decode(paths, size)
        rows.append(_row(name, "decode", "cpu", seconds, len(paths), image_size=size))
        work.add(len(paths) * _S_DECODE)
        for device in devices:
            check_cancel(cancel)
            rows += _device_phases(
                name, device, pixels, batch_size, single_runs, train_steps, cancel, work, plans[name]
            )
    work.done = work.total
    work.begin("Timing lab finished")
    report = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "label": label,
        "origin": "measured",
        "created": time.time(),
        "machine": machine_facts(include_tensorflow=True),
        "settings": {
            "source": source,
            "images": len(paths),
            "batch_size": batch_size,
            "single_runs": single_runs,
            "train_steps": train_steps,
            "weights": "random (timing does not depend on weight values)",
        },
        "timings": rows,
    }
    if save:
        report["id"] = save_timings(report).stem
    return report


def speedups(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per backbone and phase: CPU and GPU per-item times and the GPU's speed-up (None without GPU)."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for row in report["timings"]:
        key = (row["backbone"], row["phase"])
        entry = table.setdefault(key, {"backbone": key[0], "phase": key[1], "cpu_ms": None, "gpu_ms": None})
        entry[f"{row['device']}_ms"] = row["per_item_ms"]
    for entry in table.values():
        cpu, gpu = entry["cpu_ms"], entry["gpu_ms"]
        entry["speedup"] = round(cpu / gpu, 3) if cpu and gpu else None
    return list(table.values())


def explain(report: dict[str, Any]) -> list[str]:
    """Plain-language notes on where the GPU helps, where it does not, and why."""
    from engine.timing.report import explain_rows

    return explain_rows(speedups(report), report.get("machine", {}))


# --- storage, export and import -------------------------------------------------------------------
def timings_dir() -> Path:
    """Where reports are saved (`config.timings_dir()`)."""
    return config.timings_dir()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "timings"


def save_timings(report: dict[str, Any]) -> Path:
    """Write a (validated) report to `timings/<time>-<label>.json` and return the path."""
    validate_timings(report)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(report.get("created") or time.time()))
    path = timings_dir() / f"{stamp}-{_slug(report['label'])}.json"
    n = 1
    while path.exists():
        n += 1
        path = path.with_name(f"{stamp}-{_slug(report['label'])}-{n}.json")
    report = {**report, "id": path.stem}
    tmp = path.with_name(f".{path.name}.tmp")  # written whole, then renamed: never a half file
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False))
    os.replace(tmp, path)
    return path


def list_timings() -> list[dict[str, Any]]:
    """Every saved report (measured here or imported), newest first; unreadable files are skipped."""
    reports = []
    for path in sorted(timings_dir().glob("*.json"), reverse=True):
        try:
            reports.append(_read_report(path) | {"id": path.stem})
        except TimingsError:  # edited or damaged by hand: skipped, the others still show
            continue
    return reports


def load_timings(report_id: str) -> dict[str, Any]:
    path = timings_dir() / f"{report_id}.json"
    if not path.is_file():
        raise NotFound(f"No saved timings {report_id!r} in {timings_dir()}")
    return _read_report(path)


def _read_bounded(path: Path) -> bytes:
    """A regular file's bytes, refusing special files (a FIFO would block) and oversized ones unread."""
    try:
        if not path.is_file():
            raise TimingsError(f"Timings file {path} is not a regular file")
        size = path.stat().st_size
        if size > MAX_IMPORT_BYTES:
            raise TimingsError(f"Timings file {path} is {size:,} bytes; the limit is {MAX_IMPORT_BYTES:,}")
        with open(path, "rb") as fh:
            return fh.read(MAX_IMPORT_BYTES + 1)  # a file growing meanwhile is still bounded
    except OSError as exc:
        raise TimingsError(f"Cannot read timings file {path}: {exc.strerror or exc}") from None


def _read_report(path: Path) -> dict[str, Any]:
    """A saved report, or a TimingsError that names the file (a saved file may be edited by hand)."""
    from engine.timing.report import parse_report

    data = _read_bounded(path)
    try:
        return validate_timings(parse_report(data, TimingsError, MAX_IMPORT_BYTES))
    except TimingsError as exc:
        raise TimingsError(f"{path}: {exc}") from None


def import_timings(data: bytes | str | Path, label: str | None = None) -> dict[str, Any]:
    """Validate a timings JSON file from another machine and save it, labelled, beside ours.

    Args:
        data: the file's bytes (an upload), its JSON text, or a path (a str that does not start
            like JSON is taken as a path).

    Raises:
        TimingsError: unreadable, too big, not JSON, too deep, or not matching the schema (the
            message says where).
    """
    from engine.timing.report import parse_report

    if isinstance(data, Path) or (isinstance(data, str) and not data.lstrip().startswith(("{", "["))):
        data = _read_bounded(Path(data))
    report = validate_timings(parse_report(data, TimingsError, MAX_IMPORT_BYTES))
    if label is not None and (not isinstance(label, str) or len(label) > 500):
        raise TimingsError(f"A timings label is a name of at most 500 characters, got {label!r:.80}")
    report = {**report, "origin": "imported", "label": (label or report["label"]).strip() or report["label"]}
    report["id"] = save_timings(report).stem
    return report


def validate_timings(report: Any) -> dict[str, Any]:
    """Check a timings report against the schema; returns it or raises TimingsError naming the field."""
    from engine.timing.report import check_schema

    check_schema(report, PHASES, DEVICES, SCHEMA, SCHEMA_VERSION, TimingsError)
    return report


def run_job(params: dict[str, Any], progress=None, cancel=None, store=None) -> dict[str, Any]:
    """Job entry point (kind "timing"): params are run_lab's keyword arguments."""
    allowed = {
        "backbone_names",
        "source",
        "images",
        "batch_size",
        "single_runs",
        "train_steps",
        "devices",
        "label",
    }
    unknown = set(params) - allowed
    if unknown:
        raise InvalidArgument(f"Unknown timing lab parameters {sorted(unknown)}; valid: {sorted(allowed)}")
    report = run_lab(**params, progress=progress, cancel=cancel)
    return {"timings_id": report["id"], "rows": len(report["timings"]), "gpus": report["machine"]["gpus"]}

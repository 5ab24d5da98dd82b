"""The frozen backbone through LiteRT (XNNPACK): converted once per weights, kept on disk.

TensorFlow's forward pass of the small backbones costs several times LiteRT's on this kind of CPU.
`load_or_convert` turns the Keras feature extractor of engine/models/backbones (its preprocessing
layer included, so the pixels fed are the same 0..255 floats as TensorFlow's) into an fp32
.tflite file under `config.litert_dir()`, named by the extractor's model key and the versions that
made it. Conversion has steps (export the graph, convert, check against TensorFlow), each one a
progress event with a cancel check between them. The check feeds a fixed batch of pixels to
both runtimes: when they differ by more than `TOLERANCE` (max abs) the file is not used, and the
reason is remembered next to it so the next extraction does not convert again. The same probe
batch times the forward pass (process CPU ms per image, best of a few runs), recorded in the JSON
next to the file: extract.py's "auto" compares it with ONNX Runtime's figure, measured the same way
(engine/features/onnx_forward.py), to run each backbone in the faster of the two.

Features from both runtimes therefore agree within `TOLERANCE`, and the cache keeps one key for
them (tests/test_litert_extract.py checks the agreement on the real weights and photos).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine import config
from engine.machine import usable_cores
from engine.progress import CancelFn, ProgressFn, check_cancel, emit

TOLERANCE = 1e-4  # max abs difference from TensorFlow's features that LiteRT's may have
FORMAT_VERSION = "litert-backbone-v2"  # bump when the conversion changes (v2: timed at conversion)
_PROBE_IMAGES = 4
_TIMING_RUNS = 3
_TIMING_BATCH = 16  # images per timed call: nearer the batches extraction runs
STEPS = 3


class LiteForward:
    """A converted backbone in LiteRT's interpreter: float32 (n, size, size, 3) -> (n, feature_dim).

    The input is resized to the batch size once and kept; only a batch of another size (the short
    last one) resizes again. One call at a time (the interpreter is not thread-safe).
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.threads = threads or usable_cores()
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._batch = 0
        self._lock = threading.Lock()

    def __call__(self, pixels: Any) -> np.ndarray:
        batch = np.ascontiguousarray(np.asarray(pixels, dtype=np.float32))
        with self._lock:
            if len(batch) != self._batch:
                self.interpreter.resize_tensor_input(self._input, list(batch.shape), strict=False)
                self.interpreter.allocate_tensors()
                self._batch = len(batch)
            self.interpreter.set_tensor(self._input, batch)
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self._output)


def versions() -> str:
    """The converter and runtime versions a converted file depends on."""
    from importlib import metadata

    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "none"

    return f"tf={v('tensorflow')}:litert={v('ai-edge-litert')}:keras={v('keras')}"


def model_path(key: str) -> Path:
    """Where the converted backbone of model key `key` lives (it may not exist yet)."""
    digest = hashlib.sha256(f"{key}|{versions()}|{FORMAT_VERSION}".encode()).hexdigest()[:24]
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key.split("|")[0])[:40]
    return config.litert_dir() / f"{safe}-{digest}.tflite"


def _failure_path(path: Path) -> Path:
    return path.with_suffix(".failed.json")


def available() -> str | None:
    """None when LiteRT can run here, else why not (one line)."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError as exc:
        return f"ai-edge-litert is not installed ({exc})"
    return None


def cached(key: str) -> bool:
    """Whether a checked conversion of `key` is on disk."""
    return model_path(key).is_file()


def known_failure(key: str) -> str | None:
    """The reason an earlier conversion of `key` was refused, if one was."""
    try:
        return json.loads(_failure_path(model_path(key)).read_text())["reason"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def details(key: str) -> dict[str, Any]:
    """What the conversion of `key` recorded (max_abs_diff, cpu_ms_per_image, ...); {} if nothing."""
    try:
        data = json.loads(model_path(key).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load(key: str) -> LiteForward | None:
    """The converted backbone of `key` if it is on disk and loads; a damaged file is removed."""
    path = model_path(key)
    if not path.is_file():
        return None
    try:
        return LiteForward(path)
    except (ValueError, RuntimeError):
        path.unlink(missing_ok=True)  # damaged: the next conversion writes it anew
        return None


def probe(size: int) -> np.ndarray:
    """The fixed pixels the agreement check and the timing use (ONNX Runtime's conversion too)."""
    return np.random.default_rng(0).integers(0, 256, (_PROBE_IMAGES, size, size, 3)).astype(np.float32)


def cpu_ms_per_image(forward, pixels: np.ndarray, runs: int = _TIMING_RUNS) -> float:
    """Process CPU milliseconds per image of `forward` on `pixels` repeated to a batch of
    `_TIMING_BATCH` (the probe's 4 images favour a runtime that is quick on tiny batches), best of
    `runs` after one warm-up.

    CPU time, not wall time: other processes on a shared machine barely move it, so two runtimes
    timed at different moments still compare.
    """
    pixels = np.concatenate([pixels] * -(-_TIMING_BATCH // len(pixels)))[:_TIMING_BATCH]
    forward(pixels)
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        forward(pixels)
        best = min(best, time.process_time() - start)
    return best / len(pixels) * 1000


def convert(
    key: str,
    model,
    input_size: int,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> tuple[LiteForward | None, str | None, dict[str, Any]]:
    """Convert the Keras feature extractor `model` (0..255 pixels in) and keep it if it agrees.

    Returns (forward, None, details) on success; (None, reason, details) when the conversion fails
    or its features differ from TensorFlow's by more than TOLERANCE (the reason is remembered).

    Raises:
        Cancelled: between steps; nothing is written.
    """
    import tensorflow as tf

    path = model_path(key)
    name = key.split("|")[0]

    def step(done: int, message: str) -> None:
        check_cancel(cancel)
        emit(progress, "convert", done, STEPS, message, format="litert-backbone", backbone=name)

    details: dict[str, Any] = {"key": key, "versions": versions(), "tolerance": TOLERANCE}
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=path.parent))
    try:
        step(0, f"Converting {name} to LiteRT: exporting the graph (step 1 of {STEPS})")
        try:
            model.export(str(work / "saved_model"), format="tf_saved_model", verbose=False)
        except Exception as exc:  # exporters and converters raise many kinds: TensorFlow stays
            return None, _remember(path, _failed("export", exc), details), details
        step(1, f"Converting {name} to LiteRT: converting (step 2 of {STEPS})")
        try:
            flatbuffer = tf.lite.TFLiteConverter.from_saved_model(str(work / "saved_model")).convert()
        except Exception as exc:
            return None, _remember(path, _failed("conversion", exc), details), details
        step(2, f"Converting {name} to LiteRT: checking against TensorFlow and timing (step 3 of {STEPS})")
        candidate = work / "model.tflite"
        candidate.write_bytes(flatbuffer)
        pixels = probe(input_size)
        lite = LiteForward(candidate)
        diff = float(np.max(np.abs(lite(pixels) - model(pixels, training=False).numpy())))
        details["max_abs_diff"] = diff
        if not np.isfinite(diff) or diff > TOLERANCE:
            reason = f"LiteRT features differ from TensorFlow's by {diff:.2e} (max abs) > {TOLERANCE:g}"
            return None, _remember(path, reason, details), details
        details["cpu_ms_per_image"] = round(cpu_ms_per_image(lite, pixels), 3)
        check_cancel(cancel)
        os.replace(candidate, path)  # atomic: readers see the whole checked file or none
        _failure_path(path).unlink(missing_ok=True)
        path.with_suffix(".json").write_text(json.dumps(details, indent=1))
        emit(progress, "convert", STEPS, STEPS, f"Converted {name} to LiteRT", format="litert-backbone")
        return LiteForward(path), None, details
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _failed(what: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"LiteRT {what} failed: {first}"


def _remember(path: Path, reason: str, details: dict[str, Any]) -> str:
    details["reason"] = reason
    _failure_path(path).write_text(json.dumps(details, indent=1))
    return reason

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

What the two runtimes share (file naming, the conversion driver, the refusal and details files,
the probe and timing) is engine/features/converted.py; this module keeps the interpreter wrapper
and the conversion call.

Features from both runtimes therefore agree within `TOLERANCE`, and the cache keeps one key for
them (tests/test_litert_extract.py checks the agreement on the real weights and photos).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from engine import config
from engine.features.converted import STEPS, Runtime, cpu_ms_per_image, probe  # noqa: F401 (re-exported)
from engine.machine import usable_cores
from engine.progress import CancelFn, ProgressFn

TOLERANCE = 1e-4  # max abs difference from TensorFlow's features that LiteRT's may have
FORMAT_VERSION = "litert-backbone-v2"  # bump when the conversion changes (v2: timed at conversion)


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


RUNTIME = Runtime(
    short="LiteRT",
    runtime="LiteRT",
    fmt="litert-backbone",
    folder=config.litert_dir,
    suffix=".tflite",
    format_version=FORMAT_VERSION,
    dists=(("tf", "tensorflow"), ("litert", "ai-edge-litert"), ("keras", "keras")),
    needs=(("ai_edge_litert.interpreter", "ai-edge-litert"),),
    forward=LiteForward,
    load_errors=(ValueError, RuntimeError),
)
versions, model_path, available = RUNTIME.versions, RUNTIME.model_path, RUNTIME.available
cached, known_failure, details, load = RUNTIME.cached, RUNTIME.known_failure, RUNTIME.details, RUNTIME.load


def convert(
    key: str, model, input_size: int, progress: ProgressFn | None = None, cancel: CancelFn | None = None
) -> tuple[LiteForward | None, str | None, dict[str, Any]]:
    """Convert the Keras feature extractor `model` (0..255 pixels in) to a .tflite file and keep it
    if it agrees with TensorFlow within TOLERANCE (engine/features/converted.py's driver).

    Returns (forward, None, details) on success; (None, reason, details) when the conversion fails
    or its features differ from TensorFlow's by more than TOLERANCE (the reason is remembered).

    Raises:
        Cancelled: between steps; nothing is written.
    """
    return RUNTIME.convert(key, model, input_size, _to_tflite, TOLERANCE, progress, cancel)


def _to_tflite(saved_model: Path, dest: Path) -> None:
    import tensorflow as tf

    dest.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert())

"""The frozen backbone through ONNX Runtime (CPU): converted once per weights, kept on disk.

The sibling of engine/features/litert.py for the other fast CPU runtime: `convert` exports the
Keras feature extractor of engine/models/backbones (its preprocessing layer included, so it takes
the same 0..255 pixels) as a SavedModel, freezes it and converts it with tf2onnx into an .onnx file
under `config.onnx_dir()`, named by the extractor's model key and the versions that made it. Its
steps (export, convert, check against TensorFlow and time) are progress events with a cancel check
between them. The check feeds a fixed batch of pixels to both runtimes: when they differ by more
than `TOLERANCE` (max abs) the file is not kept and the reason is remembered next to it.

The same probe batch also times the forward pass (process CPU ms per image, best of a few runs,
with litert.py's probe and timing so the figures compare), recorded in the JSON next to the file:
engine/features/extract.py's "auto" compares it with LiteRT's to pick the faster runtime.
The driver both runtimes share (file naming, conversion steps, refusal and details files) is
engine/features/converted.py; this module keeps the session wrapper and the tf2onnx call.
This module does not import engine/export (a room above features); the session options here are
the CPU ones that measured fastest (graph optimisation ALL, one intra-op thread per usable core).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from engine import config
from engine.features.converted import STEPS, Runtime  # noqa: F401 (STEPS re-exported)
from engine.machine import usable_cores
from engine.progress import CancelFn, ProgressFn

TOLERANCE = 1e-4  # max abs difference from TensorFlow's features that ONNX Runtime's may have
FORMAT_VERSION = "onnx-backbone-v1"  # bump when the conversion changes
OPSET = 17  # what tf2onnx 1.17 and ONNX Runtime 1.x both handle


class OnnxForward:
    """A converted backbone in an ONNX Runtime CPU session: float32 (n, size, size, 3) -> (n, dim).

    One call at a time (the lock keeps concurrent callers from sharing the intra-op pool).
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.threads = threads or usable_cores()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # idle workers sleep instead of spinning: spinning burns the cores decode needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self.session.get_inputs()[0].name
        self._lock = threading.Lock()

    def __call__(self, pixels: Any) -> np.ndarray:
        batch = np.ascontiguousarray(np.asarray(pixels, dtype=np.float32))
        with self._lock:
            return self.session.run(None, {self._input: batch})[0]


RUNTIME = Runtime(
    short="ONNX",
    runtime="ONNX Runtime",
    fmt="onnx-backbone",
    folder=config.onnx_dir,
    suffix=".onnx",
    format_version=FORMAT_VERSION,
    dists=(("tf", "tensorflow"), ("tf2onnx", "tf2onnx"), ("onnxruntime", "onnxruntime"), ("keras", "keras")),
    needs=(("onnxruntime", "onnxruntime"), ("tf2onnx", "tf2onnx")),
    forward=OnnxForward,
    load_errors=(Exception,),  # onnxruntime raises its own Fail/InvalidProtobuf kinds for a damaged file
    extra=(("opset", OPSET),),
)
# the runtime's files, as module functions (extract.CONVERTED treats this module as the runtime)
model_path, versions, cached, details = RUNTIME.model_path, RUNTIME.versions, RUNTIME.cached, RUNTIME.details
available, known_failure, load = RUNTIME.available, RUNTIME.known_failure, RUNTIME.load


def convert(
    key: str, model, input_size: int, progress: ProgressFn | None = None, cancel: CancelFn | None = None
) -> tuple[OnnxForward | None, str | None, dict[str, Any]]:
    """Convert the Keras feature extractor `model` (0..255 pixels in) to an .onnx file and keep it
    if it agrees with TensorFlow within TOLERANCE (engine/features/converted.py's driver).

    Returns (forward, None, details) on success, details holding `max_abs_diff` and
    `cpu_ms_per_image` on the probe batch; (None, reason, details) when the conversion fails or
    its features differ from TensorFlow's by more than TOLERANCE (the reason is remembered).

    Raises:
        Cancelled: between steps; nothing is written.
    """
    return RUNTIME.convert(key, model, input_size, _to_onnx, TOLERANCE, progress, cancel)


def _to_onnx(saved_model: Path, dest: Path) -> None:
    import tf2onnx
    from tf2onnx import tf_loader

    # From the SavedModel: its loader freezes every variable (from_function would leave the
    # non-trainable ones as extra graph inputs), as engine/export/convert.py does for runs.
    graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
        str(saved_model),
        None,
        None,
        tag="serve",
        signatures=["serving_default"],
        return_tensors_to_rename=True,
    )
    tf2onnx.convert.from_graph_def(
        graph_def,
        input_names=inputs,
        output_names=outputs,
        opset=OPSET,
        tensors_to_rename=renames,
        output_path=str(dest),
    )

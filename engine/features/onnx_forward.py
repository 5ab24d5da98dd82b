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
This module does not import engine/export (a room above features); the session options here are
the CPU ones that measured fastest (graph optimisation ALL, one intra-op thread per usable core).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from engine import config
from engine.features.litert import cpu_ms_per_image, probe
from engine.machine import usable_cores
from engine.progress import CancelFn, ProgressFn, check_cancel, emit

TOLERANCE = 1e-4  # max abs difference from TensorFlow's features that ONNX Runtime's may have
FORMAT_VERSION = "onnx-backbone-v1"  # bump when the conversion changes
OPSET = 17  # what tf2onnx 1.17 and ONNX Runtime 1.x both handle
STEPS = 3


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


def versions() -> str:
    """The converter and runtime versions a converted file depends on."""
    from importlib import metadata

    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "none"

    return f"tf={v('tensorflow')}:tf2onnx={v('tf2onnx')}:onnxruntime={v('onnxruntime')}:keras={v('keras')}"


def model_path(key: str) -> Path:
    """Where the converted backbone of model key `key` lives (it may not exist yet)."""
    digest = hashlib.sha256(f"{key}|{versions()}|{FORMAT_VERSION}".encode()).hexdigest()[:24]
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key.split("|")[0])[:40]
    return config.onnx_dir() / f"{safe}-{digest}.onnx"


def _failure_path(path: Path) -> Path:
    return path.with_suffix(".failed.json")


def available() -> str | None:
    """None when ONNX Runtime and tf2onnx can run here, else why not (one line)."""
    for module in ("onnxruntime", "tf2onnx"):
        try:
            __import__(module)
        except ImportError as exc:
            return f"{module} is not installed ({exc})"
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


def load(key: str) -> OnnxForward | None:
    """The converted backbone of `key` if it is on disk and loads; a damaged file is removed."""
    path = model_path(key)
    if not path.is_file():
        return None
    try:
        return OnnxForward(path)
    except Exception:  # onnxruntime raises its own Fail/InvalidProtobuf kinds for a damaged file
        path.unlink(missing_ok=True)
        return None


def convert(
    key: str,
    model,
    input_size: int,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> tuple[OnnxForward | None, str | None, dict[str, Any]]:
    """Convert the Keras feature extractor `model` (0..255 pixels in) and keep it if it agrees.

    Returns (forward, None, details) on success, details holding `max_abs_diff` and
    `cpu_ms_per_image` on the probe batch; (None, reason, details) when the conversion fails or
    its features differ from TensorFlow's by more than TOLERANCE (the reason is remembered).

    Raises:
        Cancelled: between steps; nothing is written.
    """
    path = model_path(key)
    name = key.split("|")[0]

    def step(done: int, message: str) -> None:
        check_cancel(cancel)
        emit(progress, "convert", done, STEPS, message, format="onnx-backbone", backbone=name)

    info: dict[str, Any] = {"key": key, "versions": versions(), "tolerance": TOLERANCE, "opset": OPSET}
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=path.parent))
    try:
        step(0, f"Converting {name} to ONNX: exporting the graph (step 1 of {STEPS})")
        try:
            model.export(str(work / "saved_model"), format="tf_saved_model", verbose=False)
        except Exception as exc:  # exporters and converters raise many kinds: TensorFlow stays
            return None, _remember(path, _failed("export", exc), info), info
        step(1, f"Converting {name} to ONNX: converting (step 2 of {STEPS})")
        candidate = work / "model.onnx"
        try:
            _to_onnx(work / "saved_model", candidate)
        except Exception as exc:
            return None, _remember(path, _failed("conversion", exc), info), info
        step(2, f"Converting {name} to ONNX: checking against TensorFlow and timing (step 3 of {STEPS})")
        pixels = probe(input_size)
        try:
            forward = OnnxForward(candidate)
            ours = forward(pixels)
        except Exception as exc:
            return None, _remember(path, _failed("session", exc), info), info
        reference = model(pixels, training=False).numpy()
        diff = float(np.max(np.abs(ours - reference))) if ours.shape == reference.shape else float("inf")
        info["max_abs_diff"] = diff
        if not np.isfinite(diff) or diff > TOLERANCE:
            reason = f"ONNX Runtime features differ from TensorFlow's by {diff:.2e} (max abs) > {TOLERANCE:g}"
            return None, _remember(path, reason, info), info
        info["cpu_ms_per_image"] = round(cpu_ms_per_image(forward, pixels), 3)
        check_cancel(cancel)
        os.replace(candidate, path)  # atomic: readers see the whole checked file or none
        _failure_path(path).unlink(missing_ok=True)
        _write_json(path.with_suffix(".json"), info)
        emit(progress, "convert", STEPS, STEPS, f"Converted {name} to ONNX", format="onnx-backbone")
        return OnnxForward(path), None, info
    finally:
        shutil.rmtree(work, ignore_errors=True)


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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _failed(what: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"ONNX {what} failed: {first}"


def _remember(path: Path, reason: str, info: dict[str, Any]) -> str:
    info["reason"] = reason
    _write_json(_failure_path(path), info)
    return reason

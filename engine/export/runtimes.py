"""Run a classifier in any exported format: a batch of 0..255 float pixels in, probabilities out.

One small class per runtime (Keras, TensorFlow SavedModel, LiteRT for TFLite, ONNX Runtime, and
ONNX Runtime's TensorRT execution provider) behind `load_runtime(fmt, path)`. Quantized TFLite
models get their input quantized and their output dequantized here, so every runtime answers
in the same units and can be compared number for number.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InvalidArgument, LabError, NotFound

# every format a run's classifier can be run in, in the order tables list them
FORMATS: tuple[str, ...] = (
    "keras",
    "savedmodel",
    "tflite-fp32",
    "tflite-fp16",
    "tflite-dynamic",
    "tflite-int8",
    "onnx",
    "tensorrt-fp32",
    "tensorrt-fp16",
)
TENSORRT_FORMATS = ("tensorrt-fp32", "tensorrt-fp16")
TRT_PROVIDER = "TensorrtExecutionProvider"


class RuntimeUnavailable(LabError):
    """A format cannot run on this machine; the message says exactly what is missing."""


def check_format(fmt: str) -> str:
    """Return `fmt` if it is a known format, else raise InvalidArgument listing the valid ones."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"Unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return fmt


def version(dist: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Runtime:
    """Base class: `predict(pixels) -> probabilities` plus a description of the backend."""

    fmt: str = ""
    backend: str = ""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def predict(self, pixels: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"format": self.fmt, "backend": self.backend, "notes": list(self.notes)}


class KerasRuntime(Runtime):
    """A Keras model wrapped in one traced tf.function (dynamic batch)."""

    fmt = "keras"

    def __init__(self, model, input_size: int) -> None:
        super().__init__()
        import keras
        import tensorflow as tf

        self.model = model
        self.backend = f"Keras {keras.__version__} on TensorFlow {tf.__version__}"
        spec = tf.TensorSpec([None, input_size, input_size, 3], tf.float32)
        self._forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        self._forward(tf.zeros([1, input_size, input_size, 3]))  # trace once so latency is warm

    @classmethod
    def load(cls, path: Path, input_size: int) -> KerasRuntime:
        import keras

        return cls(keras.saving.load_model(path, compile=False, safe_mode=True), input_size)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self._forward(np.asarray(pixels, dtype=np.float32)).numpy()


class SavedModelRuntime(Runtime):
    """A TensorFlow SavedModel's `serving_default` signature."""

    fmt = "savedmodel"

    def __init__(self, path: Path) -> None:
        super().__init__()
        import tensorflow as tf

        self._loaded = tf.saved_model.load(str(path))
        self._fn = self._loaded.signatures["serving_default"]
        self._input = next(iter(self._fn.structured_input_signature[1]))
        self.backend = f"tf.saved_model (TensorFlow {tf.__version__})"

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        out = self._fn(**{self._input: tf.constant(pixels, dtype=tf.float32)})
        return next(iter(out.values())).numpy()


def _interpreter_class():
    """LiteRT's Interpreter, or TensorFlow's deprecated tf.lite.Interpreter (with a note why)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"LiteRT {version('ai-edge-litert')}", None
    except ImportError:
        import tensorflow as tf

        note = "ai-edge-litert is not installed: fell back to the deprecated tf.lite.Interpreter"
        return tf.lite.Interpreter, f"tf.lite.Interpreter (TensorFlow {tf.__version__})", note


class TFLiteRuntime(Runtime):
    """A .tflite model in LiteRT's interpreter; quantized inputs/outputs are converted here."""

    def __init__(self, path: Path, fmt: str = "tflite-fp32", num_threads: int | None = None) -> None:
        super().__init__()
        interpreter_cls, self.backend, note = _interpreter_class()
        if note:
            self.notes.append(note)
        self.fmt = fmt
        self.interpreter = interpreter_cls(model_path=str(path), num_threads=num_threads or _threads())
        self._input = self.interpreter.get_input_details()[0]
        self._batch = -1

    def _resize(self, batch: int) -> None:
        it = self.interpreter
        if batch != self._batch:
            shape = list(self._input["shape"])
            it.resize_tensor_input(self._input["index"], [batch, *shape[1:]])
            it.allocate_tensors()
            self._input, self._output = it.get_input_details()[0], it.get_output_details()[0]
            self._batch = batch

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels, dtype=np.float32)
        self._resize(len(pixels))
        self.interpreter.set_tensor(self._input["index"], quantize(pixels, self._input))
        self.interpreter.invoke()
        return dequantize(self.interpreter.get_tensor(self._output["index"]), self._output)


def quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float input -> the tensor's integer type with its (scale, zero point); float stays float."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype, copy=False)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """An integer output tensor back to float with its (scale, zero point)."""
    if np.dtype(detail["dtype"]).kind == "f":
        return y.astype(np.float32, copy=True)
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


class OnnxRuntime(Runtime):
    """An ONNX model in ONNX Runtime (CPU, or TensorRT/CUDA execution providers)."""

    def __init__(self, path: Path, fmt: str = "onnx", providers: list | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.fmt = fmt
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
        )
        self._input = self.session.get_inputs()[0].name
        used = self.session.get_providers()
        self.backend = f"onnxruntime {ort.__version__} ({used[0]})"

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: np.asarray(pixels, dtype=np.float32)})[0]


def nvidia_gpu_visible() -> bool:
    """True when the NVIDIA driver exposes a GPU (device node or a working nvidia-smi)."""
    if Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/gpus").is_dir():
        return True
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidiactl").exists()


def tensorrt_missing() -> list[str]:
    """What this machine lacks to run TensorRT through ONNX Runtime; empty when nothing is missing."""
    missing = []
    if not nvidia_gpu_visible():
        missing.append("no NVIDIA GPU visible (no /dev/nvidia0, no driver in /proc/driver/nvidia)")
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("package `tensorrt` not installed (pip install tensorrt)")
    if importlib.util.find_spec("onnxruntime") is None:
        missing.append("package `onnxruntime-gpu` not installed (pip install onnxruntime-gpu)")
    else:
        import onnxruntime as ort

        if TRT_PROVIDER not in ort.get_available_providers():
            missing.append(
                f"onnxruntime {ort.__version__} has no {TRT_PROVIDER} (it is the CPU build: "
                "pip uninstall onnxruntime && pip install onnxruntime-gpu)"
            )
    return missing


def tensorrt_status() -> dict[str, Any]:
    """{"available": bool, "missing": [...], "versions": {...}} for the ONNX -> TensorRT route."""
    missing = tensorrt_missing()
    return {
        "available": not missing,
        "missing": missing,
        "versions": {name: version(name) for name in ("tensorrt", "onnxruntime", "onnxruntime-gpu")},
        "route": "ONNX -> ONNX Runtime TensorrtExecutionProvider (TF-TRT left TensorFlow in 2.18)",
    }


def tensorrt_providers(fp16: bool, cache_dir: Path, input_name: str, input_size: int) -> list:
    """ONNX Runtime providers for TensorRT with an engine cache and a batch 1..64 profile."""
    shape = f"{input_size}x{input_size}x3"
    options = {
        "trt_fp16_enable": bool(fp16),
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_profile_min_shapes": f"{input_name}:1x{shape}",
        "trt_profile_opt_shapes": f"{input_name}:1x{shape}",
        "trt_profile_max_shapes": f"{input_name}:64x{shape}",
    }
    return [(TRT_PROVIDER, options), "CUDAExecutionProvider", "CPUExecutionProvider"]


def load_tensorrt(onnx_path: Path, fmt: str, cache_dir: Path, input_size: int) -> OnnxRuntime:
    """ONNX Runtime with the TensorRT provider; raises RuntimeUnavailable naming what is missing."""
    missing = tensorrt_missing()
    if missing:
        raise RuntimeUnavailable(f"{fmt} is unavailable here: " + "; ".join(missing))
    import onnxruntime as ort

    # pip's TensorRT and CUDA libraries live in site-packages, not on the loader's path: importing
    # `tensorrt` loads libnvinfer, and preload_dlls (onnxruntime >= 1.21) loads CUDA and cuDNN
    import tensorrt  # noqa: F401

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    providers = tensorrt_providers(fmt == "tensorrt-fp16", cache_dir, name, input_size)
    runtime = OnnxRuntime(onnx_path, fmt=fmt, providers=providers)
    used = runtime.session.get_providers()
    if used[0] != TRT_PROVIDER:  # ONNX Runtime falls back silently; we do not
        raise RuntimeUnavailable(
            f"{fmt}: ONNX Runtime did not start the TensorRT provider (session uses {used}); "
            "check that TensorRT's libraries (libnvinfer) are on the library path"
        )
    return runtime


def load_runtime(fmt: str, path: str | Path, input_size: int, cache_dir: Path | None = None) -> Runtime:
    """Load an exported model file (or SavedModel folder) for inference.

    Args:
        fmt: one of FORMATS.
        path: the model file; for TensorRT formats, the ONNX file.
        input_size: square input side of the classifier, in pixels.
        cache_dir: where TensorRT keeps its built engines (TensorRT formats only).

    Raises:
        NotFound: the file is missing. RuntimeUnavailable: the runtime cannot run here.
    """
    check_format(fmt)
    path = Path(path)
    if not path.exists():
        raise NotFound(f"No {fmt} model at {path}")
    if fmt == "keras":
        return KerasRuntime.load(path, input_size)
    if fmt == "savedmodel":
        return SavedModelRuntime(path)
    if fmt.startswith("tflite"):
        return TFLiteRuntime(path, fmt=fmt)
    if fmt == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            raise RuntimeUnavailable("onnx needs onnxruntime: pip install onnxruntime")
        return OnnxRuntime(path)
    return load_tensorrt(path, fmt, cache_dir or path.parent / fmt, input_size)

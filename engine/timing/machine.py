"""Facts about the machine the lab runs on: versions, CPU, GPUs, and whether TensorRT can be used.

`basic_facts()` is instant (no TensorFlow import); `tensorflow_facts()` imports TensorFlow to ask
which GPUs it sees and how it was built; `tensorrt_status()` takes engine.export.runtimes' verdict for the
lab's TensorRT route and adds TensorFlow's view, giving the exact reasons when it is unavailable.
`environment()` returns everything as one JSON-able dict.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
from typing import Any

from engine import config

# Python packages of the TensorRT routes (reported as facts; the verdict is engine.export.runtimes')
_TRT_PACKAGES = ("tensorrt", "tf2onnx", "onnx", "onnxruntime")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def cpu_model() -> str:
    """The CPU's marketing name, read from /proc/cpuinfo (Linux) or the platform module."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (affinity-aware), falling back to the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def basic_facts() -> dict[str, Any]:
    """Facts that need no TensorFlow import (well under 100 ms)."""
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 1e9, 1)
    except ImportError:
        memory_gb = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(terse=True),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count() or 1,
        "usable_cores": usable_cores(),
        "memory_gb": memory_gb,
        "tensorflow_version": _version("tensorflow"),
        "keras_version": _version("keras"),
        "streamlit_version": _version("streamlit"),
        "nvidia_smi": shutil.which("nvidia-smi") is not None,
        "packages": {name: _installed(name) for name in _TRT_PACKAGES},
        "lab_home": str(config.lab_home()),
        "keras_home": str(config.keras_home()),
    }


def tensorflow_facts() -> dict[str, Any]:
    """What TensorFlow itself reports: versions, visible devices, CUDA/TensorRT build flags.

    Imports TensorFlow (seconds on first call); callers should cache the result.
    """
    import tensorflow as tf

    build = dict(tf.sysconfig.get_build_info())
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            name = tf.config.experimental.get_device_details(device).get("device_name", device.name)
        except Exception:  # details are best effort; the device itself is the fact
            name = device.name
        gpus.append(name)
    trt_enabled = False
    try:
        from tensorflow.compiler.tf2tensorrt._pywrap_py_utils import is_tensorrt_enabled

        trt_enabled = bool(is_tensorrt_enabled())
    except Exception:  # module absent in builds without TF-TRT
        trt_enabled = False
    import keras

    return {
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "gpus": gpus,
        "is_cuda_build": bool(build.get("is_cuda_build", False)),
        "cuda_version": build.get("cuda_version"),
        "cudnn_version": build.get("cudnn_version"),
        "is_tensorrt_build": bool(build.get("is_tensorrt_build", False)),
        "tensorrt_enabled": trt_enabled,
    }


def tensorrt_status(basic: dict[str, Any], tf_facts: dict[str, Any] | None) -> dict[str, Any]:
    """Whether TensorRT can be used here, and if not, every reason why.

    The verdict is the one of the route the lab really uses (ONNX -> ONNX Runtime's TensorRT
    provider, `engine.export.runtimes`); TensorFlow's own view is added to the reasons.

    Args:
        basic: `basic_facts()`.
        tf_facts: `tensorflow_facts()`, or None when TensorFlow was not probed.

    Returns:
        {"available": bool, "reasons": [str, ...], "route": str}.
    """
    from engine.export import runtimes

    status = runtimes.tensorrt_status()
    reasons = list(status["missing"])
    if tf_facts is not None:
        if not tf_facts["gpus"] and runtimes.nvidia_gpu_visible():
            reasons.append("an NVIDIA GPU is present but TensorFlow sees none (CUDA libraries or driver)")
        if not tf_facts["is_tensorrt_build"]:
            reasons.append(
                f"TensorFlow {tf_facts['tensorflow_version']} is built without TensorRT "
                "(tf.sysconfig.get_build_info()['is_tensorrt_build'] is False), so TF-TRT is not an option"
            )
    return {"available": status["available"], "reasons": reasons, "route": status["route"]}


def environment(probe_tensorflow: bool = True) -> dict[str, Any]:
    """All facts as one JSON-able dict (`tensorflow` is None when not probed)."""
    basic = basic_facts()
    tf_facts = tensorflow_facts() if probe_tensorflow else None
    return {**basic, "tensorflow": tf_facts, "tensorrt": tensorrt_status(basic, tf_facts)}

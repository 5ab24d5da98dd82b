"""Facts about the machine the lab runs on: the one function every record of "where it ran" asks.

Also whether the network can be reached (`network_available`), asked before any download.

A run's `environment.json`, a timings report's `machine`, a format comparison's `machine` and the
Overview page all come from `machine_facts()`. It sits in the ground (beside config and errors)
because rooms at every height record it: the run store, the conversion comparison, the timing lab.

Core counts, one meaning each:
    cpu_cores       logical CPUs of the machine (hardware threads: `os.cpu_count()`)
    usable_cores    logical CPUs this process may run on (CPU affinity, e.g. a container's share)
    physical_cores  physical cores (psutil; None without it)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import socket
import sys
import threading
import time
from typing import Any

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
    """Logical CPUs this process may run on (affinity-aware), falling back to the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_facts(include_tensorflow: bool = False) -> dict[str, Any]:
    """Hardware and software of this machine as one JSON-able dict.

    Args:
        include_tensorflow: also import TensorFlow (seconds the first time) to ask which GPUs it
            sees and how it was built (`tensorflow_facts()`); without it, the call takes well
            under 100 ms and versions are read from the installed packages.

    Returns:
        hostname, python, platform, cpu_model, cpu_cores (logical), usable_cores, physical_cores,
        memory_bytes, memory_gb, tensorflow_version, keras_version, streamlit_version, nvidia_smi,
        packages ({module: installed}) and, with TensorFlow, the keys of `tensorflow_facts()`.
    """
    try:
        import psutil

        physical, memory = psutil.cpu_count(logical=False), psutil.virtual_memory().total
    except ImportError:
        physical, memory = None, None
    facts: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count() or 1,
        "usable_cores": usable_cores(),
        "physical_cores": physical,
        "memory_bytes": memory,
        "memory_gb": None if memory is None else round(memory / 1e9, 1),
        "tensorflow_version": _version("tensorflow"),
        "keras_version": _version("keras"),
        "streamlit_version": _version("streamlit"),
        "nvidia_smi": shutil.which("nvidia-smi") is not None,
        "packages": {name: _installed(name) for name in _TRT_PACKAGES},
    }
    if include_tensorflow:
        facts.update(tensorflow_facts())
    return facts


def tensorflow_facts() -> dict[str, Any]:
    """What TensorFlow itself reports: versions, visible GPUs, CUDA/TensorRT build flags.

    Imports TensorFlow (seconds on first call); callers that render often should cache the result.
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


def network_available(host: str = "storage.googleapis.com", timeout: float = 1.5) -> bool:
    """A quick TCP probe, so offline use fails in about `timeout` seconds instead of hanging.

    The whole probe is bounded, name resolution included: a socket timeout does not cover
    `getaddrinfo`, which waits ~10 s when DNS never answers, so it runs in a daemon thread that is
    abandoned at the deadline.
    """
    deadline = time.monotonic() + timeout
    found: list = []

    def resolve() -> None:
        with contextlib.suppress(OSError):  # unresolvable: `found` stays empty
            found.extend(socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM))

    resolver = threading.Thread(target=resolve, name=f"resolve {host}", daemon=True)
    resolver.start()
    resolver.join(timeout)
    for family, kind, proto, _name, address in list(found):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(left)
                sock.connect(address)
                return True
        except OSError:
            continue
    return False

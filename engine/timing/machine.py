"""What the Overview and CPU vs GPU pages show about this machine, and whether TensorRT can be used.

The facts themselves come from `engine.machine.machine_facts()` (the one function every record asks);
`basic_facts()` adds where the lab keeps its data; `tensorrt_status()` takes engine.export.runtimes'
verdict for the lab's TensorRT route and adds TensorFlow's view, giving the exact reasons when it is
unavailable. `environment()` returns everything as one JSON-able dict.
"""

from __future__ import annotations

from typing import Any

from engine import config
from engine.machine import machine_facts, tensorflow_facts

__all__ = ["basic_facts", "environment", "tensorflow_facts", "tensorrt_status"]


def basic_facts() -> dict[str, Any]:
    """`machine_facts()` without TensorFlow (well under 100 ms), plus the data and weights folders."""
    return {**machine_facts(), "lab_home": str(config.lab_home()), "keras_home": str(config.keras_home())}


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

"""Every private Keras API the lab uses, in one place, with why and for which Keras.

Written against Keras 3.x (checked on 3.15); Keras 2 / tf.keras differ. When Keras changes, this file
is the only one to fix, and the architecture tests (tests/test_architecture.py) say so first.

- `Operation._inbound_nodes` and `KerasTensor._keras_history`: Keras has no public way to walk a
  functional model's graph by operation (`model.get_config()` gives names but loses shapes and is
  slow on InceptionV3); the architecture analysis needs each operation's input tensors, output
  tensors and the operations that produced its inputs.
- `keras.src.backend.common.global_state`'s "object_name_uids": Keras numbers unnamed layers per
  process ("conv2d_95" when InceptionV3 is built second); resetting the counters makes the cached
  layer names the same whatever was built before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def first_node(op: Any) -> tuple[list, list]:
    """The input and output tensors of an operation's first call (node 0).

    Application models apply every operation exactly once, so node 0 is the only node.
    """
    node = op._inbound_nodes[0]
    return list(node.input_tensors), list(node.output_tensors)


def producer_name(tensor: Any) -> str:
    """The name of the operation that produced a symbolic tensor."""
    return tensor._keras_history.operation.name


@contextlib.contextmanager
def fresh_layer_names() -> Iterator[None]:
    """Build with Keras' automatic layer names starting from zero ("conv2d", "conv2d_1", ...).

    Guarded: on a Keras without that module, names merely get a suffix.
    """
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover - a Keras without that module
        yield
        return
    saved = global_state.get_global_attribute("object_name_uids")
    global_state.set_global_attribute("object_name_uids", None)
    try:
        yield
    finally:
        global_state.set_global_attribute("object_name_uids", saved)

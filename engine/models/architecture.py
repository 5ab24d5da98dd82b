"""Architecture facts of every registered backbone, counted from the real Keras model.

The model is built once with random weights (structure needs no weights), reduced to one plain
record per operation (name, Keras class, shapes, parameters, MACs, block), cached as JSON under
`config.architecture_cache_dir()` and read back from there, so nothing after the first build
imports TensorFlow. Totals, per-block breakdowns, layer freezing plans and comparisons are all
sums over those records. MAC conventions: see engine/macs.py.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from math import prod
from pathlib import Path
from typing import Any

from engine import config
from engine.errors import InvalidArgument
from engine.models import backbones, keras_internals, macs
from engine.models.block_names import assign_blocks

_SCHEMA = 1  # bump when the record format changes: old cache files are then ignored
_MEMORY: dict[str, Architecture] = {}
_LOCK = threading.Lock()  # one build at a time: two Streamlit sessions must not race the cache


@dataclass(frozen=True)
class LayerRecord:
    """One operation of the model graph, in topological order."""

    name: str
    op: str  # Keras class name: Conv2D, DepthwiseConv2D, BatchNormalization, Add, ...
    kind: str  # one of macs.KINDS
    block: str  # "stem", a family block ("block_3", "mixed5", "block2a"), or "head"
    inbound: tuple[str, ...]  # names of the operations feeding it
    input_shape: tuple[int, ...]  # of the first input, without the batch axis
    output_shape: tuple[int, ...]
    params: int
    trainable_params: int  # what fine-tuning would train (batch-norm moving statistics excluded)
    macs: int
    other_ops: int  # elementwise work of a non-weight layer (see macs.other_ops)
    is_layer: bool  # a keras.layers.Layer (in model.layers); False for ops like `x + 3`
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()

    @property
    def channels(self) -> int:
        return self.output_shape[-1] if self.output_shape else 0


@dataclass(frozen=True)
class BlockStats:
    """Sums over the layers of one block."""

    name: str
    layers: int
    keras_layers: int  # entries of model.layers (what fine-tuning counts)
    weighted_layers: int  # layers holding trainable weights (conv, dense, batch norm)
    params: int
    trainable_params: int
    macs: int
    macs_by_kind: dict[str, int]
    params_by_kind: dict[str, int]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


@dataclass(frozen=True)
class Architecture:
    """Everything the lab knows about one backbone's structure (without its classifier top)."""

    name: str
    family: str
    input_shape: tuple[int, int, int]
    input_name: str  # the Keras model's input layer
    preprocessing: str
    tf1_input_name: str
    feature_layer: str  # declared in the registry
    feature_dim: int
    bottleneck_layer: str  # the layer actually feeding the global average pooling
    bottleneck_shape: tuple[int, ...]
    layers: list[LayerRecord]
    blocks: list[BlockStats]
    imagenet_top: dict[str, int]  # totals of the same model built with its 1000-class classifier
    keras_version: str
    build_seconds: float
    weights_file: str = ""
    weights_file_bytes: int | None = None  # real size when the ImageNet weights are cached
    macs_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.layers)

    @property
    def other_ops(self) -> int:
        return sum(r.other_ops for r in self.layers)

    @property
    def depth(self) -> int:
        """Weight layers (convolutions and dense) on the model's graph, the papers' "layers"."""
        return sum(r.kind in macs.WEIGHT_KINDS for r in self.layers)

    @property
    def weights_bytes(self) -> int:
        """float32 size of the weights (4 bytes per parameter)."""
        return self.params * 4

    def block(self, name: str) -> BlockStats:
        for block in self.blocks:
            if block.name == name:
                return block
        raise InvalidArgument(
            f"{self.name} has no block {name!r}; blocks: {', '.join(b.name for b in self.blocks)}"
        )

    def layers_of(self, block: str) -> list[LayerRecord]:
        return [r for r in self.layers if r.block == block]

    def head_params(self, num_classes: int) -> int:
        """The new classifier layer's parameters: feature_dim x classes weights + classes biases."""
        return self.feature_dim * num_classes + num_classes

    def summary(self, num_classes: int = 1000) -> dict[str, Any]:
        """Totals as one JSON-able dict (the CLI's --json line)."""
        return {
            "name": self.name,
            "family": self.family,
            "params": self.params,
            "trainable_params_frozen": self.head_params(num_classes),
            "num_classes": num_classes,
            "macs": self.macs,
            "macs_by_kind": self.macs_by_kind,
            "other_ops": self.other_ops,
            "depth": self.depth,
            "imagenet_top": self.imagenet_top,
            "input_shape": list(self.input_shape),
            "input_name": self.input_name,
            "tf1_input_name": self.tf1_input_name,
            "preprocessing": self.preprocessing,
            "feature_layer": self.feature_layer,
            "bottleneck_layer": self.bottleneck_layer,
            "bottleneck_shape": list(self.bottleneck_shape),
            "feature_dim": self.feature_dim,
            "weights_bytes": self.weights_bytes,
            "weights_file": self.weights_file,
            "weights_file_bytes": self.weights_file_bytes,
            "blocks": [block_row(b) for b in self.blocks],
        }


def block_row(block: BlockStats) -> dict[str, Any]:
    """A block as one flat table row."""
    row = {
        "block": block.name,
        "layers": block.layers,
        "params": block.params,
        "macs": block.macs,
        "output": "×".join(map(str, block.output_shape)),
    }
    row.update({f"macs_{k}": v for k, v in block.macs_by_kind.items()})
    return row


# -- analysis -------------------------------------------------------------------------------------
def analyze(name: str) -> Architecture:
    """The architecture facts of backbone `name` (cached in memory and on disk).

    Raises:
        NotFound: unknown name (the message lists the valid names).
    """
    backbone = backbones.get_backbone(name)
    path = _cache_path(name)
    key = path.name  # the structure depends on the Keras version, not on the data directory
    with _LOCK:
        if key not in _MEMORY:
            arch = _from_cache(backbone, path)
            if arch is None:
                data = _build(name)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(data), encoding="utf-8")
                tmp.replace(path)  # atomic: a reader never sees half a file
                arch = _from_data(backbone, data)
            _MEMORY[key] = arch
    arch = _MEMORY[key]
    # the weights file may have been downloaded since the structure was cached
    size = _weights_file_bytes(name)
    if size != arch.weights_file_bytes:
        arch = _replace(arch, weights_file_bytes=size)
    return arch


def clear_memory(name: str | None = None) -> None:
    """Forget in-memory results, of one backbone or all (the JSON cache stays)."""
    with _LOCK:
        if name is None:
            _MEMORY.clear()
        else:
            _MEMORY.pop(_cache_path(name).name, None)


def _cache_path(name: str) -> Path:
    version = metadata.version("keras")
    return config.architecture_cache_dir() / f"{name}-keras{version}-v{_SCHEMA}.json"


# what reading a damaged or hand-edited cache file can raise (JSON errors are ValueErrors; deep nesting
# is a RecursionError; wrong shapes fail in _from_data)
_DAMAGED = (
    OSError,
    ValueError,
    RecursionError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    StopIteration,
)


def _from_cache(backbone: backbones.Backbone, path: Path) -> Architecture | None:
    """The cached analysis, or None (then it is rebuilt) when missing, of another schema or damaged."""
    try:
        if not path.is_file() or path.stat().st_size > 50_000_000:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("schema") != _SCHEMA:
            return None
        return _from_data(backbone, data)
    except _DAMAGED:
        return None  # a file edited or cut short by hand: the model itself is the source of truth


def _weights_file_bytes(name: str) -> int | None:
    path = backbones.weights_path(name)
    return path.stat().st_size if path.is_file() else None


def _replace(arch: Architecture, **changes) -> Architecture:
    values = {f: getattr(arch, f) for f in arch.__dataclass_fields__}
    values.update(changes)
    return Architecture(**values)


def _build(name: str) -> dict:
    """Build the model (random weights) and reduce it to JSON-able records."""
    import keras

    backbone = backbones.get_backbone(name)
    start = time.perf_counter()
    with keras_internals.fresh_layer_names():
        model = backbones.build_backbone(name, weights="random", seed=None)
        records = records_of(model)
    with keras_internals.fresh_layer_names():
        top_model = getattr(keras.applications, backbone.keras_class)(
            include_top=True,
            weights=None,
            input_shape=backbone.input_shape,
            classes=1000,
            **backbone.builder_kwargs,
        )
        top = records_of(top_model)
    seconds = time.perf_counter() - start
    del model, top_model
    return {
        "schema": _SCHEMA,
        "name": name,
        "keras_version": keras.__version__,
        "build_seconds": round(seconds, 3),
        "records": records,
        "imagenet_top": {
            "params": sum(r["params"] for r in top),
            "macs": sum(r["macs"] for r in top),
            "depth": sum(r["kind"] in macs.WEIGHT_KINDS for r in top),
        },
    }


def records_of(model) -> list[dict]:
    """One JSON-able dict per operation of a built functional Keras model, in topological order.

    Keys: name, op (class name), kind, inbound, input_shape, output_shape, params,
    trainable_params, macs, other_ops, is_layer, kernel, strides.
    """
    import keras

    out = []
    for op in model.operations:
        inputs, outputs = keras_internals.first_node(op)
        inbound = [keras_internals.producer_name(t) for t in inputs]
        in_shape = tuple(int(d) for d in inputs[0].shape[1:]) if inputs else ()
        out_shape = tuple(int(d) for d in outputs[0].shape[1:])
        try:
            cfg = op.get_config()
        except (NotImplementedError, TypeError):
            cfg = {}
        # convolutions say kernel_size, pooling layers pool_size
        kernel = tuple(cfg.get("kernel_size") or cfg.get("pool_size") or ())
        cls = type(op).__name__
        is_layer = isinstance(op, keras.layers.Layer)
        params = int(op.count_params()) if is_layer and op.weights else 0
        trainable = sum(prod(w.shape) for w in op.trainable_weights) if is_layer else 0
        out.append(
            {
                "name": op.name,
                "op": cls,
                "kind": macs.layer_kind(cls, kernel),
                "inbound": inbound,
                "input_shape": in_shape,
                "output_shape": out_shape,
                "params": params,
                "trainable_params": trainable,
                "macs": macs.count_macs(
                    cls,
                    in_shape,
                    out_shape,
                    kernel_size=kernel,
                    groups=int(cfg.get("groups", 1) or 1),
                    units=cfg.get("units"),
                    filters=cfg.get("filters"),
                ),
                "other_ops": macs.other_ops(cls, out_shape),
                "is_layer": is_layer,
                "kernel": kernel,
                "strides": tuple(cfg.get("strides", ()) or ()),
            }
        )
    return out


def _from_data(backbone: backbones.Backbone, data: dict) -> Architecture:
    raw = data["records"]
    blocks = assign_blocks(backbone.family, raw)
    layers = [
        LayerRecord(
            **{
                **r,
                "block": blocks[r["name"]],
                "inbound": tuple(r["inbound"]),
                "input_shape": tuple(r["input_shape"]),
                "output_shape": tuple(r["output_shape"]),
                "kernel": tuple(r["kernel"]),
                "strides": tuple(r["strides"]),
            }
        )
        for r in raw
    ]
    # build_backbone ends in pooling="avg": the layer feeding it is the bottleneck
    last = layers[-1]
    source = last.inbound[0] if last.op == "GlobalAveragePooling2D" else last.name
    bottleneck = next(r for r in layers if r.name == source)
    return Architecture(
        name=backbone.name,
        family=backbone.family,
        input_shape=backbone.input_shape,
        input_name=layers[0].name,
        preprocessing=backbone.preprocessing,
        tf1_input_name=backbone.tf1_input_name,
        feature_layer=backbone.feature_layer,
        feature_dim=backbone.feature_dim,
        bottleneck_layer=bottleneck.name,
        bottleneck_shape=bottleneck.output_shape,
        layers=layers,
        blocks=_block_stats(layers),
        imagenet_top=dict(data["imagenet_top"]),
        keras_version=data["keras_version"],
        build_seconds=data["build_seconds"],
        weights_file=backbone.weights_file,
        weights_file_bytes=_weights_file_bytes(backbone.name),
        macs_by_kind={k: sum(r.macs for r in layers if r.kind == k) for k in macs.WEIGHT_KINDS},
    )


def _block_stats(layers: list[LayerRecord]) -> list[BlockStats]:
    order: list[str] = []
    for r in layers:
        if r.block not in order:
            order.append(r.block)
    stats = []
    for name in order:
        members = [r for r in layers if r.block == name]
        stats.append(
            BlockStats(
                name=name,
                layers=len(members),
                keras_layers=sum(r.is_layer for r in members),
                weighted_layers=sum(r.trainable_params > 0 for r in members),
                params=sum(r.params for r in members),
                trainable_params=sum(r.trainable_params for r in members),
                macs=sum(r.macs for r in members),
                macs_by_kind={k: sum(r.macs for r in members if r.kind == k) for k in macs.WEIGHT_KINDS},
                params_by_kind={k: sum(r.params for r in members if r.kind == k) for k in macs.KINDS},
                input_shape=members[0].input_shape,
                output_shape=members[-1].output_shape,
            )
        )
    return stats


def as_dict(obj) -> dict[str, Any]:
    """A JSON-able dict of any of this module's dataclasses."""
    return asdict(obj)

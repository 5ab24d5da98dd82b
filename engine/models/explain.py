"""The course questions answered with numbers: comparisons, bottleneck, freezing, label_image.

Everything here is arithmetic over `engine.models.architecture.analyze(name)` (no TensorFlow), plus a
2-D PCA (`pca_2d`) that `engine.features.projection` applies to vectors in the feature cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np

from engine.errors import InvalidArgument
from engine.models import backbones, macs
from engine.models.architecture import Architecture, analyze

# Published per-image cost of the whole ImageNet classifier (1000-way top included: that is the
# convention that reproduces the papers' parameter counts, e.g. MobileNet 1.0's 4.2 M params hold
# its 1.0 M-param FC layer; its convolutions alone are 3.2 M).
PUBLISHED: dict[str, dict[str, Any]] = {
    # MobileNets (Howard et al. 2017): Table 6 varies the width multiplier, Table 7 the resolution
    "mobilenet_1.0_224": {"macs": 569e6, "params": 4.2e6, "source": "Howard et al. 2017, Tables 6-8"},
    "mobilenet_1.0_192": {"macs": 418e6, "params": 4.2e6, "source": "Howard et al. 2017, Table 7"},
    "mobilenet_1.0_160": {"macs": 290e6, "params": 4.2e6, "source": "Howard et al. 2017, Table 7"},
    "mobilenet_1.0_128": {"macs": 186e6, "params": 4.2e6, "source": "Howard et al. 2017, Table 7"},
    "mobilenet_0.75_224": {"macs": 325e6, "params": 2.6e6, "source": "Howard et al. 2017, Table 6"},
    "mobilenet_0.50_224": {"macs": 149e6, "params": 1.3e6, "source": "Howard et al. 2017, Table 6"},
    "mobilenet_0.25_224": {"macs": 41e6, "params": 0.5e6, "source": "Howard et al. 2017, Table 6"},
    "mobilenet_v2_1.0_224": {"macs": 300e6, "params": 3.4e6, "source": "Sandler et al. 2018, Table 4"},
    "mobilenet_v3_large": {"macs": 219e6, "params": 5.4e6, "source": "Howard et al. 2019, Table 3"},
    "mobilenet_v3_small": {"macs": 56e6, "params": 2.5e6, "source": "Howard et al. 2019, Table 4"},
    "inception_v3": {"macs": 5.7e9, "params": 23.8e6, "source": "Szegedy et al. 2016; Keras docs"},
    "efficientnet_b0": {"macs": 0.39e9, "params": 5.3e6, "source": "Tan & Le 2019, Table 2"},
}


def published_check(names: list[str]) -> list[dict[str, Any]]:
    """Measured (ImageNet top included) against published MACs and params, for the names that have them."""
    rows = []
    for name in names:
        pub = PUBLISHED.get(name)
        if not pub:
            continue
        top = analyze(name).imagenet_top
        rows.append(
            {
                "backbone": name,
                "MACs counted (M)": top["macs"] / 1e6,
                "MACs published (M)": pub["macs"] / 1e6,
                "MACs difference (%)": 100 * (top["macs"] / pub["macs"] - 1),
                "params counted (M)": top["params"] / 1e6,
                "params published (M)": pub["params"] / 1e6,
                "source": pub["source"],
            }
        )
    return rows


# -- tables --------------------------------------------------------------------------------------
def layer_table(name: str) -> list[dict[str, Any]]:
    """The model graph as table rows: name, type, kind, block, output shape, params, MACs."""
    return [
        {
            "layer": r.name,
            "type": r.op,
            "kind": r.kind,
            "block": r.block,
            "output shape": "×".join(map(str, r.output_shape)),
            "params": r.params,
            "macs": r.macs,
            "inputs": ", ".join(r.inbound),
        }
        for r in analyze(name).layers
    ]


def compare(names: list[str], num_classes: int = 1000) -> list[dict[str, Any]]:
    """One row per backbone for a comparison table."""
    rows = []
    for name in names:
        a = analyze(name)
        rows.append(
            {
                "backbone": name,
                "family": a.family,
                "input": "×".join(map(str, a.input_shape)),
                "params (M)": a.params / 1e6,
                "MACs (M)": a.macs / 1e6,
                "MACs with ImageNet top (M)": a.imagenet_top["macs"] / 1e6,
                "depth (weight layers)": a.depth,
                "blocks": len(a.blocks),
                "bottleneck": f"{a.bottleneck_layer} {'×'.join(map(str, a.bottleneck_shape))}",
                "feature dim": a.feature_dim,
                f"head params ({num_classes} classes)": a.head_params(num_classes),
                "weights (MB, float32)": a.weights_bytes / 1e6,
            }
        )
    return rows


# The classic TF1 answers: retrain.py's create_model_info() fed `resized_input_tensor_name` with
# (pixel - input_mean) / input_std; label_image.py takes the same numbers as flags, and the
# retrained graph's output is `final_result`.
_TF1_LABEL_IMAGE: dict[str, dict[str, Any]] = {
    "mobilenet_v1": {"input_mean": 127.5, "input_std": 127.5, "graph": "MobileNet v1 frozen graph"},
    "inception_v3": {"input_mean": 128, "input_std": 128, "graph": "classify_image_graph_def.pb"},
}
HOW_TO_FIND_INPUTS = [
    "Keras: `model.inputs` / `model.summary()` (first row) give the input layer's name and shape.",
    "SavedModel: `saved_model_cli show --dir EXPORT --tag_set serve --signature_def serving_default`.",
    "TF1 frozen graph (.pb): open it in Netron, or list `graph.get_operations()` and look for the "
    "Placeholder (MobileNet: `input`) or the op after the JPEG decoding (Inception v3: `Mul`).",
    "The value range is not stored in the graph: it comes from the training code "
    "(retrain.py's input_mean/input_std, Keras' `preprocess_input`).",
]


@dataclass(frozen=True)
class FreezePlan:
    """What training costs with the top `unfrozen_blocks` blocks unfrozen (BatchNorm stays frozen)."""

    backbone: str
    unfrozen_blocks: int
    blocks: list[str]  # the unfrozen blocks, bottom to top
    fine_tune_layers: int  # the same setting in TrainConfig.fine_tune_layers' unit (weighted layers)
    head_params: int
    trainable_params: int  # head + unfrozen weight layers
    frozen_params: int
    total_params: int
    forward_macs: int  # per image, backbone + head
    step_macs_per_image: int  # forward + backward (about 2x forward of the trainable part)
    step_macs: int  # one training step of `batch_size` images
    batch_size: int
    uses_feature_cache: bool  # head only: the backbone runs once per image, then never again


def freeze_plan(
    name: str, unfrozen_blocks: int = 0, num_classes: int = 5, batch_size: int = 100
) -> FreezePlan:
    """Trainable parameters and the estimated MACs of one training step.

    Backward costs about twice the forward pass of the trainable part (gradients with respect to
    the inputs and to the weights); with no block unfrozen the head trains on cached bottlenecks,
    so a step costs the head alone.

    Raises:
        InvalidArgument: unfrozen_blocks outside 0..number of blocks, num_classes < 2, batch_size < 1.
    """
    arch = analyze(name)
    if not 0 <= unfrozen_blocks <= len(arch.blocks):
        raise InvalidArgument(
            f"unfrozen_blocks must be between 0 and {len(arch.blocks)} for {name}, "
            f"got unfrozen_blocks={unfrozen_blocks!r}"
        )
    if num_classes < 2 or batch_size < 1:
        raise InvalidArgument(
            f"need num_classes >= 2 and batch_size >= 1, got num_classes={num_classes!r}, "
            f"batch_size={batch_size!r}"
        )
    chosen = [b.name for b in arch.blocks[len(arch.blocks) - unfrozen_blocks :]] if unfrozen_blocks else []
    weight_layers = [r for r in arch.layers if r.block in chosen and r.kind in macs.WEIGHT_KINDS]
    head = arch.head_params(num_classes)
    head_macs = arch.feature_dim * num_classes
    unfrozen_macs = sum(r.macs for r in arch.layers if r.block in chosen)
    forward = arch.macs + head_macs
    per_image = forward + 2 * (unfrozen_macs + head_macs) if chosen else 3 * head_macs
    trainable = head + sum(r.params for r in weight_layers)
    return FreezePlan(
        backbone=name,
        unfrozen_blocks=unfrozen_blocks,
        blocks=chosen,
        fine_tune_layers=len(weight_layers),
        head_params=head,
        trainable_params=trainable,
        frozen_params=arch.params + head - trainable,
        total_params=arch.params + head,
        forward_macs=forward,
        step_macs_per_image=per_image,
        step_macs=per_image * batch_size,
        batch_size=batch_size,
        uses_feature_cache=not chosen,
    )


def freeze_curve(name: str, num_classes: int = 5, batch_size: int = 100) -> list[dict[str, Any]]:
    """freeze_plan for every possible number of unfrozen blocks, as table rows."""
    arch = analyze(name)
    rows = []
    for n in range(len(arch.blocks) + 1):
        plan = freeze_plan(name, n, num_classes, batch_size)
        rows.append(
            {
                "unfrozen blocks": n,
                "top block": plan.blocks[0] if plan.blocks else "(head only)",
                "fine_tune_layers": plan.fine_tune_layers,
                "trainable params": plan.trainable_params,
                "step MACs per image": plan.step_macs_per_image,
            }
        )
    return rows


@dataclass(frozen=True)
class Bottleneck:
    """The bottleneck on the real model: the layer whose pooled output the lab caches."""

    backbone: str
    layer: str
    map_shape: tuple[int, ...]  # the feature map before global average pooling
    feature_dim: int  # the pooled vector: what is cached per image
    input_values: int
    map_values: int
    compression: float  # input values per cached feature value
    map_compression: float  # input values per value of the feature map
    cached_bytes_per_image: int  # float32 vector
    image_bytes: int  # the decoded uint8 input image


def bottleneck(name: str) -> Bottleneck:
    """Bottleneck layer, shapes and compression ratios of backbone `name`."""
    arch = analyze(name)
    inputs = prod(arch.input_shape)
    map_values = prod(arch.bottleneck_shape)
    return Bottleneck(
        backbone=name,
        layer=arch.bottleneck_layer,
        map_shape=arch.bottleneck_shape,
        feature_dim=arch.feature_dim,
        input_values=inputs,
        map_values=map_values,
        compression=inputs / arch.feature_dim,
        map_compression=inputs / map_values,
        cached_bytes_per_image=arch.feature_dim * 4,
        image_bytes=inputs,
    )


def label_image_args(name: str) -> dict[str, Any]:
    """What to pass to label_image for backbone `name`: size, value range, input layer name."""
    entry = backbones.get_backbone(name)
    arch: Architecture = analyze(name)
    tf1 = _TF1_LABEL_IMAGE.get(entry.family)
    size = entry.input_size
    keras_range = "[-1, 1] (x / 127.5 - 1)" if entry.preprocessing == "tf" else "[0, 255] (rescaled inside)"
    flags = None
    if tf1:
        flags = (
            f"--input_layer={entry.tf1_input_name} --input_height={size} --input_width={size} "
            f"--input_mean={tf1['input_mean']} --input_std={tf1['input_std']} --output_layer=final_result"
        )
    return {
        "backbone": name,
        "input size": f"{size}×{size}×3",
        "Keras input layer": arch.input_name,
        "Keras value range": keras_range,
        "lab model.keras input": "0..255 RGB (preprocessing inside)",
        "TF1 input tensor": f"{entry.tf1_input_name}:0" if tf1 else "—",
        "TF1 input_mean / input_std": f"{tf1['input_mean']} / {tf1['input_std']}" if tf1 else "—",
        "TF1 label_image flags": flags or "— (no retrain.py graph for this family)",
    }


# -- bottleneck features in the cache -----------------------------------------------------------
def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows onto their first two principal components (numpy SVD).

    Returns:
        (points of shape (N, 2), explained variance ratio of the two components).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise InvalidArgument(f"PCA needs at least 2 feature rows, got shape {x.shape}")
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    components = vt[:2]
    points = x @ components.T
    if points.shape[1] < 2:  # a single feature dimension: pad so callers always get (N, 2)
        points = np.hstack([points, np.zeros((len(points), 1))])
    var = s**2
    ratio = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return points, np.pad(ratio, (0, 2 - len(ratio)))


def lab_results(runs: list[Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """What the lab has measured per backbone: finished runs and their best test accuracy.

    Args:
        runs: `engine.runs.store.Run` objects (any objects with .status, .config and .results).
        names: the backbones of interest.
    """
    out: dict[str, dict[str, Any]] = {n: {"lab runs": 0, "best test accuracy": None} for n in names}
    for run in runs:
        name = (run.config or {}).get("architecture")
        if name not in out or run.status != "finished":
            continue
        row = out[name]
        row["lab runs"] += 1
        acc = (run.results or {}).get("test_accuracy")
        if acc is not None and (row["best test accuracy"] is None or acc > row["best test accuracy"]):
            row["best test accuracy"] = float(acc)
    return out

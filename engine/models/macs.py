"""Multiply-accumulate (MAC) counting for one layer, from its kind, kernel and tensor shapes.

Pure arithmetic on plain values (no Keras import), so it is testable by hand. Conventions, the
ones the MobileNet and Inception papers use for "mult-adds":
- a weight layer costs one MAC per weight use: a convolution costs (output values) x (kernel
  height x kernel width x input channels / groups); biases, batch norm, activations, pooling,
  additions and padding are not counted (they are "other": their cost is reported separately as
  `other_ops`, one op per output value, and is small next to the convolutions);
- a 1x1 convolution is "pointwise", a depthwise convolution is "depthwise", any other convolution
  is "conv" (the standard convolution), a fully connected layer is "dense".
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

KINDS: tuple[str, ...] = ("conv", "depthwise", "pointwise", "dense", "other")
WEIGHT_KINDS: tuple[str, ...] = ("conv", "depthwise", "pointwise", "dense")

_CONV_OPS = {"Conv1D", "Conv2D", "Conv3D"}
_DEPTHWISE_OPS = {"DepthwiseConv1D", "DepthwiseConv2D"}
_SEPARABLE_OPS = {"SeparableConv1D", "SeparableConv2D"}
# ops that move or regroup values without arithmetic: they cost nothing at all
_FREE_OPS = {
    "InputLayer",
    "ZeroPadding2D",
    "Reshape",
    "Flatten",
    "Concatenate",
    "Dropout",
    "Identity",
}


def layer_kind(op: str, kernel_size: Sequence[int] | None = None) -> str:
    """The cost category of a layer: one of KINDS.

    Args:
        op: the Keras class name ("Conv2D", "DepthwiseConv2D", "Dense", ...).
        kernel_size: the convolution kernel, to tell a 1x1 (pointwise) from a standard convolution.
    """
    if op in _DEPTHWISE_OPS:
        return "depthwise"
    if op in _SEPARABLE_OPS:
        return "conv"  # depthwise + pointwise fused in one layer; counted as one conv layer
    if op in _CONV_OPS:
        return "pointwise" if kernel_size and all(k == 1 for k in kernel_size) else "conv"
    if op == "Dense":
        return "dense"
    return "other"


def conv_macs(
    output_shape: Sequence[int], kernel_size: Sequence[int], in_channels: int, groups: int = 1
) -> int:
    """MACs of a (grouped) convolution: every output value sums kernel x in_channels/groups products.

    Args:
        output_shape: (H, W, C_out) without the batch axis (any number of spatial axes).
        kernel_size: (kh, kw).
        in_channels: channels of the input.
        groups: 1 for a standard convolution.
    """
    return prod(output_shape) * prod(kernel_size) * (in_channels // groups)


def depthwise_macs(output_shape: Sequence[int], kernel_size: Sequence[int]) -> int:
    """MACs of a depthwise convolution: one kernel per channel, so kh x kw per output value."""
    return prod(output_shape) * prod(kernel_size)


def dense_macs(input_shape: Sequence[int], units: int) -> int:
    """MACs of a fully connected layer applied to the last axis (leading axes repeat it)."""
    return prod(input_shape) * units


def count_macs(
    op: str,
    input_shape: Sequence[int] | None,
    output_shape: Sequence[int],
    kernel_size: Sequence[int] | None = None,
    groups: int = 1,
    units: int | None = None,
    filters: int | None = None,
) -> int:
    """MACs per image of one layer given its Keras class name and shapes (no batch axis).

    Weight layers only; every other layer is 0 MACs (see `other_ops`).
    """
    if op in _DEPTHWISE_OPS:
        return depthwise_macs(output_shape, kernel_size or (1, 1))
    if op in _SEPARABLE_OPS:
        in_channels = int(input_shape[-1]) if input_shape else 0
        spatial = prod(output_shape[:-1])
        depth = spatial * in_channels * prod(kernel_size or (1, 1))
        # depthwise output has in_channels x depth_multiplier channels; depth_multiplier=1 here
        return depth + spatial * in_channels * int(filters or output_shape[-1])
    if op in _CONV_OPS:
        in_channels = int(input_shape[-1]) if input_shape else 0
        return conv_macs(output_shape, kernel_size or (1, 1), in_channels, groups)
    if op == "Dense":
        return dense_macs(input_shape or (), int(units or output_shape[-1]))
    return 0


def other_ops(op: str, output_shape: Sequence[int]) -> int:
    """A rough count of the elementwise work of a non-weight layer: one op per output value."""
    if layer_kind(op) != "other" or op in _FREE_OPS:
        return 0
    return prod(output_shape)


def standard_conv_macs(out_hw: Sequence[int], kernel: int, c_in: int, c_out: int) -> int:
    """What a standard k x k convolution from c_in to c_out channels costs at output size out_hw."""
    return prod(out_hw) * kernel * kernel * c_in * c_out


def separable_reduction(kernel: int, c_out: int) -> float:
    """The MobileNet paper's cost ratio (depthwise + pointwise) / standard = 1/N + 1/k^2."""
    return 1.0 / c_out + 1.0 / (kernel * kernel)

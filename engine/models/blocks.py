"""Signature blocks of an architecture and their costs: what the Architectures page draws and explains.

Signature blocks (Howard et al. 2017, Sandler et al. 2018, Szegedy et al. 2016) come with the cost
arithmetic for that very layer: a standard convolution of the same shape against depthwise +
pointwise, and an Inception module's parallel branches joined by a concat. Which layer belongs to
which block is decided in `engine.models.block_names`, before an `Architecture` exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from engine.errors import InvalidArgument
from engine.models import macs
from engine.models.architecture import Architecture, LayerRecord
from engine.models.block_names import INCEPTION_MODULE, ancestors, join_point


# -- signature blocks ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One layer of a signature block, as drawn and costed."""

    name: str
    op: str
    kind: str
    label: str  # "3×3 depthwise", "1×1", "avg pool 3×3", "add", ...
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int
    after: str = ""  # the step this one reads from ("" = the block's input): draws parallel paths


@dataclass(frozen=True)
class SeparableBlock:
    """A depthwise-separable block (MobileNet v1) or an inverted residual (V2/V3/EfficientNet)."""

    backbone: str
    block: str
    style: str  # "depthwise_separable" or "inverted_residual"
    steps: list[Step]
    residual: bool  # an Add joins the block's input to its output
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    kernel: int
    stride: int
    expansion: float  # expanded channels / input channels (1 without an expansion layer)
    macs: int  # the block's weight layers as built
    params: int
    standard_macs: int  # one standard k×k convolution from the block's input to its output shape
    standard_params: int
    reduction: float  # standard_macs / macs
    depthwise_macs: int
    pointwise_macs: int
    paper_ratio: float  # 1/N + 1/k² (Howard et al. 2017, eq. 5), for the depthwise + pointwise pair
    wide_standard_macs: int  # the block with its depthwise replaced by a standard k×k conv
    wide_reduction: float  # wide_standard_macs / macs
    arithmetic: list[tuple[str, str, int]]  # (what, formula, MACs) lines for the page


@dataclass(frozen=True)
class Branch:
    label: str  # "1×1 → 3×3 → 3×3", "avg pool 3×3 → 1×1", "1×1 → (1×3 ‖ 3×1)"
    steps: list[Step]
    out_channels: int
    macs: int
    params: int


@dataclass(frozen=True)
class InceptionModule:
    backbone: str
    module: str
    input_layer: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    branches: list[Branch]
    macs: int
    params: int
    standard_macs: int  # a standard 3×3 conv from the module's input to its output shape
    reduction: float


def _label(r: LayerRecord) -> str | None:
    k = "×".join(map(str, r.kernel)) if r.kernel else ""
    stride = f" /{r.strides[0]}" if r.strides and r.strides[0] > 1 else ""
    if r.kind == "depthwise":
        return f"{k} depthwise{stride}"
    if r.kind in ("conv", "pointwise"):
        squeeze = len(r.output_shape) == 3 and r.output_shape[:2] == (1, 1) and r.input_shape[:2] == (1, 1)
        return f"{k} squeeze-excite" if squeeze else f"{k}{stride}"
    if r.kind == "dense":
        return "dense"
    if r.op in ("AveragePooling2D", "MaxPooling2D"):
        pool = "avg" if r.op.startswith("Average") else "max"
        return f"{pool} pool {k}{stride}"
    if r.op == "Add" and len(r.inbound) > 1:
        return "add"
    if r.op == "Concatenate":
        return "concat"
    return None


def _steps(members: list[LayerRecord], by_name: dict[str, LayerRecord]) -> list[Step]:
    """Steps for the labelled layers among `members`, each linked to the step it reads from."""
    chosen = {r.name for r in members}
    steps = []
    for r in members:
        # a residual add reads the skip path too: follow the input that comes from inside the block
        inside = [i for i in r.inbound if i in by_name and by_name[i].block == r.block]
        after, cur = "", (inside or list(r.inbound) or [""])[0]
        while cur in by_name and by_name[cur].block == r.block:
            if cur in chosen:
                after = cur
                break
            cur = by_name[cur].inbound[0] if by_name[cur].inbound else ""
        label = _label(r) or r.op
        steps.append(
            Step(r.name, r.op, r.kind, label, r.input_shape, r.output_shape, r.params, r.macs, after)
        )
    return steps


def separable_blocks(arch: Architecture) -> list[str]:
    """Blocks built around exactly one depthwise convolution (every MobileNet/EfficientNet block)."""
    return [b.name for b in arch.blocks if sum(r.kind == "depthwise" for r in arch.layers_of(b.name)) == 1]


def separable_block(arch: Architecture, block: str | None = None) -> SeparableBlock:
    """The cost arithmetic of one depthwise-separable block or inverted residual.

    Args:
        arch: from `engine.models.architecture.analyze`.
        block: a name from `separable_blocks(arch)`; default: the middle one.

    Raises:
        InvalidArgument: the backbone has no such block (the message lists them).
    """
    names = separable_blocks(arch)
    if not names:
        raise InvalidArgument(f"{arch.name} has no depthwise-separable blocks")
    block = block or names[len(names) // 2]
    if block not in names:
        raise InvalidArgument(
            f"{arch.name} has no depthwise-separable block {block!r}; choose one of: {', '.join(names)}"
        )
    layers = arch.layers_of(block)
    names_in = {r.name for r in layers}
    weight = [r for r in layers if r.kind in macs.WEIGHT_KINDS]
    dw_index = next(i for i, r in enumerate(weight) if r.kind == "depthwise")
    dw = weight[dw_index]
    # squeeze-and-excitation convs act on 1×1 pooled maps; the block's path is the full-size ones
    path = [r for r in weight if len(r.output_shape) == 3 and r.output_shape[0] == dw.output_shape[0]]
    before = [r for r in weight[:dw_index] if r.kind == "pointwise"]
    project = next(r for r in reversed(path) if r.kind == "pointwise")
    residual = any(
        r.op == "Add" and len(r.inbound) > 1 and any(i not in names_in for i in r.inbound) for r in layers
    )
    c_in = before[0].input_shape[-1] if before else dw.input_shape[-1]
    in_shape = before[0].input_shape if before else dw.input_shape
    out_hw, c_out = project.output_shape[:2], project.output_shape[-1]
    k = dw.kernel[0]
    block_macs = sum(r.macs for r in weight)
    standard = macs.standard_conv_macs(out_hw, k, c_in, c_out)
    wide_c = dw.input_shape[-1]
    wide = block_macs - dw.macs + macs.standard_conv_macs(out_hw, k, wide_c, wide_c)
    pw_macs = project.macs
    hw = "·".join(map(str, out_hw))
    lines = [
        (f"standard {k}×{k} conv {c_in}→{c_out}", f"{hw}·{k}·{k}·{c_in}·{c_out}", standard),
        (f"{k}×{k} depthwise on {wide_c} channels", f"{hw}·{k}·{k}·{wide_c}", dw.macs),
        (f"1×1 pointwise {wide_c}→{c_out}", f"{hw}·{wide_c}·{c_out}", pw_macs),
    ]
    if before:
        e = before[0]
        ehw = "·".join(map(str, e.output_shape[:2]))
        lines.insert(1, (f"1×1 expand {c_in}→{wide_c}", f"{ehw}·{c_in}·{wide_c}", e.macs))
    return SeparableBlock(
        backbone=arch.name,
        block=block,
        style="inverted_residual" if before else "depthwise_separable",
        steps=_steps([r for r in layers if _label(r)], {r.name: r for r in arch.layers}),
        residual=residual,
        input_shape=in_shape,
        output_shape=project.output_shape,
        kernel=k,
        stride=dw.strides[0] if dw.strides else 1,
        expansion=wide_c / c_in,
        macs=block_macs,
        params=sum(r.params for r in layers),
        standard_macs=standard,
        standard_params=k * k * c_in * c_out,
        reduction=standard / block_macs,
        depthwise_macs=dw.macs,
        pointwise_macs=sum(r.macs for r in path if r.kind == "pointwise"),
        paper_ratio=macs.separable_reduction(k, c_out),
        wide_standard_macs=wide,
        wide_reduction=wide / block_macs,
        arithmetic=lines,
    )


def inception_modules(arch: Architecture) -> list[str]:
    """Names of the InceptionV3 modules (mixed0 ... mixed10); empty for other families."""
    return [b.name for b in arch.blocks if INCEPTION_MODULE.fullmatch(b.name)]


def inception_module(arch: Architecture, module: str | None = None) -> InceptionModule:
    """An Inception module's parallel branches, each with its layers, output channels and MACs.

    Args:
        arch: an InceptionV3 architecture.
        module: "mixed0" ... "mixed10"; default "mixed0" (1×1, 5×5, double 3×3 and pool branches).

    Raises:
        InvalidArgument: not an Inception backbone, or no such module.
    """
    modules = inception_modules(arch)
    module = module or (modules[0] if modules else "")
    if module not in modules:
        raise InvalidArgument(
            f"{arch.name} has no Inception module {module!r}"
            + (f"; choose one of: {', '.join(modules)}" if modules else "")
        )
    records = [{"name": r.name, "inbound": list(r.inbound)} for r in arch.layers]
    anc = ancestors(records)
    position = {r["name"]: i for i, r in enumerate(records)}
    by_name = {r.name: r for r in arch.layers}
    concat = by_name[module]
    start = join_point(list(concat.inbound), anc, position)
    inside = [r for r in arch.layers if r.block == module]

    def describe(end: str, stop: str) -> list[str]:
        parts, cur = [], end
        while cur != stop:
            r = by_name[cur]
            if r.op == "Concatenate":
                split = join_point(list(r.inbound), anc, position)
                parallel = [" → ".join(describe(i, split)) for i in r.inbound]
                parts.append("(" + " ‖ ".join(parallel) + ")")
                cur = split
                continue
            if _label(r):
                parts.append(_label(r))
            cur = r.inbound[0]
        return parts[::-1]

    branches = []
    for source in concat.inbound:
        members = [r for r in inside if r.name in anc[source]]
        weight = [r for r in members if r.kind in macs.WEIGHT_KINDS or r.op.endswith("Pooling2D")]
        branches.append(
            Branch(
                label=" → ".join(describe(source, start)),
                steps=_steps(weight, by_name),
                out_channels=by_name[source].output_shape[-1],
                macs=sum(r.macs for r in members),
                params=sum(r.params for r in members),
            )
        )
    total = sum(r.macs for r in inside)
    in_shape = by_name[start].output_shape
    standard = macs.standard_conv_macs(concat.output_shape[:2], 3, in_shape[-1], concat.output_shape[-1])
    return InceptionModule(
        backbone=arch.name,
        module=module,
        input_layer=start,
        input_shape=in_shape,
        output_shape=concat.output_shape,
        branches=branches,
        macs=total,
        params=sum(r.params for r in inside),
        standard_macs=standard,
        reduction=standard / total if total else 0.0,
    )


def compression(shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> float:
    """How many input values per output value."""
    return prod(shape_in) / prod(shape_out)

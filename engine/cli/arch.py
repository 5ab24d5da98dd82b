"""CLI command `arch NAME`: parameters, multiply-accumulates, depth and blocks of a backbone."""

from __future__ import annotations

import argparse

from engine.cli.output import print_json
from engine.models import backbones


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "arch",
        help="params, MACs, depth, input and bottleneck of a backbone, per block",
        description="Counted from the real Keras model (built once without weights, then cached). "
        f"Backbones: {', '.join(backbones.list_backbones())}",
    )
    p.add_argument("name", help="a backbone name")
    p.add_argument(
        "--num_classes", type=int, default=5, help="classes of the new head (for trainable params)"
    )
    p.add_argument("--blocks", action="store_true", help="also print every layer of every block")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    p.set_defaults(func=cmd_arch)


def _m(value: float) -> str:
    return f"{value / 1e6:,.2f} M"


def cmd_arch(args: argparse.Namespace) -> int:
    from engine.models import explain
    from engine.models.architecture import analyze, block_row

    backbones.get_backbone(args.name)  # unknown name: NotFound lists the valid ones (exit code 2)
    arch = analyze(args.name)
    published = explain.PUBLISHED.get(args.name)
    shape = "×".join(map(str, arch.bottleneck_shape))
    print(f"{arch.name} ({arch.family}) — counted from Keras {arch.keras_version}")
    print(
        f"  input        {'×'.join(map(str, arch.input_shape))}, layer {arch.input_name!r}, "
        f"preprocessing {arch.preprocessing!r}, TF1 input {arch.tf1_input_name!r}"
    )
    print(f"  params       {arch.params:,} (with the ImageNet top: {arch.imagenet_top['params']:,})")
    print(
        f"  trainable    {arch.head_params(args.num_classes):,} when frozen ({args.num_classes}-class head)"
    )
    print(f"  MACs/image   {_m(arch.macs)} (with the ImageNet top: {_m(arch.imagenet_top['macs'])})")
    if published:
        print(
            f"  published    {_m(published['macs'])} MACs, {_m(published['params'])} params "
            f"({published['source']}, ImageNet top included)"
        )
    by_kind = ", ".join(f"{k} {_m(v)}" for k, v in arch.macs_by_kind.items())
    print(f"  by kind      {by_kind}; other (BN, activations, pooling, add) ~{_m(arch.other_ops)} ops")
    print(f"  depth        {arch.depth} weight layers")
    print(f"  bottleneck   {arch.bottleneck_layer} {shape} -> pooled to {arch.feature_dim} features")
    size = f", file {arch.weights_file_bytes:,} bytes" if arch.weights_file_bytes else ""
    print(f"  weights      {arch.weights_bytes:,} bytes as float32{size}")
    print()
    print(
        f"  {'block':<10} {'layers':>6} {'params':>12} {'MACs':>14}  {'output':<14} "
        "conv/depthwise/pointwise/dense MACs"
    )
    for block in arch.blocks:
        row = block_row(block)
        kinds = " / ".join(_m(block.macs_by_kind[k]) for k in ("conv", "depthwise", "pointwise", "dense"))
        print(
            f"  {row['block']:<10} {row['layers']:>6} {row['params']:>12,} {_m(row['macs']):>14}  "
            f"{row['output']:<14} {kinds}"
        )
        if args.blocks:
            for r in arch.layers_of(block.name):
                print(
                    f"      {r.name:<40} {r.op:<24} {'×'.join(map(str, r.output_shape)):<14} "
                    f"{r.params:>10,} {r.macs:>14,}"
                )
    if args.json:
        print_json({**arch.summary(args.num_classes), "published": published})
    return 0

"""CLI commands `convert` (export a run to other formats, compare them) and `timing` (CPU vs GPU lab)."""

from __future__ import annotations

import argparse
import inspect
import sys

from engine.cli.options import parse_list
from engine.cli.output import print_json
from engine.errors import LabError
from engine.export.convert import DEFAULT_FORMATS
from engine.export.runtimes import FORMATS
from engine.timing import lab

# the timing lab's own defaults (images, batch size, training steps, label)
LAB_DEFAULTS = {name: p.default for name, p in inspect.signature(lab.run_lab).parameters.items()}


def add_parser(subparsers) -> None:
    c = subparsers.add_parser(
        "convert", help="convert a run's classifier (TFLite, ONNX, SavedModel, TensorRT)"
    )
    c.add_argument("--run", required=True, help="run id (see `runs`)")
    c.add_argument(
        "--to",
        default=",".join(DEFAULT_FORMATS),
        help=f"comma-separated formats, or 'all': {', '.join(FORMATS)}",
    )
    c.add_argument("--force", action="store_true", help="convert again even if an export exists")
    c.add_argument("--compare", action="store_true", help="then measure every format on the test split")
    c.add_argument(
        "--package",
        metavar="DIR",
        default=None,
        help="also write each format's download (model, labels.txt, README) to DIR as "
        "classifier-lab-<run>-<format>.zip",
    )
    c.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    c.set_defaults(func=cmd_convert)

    t = subparsers.add_parser("timing", help="time decode/extract/train/inference on CPU and GPU")
    t.add_argument("--backbones", default=",".join(lab.DEFAULT_BACKBONES), help="comma-separated names")
    t.add_argument(
        "--source",
        default=LAB_DEFAULTS["source"],
        help='image source for decoding: a folder, "flowers", "demo"',
    )
    t.add_argument("--images", type=int, default=LAB_DEFAULTS["images"])
    t.add_argument("--batch_size", type=int, default=LAB_DEFAULTS["batch_size"])
    t.add_argument("--train_steps", type=int, default=LAB_DEFAULTS["train_steps"])
    t.add_argument("--label", default=LAB_DEFAULTS["label"], help="how this machine is named in charts")
    t.add_argument("--import_file", default=None, help="import a timings JSON from another machine instead")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_timing)


def _progress(event: dict) -> None:
    print(f"[{event['phase']} {event['done']}/{event['total']}] {event['message']}", file=sys.stderr)


def _mb(size) -> str:
    return "-" if size is None else f"{size / 1e6:.2f} MB"


def cmd_convert(args: argparse.Namespace) -> int:
    from engine.export.pipeline import convert_and_compare

    result = convert_and_compare(
        args.run, args.to, force=args.force, measure=args.compare, progress=_progress
    )
    for m in result["exports"]:
        print(f"{m['format']:<16} {_mb(m['size_bytes']):>10}  {m['seconds']:7.2f} s  {m['file']}")
    for fmt, reason in result["skipped"].items():
        print(f"{fmt:<16} skipped: {reason}")
    if args.package:
        result["packages"] = _write_packages(args.run, result["exports"], args.package)
    if args.compare:
        report = result["comparison"]
        print(f"\nOn {report['test_count']} test images:")
        print(f"{'format':<16} {'size':>10} {'p50 ms':>8} {'p95 ms':>8} {'img/s':>8} {'acc':>6} {'agree':>6}")
        for r in report["rows"]:
            if r["status"] != "ok":
                print(f"{r['format']:<16} unavailable: {r['reason']}")
                continue
            print(
                f"{r['format']:<16} {_mb(r['size_bytes']):>10} {r['latency_p50_ms']:8.2f} "
                f"{r['latency_p95_ms']:8.2f} {r['throughput_ips']:8.1f} {r['accuracy']:6.3f} "
                f"{r['agreement']:6.3f}"
            )
        print(f"Prediction flips between formats: {len(report['flips'])}")
    if args.json:
        print_json(result)
    return 0


def _write_packages(run_id: str, manifests: list[dict], folder: str) -> list[str]:
    """Write the download package of every exported format (TensorRT engines excepted) into `folder`."""
    from pathlib import Path

    from engine.export import package

    out = Path(folder)
    written = []
    for fmt in [m["format"] for m in manifests if m["format"] in package.PACKAGE_FORMATS]:
        name, data = package.download_package(run_id, fmt)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
        except OSError as exc:
            raise LabError(f"--package {folder}: cannot write {name} there ({exc.strerror or exc})") from exc
        print(f"{fmt:<16} package: {out / name}")
        written.append(str(out / name))
    return written


def cmd_timing(args: argparse.Namespace) -> int:
    if args.import_file:
        # an imported file keeps its own machine's label unless one is given
        label = None if args.label == LAB_DEFAULTS["label"] else args.label
        report = lab.import_timings(args.import_file, label=label)
        machine = report["machine"]["cpu_model"]
        print(f"Imported {len(report['timings'])} timings from {machine} as {report['id']}")
    else:
        names = parse_list(args.backbones)
        report = lab.run_lab(
            names,
            source=args.source,
            images=args.images,
            batch_size=args.batch_size,
            train_steps=args.train_steps,
            label=args.label,
            progress=_progress,
        )
        print(f"{'backbone':<22} {'phase':<8} {'CPU ms/item':>12} {'GPU ms/item':>12} {'speed-up':>9}")
        for r in lab.speedups(report):
            gpu = "-" if r["gpu_ms"] is None else f"{r['gpu_ms']:.3f}"
            up = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
            print(f"{r['backbone']:<22} {r['phase']:<8} {r['cpu_ms']:12.3f} {gpu:>12} {up:>9}")
        for note in lab.explain(report):
            print("- " + note)
        print(f"Saved as {report['id']} in {lab.timings_dir()}")
    if args.json:
        print_json(report)
    return 0

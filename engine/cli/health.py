"""CLI command `health`: duplicates, near-duplicates, class balance and likely mislabels of a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli.options import RUN
from engine.cli.output import ProgressBar, print_json
from engine.data.images import printable

SHOWN = 10  # photos printed per finding; --json carries the report's full lists


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "health", help="check a dataset: duplicates, near-duplicates, class balance, likely mislabels"
    )
    p.add_argument(
        "--image_dir", required=True, help='folder of class subfolders, or "flowers" | "beans" | "demo"'
    )
    p.add_argument("--testing_percentage", type=int, default=RUN.testing_percentage)
    p.add_argument("--validation_percentage", type=int, default=RUN.validation_percentage)
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    p.set_defaults(func=cmd_health)


def _name(photo: dict) -> str:
    return f"{printable(photo['label'])}/{printable(Path(photo['path']).name)} ({photo['split']})"


def cmd_health(args: argparse.Namespace) -> int:
    from engine.runs.health import health_report

    bar = ProgressBar(enabled=not args.json)
    try:
        report = health_report(
            args.image_dir, args.validation_percentage, args.testing_percentage, progress=bar
        )
    finally:
        bar.close()
    data = report["dataset"]
    print(f"Health of {printable(data['name'])}: {data['num_images']} photos, {len(data['classes'])} classes")
    for line in report["summary"]:
        print(f"- {line}")
    for group in report["exact_duplicates"]["items"][:SHOWN]:
        print("  same bytes: " + " = ".join(_name(f) for f in group["files"]))
    for pair in report["near_duplicates"]["items"][:SHOWN]:
        similar = f"pixels {pair['pixel_correlation']:.3f}, cosine {pair['cosine']:.3f}"
        print(f"  near-duplicate: {_name(pair['a'])} ~ {_name(pair['b'])} ({similar})")
    for m in report["mislabels"]["items"][:SHOWN]:
        print(f"  looks like {printable(m['looks_like'])} ({m['votes']}/{m['k']}): {_name(m)}")
    for key in ("exact_duplicates", "near_duplicates", "classes", "mislabels"):
        print(f"{key.replace('_', ' ').capitalize()}: {report[key]['advice']}")
    per = report["per_100"]
    print(
        f"Per 100 photos: {per['near_duplicate_pairs']:g} near-duplicate pairs, "
        f"{per['mislabel_flags']:g} mislabel flags"
    )
    if args.json:
        print_json(report)
    return 0

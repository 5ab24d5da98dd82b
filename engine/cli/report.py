"""CLI command `report`: one self-contained HTML file on a run or an experiment (engine.runs.report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli.output import print_json
from engine.errors import LabError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a run or an experiment (opens with no network)"
    )
    p.add_argument("id", metavar="RUN_ID_OR_EXPERIMENT_ID", help="a run id (see `runs`) or an experiment id")
    p.add_argument(
        "--out",
        default=None,
        help="the HTML file or folder to write to (default file: classifier-lab-run-<id>.html "
        "or classifier-lab-experiment-<id>.html)",
    )
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from engine.runs import report
    from engine.runs.folder import atomic_write_text

    kind, text = report.report_html(args.id)
    out = Path(args.out or report.report_file_name(kind, args.id))
    if out.is_dir():
        out = out / report.report_file_name(kind, args.id)
    if not out.parent.is_dir():
        raise LabError(f"cannot write {out}: the folder {out.parent} does not exist")
    try:
        atomic_write_text(out, text)
    except OSError as exc:
        raise LabError(f"cannot write {out}: {exc.strerror or exc}") from exc
    size = out.stat().st_size
    print(
        f"Report of {kind} {args.id} written to {out} ({size / 1e6:.1f} MB); it opens in any browser offline."
    )
    if args.json:
        print_json({"kind": kind, "id": args.id, "path": str(out.resolve()), "bytes": size})
    return 0

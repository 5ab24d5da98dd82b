"""CLI commands `share` and `import`: a run as one .zip bundle, and a bundle back into this lab."""

from __future__ import annotations

import argparse

from engine.cli.output import print_json


def add_parser(subparsers) -> None:
    s = subparsers.add_parser("share", help="write a finished run as one .zip bundle for another lab")
    s.add_argument("run_id", help="run id (see `runs`)")
    s.add_argument("--out", default=None, help="the .zip to write, or a folder (default: here)")
    s.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    s.set_defaults(func=cmd_share)

    i = subparsers.add_parser("import", help="import a run bundle (validated as untrusted input)")
    i.add_argument("file", help="a bundle written by `share`")
    i.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    i.set_defaults(func=cmd_import)


def cmd_share(args: argparse.Namespace) -> int:
    from engine.runs.share import export_bundle

    path = export_bundle(args.run_id, out=args.out if args.out is not None else ".")
    size = path.stat().st_size
    print(f"Run {args.run_id} shared as {path} ({size / 1024**2:.1f} MiB)")
    if args.json:
        print_json({"run_id": args.run_id, "bundle": str(path.resolve()), "bytes": size})
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from engine.runs.share import import_bundle
    from engine.runs.store import RunStore

    store = RunStore()
    run = store.get_run(import_bundle(args.file, store=store))
    origin = run.origin or {}
    source = f"from {run.author or 'an unnamed author'} (their run {origin.get('original_run_id')})"
    print(
        f"Imported {args.file} as run {run.id} ({run.name}) "
        + (source if run.imported else "(a run of this lab)")
    )
    if args.json:
        print_json({"run_id": run.id, "name": run.name, "author": run.author, "origin": run.origin})
    return 0

"""Command-line interface: `python -m engine retrain|classify|runs|arch|...`.

Each command lives in its own module exposing `add_parser(subparsers)`; the parser's `func(args)`
returns an exit code. Expected failures (LabError) print one line to stderr, no traceback. With
`--json`, the last line of stdout is one JSON object. What the command modules share lives below
them: output helpers (`print_json`, the progress bar) in output.py, flag defaults and list types in
options.py, so no command module imports this one.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from engine.errors import LabError

# modules that add a subcommand; a module missing from a partial checkout is skipped
COMMAND_MODULES = (
    "engine.cli.runs", "engine.cli.arch", "engine.cli.convert", "engine.cli.experiment", "engine.cli.report",
    "engine.cli.share", "engine.cli.health",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Classifier Lab engine")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter off stderr
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130

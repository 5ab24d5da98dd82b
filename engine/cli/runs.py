"""CLI commands `retrain`, `classify` and `runs` (retrain.py and label_image, as subcommands)."""

from __future__ import annotations

import argparse
import sys

from engine.cli.options import OPTIMIZERS, RUN, TRAIN
from engine.cli.output import ProgressBar, print_json
from engine.data.images import printable
from engine.export.runtimes import FORMATS
from engine.models import backbones
from engine.runs.retrain import RunConfig
from engine.training.config import TrainConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("retrain", help="train a classifier head on cached bottlenecks (retrain.py)")
    p.add_argument(
        "--image_dir", required=True, help='folder of class subfolders, or "flowers" | "beans" | "demo"'
    )
    p.add_argument("--architecture", default=RUN.architecture, help="a backbone name (see `arch`)")
    p.add_argument("--weights", default=RUN.weights, choices=backbones.WEIGHTS_CHOICES)
    p.add_argument("--learning_rate", type=float, default=TRAIN.learning_rate)
    p.add_argument("--how_many_training_steps", type=int, default=TRAIN.steps)
    p.add_argument("--train_batch_size", type=int, default=TRAIN.batch_size)
    p.add_argument("--eval_step_interval", type=int, default=TRAIN.eval_interval)
    p.add_argument("--testing_percentage", type=int, default=RUN.testing_percentage)
    p.add_argument("--validation_percentage", type=int, default=RUN.validation_percentage)
    p.add_argument("--optimizer", default=TRAIN.optimizer, choices=OPTIMIZERS)
    p.add_argument(
        "--fine_tune_layers",
        type=int,
        default=TRAIN.fine_tune_layers,
        help="unfreeze this many top backbone layers",
    )
    p.add_argument("--seed", type=int, default=TRAIN.seed)
    p.add_argument("--name", default=None, help="a label for the run")
    p.add_argument("--author", default=None, help="your display name, shown to classmates (bundles, board)")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    p.set_defaults(func=cmd_retrain)

    c = subparsers.add_parser(
        "classify", help="classify images with a run's model (label_image), or several models side by side"
    )
    c.add_argument(
        "--run",
        action="append",
        default=[],
        help="run id (see `runs`), or RUN_ID:FORMAT; repeat it to set models side by side",
    )
    c.add_argument("--tflite", action="append", default=[], help="a .tflite classifier file (with --labels)")
    c.add_argument(
        "--labels", action="append", default=[], help="the labels file of each --tflite, one name per line"
    )
    c.add_argument(
        "--imagenet",
        action="append",
        default=[],
        help="a backbone's ImageNet classifier (top weights cached)",
    )
    c.add_argument(
        "--no_familiar",
        action="store_true",
        help="side by side: skip the check whether a photo is unlike a run's training photos",
    )
    c.add_argument("paths", nargs="+", help="image files or folders")
    c.add_argument("--top_k", type=int, default=5)
    c.add_argument(
        "--format",
        default="keras",
        choices=FORMATS,
        help="run the run's model in this format (converted first if missing; see `convert`)",
    )
    c.add_argument(
        "--batch_size",
        type=int,
        default=32,
        help="photos per forward pass when classifying several (1: one by one, per-photo latency)",
    )
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_classify)

    r = subparsers.add_parser("runs", help="list stored runs")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_runs)


def cmd_retrain(args: argparse.Namespace) -> int:
    from engine.runs.retrain import retrain

    config = RunConfig(
        source=args.image_dir,
        architecture=args.architecture,
        weights=args.weights,
        validation_percentage=args.validation_percentage,
        testing_percentage=args.testing_percentage,
        train=TrainConfig(
            learning_rate=args.learning_rate,
            steps=args.how_many_training_steps,
            batch_size=args.train_batch_size,
            eval_interval=args.eval_step_interval,
            optimizer=args.optimizer,
            seed=args.seed,
            fine_tune_layers=args.fine_tune_layers,
        ),
        name=args.name,
        author=args.author,
    )
    bar = ProgressBar(enabled=sys.stderr.isatty() or not args.json)
    try:
        summary = retrain(config, progress=bar)
    finally:
        bar.close()
    acc = summary.test_accuracy
    _print_dataset_notes(summary)
    print(f"Run {summary.run_id}: final test accuracy = {'n/a' if acc is None else f'{acc * 100:.1f}%'}")
    print("Phases: " + ", ".join(f"{k} {v:.2f}s" for k, v in summary.phases.items()))
    print(f"Bottleneck cache: {summary.cache.get('hits', 0)} hits, {summary.cache.get('misses', 0)} misses")
    if args.json:
        print_json(
            {
                "run_id": summary.run_id,
                "test_accuracy": acc,
                "phases": summary.phases,
                "cache_hits": summary.cache.get("hits"),
                "cache_misses": summary.cache.get("misses"),
                "cache": summary.cache,
                "warnings": summary.warnings,
                "skipped": summary.skipped,
                "accuracy_warnings": summary.accuracy_warnings,
            }
        )
    return 0


NOTES_SHOWN = 50  # lines of skipped files on stderr; --json has them all


def _print_dataset_notes(summary) -> None:
    """The scan's warnings and skipped files on stderr, one line each (names already printable)."""
    for note in summary.warnings:
        print(f"warning: {printable(note)}", file=sys.stderr)
    for item in summary.skipped[:NOTES_SHOWN]:
        print(f"skipped: {printable(item['path'])}: {printable(item['reason'])}", file=sys.stderr)
    if len(summary.skipped) > NOTES_SHOWN:
        print(f"skipped: ... and {len(summary.skipped) - NOTES_SHOWN} more (see --json)", file=sys.stderr)


def _photo_paths(raw: list[str]) -> list:
    """The image files of the PATH arguments (folders expanded); skipped special files noted on stderr."""
    from engine.data.images import IMAGE_EXTENSIONS
    from engine.errors import InvalidArgument
    from engine.export.predict import expand_paths

    skipped: list = []
    paths = expand_paths(raw, skipped)
    if not paths:  # e.g. a folder of no images, or of only special files (which are never read)
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        where = ", ".join(map(printable, raw))
        passed = "".join(f"; skipped {printable(p.name)}: {why}" for p, why in skipped[:5])
        raise InvalidArgument(f"No images to classify in {where} (looked for {kinds}{passed})")
    for path, why in skipped:
        print(f"{printable(path)}: skipped: {why}", file=sys.stderr)
    return paths


def cmd_classify(args: argparse.Namespace) -> int:
    from engine.errors import InvalidArgument
    from engine.export.predict import Classifier

    if args.batch_size < 1:
        raise InvalidArgument(f"--batch_size must be a positive integer, got {args.batch_size}")
    if len(args.tflite) != len(args.labels):
        raise InvalidArgument(
            f"each --tflite needs its --labels file: got {len(args.tflite)} --tflite "
            f"and {len(args.labels)} --labels"
        )
    models = len(args.run) + len(args.tflite) + len(args.imagenet)
    if models == 0:
        raise InvalidArgument(
            "name a model: --run RUN_ID[:FORMAT], --tflite FILE --labels FILE or --imagenet NAME"
        )
    if models > 1 or args.tflite or args.imagenet or ":" in args.run[0]:
        return _classify_side_by_side(args)
    args.run = args.run[0]
    paths = _photo_paths(args.paths)
    classifier = Classifier.from_run(args.run, fmt=args.format)
    if len(paths) > 1 and args.batch_size > 1:  # a folder: decoded and run in batches, same results
        results = classifier.predict_batch(paths, top_k=args.top_k, batch_size=args.batch_size)
    else:
        results = classifier.classify(paths, top_k=args.top_k)
    failed = 0
    for res in results:
        if res.error:
            failed += 1
            print(f"{res.source}: error: {res.error}", file=sys.stderr)
            continue
        print(f"{res.source}  ({res.latency_ms:.1f} ms)")
        for label, score in zip(res.labels, res.scores, strict=True):
            print(f"  {label:<24} {score:.5f}")
    if args.json:
        print_json(
            {
                "run_id": args.run,
                "format": args.format,
                "backend": classifier.runtime.backend,
                "results": [r.as_dict() for r in results],
            }
        )
    return 1 if failed == len(results) else 0


def _classify_side_by_side(args: argparse.Namespace) -> int:
    """Every photo through every named model: one line per model, disagreements marked with "*"."""
    from engine.errors import InvalidArgument
    from engine.export import lineup

    choices = [lineup.parse_run_choice(text if ":" in text else f"{text}:{args.format}") for text in args.run]
    choices += [lineup.tflite_choice(m, lab) for m, lab in zip(args.tflite, args.labels, strict=True)]
    choices += [lineup.imagenet_choice(name) for name in args.imagenet]
    keys = [c.key for c in choices]
    if len(set(keys)) < len(keys):
        raise InvalidArgument(f"a model is named twice: {', '.join(k for k in keys if keys.count(k) > 1)}")
    paths = _photo_paths(args.paths)
    classifiers = [lineup.load_choice(c) for c in choices]
    result = lineup.side_by_side(classifiers, paths, top_k=args.top_k, familiar=not args.no_familiar)
    _print_lineup(result)
    if args.json:
        print_json(
            {
                "models": [
                    {"key": c.key, "title": c.name, "backend": k.runtime.backend}
                    for c, k in zip(choices, classifiers, strict=True)
                ],
                "photos": result.photos,
                "agreement": [round(result.agreement(i), 4) for i in range(len(result.photos))],
                "disagreements": result.disagreements(),
                "entries": result.entries(),
            }
        )
    failed = all(p.error for row in result.predictions for p in row)
    return 1 if failed else 0


def _print_lineup(result) -> None:
    """Per photo, one line per model (top-1, score, latency); "*" marks a model off the majority."""
    from engine.export.lineup import same_label

    width = max(len(m) for m in result.models)
    notes: dict[str, str] = {}
    for i, photo in enumerate(result.photos):
        row = result.predictions[i]
        tops = [same_label(p.top1) for p in row if not p.error and p.top1]
        common = max(set(tops), key=tops.count) if tops else None
        agree = result.agreement(i)
        print(
            f"{printable(photo)}" + ("" if agree == 1.0 else f"  (models disagree: {agree * 100:.0f}% agree)")
        )
        for title, pred in zip(result.models, row, strict=True):
            if pred.error:
                print(f"  {printable(title):<{width}}  error: {printable(pred.error)}")
                continue
            mark = "*" if len(tops) > 1 and same_label(pred.top1) != common else " "
            line = f"{mark} {printable(title):<{width}}  {printable(pred.top1):<24} {pred.scores[0]:.4f}"
            line += f"  {pred.latency_ms:7.1f} ms"
            verdict = pred.extra.get("familiar")
            if verdict and verdict.get("unfamiliar"):
                far, limit = verdict["distance"], verdict["threshold"]
                line += f"  ! unlike its training photos (distance {far:.3f} > {limit:.3f})"
            elif verdict and verdict.get("distance") is None:
                notes[title] = verdict["note"]
            print(line)
    for title, note in notes.items():
        print(f"note: {printable(title)}: {printable(note)}", file=sys.stderr)


def cmd_runs(args: argparse.Namespace) -> int:
    from engine.runs.store import RunStore

    runs = RunStore().list_runs()
    rows = []
    for run in runs:
        acc = (run.results or {}).get("test_accuracy")
        rows.append(
            {
                "id": run.id,
                "name": run.name,
                "status": run.status,
                "architecture": (run.config or {}).get("architecture"),
                "test_accuracy": acc if isinstance(acc, int | float) else None,
                "created": run.created,
                "damage": list(run.damage),
            }
        )
    if not rows:
        print("No runs yet: try `python -m engine retrain --image_dir demo`.")
    for row in rows:  # stored text may come from an older lab or another program: never raw to the terminal
        acc = row["test_accuracy"]
        print(
            f"{printable(str(row['id'])):<22} {printable(str(row['status'])):<12} "
            f"{printable(str(row['architecture'])):<22} "
            f"{'-' if acc is None else f'{acc * 100:.1f}%':>7}  {printable(str(row['name']))}"
        )
        for note in row["damage"]:
            print(f"warning: run {printable(str(row['id']))}: {note}", file=sys.stderr)
    if args.json:
        print_json({"runs": rows})
    return 0

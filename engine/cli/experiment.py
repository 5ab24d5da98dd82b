"""CLI command `experiment`: learning-rate race, layer-freezing study, steps study, dataset comparison.

`python -m engine experiment lr --image_dir DIR --rates 0.005,0.01,0.1,1.0 [--seeds 3]
[--schedules constant,cosine] [--json]` and its siblings `lrfind` (the learning-rate range test),
`freeze`, `steps`, `datasets`, `list` and `csv`. With `--json` the last stdout line is one JSON
object; for the studies it holds `rows`, one entry per run (rate x seed, layer count, dataset), and for a
race its `summary` (spread per rate, the verdict and its rule).
"""

from __future__ import annotations

import argparse
import sys

from engine.cli.options import OPTIMIZERS, RUN, SCHEDULES, TRAIN, floats, ints, parse_list
from engine.cli.output import ProgressBar, print_json
from engine.errors import InvalidArgument
from engine.models import backbones
from engine.params import human_seconds
from engine.runs import experiments
from engine.runs.retrain import RunConfig
from engine.training import lrfind
from engine.training.config import TrainConfig
from engine.training.summaries import NEVER, display


def _training_options(p: argparse.ArgumentParser, image_dir: bool = True) -> None:
    if image_dir:
        p.add_argument("--image_dir", required=True, help='folder of class subfolders, or "flowers" | "demo"')
    p.add_argument("--architecture", default=RUN.architecture, help="a backbone name (see `arch`)")
    p.add_argument("--weights", default=RUN.weights, choices=backbones.WEIGHTS_CHOICES)
    p.add_argument("--steps", type=int, default=TRAIN.steps, help="head training steps per run")
    p.add_argument(
        "--learning_rate",
        type=float,
        default=TRAIN.learning_rate,
        help="(freeze, datasets) head learning rate",
    )
    p.add_argument("--schedule", default=TRAIN.schedule, choices=SCHEDULES)
    p.add_argument("--optimizer", default=TRAIN.optimizer, choices=OPTIMIZERS)
    p.add_argument("--batch_size", type=int, default=TRAIN.batch_size)
    p.add_argument("--eval_interval", type=int, default=TRAIN.eval_interval)
    p.add_argument("--validation_percentage", type=int, default=RUN.validation_percentage)
    p.add_argument("--testing_percentage", type=int, default=RUN.testing_percentage)
    p.add_argument("--seed", type=int, default=TRAIN.seed)
    p.add_argument("--name", default=None, help="a label for the experiment")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object")


def add_parser(subparsers) -> None:
    exp = subparsers.add_parser("experiment", help="learning-rate race, freezing, steps and dataset studies")
    studies = exp.add_subparsers(dest="study", required=True)

    lr = studies.add_parser("lr", help="train one head per learning rate on one extraction")
    _training_options(lr)
    lr.add_argument(
        "--rates", type=floats, default=list(experiments.DEFAULT_RATES), help="e.g. 0.005,0.01,0.1,1.0"
    )
    lr.add_argument(
        "--target",
        type=float,
        default=experiments.DEFAULT_TARGET,
        help="validation accuracy to time each rate to",
    )
    lr.add_argument(
        "--seeds",
        type=int,
        default=experiments.DEFAULT_SEEDS,
        help="runs per rate (seed, seed+1, ...): differences are judged against their spread",
    )
    lr.add_argument(
        "--schedules",
        type=lambda text: parse_list(text, str, "Schedules"),
        default=None,
        help="race schedules against each other, e.g. constant,exponential,cosine (default: --schedule)",
    )
    lr.set_defaults(func=cmd_study, kind="lr_race")

    lf = studies.add_parser("lrfind", help="learning-rate range test: one sweep from tiny to huge rates")
    lf.add_argument("--image_dir", required=True, help='folder of class subfolders, or "flowers" | "demo"')
    lf.add_argument("--architecture", default=RUN.architecture, help="a backbone name (see `arch`)")
    lf.add_argument("--weights", default=RUN.weights, choices=backbones.WEIGHTS_CHOICES)
    lf.add_argument("--optimizer", default=TRAIN.optimizer, choices=OPTIMIZERS)
    lf.add_argument("--batch_size", type=int, default=TRAIN.batch_size)
    lf.add_argument("--validation_percentage", type=int, default=RUN.validation_percentage)
    lf.add_argument("--testing_percentage", type=int, default=RUN.testing_percentage)
    lf.add_argument("--seed", type=int, default=TRAIN.seed)
    lf.add_argument("--start", type=float, default=lrfind.DEFAULT_START, help="first learning rate")
    lf.add_argument("--stop", type=float, default=lrfind.DEFAULT_STOP, help="last learning rate")
    lf.add_argument("--steps", type=int, default=lrfind.DEFAULT_STEPS, help="steps of the sweep")
    lf.add_argument("--rates", type=floats, default=[], help="rates to mark on the curve, e.g. a race's")
    lf.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    lf.set_defaults(func=cmd_lrfind)

    fr = studies.add_parser("freeze", help="head only against unfreezing the top k backbone layers")
    _training_options(fr)
    fr.add_argument(
        "--layers", type=ints, default=list(experiments.DEFAULT_LAYERS), help="layer counts, 0 = head only"
    )
    fr.add_argument("--fine_tune_steps", type=int, default=TRAIN.fine_tune_steps)
    fr.add_argument("--fine_tune_batch_size", type=int, default=TRAIN.fine_tune_batch_size)
    fr.add_argument("--fine_tune_learning_rate", type=float, default=TRAIN.fine_tune_learning_rate)
    fr.set_defaults(func=cmd_study, kind="freezing")

    ds = studies.add_parser("datasets", help="the same settings on two or more datasets")
    _training_options(ds, image_dir=False)
    ds.add_argument("--image_dirs", required=True, help="comma-separated folders or named sources")
    ds.set_defaults(func=cmd_study, kind="datasets")

    st = studies.add_parser("steps", help="accuracy at chosen steps from one run's history (no retraining)")
    st.add_argument("--run", required=True, help="run id (see `runs`)")
    st.add_argument("--checkpoints", type=ints, default=list(experiments.DEFAULT_CHECKPOINTS))
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_steps)

    ls = studies.add_parser("list", help="list stored experiments")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    csv = studies.add_parser("csv", help="print an experiment's result table as CSV")
    csv.add_argument("experiment_id")
    csv.set_defaults(func=cmd_csv)


def _base_config(args: argparse.Namespace, source: str) -> RunConfig:
    train = {
        "learning_rate": args.learning_rate,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "eval_interval": args.eval_interval,
        "optimizer": args.optimizer,
        "schedule": args.schedule,
        "seed": args.seed,
    }
    for key in ("fine_tune_steps", "fine_tune_batch_size", "fine_tune_learning_rate"):
        if hasattr(args, key):
            train[key] = getattr(args, key)
    return RunConfig(
        source=source,
        architecture=args.architecture,
        weights=args.weights,
        validation_percentage=args.validation_percentage,
        testing_percentage=args.testing_percentage,
        train=TrainConfig(**train),
    )


def cmd_study(args: argparse.Namespace) -> int:
    bar = ProgressBar(enabled=sys.stderr.isatty() or not args.json)
    try:
        if args.kind == "lr_race":
            base = _base_config(args, args.image_dir)
            result = experiments.lr_race(
                base,
                args.rates,
                args.target,
                progress=bar,
                name=args.name,
                seeds=args.seeds,
                schedules=args.schedules,
            )
        elif args.kind == "freezing":
            base = _base_config(args, args.image_dir)
            result = experiments.freezing_study(base, args.layers, progress=bar, name=args.name)
        else:
            sources = parse_list(args.image_dirs)
            if not sources:
                raise InvalidArgument(f"--image_dirs needs folders, got {args.image_dirs!r}")
            base = _base_config(args, sources[0])
            result = experiments.dataset_comparison(base, sources, progress=bar, name=args.name)
    finally:
        bar.close()
    print(f"Experiment {result.experiment_id} ({experiments.KINDS[result.kind]}), {result.seconds:.1f} s")
    for stats in result.extraction:
        where = f" [{stats['source']}]" if "source" in stats else ""
        counts = f"{stats['misses']} extracted, {stats['hits']} from the cache"
        print(f"Extraction{where}: {counts}, {stats['seconds']:.2f} s")
    _print_rows(result.rows, result.kind)
    if result.summary:
        _print_summary(result.summary)
    if args.json:
        print_json(result.as_dict())
    return 0


def _print_summary(summary: dict) -> None:
    """Per setting: mean and range over the seeds; then the verdict, its rule and the split's step."""
    print(f"\nOver {summary['seeds']} seed(s) per setting (final validation accuracy):")
    for g in summary["groups"]:
        acc = g["validation_accuracy"]
        if not acc["n"]:
            print(f"  {g['group']}: no result")
            continue
        seconds = human_seconds(g["seconds_to_target"]["mean"]) if g["reached"] else NEVER
        print(
            f"  {g['group']}: mean {acc['mean']:.1%}, range {acc['min']:.1%}-{acc['max']:.1%}, "
            f"sd {acc['sd'] * 100:.1f} points; target reached by {g['reached']} of {g['finished']} "
            f"(mean {seconds}); flags: {', '.join(g['flags']) or 'none'}"
        )
    verdict = summary["separation"]
    for line in verdict["lines"]:
        print(line)
    print(f"Rule: {verdict['rule']}")
    if verdict["warning"]:
        print(f"Warning: {verdict['warning']}")


def cmd_lrfind(args: argparse.Namespace) -> int:
    base = RunConfig(
        source=args.image_dir,
        architecture=args.architecture,
        weights=args.weights,
        validation_percentage=args.validation_percentage,
        testing_percentage=args.testing_percentage,
        train=TrainConfig(optimizer=args.optimizer, batch_size=args.batch_size, seed=args.seed),
    )
    bar = ProgressBar(enabled=sys.stderr.isatty() or not args.json)
    try:  # Ctrl-C stops the sweep between steps (exit 130, see engine.cli.main)
        found = experiments.lr_find(base, args.start, args.stop, args.steps, args.rates, progress=bar)
    finally:
        bar.close()
    ended = "stopped early: the loss diverged" if found["stopped_early"] else "reached the last rate"
    print(
        f"Range test on {found['train_images']} training images, {len(found['rates'])} of "
        f"{found['steps']} steps from {found['start']:g} to {found['stop']:g} ({ended}), "
        f"{human_seconds(found['seconds'])}"
    )
    if found["suggested"]:
        low, high = found["suggested"]
        print(
            f"Suggested range: {low:.2g} .. {high:.2g} (steepest descent at {found['steepest']:.2g}, "
            f"lowest smoothed loss at {found['minimum']:.2g})"
        )
    else:
        print("Suggested range: none (too few steps before the loss diverged; lower --start)")
    print(f"Rule: {found['rule']}")
    if args.json:
        print_json(found)
    return 0


_TABLES = {
    "lr_race": [("name", "run", False), ("final_validation_accuracy", "val acc", True),
                ("test_accuracy", "test acc", True), ("steps_to_target", "steps to target", False),
                ("seconds_to_target", "time to target", False),
                ("final_cross_entropy", "cross-entropy", False), ("flag", "flag", False)],
    "freezing": [("name", "run", False), ("test_accuracy", "test acc", True),
                 ("head_test_accuracy", "head only", True),
                 ("trainable_parameters", "trainable params", False), ("seconds_per_step", "per step", False),
                 ("total_seconds", "total", False)],
    "datasets": [("name", "dataset", False), ("classes", "classes", False), ("images", "images", False),
                 ("final_validation_accuracy", "val acc", True), ("test_accuracy", "test acc", True)],
}  # fmt: skip


def _print_rows(rows: list[dict], kind: str) -> None:
    columns = _TABLES[kind]
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, percent in columns:
            value = row.get(key)
            if value is None and key.endswith("_to_target"):
                line.append(NEVER)
            elif "seconds" in key:  # times for people: "39 ms", not "0.0386"
                line.append(human_seconds(value))
            else:
                line.append(display(value, percent) or "-")
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    for row in rows:
        if kind == "lr_race":
            print(f"{row['name']}: {row['explanation']}")
        elif kind == "datasets" and row.get("per_class_accuracy"):
            print(f"{row['name']}: {row['per_class_accuracy']}")


def cmd_steps(args: argparse.Namespace) -> int:
    rows = experiments.steps_study(args.run, args.checkpoints)
    for row in rows:
        acc = display(row["validation_accuracy"], percent=True) or "-"
        test = display(row["test_accuracy"], percent=True)
        note = f"  ({row['note']})" if row["note"] else ""
        print(
            f"step {row['checkpoint']:>6}: validation accuracy {acc:>6}"
            + (f", test {test}" if test else "")
            + note
        )
    if args.json:
        print_json({"run_id": args.run, "rows": rows})
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = experiments.list_experiments()
    if not rows:
        print("No experiments yet: try `python -m engine experiment lr --image_dir demo`.")
    for row in rows:
        print(f"{row['id']:<22} {row['label']:<22} {row['runs']:>3} runs  {row['name']}")
    if args.json:
        print_json({"experiments": rows})
    return 0


def cmd_csv(args: argparse.Namespace) -> int:
    sys.stdout.write(experiments.experiment_csv(args.experiment_id))
    return 0

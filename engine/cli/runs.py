"""CLI commands `retrain`, `classify` and `runs` (retrain.py and label_image, as subcommands)."""

from __future__ import annotations

import argparse
import sys

from engine.export.runtimes import FORMATS
from engine.models import backbones


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("retrain", help="train a classifier head on cached bottlenecks (retrain.py)")
    p.add_argument(
        "--image_dir", required=True, help='folder of class subfolders, or "flowers" | "beans" | "demo"'
    )
    p.add_argument("--architecture", default=backbones.DEFAULT_BACKBONE, help="a backbone name (see `arch`)")
    p.add_argument("--weights", default="imagenet", choices=backbones.WEIGHTS_CHOICES)
    p.add_argument("--learning_rate", type=float, default=0.01)
    p.add_argument("--how_many_training_steps", type=int, default=4000)
    p.add_argument("--train_batch_size", type=int, default=100)
    p.add_argument("--eval_step_interval", type=int, default=10)
    p.add_argument("--testing_percentage", type=int, default=10)
    p.add_argument("--validation_percentage", type=int, default=10)
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    p.add_argument("--fine_tune_layers", type=int, default=0, help="unfreeze this many top backbone layers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="a label for the run")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    p.set_defaults(func=cmd_retrain)

    c = subparsers.add_parser("classify", help="classify images with a run's model (label_image)")
    c.add_argument("--run", required=True, help="run id (see `runs`)")
    c.add_argument("paths", nargs="+", help="image files or folders")
    c.add_argument("--top_k", type=int, default=5)
    c.add_argument(
        "--format",
        default="keras",
        choices=FORMATS,
        help="run the run's model in this format (converted first if missing; see `convert`)",
    )
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_classify)

    r = subparsers.add_parser("runs", help="list stored runs")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_runs)


class _Bar:
    """A tqdm bar on stderr that restarts for each phase of the progress stream."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.phase, self.bar = enabled, None, None

    def __call__(self, event: dict) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        phase, total = event.get("phase"), int(event.get("total") or 0)
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = tqdm(total=total or None, desc=phase, file=sys.stderr, leave=True, dynamic_ncols=True)
        if self.bar is not None:
            if total and self.bar.total != total:
                self.bar.total = total
            self.bar.n = int(event.get("done") or 0)
            row = event.get("row") or {}
            if row:
                self.bar.set_postfix(
                    train_acc=f"{row.get('train_accuracy', 0):.3f}",
                    val_acc=_fmt(row.get("validation_accuracy")),
                    refresh=False,
                )
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def cmd_retrain(args: argparse.Namespace) -> int:
    from engine.cli.main import print_json
    from engine.runs.retrain import RunConfig, retrain
    from engine.training.head import TrainConfig

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
    )
    bar = _Bar(enabled=sys.stderr.isatty() or not args.json)
    try:
        summary = retrain(config, progress=bar)
    finally:
        bar.close()
    acc = summary.test_accuracy
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
            }
        )
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from engine.cli.main import print_json
    from engine.export.predict import Classifier, expand_paths

    paths = expand_paths(args.paths)
    classifier = Classifier.from_run(args.run, fmt=args.format)
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


def cmd_runs(args: argparse.Namespace) -> int:
    from engine.cli.main import print_json
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
                "test_accuracy": acc,
                "created": run.created,
            }
        )
    if not rows:
        print("No runs yet: try `python -m engine retrain --image_dir demo`.")
    for row in rows:
        acc = row["test_accuracy"]
        print(
            f"{row['id']:<22} {row['status']:<12} {str(row['architecture']):<22} "
            f"{'-' if acc is None else f'{acc * 100:.1f}%':>7}  {row['name']}"
        )
    if args.json:
        print_json({"runs": rows})
    return 0

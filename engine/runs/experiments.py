"""Experiments: groups of runs on identical data — learning-rate race, layer freezing, datasets, steps.

An experiment is a row in the run store holding its settings; its runs are ordinary runs (own
history, results and folder with model.keras) carrying its `experiment_id`, so they can be compared,
classified with and deleted like any run. Result tables are computed from those runs when asked
(engine.training.summaries), so a table read while the experiment trains is live and one read a week later
is the same. A race or a freezing study scans and extracts bottlenecks once and trains every head
on those same arrays and the same split.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from engine.errors import InvalidArgument, NotFound
from engine.models import backbones
from engine.progress import ProgressFn, emit
from engine.runs import retrain as pipeline
from engine.runs.retrain import RunConfig
from engine.training import lrfind, summaries
from engine.training.config import SCHEDULES
from engine.training.head import train_head
from engine.training.optim import schedule_curve

DEFAULT_RATES = (0.005, 0.01, 0.1, 1.0)
DEFAULT_TARGET = 0.8  # validation accuracy a race's runs are timed to
DEFAULT_SEEDS = 3  # runs per rate: the spread of seeds is what a difference between rates is measured against
MAX_SEEDS = 20
DEFAULT_LAYERS = (0, 2, 6)  # top backbone layers unfrozen; 0 is the head alone on cached features
DEFAULT_CHECKPOINTS = (100, 400, 1000, 4000)
# kind -> label; the kind is stored with the experiment and picks its result table
KINDS = {
    "lr_race": "Learning-rate race",
    "freezing": "Layer-freezing study",
    "datasets": "Dataset comparison",
}

RACE_COLUMNS = (
    "name", "learning_rate", "schedule", "seed", "status", "final_validation_accuracy", "test_accuracy",
    "steps_to_target", "seconds_to_target", "final_cross_entropy", "steps", "train_seconds", "flag",
    "explanation", "run_id",
)  # fmt: skip
FREEZING_COLUMNS = (
    "name", "fine_tune_layers", "status", "test_accuracy", "head_test_accuracy", "final_validation_accuracy",
    "trainable_parameters", "seconds_per_step", "train_seconds", "total_seconds", "run_id",
)  # fmt: skip
DATASET_COLUMNS = (
    "name", "source", "status", "classes", "images", "final_validation_accuracy", "test_accuracy",
    "per_class_accuracy", "train_seconds", "run_id",
)  # fmt: skip
COLUMNS = {"lr_race": RACE_COLUMNS, "freezing": FREEZING_COLUMNS, "datasets": DATASET_COLUMNS}


@dataclass
class ExperimentResult:
    """What a finished experiment reports to the CLI and to job results."""

    experiment_id: str
    kind: str
    rows: list[dict[str, Any]]  # one per run, the kind's COLUMNS
    extraction: list[dict[str, Any]]  # stats of each extraction (one per dataset, not per run)
    seconds: float
    summary: dict[str, Any] | None = None  # a race: spread per setting and the verdict (race_summary)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- argument checks ---------------------------------------------------------------------------


def check_rates(rates) -> tuple[float, ...]:
    """Positive finite learning rates, at least one, no repeats."""
    rates = tuple(rates or ())
    ok = all(
        isinstance(r, numbers.Real) and not isinstance(r, bool) and math.isfinite(r) and r > 0 for r in rates
    )
    if not rates or not ok or len(set(rates)) != len(rates):
        raise InvalidArgument(f"rates must be distinct positive numbers, got rates={list(rates)!r}")
    return tuple(float(r) for r in rates)


def check_target(target) -> float:
    if not isinstance(target, numbers.Real) or isinstance(target, bool) or not 0 < target <= 1:
        raise InvalidArgument(f"target must be an accuracy in (0, 1], got target={target!r}")
    return float(target)


def check_seeds(seeds) -> int:
    """How many seeds each setting of a race trains with: 1 to MAX_SEEDS."""
    if isinstance(seeds, bool) or not isinstance(seeds, numbers.Integral) or not 1 <= seeds <= MAX_SEEDS:
        raise InvalidArgument(f"seeds must be a whole number from 1 to {MAX_SEEDS}, got seeds={seeds!r}")
    return int(seeds)


def check_schedules(schedules, default: str) -> tuple[str, ...]:
    """Distinct schedule names of SCHEDULES; `(default,)` when none are given."""
    schedules = tuple(schedules or (default,))
    if any(s not in SCHEDULES for s in schedules) or len(set(schedules)) != len(schedules):
        raise InvalidArgument(
            f"schedules must be distinct names from {list(SCHEDULES)}, got schedules={list(schedules)!r}"
        )
    return schedules


def backbone_label(architecture: str) -> str:
    """Backbone for people: "mobilenet_0.25_224" -> "MobileNet 0.25", "inception_v3" -> "Inception V3"."""
    words = {"mobilenet": "MobileNet", "inception": "Inception", "efficientnet": "EfficientNet"}
    parts = [p for p in architecture.split("_") if p != "224"]  # 224 px is the usual input size
    return " ".join(words.get(p, p.upper() if p[:1] in "vb" else p.capitalize()) for p in parts)


def experiment_name(base: RunConfig, what: str, dataset: str | None = None) -> str:
    """Backbone, dataset, study and start time: "MobileNet 0.25 · flowers · lr race · 12-03 14:05"."""
    dataset = dataset or _source_name(base.source)
    return f"{backbone_label(base.architecture)} · {dataset} · {what} · {time.strftime('%m-%d %H:%M')}"


def check_layers(layers) -> tuple[int, ...]:
    layers = tuple(layers or ())
    ok = all(isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 0 for k in layers)
    if not layers or not ok or len(set(layers)) != len(layers):
        raise InvalidArgument(f"layers must be distinct whole numbers >= 0, got layers={list(layers)!r}")
    return tuple(int(k) for k in layers)


# -- running experiments -----------------------------------------------------------------------


class _Tagged:
    """Progress events of one run of an experiment, tagged with the experiment, the run and its label."""

    def __init__(self, progress: ProgressFn | None, experiment_id: str, label: str, **tags: Any) -> None:
        self.progress, self.label, self.run_id = progress, label, None
        self.tags = {"experiment_id": experiment_id, "label": label, **tags}

    def __call__(self, event: dict[str, Any]) -> None:
        self.run_id = event.get("run_id", self.run_id)
        if self.progress is not None:
            tagged = {**event, **self.tags, "message": f"{self.label}: {event.get('message', '')}"}
            if self.run_id is not None:  # none yet while the dataset is scanned and extracted
                tagged["run_id"] = self.run_id
            self.progress(tagged)


def _begin(store, kind: str, name: str | None, settings: dict[str, Any], progress) -> str:
    exp_id = store.create_experiment(kind, name or KINDS[kind], settings)
    emit(progress, "scan", 0, 0, f"{KINDS[kind]} {exp_id} created", experiment_id=exp_id)
    return exp_id


def _finish(store, exp_id: str, extraction: list[dict], start: float) -> ExperimentResult:
    kind = store.get_experiment(exp_id).kind
    return ExperimentResult(
        exp_id, kind, experiment_table(exp_id, store), extraction, time.perf_counter() - start
    )


def _source_name(source: str) -> str:
    return Path(source).name or source


def _warm_up(prepared: pipeline.Bottlenecks, base: RunConfig, schedules=()) -> None:
    """Trace head training once per schedule, so the first run's seconds-to-target exclude the tracing."""
    x, y = prepared.part("train")
    for schedule in schedules or (base.train.schedule,):
        warm = replace(base.train, steps=1, eval_interval=1, schedule=schedule)
        train_head(x[:2], y[:2], None, None, len(prepared.data.classes), warm)


def race_label(rate: float, schedule: str | None = None, seed: int | None = None) -> str:
    """A race run's name within its experiment: "lr=0.1", "lr=0.1 · cosine", "lr=0.1 · seed 2"."""
    parts = (
        [f"lr={rate:g}"] + ([schedule] if schedule else []) + ([f"seed {seed}"] if seed is not None else [])
    )
    return " · ".join(parts)


def lr_race(
    base: RunConfig,
    rates=DEFAULT_RATES,
    target: float = DEFAULT_TARGET,
    store=None,
    progress: ProgressFn | None = None,
    cancel=None,
    name: str | None = None,
    seeds: int = DEFAULT_SEEDS,
    schedules=None,
) -> ExperimentResult:
    """Train heads per learning rate (x schedule) x seed on the same bottlenecks and split, as one experiment.

    The bottlenecks are extracted once (`pipeline.prepare`; with random weights once per seed, as the
    seed draws the backbone); every (schedule, rate, seed) then trains,
    evaluates and saves a run of its own with `base`'s other settings; seeds are `base.train.seed`,
    `+1`, ... (the head's initial weights and its batches change with the seed, the data does not).
    Train events carry `rate`, `schedule`, `seed`, `run_id`, `experiment_id` and the history `row`.

    Args:
        seeds: runs per setting (1..MAX_SEEDS); the spread over them is what differences are judged by.
        schedules: schedule names raced against each other; `(base.train.schedule,)` when None.
    """
    rates, target = check_rates(rates), check_target(target)
    seeds, schedules = check_seeds(seeds), check_schedules(schedules, base.train.schedule)
    store, start = pipeline._open_store(store), time.perf_counter()
    name = name or experiment_name(base, "lr race" if len(schedules) == 1 else "schedule race")
    settings = {"base": asdict(base), "rates": list(rates), "target": target, "seeds": seeds,
                "schedules": list(schedules)}  # fmt: skip
    exp_id = _begin(store, "lr_race", name, settings, progress)
    prepared = {base.train.seed: pipeline.prepare(base, progress, cancel)}
    _warm_up(prepared[base.train.seed], base, schedules)
    plan = [(sch, rate, base.train.seed + i) for sch in schedules for rate in rates for i in range(seeds)]
    try:
        for index, (schedule, rate, seed) in enumerate(plan):
            label = race_label(rate, schedule if len(schedules) > 1 else None, seed if seeds > 1 else None)
            train = replace(base.train, learning_rate=rate, schedule=schedule, seed=seed)
            config = replace(base, train=train, name=label, experiment_id=exp_id)
            if base.weights == "random" and seed not in prepared:
                # random weights are drawn from the seed: each seed has its own backbone and bottlenecks
                prepared[seed] = pipeline.prepare(config, progress, cancel)
            tagged = _Tagged(progress, exp_id, label, rate=rate, schedule=schedule, seed=seed, index=index,
                             count=len(plan))  # fmt: skip
            # each run's folder is written while the next one trains
            bottlenecks = prepared.get(seed, prepared[base.train.seed])
            pipeline.retrain_on(config, bottlenecks, store, tagged, cancel, background_save=True)
    finally:
        pipeline.wait_for_saves()
    extraction = [p.feats.stats.as_dict() for p in prepared.values()]
    result = _finish(store, exp_id, extraction, start)
    result.summary = race_summary(exp_id, store)
    return result


def lr_find(
    base: RunConfig,
    start: float = lrfind.DEFAULT_START,
    stop: float = lrfind.DEFAULT_STOP,
    steps: int = lrfind.DEFAULT_STEPS,
    rates=(),
    progress: ProgressFn | None = None,
    cancel=None,
) -> dict[str, Any]:
    """The learning-rate range test on `base`'s training bottlenecks (extracted or read from the cache).

    Nothing is stored as a run: the sweep is a diagnostic, returned (and kept in the job's result).
    `rates` (e.g. a race's) are passed through so a chart can mark them on the curve.
    """
    start, stop, steps = lrfind.check_sweep(start, stop, steps)
    rates = check_rates(rates) if rates else ()
    prepared = pipeline.prepare(base, progress, cancel)
    x, y = prepared.part("train")
    classes = len(prepared.data.classes)
    found = lrfind.range_test(x, y, classes, base.train, start, stop, steps, progress, cancel)
    return {
        "study": "lr_find",
        "name": experiment_name(base, "lr finder"),
        "architecture": base.architecture,
        "source": base.source,
        "optimizer": base.train.optimizer,
        "batch_size": base.train.batch_size,
        "train_images": int(len(x)),
        "classes": classes,
        "race_rates": list(rates),
        "extraction": prepared.feats.stats.as_dict(),
        **found.as_dict(),
    }


def freezing_study(
    base: RunConfig,
    layers=DEFAULT_LAYERS,
    store=None,
    progress: ProgressFn | None = None,
    cancel=None,
    name: str | None = None,
) -> ExperimentResult:
    """Head only on cached bottlenecks against unfreezing the top k backbone layers, one run per k.

    Every run trains its head on the same extracted bottlenecks; runs with k > 0 then fine-tune end
    to end on images (bypassing the cache), with `base.train`'s fine-tuning settings.
    """
    layers = check_layers(layers)
    store, start = pipeline._open_store(store), time.perf_counter()
    name = name or experiment_name(base, "freezing")
    exp_id = _begin(store, "freezing", name, {"base": asdict(base), "layers": list(layers)}, progress)
    prepared = pipeline.prepare(base, progress, cancel)
    for index, k in enumerate(layers):
        label = "head only" if k == 0 else f"top {k} layers"
        config = replace(
            base, train=replace(base.train, fine_tune_layers=k), name=label, experiment_id=exp_id
        )
        tagged = _Tagged(progress, exp_id, label, fine_tune_layers=k, index=index, count=len(layers))
        pipeline.retrain_on(config, prepared, store, tagged, cancel)
    return _finish(store, exp_id, [prepared.feats.stats.as_dict()], start)


def dataset_comparison(
    base: RunConfig,
    sources,
    store=None,
    progress: ProgressFn | None = None,
    cancel=None,
    name: str | None = None,
) -> ExperimentResult:
    """The same backbone and settings on two or more datasets, one run each, side by side."""
    sources = [str(s).strip() for s in (sources or ()) if str(s).strip()]
    if len(sources) < 2 or len(set(sources)) != len(sources):
        raise InvalidArgument(
            f"a dataset comparison needs two or more distinct sources, got sources={sources!r}"
        )
    store, start = pipeline._open_store(store), time.perf_counter()
    name = name or experiment_name(base, "datasets", " + ".join(map(_source_name, sources)))
    exp_id = _begin(store, "datasets", name, {"base": asdict(base), "sources": sources}, progress)
    extraction = []
    for index, source in enumerate(sources):
        label = _source_name(source)
        config = replace(base, source=source, name=label, experiment_id=exp_id)
        tagged = _Tagged(progress, exp_id, label, source=source, index=index, count=len(sources))
        prepared = pipeline.prepare(config, tagged, cancel)
        pipeline.retrain_on(config, prepared, store, tagged, cancel)
        extraction.append({"source": source, **prepared.feats.stats.as_dict()})
    return _finish(store, exp_id, extraction, start)


def steps_study(run_id: str, checkpoints=DEFAULT_CHECKPOINTS, store=None) -> list[dict[str, Any]]:
    """Accuracy at chosen steps, read from one stored run's history (nothing is retrained)."""
    store = pipeline._open_store(store)
    run = store.get_run(run_id)
    checkpoints = [int(c) for c in checkpoints]
    if not checkpoints or min(checkpoints) < 1:
        raise InvalidArgument(f"checkpoints must be steps >= 1, got checkpoints={checkpoints!r}")
    history = store.get_history(run_id, phase="train")
    results = run.results or {}
    # the history is the head's; after fine-tuning, the head's own test accuracy is the one that matches it
    test = (results.get("fine_tune") or {}).get("head_test_accuracy", results.get("test_accuracy"))
    return summaries.steps_table(history, checkpoints, test)


# -- reading experiments -----------------------------------------------------------------------


def list_experiments(store=None) -> list[dict[str, Any]]:
    """Experiments, newest first: id, kind, label, name, created and run count."""
    store = pipeline._open_store(store)
    rows = []
    for exp in store.list_experiments():
        if exp.kind in KINDS:
            count = len(store.list_runs(experiment_id=exp.id))
            rows.append({"id": exp.id, "kind": exp.kind, "label": KINDS[exp.kind], "name": exp.name,
                         "created": exp.created, "runs": count})  # fmt: skip
    return rows


def experiment_runs(experiment_id: str, store=None) -> list:
    """The experiment's runs in the order they were started."""
    store = pipeline._open_store(store)
    store.get_experiment(experiment_id)  # NotFound for an unknown id
    return sorted(store.list_runs(experiment_id=experiment_id), key=lambda r: r.id)


def experiment_curves(experiment_id: str, store=None) -> list[dict[str, Any]]:
    """Every run's history so far, long format: one row per (run, evaluation) with `run` as label.

    Rows of a race also carry `group` (the setting: rate, and schedule when several were raced) and
    `seed`, so the seeds of one setting can be drawn as a mean and a band.
    """
    store = pipeline._open_store(store)
    exp = store.get_experiment(experiment_id)
    rows = []
    for run in experiment_runs(experiment_id, store):
        tags = {"group": _group(exp, run), "seed": _train(run).get("seed")}
        for row in store.get_history(run.id, phase="train"):
            rows.append({"run": run.name, "run_id": run.id, **tags, **row})
    return rows


def _train(run) -> dict[str, Any]:
    return (run.config or {}).get("train", {})


def _group(exp, run) -> str:
    """A race run's setting without its seed ("lr=0.1", or "lr=0.1 · cosine" in a schedule race)."""
    if exp.kind != "lr_race":
        return run.name
    train = _train(run)
    several = len(exp.config.get("schedules") or ()) > 1
    rate = train.get("learning_rate")
    if rate is None:
        return run.name
    return race_label(rate, train.get("schedule", "constant") if several else None)


def experiment_table(experiment_id: str, store=None) -> list[dict[str, Any]]:
    """One result row per run, with the columns of the experiment's kind (see COLUMNS)."""
    store = pipeline._open_store(store)
    exp = store.get_experiment(experiment_id)
    if exp.kind not in KINDS:
        raise NotFound(f"Experiment {experiment_id!r} is of kind {exp.kind!r}, not one of {sorted(KINDS)}")
    target = exp.config.get("target", DEFAULT_TARGET)
    runs = experiment_runs(experiment_id, store)
    # a run still training has no results yet; its siblings on the same data know the class count
    known = [r.results["num_classes"] for r in runs if (r.results or {}).get("num_classes")]
    rows = []
    for run in runs:
        history = store.get_history(run.id, phase="train")
        results, train = run.results or {}, (run.config or {}).get("train", {})
        row = {"name": run.name, "run_id": run.id, "status": run.status}
        classes = results.get("num_classes") or (known[0] if exp.kind != "datasets" and known else None)
        row.update(summaries.race_row(history, results.get("test_accuracy"), target, classes))
        row["train_seconds"] = sum(run.phases.get(p, 0.0) for p in ("train", "fine_tune"))
        row.update(learning_rate=train.get("learning_rate"), schedule=train.get("schedule", "constant"))
        row.update(seed=train.get("seed"), group=_group(exp, run))
        if exp.kind == "freezing":
            row.update(_freezing_facts(run, train))
        if exp.kind == "datasets":
            row.update(_dataset_facts(run))
        rows.append(row)
    return rows


def _freezing_facts(run, train: dict[str, Any]) -> dict[str, Any]:
    results = run.results or {}
    k = int(train.get("fine_tune_layers", 0))
    fine = results.get("fine_tune", {})
    dim = backbones.get_backbone(
        (run.config or {}).get("architecture", backbones.DEFAULT_BACKBONE)
    ).feature_dim
    classes = results.get("num_classes")
    head_params = dim * classes + classes if dim and classes else None
    if k:
        steps, seconds = train.get("fine_tune_steps"), run.phases.get("fine_tune")
    else:
        steps, seconds = train.get("steps"), run.phases.get("train")
    shared = sum((results.get("shared_phases") or {}).values())
    return {
        "fine_tune_layers": k,
        "test_accuracy": results.get("test_accuracy"),
        # the head alone before fine-tuning, so the table shows what unfreezing added
        "head_test_accuracy": fine.get("head_test_accuracy", results.get("test_accuracy")),
        "final_validation_accuracy": (results.get("final") or {}).get("validation_accuracy"),
        "trainable_parameters": fine.get("trainable_parameters", head_params),
        "seconds_per_step": seconds / steps if seconds and steps else None,
        "total_seconds": sum(run.phases.values()) + shared,
    }


def _dataset_facts(run) -> dict[str, Any]:
    results = run.results or {}
    dataset = results.get("dataset") or {}
    per_class = results.get("per_class_accuracy") or {}
    return {
        "source": (run.config or {}).get("source"),
        "classes": results.get("num_classes"),
        "images": dataset.get("images", dataset.get("num_images")),
        "per_class_accuracy": "; ".join(
            f"{k}={summaries.display(v, percent=True)}" for k, v in per_class.items()
        ),
    }


def race_summary(experiment_id: str, store=None) -> dict[str, Any]:
    """A race read as settings over seeds: spread per setting, the verdict, and each schedule's rate curve.

    Returns:
        {"groups": summaries.race_groups(...), "separation": summaries.separation(...) (rule, validation
        size, one photo's step, warning, pair lines), "schedule_curves": [{"group", "step",
        "learning_rate"}], "seeds", "planned" (runs the race will have), "done" (runs ended)}.
    """
    store = pipeline._open_store(store)
    exp = store.get_experiment(experiment_id)
    rows = experiment_table(experiment_id, store)
    groups = summaries.race_groups(rows)
    n_val = None
    for run in experiment_runs(experiment_id, store):
        splits = ((run.results or {}).get("dataset") or {}).get("splits") or {}
        if splits.get("validation") is not None:
            n_val = int(splits["validation"])
            break
    base = (exp.config.get("base") or {}).get("train") or {}
    curves = []
    for group in groups:
        if group["learning_rate"] is None:
            continue
        for point in schedule_curve(
            group["schedule"] or "constant",
            group["learning_rate"],
            base.get("final_lr_fraction", 0.1),
            base.get("steps", 1),
        ):
            curves.append({"group": group["group"], **point})
    seeds = int(exp.config.get("seeds", 1))
    planned = len(exp.config.get("rates") or ()) * seeds * max(1, len(exp.config.get("schedules") or ()))
    done = sum(1 for r in rows if r["status"] != "running")
    return {
        "groups": groups,
        "separation": summaries.separation(groups, n_val),
        "schedule_curves": curves,
        "seeds": seeds,
        "planned": planned or len(rows),
        "done": done,
    }


def dataset_details(experiment_id: str, store=None) -> list[dict[str, Any]]:
    """Per run of a dataset comparison: name, class names, per-class accuracy and confusion matrix."""
    return [
        {
            "name": run.name,
            "run_id": run.id,
            "class_names": (run.results or {}).get("class_names", []),
            "per_class_accuracy": (run.results or {}).get("per_class_accuracy", {}),
            "confusion_matrix": (run.results or {}).get("confusion_matrix", []),
        }
        for run in experiment_runs(experiment_id, store)
    ]


def experiment_csv(experiment_id: str, store=None) -> str:
    """The experiment's result table as CSV text ("never" where a run did not reach the target)."""
    store = pipeline._open_store(store)
    kind = store.get_experiment(experiment_id).kind
    rows = experiment_table(experiment_id, store)
    if kind == "lr_race":
        rows = [{**r, "steps_to_target": r["steps_to_target"] or summaries.NEVER} for r in rows]
        rows = [{**r, "seconds_to_target": r["seconds_to_target"] or summaries.NEVER} for r in rows]
    return summaries.to_csv(rows, COLUMNS[kind])


# -- job entry point ---------------------------------------------------------------------------


def run_job(params: dict[str, Any], progress=None, cancel=None, store=None) -> dict[str, Any]:
    """Job entry point (kind "experiment").

    Params: `study` ("lr_race", "freezing", "datasets" or "lr_find"), `config` (asdict(RunConfig), the
    base settings), and per study `rates` + `target` (+ `seeds`, `schedules`), `layers`, `sources`, or
    `start` + `stop` + `steps` (+ `rates` to mark); optional `name`. The finder stores no run.
    """
    study = params.get("study")
    if study == "lr_find":
        return lr_find(
            RunConfig.from_dict(dict(params.get("config") or {})),
            params.get("start", lrfind.DEFAULT_START),
            params.get("stop", lrfind.DEFAULT_STOP),
            params.get("steps", lrfind.DEFAULT_STEPS),
            params.get("rates") or (),
            progress,
            cancel,
        )
    if study not in KINDS:
        raise InvalidArgument(f"study must be one of {sorted(KINDS)}, got study={study!r}")
    base = RunConfig.from_dict(dict(params.get("config") or {}))
    common = {"store": store, "progress": progress, "cancel": cancel, "name": params.get("name")}
    if study == "lr_race":
        rates, target = params.get("rates", DEFAULT_RATES), params.get("target", DEFAULT_TARGET)
        seeds, schedules = params.get("seeds", DEFAULT_SEEDS), params.get("schedules")
        result = lr_race(base, rates, target, seeds=seeds, schedules=schedules, **common)
    elif study == "freezing":
        result = freezing_study(base, params.get("layers", DEFAULT_LAYERS), **common)
    else:
        result = dataset_comparison(base, params.get("sources"), **common)
    return result.as_dict()

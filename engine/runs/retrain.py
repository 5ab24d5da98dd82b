"""One retrain run, end to end: scan -> weights -> bottlenecks -> head -> evaluate -> save.

This is retrain.py's main() as a function: every phase is timed, reports progress and can be
cancelled; everything a run needs later (model, labels, config, metrics, environment) is written
into the run's own folder so the folder is portable.
"""

from __future__ import annotations

import concurrent.futures
import functools
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from engine.data import datasets
from engine.errors import Cancelled, InvalidArgument, LabError
from engine.features import extract
from engine.features.decode import decode_dataset
from engine.models import backbones
from engine.params import person_name
from engine.progress import CancelFn, ProgressFn, check_cancel, emit
from engine.runs.folder import RunFolder
from engine.runs.results import test_results
from engine.training import finetune
from engine.training.config import TrainConfig
from engine.training.evaluate import head_probabilities
from engine.training.head import train_head
from engine.training.model import assemble_classifier

METRICS_FLUSH_SECONDS = 0.5  # history rows reach the store at least this often while training


@dataclass
class RunConfig:
    """Everything that defines a retrain run; saved with the run via `asdict`."""

    # folder of class subfolders, or a named source: "flowers", "beans", "demo"
    source: str
    # registry name of the backbone whose bottleneck features feed the head
    architecture: str = backbones.DEFAULT_BACKBONE
    # "imagenet" uses Keras' pretrained weights; "random" shows what pretraining is worth
    weights: str = "imagenet"
    # retrain.py's split percentages; the split is a stable hash of each file name
    validation_percentage: int = 10
    testing_percentage: int = 10
    # head training (and optional fine-tuning) knobs, retrain.py's defaults
    train: TrainConfig = field(default_factory=TrainConfig)
    # a label for tables and plots; defaults to "<architecture> lr=<rate>"
    name: str | None = None
    # groups runs of one experiment (learning-rate race, freezing study, ...)
    experiment_id: str | None = None
    # display name of who started it (the sidebar's "Your name"); stored as the run's author
    author: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        if not self.source:
            raise InvalidArgument(f"a dataset source is required, got source={self.source!r}")
        backbones.get_backbone(self.architecture)
        backbones.check_weights(self.weights)
        for key in ("validation_percentage", "testing_percentage"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):  # retrain.py's flags are integers
                raise InvalidArgument(f"{key} must be an integer, got {key}={value!r}")
        datasets.check_percentages(self.validation_percentage, self.testing_percentage)
        self.author = person_name(self.author)
        self.name = run_name(self.name)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return cls(**data)

    def display_name(self) -> str:
        return self.name or f"{self.architecture} lr={self.train.learning_rate:g}"


RUN_NAME_MAX = 200


def run_name(name: Any) -> str | None:
    """A run's name, stripped (None when empty).

    Raises:
        InvalidArgument: not text, longer than RUN_NAME_MAX, or holding a control, invisible-format or
            line-separator character (a newline splits a table row, ESC rewrites the user's terminal).
    """
    if name is None:
        return None
    if not isinstance(name, str):
        raise InvalidArgument(f"a run name must be text, got name={name!r}")
    text = name.strip()
    if len(text) > RUN_NAME_MAX:
        raise InvalidArgument(f"a run name has at most {RUN_NAME_MAX} characters, got a name of {len(text)}")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") for ch in text):
        raise InvalidArgument(f"a run name cannot hold control or invisible characters, got name={name!r}")
    return text or None


@dataclass
class RunSummary:
    """What a finished run reports to the CLI and to job results."""

    run_id: str
    test_accuracy: float | None
    phases: dict[str, float]
    cache: dict[str, Any]
    status: str = "finished"
    # the dataset scan's warnings, the files it did not use ({"path", "reason"}), and what duplicate
    # images do to the accuracy (also in the run's results: dataset.warnings/skipped, accuracy_warnings)
    warnings: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    accuracy_warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Phases:
    """Times named phases and, for a run, records them in the store as they end."""

    def __init__(self, store=None, run_id: str | None = None) -> None:
        self.store, self.run_id, self.seconds = store, run_id, {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 4)
            if self.store is not None:
                self.store.log_phase(self.run_id, name, self.seconds[name])


@dataclass
class Bottlenecks:
    """A scanned dataset and its bottleneck features: what several heads can train on unchanged."""

    config: RunConfig  # the config it was prepared for (source, backbone, weights, split, seed)
    data: datasets.Dataset
    feats: extract.FeatureSet
    labels: np.ndarray  # (N,) class index of each record
    splits: np.ndarray  # (N,) split name of each record
    phases: dict[str, float]  # seconds spent scanning, loading weights and extracting

    def part(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of one split."""
        keep = self.splits == split
        return self.feats.features[keep], self.labels[keep]

    def records(self, split: str) -> list:
        return [r for r in self.data.records if r.split == split]


# what a run shares with the bottlenecks it trains on; anything else (the head's knobs) may differ
_SHARED_FIELDS = ("source", "architecture", "weights", "validation_percentage", "testing_percentage")


def _field(config: RunConfig, key: str):
    return config.train.seed if key == "seed" else getattr(config, key)


def _open_store(store):
    if store is not None:
        return store
    from engine.runs.store import RunStore

    return RunStore()


def prepare(config: RunConfig, progress=None, cancel=None, phases=None) -> Bottlenecks:
    """Scan the dataset, make sure the weights are there and extract (or load cached) bottlenecks.

    Args:
        phases: a `_Phases` timer of the run doing this (None: timed but recorded nowhere).
    """
    phases = phases if phases is not None else _Phases()
    before = set(phases.seconds)
    with phases("scan"):
        root = datasets.resolve_source(config.source, progress=progress, cancel=cancel)
        data = datasets.scan_image_dir(root, config.validation_percentage, config.testing_percentage)
        emit(progress, "scan", 1, 1, f"{len(data.records)} images in {len(data.classes)} classes")
    if config.weights == "imagenet":
        with phases("weights"):
            emit(progress, "weights", 0, 1, f"Loading ImageNet weights for {config.architecture}")
            backbones.ensure_weights(config.architecture)
    check_cancel(cancel)
    with phases("extract"):
        feats = extract.extract_features(
            data.records,
            config.architecture,
            config.weights,
            seed=config.train.seed,
            progress=progress,
            cancel=cancel,
        )
    data = extract.drop_skipped(data, feats)  # unreadable images are listed with the dataset's skipped files
    splits = np.array([r.split for r in data.records])
    if not (splits == "train").any():
        raise LabError(
            "No training images after the split: add images or lower the validation/test percentages"
        )
    label_index = data.label_index
    labels = np.array([label_index[r.label] for r in data.records], dtype=np.int32)
    spent = {k: v for k, v in phases.seconds.items() if k not in before}
    return Bottlenecks(config, data, feats, labels, splits, spent)


@contextmanager
def _recorded_run(store, config: RunConfig, progress, first_phase: str, cancel=None):
    """Create the run, yield (run_id, phases), and store it as failed/cancelled if anything after
    `create_run` raises: a cancel (or SIGTERM) landing while the environment is collected (TensorFlow
    imports for seconds) still leaves the run "cancelled", never "running" and later "interrupted"."""
    from engine.runs.store import collect_environment

    run = store.create_run(
        asdict(config),
        kind="retrain",
        name=config.display_name(),
        experiment_id=config.experiment_id,
        author=config.author,
    )
    phases = _Phases(store, run.id)
    try:
        emit(progress, first_phase, 0, 0, f"Run {run.id} created", run_id=run.id)
        store.set_environment(run.id, collect_environment())
        check_cancel(cancel)  # a SIGTERM swallowed inside an import still counts
        yield run.id, phases
    except Cancelled as exc:
        store.finish_run(run.id, {"phases": phases.seconds}, status="cancelled", error=str(exc))
        raise
    except LabError as exc:
        store.finish_run(run.id, {"phases": phases.seconds}, status="failed", error=str(exc))
        raise
    except BaseException as exc:
        # a cancel that arrived wrapped in another exception (or Ctrl-C) is still a cancel
        stopped = not isinstance(exc, Exception) or _cancel_requested(cancel)
        status = "cancelled" if stopped else "failed"
        error = "Cancelled by the user" if stopped else f"{type(exc).__name__}: {exc}"
        store.finish_run(run.id, {"phases": phases.seconds}, status=status, error=error)
        raise


def _cancel_requested(cancel) -> bool:
    try:
        return bool(cancel is not None and cancel())
    except Exception:  # the store may be what failed
        return False


def retrain(
    config: RunConfig,
    store=None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> RunSummary:
    """Run one retrain and store it.

    Raises:
        LabError: bad data, missing weights, cancellation; the run is stored as failed/cancelled.
    """
    store = _open_store(store)
    with _recorded_run(store, config, progress, "scan", cancel) as (run_id, phases):
        prepared = prepare(config, progress, cancel, phases)
        return train_and_save(config, prepared, store, run_id, phases, progress, cancel)


def retrain_on(
    config: RunConfig,
    prepared: Bottlenecks,
    store=None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    background_save: bool = False,
) -> RunSummary:
    """Run one retrain on bottlenecks already prepared (experiments train many heads on one extraction).

    Raises:
        InvalidArgument: `config` describes other data than `prepared` was extracted for.
    """
    keys = _SHARED_FIELDS + (("seed",) if config.weights == "random" else ())  # random weights: by seed
    for key in keys:
        if _field(config, key) != _field(prepared.config, key):
            raise InvalidArgument(
                f"these bottlenecks were prepared for {key}={_field(prepared.config, key)!r}, "
                f"got {key}={_field(config, key)!r}"
            )
    store = _open_store(store)
    with _recorded_run(store, config, progress, "train", cancel) as (run_id, phases):
        return train_and_save(config, prepared, store, run_id, phases, progress, cancel, background_save)


def train_and_save(
    config, prepared: Bottlenecks, store, run_id, phases, progress, cancel, background_save: bool = False
) -> RunSummary:
    """Train the head (and fine-tune if asked), evaluate, save the run folder and finish the run.

    With `background_save`, writing the run folder overlaps the caller's next work (an experiment's
    next head); the run turns "finished" once its folder is complete, and `wait_for_saves()` joins.
    """
    data, feats = prepared.data, prepared.feats

    metrics = _MetricsBuffer(store, run_id)

    def on_train(event: dict) -> None:
        if event.get("row"):
            metrics.add(event["row"])
        if progress is not None:
            progress(event)

    with phases("train"), metrics:
        head = train_head(
            *prepared.part("train"),
            *prepared.part("validation"),
            len(data.classes),
            config.train,
            progress=on_train,
            cancel=cancel,
        )
    history, tuned = head.history, None
    if config.train.fine_tune_layers > 0:
        tuned_metrics = _MetricsBuffer(store, run_id, phase="fine_tune")  # its curves, live on Train

        def on_tune(event: dict) -> None:
            if event.get("row"):
                tuned_metrics.add(event["row"])
            if progress is not None:
                progress(event)

        with phases("fine_tune"), tuned_metrics:
            tuned = finetune.fine_tune(
                data,
                config.architecture,
                config.weights,
                config.train,
                head,
                progress=on_tune,
                cancel=cancel,
            )
        history = history + tuned.history
    with phases("evaluate"):
        emit(progress, "evaluate", 0, 1, "Evaluating on the test split")
        x_test, y_test = prepared.part("test")
        test_records = prepared.records("test")
        probs = head_probabilities(head.kernel, head.bias, x_test)
        if tuned is not None:
            head_results = test_results(probs, y_test, test_records, data.classes, history)
            probs = _model_probabilities(tuned.model, test_records, config.architecture, len(data.classes))
        results = test_results(probs, y_test, test_records, data.classes, history)
        if tuned is not None:
            fine_tune = {
                "layers": config.train.fine_tune_layers,
                "unfrozen_layers": tuned.unfrozen_layers,
                "trainable_parameters": tuned.trainable_params,
                "steps": config.train.fine_tune_steps,
                "seconds": tuned.seconds,
                "head_test_accuracy": head_results.test_accuracy,
                "bypasses_cache": True,
                "note": tuned.note,
            }
            results = replace(results, fine_tune=fine_tune)
        results = replace(results, accuracy_warnings=datasets.duplicate_warnings(data.duplicates))
    emit(progress, "save", 0, 1, "Saving the classifier")
    save = functools.partial(
        _save_and_finish, config, prepared, store, run_id, phases, head, tuned, history, results
    )
    if background_save:
        _PENDING_SAVES.append(_saver().submit(save))
    else:
        save()
        emit(progress, "save", 1, 1, f"Run {run_id} finished", run_id=run_id)
    return RunSummary(
        run_id=run_id,
        test_accuracy=results.test_accuracy,
        phases=dict(phases.seconds),
        cache=feats.stats.as_dict(),
        warnings=list(data.warnings),
        skipped=[{"path": f.path, "reason": f.reason} for f in data.skipped],
        accuracy_warnings=list(results.accuracy_warnings),
    )


def _save_and_finish(config, prepared, store, run_id, phases, head, tuned, history, results) -> None:
    """Write the run folder and mark the run finished (or failed if writing fails)."""
    data, feats = prepared.data, prepared.feats
    folder = RunFolder(run_id, store)
    try:
        with phases("save"):
            _save_artifacts(folder, config, data, head, tuned)
        results = replace(
            results,
            dataset=data.summary(),
            cache=feats.stats.as_dict(),
            phases=dict(phases.seconds),
            num_classes=len(data.classes),
            class_names=list(data.classes),
            # scan and extraction done once for several runs (an experiment)
            shared_phases={k: v for k, v in prepared.phases.items() if k not in phases.seconds},
        )
        stored = results.as_dict()
        folder.write_metrics(history, stored)
        folder.write_environment(store.get_run(run_id).environment)
    except Exception as exc:
        store.finish_run(run_id, {"phases": phases.seconds}, status="failed", error=f"Saving failed: {exc}")
        raise
    store.finish_run(run_id, stored, status="finished")


@functools.lru_cache(maxsize=1)
def _saver() -> concurrent.futures.ThreadPoolExecutor:
    # One thread: saves stay in order and never build two Keras models at once.
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="run-save")


_PENDING_SAVES: list[concurrent.futures.Future] = []


def wait_for_saves() -> None:
    """Block until every background save has finished; re-raise the first failure."""
    pending, _PENDING_SAVES[:] = list(_PENDING_SAVES), []
    errors = [f.exception() for f in pending]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


class _MetricsBuffer:
    """Collects history rows and writes them in batches: one SQLite commit per row cost ~20% of a
    4000-step head, while pages poll every 1-2 s, so a write every half second loses nothing."""

    def __init__(
        self, store, run_id: str, every: float = METRICS_FLUSH_SECONDS, phase: str = "train"
    ) -> None:
        self.store, self.run_id, self.every, self.phase = store, run_id, every, phase
        self.rows: list[dict] = []
        self.last = float("-inf")  # the first row goes out at once: it is the first curve point a page shows

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if time.perf_counter() - self.last >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.store.log_metrics(self.run_id, self.rows, phase=self.phase)
            self.rows = []
        self.last = time.perf_counter()

    def __enter__(self) -> _MetricsBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()  # also on cancel or failure: the curves up to that point stay visible


def _model_probabilities(model, records, architecture: str, num_classes: int) -> np.ndarray:
    """Class probabilities of a whole classifier (a fine-tuned one) on image files."""
    if not records:
        return np.zeros((0, num_classes), np.float32)
    size = backbones.get_backbone(architecture).input_size
    batches = decode_dataset([r.path for r in records], [r.needs_pil for r in records], size)
    return np.concatenate([np.asarray(model(batch, training=False)) for batch in batches])


@functools.lru_cache(maxsize=1)
def _feature_model(architecture: str, weights: str, seed: int):
    # Built once per process: the heads of an experiment (or repeated runs in a worker) share the
    # frozen backbone, and rebuilding it cost more than saving the model. Never fine-tuned in place.
    return backbones.build_feature_extractor(architecture, weights=weights, seed=seed)


def build_classifier_base(architecture: str, weights: str, seed: int = 0):
    """Build (once per process) the frozen backbone `build_classifier` puts under a head; a warm job
    worker calls this before its first job (engine.jobs.worker)."""
    return _feature_model(architecture, weights, seed)


def build_classifier(architecture: str, weights: str, kernel, bias, seed: int = 0):
    """The deployable classifier: 0..255 pixels -> preprocessing -> backbone -> softmax head."""
    return assemble_classifier(_feature_model(architecture, weights, seed), kernel, bias, architecture)


def _save_artifacts(folder: RunFolder, config, data, head, tuned) -> None:
    """The model, its class names and the config; metrics and environment follow once complete."""
    model = (
        tuned.model
        if tuned is not None
        else build_classifier(
            config.architecture, config.weights, head.kernel, head.bias, seed=config.train.seed
        )
    )
    folder.write_labels(data.classes)  # first: a bad class name fails before the slow model save
    folder.write_config(asdict(config))
    folder.save_model(model)


def run_job(params: dict[str, Any], progress=None, cancel=None, store=None) -> dict[str, Any]:
    """Job entry point (kind "retrain"): params are `asdict(RunConfig)`."""
    return retrain(RunConfig.from_dict(params), store=store, progress=progress, cancel=cancel).as_dict()

"""Several classifiers side by side on the same photos: a lab run in any format, a .tflite file, ImageNet.

A `ModelChoice` names a model (JSON-able, so jobs and pages can pass it around); `load_choice` turns it
into an `engine.export.predict.Classifier`; `side_by_side` runs the photos through every classifier and
returns a `Lineup` (top-k, latency, agreement per photo and, for runs, the "none of these" check of
engine.export.familiar). A .tflite file from outside the lab is untrusted: its size, its TFLite magic
and its labels file are checked, and its label count must equal its output size.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InvalidArgument, LabError, NotFound
from engine.export import runtimes
from engine.export.predict import Classifier, Prediction
from engine.progress import CancelFn, ProgressFn, check_cancel, emit

KINDS = ("run", "tflite", "imagenet")
TFLITE_MAGIC = b"TFL3"  # FlatBuffer file identifier, bytes 4..8 of every TFLite model
MAX_TFLITE_BYTES = 512 * 1024 * 1024  # larger than any classifier a student brings
MAX_LABEL_BYTES = 2 * 1024 * 1024
MAX_LABEL_LINES = 10_000
MAX_TITLE = 200


@dataclass(frozen=True)
class ModelChoice:
    """One model of a side-by-side lineup, named so it can be stored in job params and reloaded."""

    kind: str  # "run" | "tflite" | "imagenet"
    ref: str  # run id | path of a .tflite file | backbone registry name
    fmt: str = "keras"  # for kind "run": a format of engine.export.runtimes.FORMATS
    labels: str | None = None  # for kind "tflite": path of its labels file (one name per line)
    title: str = ""  # what tables and charts call it, e.g. "flowers lr=0.01 (tflite-int8)"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgument(
                f"a model choice's kind must be one of {', '.join(KINDS)}, got kind={self.kind!r}"
            )
        if not isinstance(self.ref, str) or not self.ref or len(self.ref) > 4096:
            raise InvalidArgument(
                f"a model choice needs a reference (run id, file or backbone), got ref={self.ref!r}"
            )
        runtimes.check_format(self.fmt)
        if self.kind != "run" and self.fmt != "keras":
            raise InvalidArgument(f"only a run has formats, got kind={self.kind!r} with fmt={self.fmt!r}")
        if self.kind == "tflite" and not isinstance(self.labels, str):
            raise InvalidArgument(f"a .tflite choice needs its labels file, got labels={self.labels!r}")
        if not isinstance(self.title, str) or len(self.title) > MAX_TITLE or _has_control(self.title):
            raise InvalidArgument(f"a model title is one printable line of at most {MAX_TITLE} characters")

    @property
    def key(self) -> str:
        """A stable unique id: "run:ab12cd:tflite-int8", "tflite:/x/m.tflite", "imagenet:NAME"."""
        return f"run:{self.ref}:{self.fmt}" if self.kind == "run" else f"{self.kind}:{self.ref}"

    @property
    def name(self) -> str:
        """The title, or the key when no title was given."""
        return self.title or self.key

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelChoice:
        """A choice from JSON (job params, a page's state): unknown keys and wrong types are refused."""
        if not isinstance(data, dict):
            raise InvalidArgument(f"a model choice must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"kind", "ref", "fmt", "labels", "title"}
        if unknown:
            raise InvalidArgument(f"a model choice has unknown keys: {', '.join(sorted(map(str, unknown)))}")
        return cls(
            kind=data.get("kind"),
            ref=data.get("ref"),
            fmt=data.get("fmt", "keras"),
            labels=data.get("labels"),
            title=data.get("title", "") or "",
        )


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") for ch in text)


def _open_store(store):
    if store is not None:
        return store
    from engine.runs.store import RunStore

    return RunStore()


# -- choices -----------------------------------------------------------------------------------------
def _run_title(run, fmt: str) -> str:
    name = " ".join(str(run.name or run.id).split())[:120]
    who = f" by {' '.join(str(run.author).split())[:40]}" if run.imported and run.author else ""
    text = f"{name}{who} ({fmt})"
    return "".join(ch for ch in text if not _has_control(ch))


def run_choice(run_id: str, fmt: str = "keras", store=None) -> ModelChoice:
    """A run in one format; raises NotFound for an unknown run, InvalidArgument for a bad format."""
    runtimes.check_format(fmt)
    run = _open_store(store).get_run(run_id)
    return ModelChoice("run", run.id, fmt, title=_run_title(run, fmt))


def parse_run_choice(text: str, store=None) -> ModelChoice:
    """ "RUN_ID" or "RUN_ID:FORMAT" (the CLI's --run) -> a choice.

    Raises:
        InvalidArgument: empty, or an unknown format.  NotFound: no such run.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument(f"--run needs RUN_ID or RUN_ID:FORMAT, got {text!r}")
    run_id, _, fmt = text.strip().partition(":")
    if not run_id:
        raise InvalidArgument(f"--run needs RUN_ID or RUN_ID:FORMAT, got {text!r}")
    return run_choice(run_id, fmt or "keras", store)


def _regular_file(path: Path, what: str, max_bytes: int) -> int:
    """The size of a regular file, or a LabError naming it (missing, special file, empty, too big)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise NotFound(f"No {what} at {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{path} is not a regular file; refusing to read it as a {what}")
    if st.st_size == 0:
        raise InvalidArgument(f"{path} is empty (0 bytes), not a {what}")
    if st.st_size > max_bytes:
        raise InvalidArgument(f"{path} is {st.st_size:,} bytes; a {what} may be at most {max_bytes:,} bytes")
    return st.st_size


def check_tflite_file(path: str | Path) -> Path:
    """A regular, non-empty file of at most MAX_TFLITE_BYTES carrying the TFLite magic at bytes 4..8."""
    path = Path(path)
    _regular_file(path, "TFLite model", MAX_TFLITE_BYTES)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] != TFLITE_MAGIC:
        raise InvalidArgument(
            f"{path} is not a TFLite model: bytes 4..8 are {head[4:8]!r}, a .tflite file has {TFLITE_MAGIC!r}"
        )
    return path


def read_labels(path: str | Path) -> list[str]:
    """The class names of a labels file: UTF-8, one per line, no control characters, <= 10,000 lines.

    A trailing empty line is ignored; an empty line inside the list is refused (it would shift every
    later name by one).
    """
    path = Path(path)
    _regular_file(path, "labels file", MAX_LABEL_BYTES)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"{path} is not UTF-8 text (byte {exc.start}); a labels file is one name per line"
        ) from None
    lines = text.removeprefix("\ufeff").split("\n")
    lines = [line.removesuffix("\r") for line in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InvalidArgument(f"{path} names no classes")
    if len(lines) > MAX_LABEL_LINES:
        raise InvalidArgument(
            f"{path} has {len(lines):,} lines; a labels file may have at most {MAX_LABEL_LINES:,}"
        )
    for n, line in enumerate(lines, 1):
        if _has_control(line):
            raise InvalidArgument(f"{path} line {n} holds a control character; labels must be plain text")
        if not line.strip():
            raise InvalidArgument(f"{path} line {n} is empty; every line must name one class")
    return [line.strip() for line in lines]


class ExternalTFLiteRuntime(runtimes.TFLiteRuntime):
    """A .tflite classifier from outside the lab, fed 0..255 pixels the way its input quantization implies.

    Integer inputs (Coral/Edge TPU style: uint8 with scale 1/128 and zero point 128, i.e. [-1, 1]) take
    the pixel values themselves as the quantized values, which is how such models were trained to be
    fed; int8 inputs take pixel - 128. Float inputs take 0..255 floats, as the lab's own exports do.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, fmt="tflite")
        self.input_dtype = np.dtype(self._input["dtype"])

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels, dtype=np.float32)
        self._resize(len(pixels))
        if self.input_dtype.kind == "f":
            feed = pixels.astype(self.input_dtype)
        else:
            info = np.iinfo(self.input_dtype)
            shift = 128 if info.min < 0 else 0
            feed = np.clip(np.round(pixels) - shift, info.min, info.max).astype(self.input_dtype)
        self.interpreter.set_tensor(self._input["index"], feed)
        self.interpreter.invoke()
        return runtimes.dequantize(self.interpreter.get_tensor(self._output["index"]), self._output)


def _tflite_shapes(path: Path) -> tuple[list[int], list[int], str]:
    """(input shape, output shape, input dtype) of a TFLite model; LabError when LiteRT cannot load it."""
    try:
        interpreter_cls, _, _ = runtimes._interpreter_class()
        it = interpreter_cls(model_path=str(path))
        inp, out = it.get_input_details(), it.get_output_details()
    except Exception as exc:  # a damaged FlatBuffer: one line, not a traceback
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LabError(f"{path} cannot be loaded by LiteRT ({reason[:200]})") from None
    if len(inp) != 1 or len(out) != 1:
        raise InvalidArgument(
            f"{path} has {len(inp)} inputs and {len(out)} outputs; "
            "a classifier has one image in, one score list out"
        )
    return (
        [int(d) for d in inp[0]["shape"]],
        [int(d) for d in out[0]["shape"]],
        np.dtype(inp[0]["dtype"]).name,
    )


def _check_tflite_classifier(path: Path, labels: list[str], labels_path: Path) -> int:
    """The model's square input side, after checking its shapes and that its labels fit its outputs."""
    shape_in, shape_out, dtype = _tflite_shapes(path)
    if len(shape_in) != 4 or shape_in[3] != 3 or shape_in[1] != shape_in[2] or shape_in[1] < 8:
        raise InvalidArgument(
            f"{path} takes input of shape {shape_in}; a classifier here takes square RGB images"
        )
    if dtype not in ("float32", "uint8", "int8"):
        raise InvalidArgument(f"{path} takes {dtype} input; float32, uint8 or int8 images are supported")
    if len(shape_out) != 2:
        raise InvalidArgument(
            f"{path} outputs shape {shape_out}, not one score per class "
            "(an embedding extractor is not a classifier)"
        )
    if shape_out[1] != len(labels):
        raise InvalidArgument(
            f"{labels_path} has {len(labels)} labels but {path.name} outputs {shape_out[1]} scores: "
            "they do not belong together (one label per output, in output order)"
        )
    return shape_in[1]


def tflite_choice(path: str | Path, labels_path: str | Path, title: str = "") -> ModelChoice:
    """A .tflite classifier with its labels file, validated (magic, size, labels text, labels = outputs).

    Raises:
        NotFound: a file is missing.  InvalidArgument / LabError: the reason, naming the file.
    """
    path, labels_path = Path(path), Path(labels_path)
    check_tflite_file(path)
    _check_tflite_classifier(path, read_labels(labels_path), labels_path)
    name = title or f"{path.stem} (tflite)"
    return ModelChoice("tflite", str(path.resolve()), labels=str(labels_path.resolve()), title=_clean(name))


def _clean(text: str) -> str:
    return "".join(ch for ch in text if not _has_control(ch))[:MAX_TITLE]


def imagenet_choice(backbone: str) -> ModelChoice:
    """A backbone's ImageNet 1,000-class classifier; raises NotFound naming the valid backbones."""
    from engine.models import backbones

    entry = backbones.get_backbone(backbone)
    return ModelChoice("imagenet", entry.name, title=f"{entry.name} (ImageNet)")


def available_choices(store=None) -> list[ModelChoice]:
    """Every model this lab can classify with now, without a download or a conversion.

    Finished runs (imported ones included) in keras and in every export format already present, then the
    ImageNet Keras models whose top weights and class names are cached.
    """
    from engine import config
    from engine.export import convert
    from engine.models import backbones

    store = _open_store(store)
    out: list[ModelChoice] = []
    for run in store.list_runs():
        if run.status != "finished":
            continue
        try:
            formats = [m["format"] for m in convert.list_exports(run.id, store)]
        except (LabError, OSError):  # no model, a changed model, damaged folder: not offered
            continue
        out.extend(ModelChoice("run", run.id, fmt, title=_run_title(run, fmt)) for fmt in formats)
    if (config.keras_models_dir() / "imagenet_class_index.json").is_file():
        for name in backbones.list_backbones():
            if backbones.weights_path(name, top=True).is_file():
                out.append(imagenet_choice(name))
    return out


def load_choice(
    choice: ModelChoice, store=None, progress: ProgressFn | None = None, cancel: CancelFn | None = None
) -> Classifier:
    """The classifier of a choice (a run's missing export is converted first); `classifier.choice` is set.

    Raises:
        NotFound, InvalidArgument, LabError: unknown run, bad file, missing weights, with the reason.
    """
    from engine.export.predict import pretrained_classifier

    check_cancel(cancel)
    emit(progress, "load", 0, 1, f"Loading {choice.name}")
    if choice.kind == "run":
        classifier = Classifier.from_run(choice.ref, store=store, fmt=choice.fmt)
    elif choice.kind == "tflite":
        path = check_tflite_file(choice.ref)
        labels_path = Path(choice.labels or "")
        labels = read_labels(labels_path)
        size = _check_tflite_classifier(path, labels, labels_path)
        classifier = Classifier(None, labels, size, choice.name, runtime=ExternalTFLiteRuntime(path))
    else:
        classifier = pretrained_classifier(choice.ref)
    classifier.choice = choice
    emit(progress, "load", 1, 1, f"Loaded {choice.name}")
    return classifier


# -- the lineup ------------------------------------------------------------------------------------
def same_label(label: str | None) -> str | None:
    """A label as compared across models: case-insensitive, "_" the same as " "."""
    return None if label is None else " ".join(label.replace("_", " ").lower().split())


@dataclass
class Lineup:
    """Every photo through every model: predictions[photo index][model index]."""

    photos: list[str]
    models: list[str]  # titles, in the order the classifiers were given
    predictions: list[list[Prediction]]
    keys: list[str] = field(default_factory=list)  # ModelChoice.key of each model ("" for a bare Classifier)

    def agreement(self, photo_index: int) -> float:
        """Share of the models (with an answer) whose top-1 equals the most common top-1."""
        tops = [same_label(p.top1) for p in self.predictions[photo_index] if not p.error and p.top1]
        if not tops:
            return 0.0
        return Counter(tops).most_common(1)[0][1] / len(tops)

    def disagreements(self) -> list[int]:
        """Indexes of the photos on which not all models (with an answer) name the same top-1."""
        return [i for i in range(len(self.photos)) if self.agreement(i) < 1.0]

    def entries(self) -> list[dict[str, Any]]:
        """One dict per photo per model: source, model, labels, scores, latency_ms, [error], [familiar]."""
        out = []
        for row in self.predictions:
            for m, pred in enumerate(row):
                entry = {"model": self.models[m], **pred.as_dict()}
                if self.keys and self.keys[m]:
                    entry["model_key"] = self.keys[m]
                if "familiar" in pred.extra:
                    entry["familiar"] = pred.extra["familiar"]
                out.append(entry)
        return out


def _title(classifier: Classifier) -> str:
    choice = getattr(classifier, "choice", None)
    return choice.name if choice is not None else classifier.name


def _run_id(classifier: Classifier) -> str | None:
    choice = getattr(classifier, "choice", None)
    if choice is not None:
        return choice.ref if choice.kind == "run" else None
    return getattr(classifier, "run_id", None)


def side_by_side(
    classifiers: list[Classifier],
    items: list[Any],
    top_k: int = 5,
    familiar: bool = True,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    store=None,
) -> Lineup:
    """Classify each photo (path, bytes or uploaded file) with each classifier, one photo at a time.

    With `familiar`, each prediction of a run's model carries extra["familiar"] (engine.export.familiar):
    how far the photo's bottleneck lies from the run's training photos, and whether that is unlike them.
    Unreadable photos get a Prediction with `error` set for every model. Cancellable between photos.
    """
    if not classifiers:
        raise InvalidArgument("side by side needs at least one model")
    items = list(items)
    total = len(classifiers) * len(items)
    columns: list[list[Prediction]] = []
    for m, classifier in enumerate(classifiers):
        column = []
        for n, item in enumerate(items):
            check_cancel(cancel)
            column.extend(classifier.classify([item], top_k=top_k))
            done = m * len(items) + n + 1
            emit(progress, "classify", done, total, f"{_title(classifier)}: photo {n + 1} of {len(items)}")
        columns.append(column)
    if familiar:
        _add_familiarity(classifiers, items, columns, store, cancel)
    photos = [columns[0][n].source for n in range(len(items))]
    rows = [[columns[m][n] for m in range(len(classifiers))] for n in range(len(items))]
    keys = [getattr(getattr(c, "choice", None), "key", "") for c in classifiers]
    return Lineup(photos, [_title(c) for c in classifiers], rows, keys)


def _add_familiarity(classifiers, items, columns, store, cancel) -> None:
    """Fill extra["familiar"] for run models, judging each run once however many formats it appears in."""
    from engine.export import familiar

    judged: dict[str, list[dict[str, Any] | None]] = {}
    for classifier, column in zip(classifiers, columns, strict=True):
        run_id = _run_id(classifier)
        if run_id is None:
            continue
        if run_id not in judged:
            check_cancel(cancel)
            judged[run_id] = familiar.judge(run_id, items, store=store, cancel=cancel)
        for pred, verdict in zip(column, judged[run_id], strict=True):
            if verdict is not None and not pred.error:
                pred.extra["familiar"] = verdict

"""Classify a folder or a zip of photos: one row per photo, a CSV, and, for class subfolders, accuracy and a
confusion matrix.

A zip is unpacked with every check of engine.data.archives (names, links and special files, bombs, sizes
as declared and as written, the uploads quota) into a temporary folder under LAB_HOME that is removed when
the batch ends, whatever happens. A subfolder whose name matches one of the model's classes (case-insensitive,
"_" the same as " ") labels the photos in it; other subfolder names are reported, and their photos are
classified but never scored.
"""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine import config
from engine.data import archives, images
from engine.errors import InvalidArgument, NotFound
from engine.export.predict import expand_paths
from engine.progress import CancelFn, ProgressFn, check_cancel

CSV_NAME = "batch.csv"
THUMBS_DIR = "photos"  # thumbnails of a zip's photos, kept beside the job's log once the zip is gone
THUMB_SIDE = 160
MAX_THUMBS = 2000  # a zip of more photos keeps thumbnails of the first ones only
CSV_COLUMNS = ("path", "true_label", "predicted", "confidence", "correct", "error", "top_k")


def same_label(label: str | None) -> str | None:
    """A label as matched to a folder name: case-insensitive, "_" the same as " "."""
    return None if label is None else " ".join(label.replace("_", " ").lower().split())


@dataclass
class BatchResult:
    """A batch's rows, and for labelled photos its accuracy and confusion matrix."""

    rows: list[dict[str, Any]]  # path, true_label, predicted, confidence, correct, error, top_k (+ folder)
    labelled: bool  # some photos sat in a folder named after one of the model's classes
    accuracy: float | None  # share of labelled, readable photos whose top-1 is their folder's class
    classes: list[str]  # the model's class names: the confusion matrix's order
    confusion: list[list[int]]  # [true class][predicted class], labelled readable photos only
    unknown_folders: dict[str, int] = field(default_factory=dict)  # folder name -> photos, not scored
    model: str = ""  # the model's title
    source: str = ""  # the folder or zip as given

    @property
    def classified(self) -> int:
        """Photos that were read and classified (rows without an error)."""
        return sum(1 for r in self.rows if not r.get("error"))

    @property
    def scored(self) -> int:
        """Photos counted in the accuracy and the confusion matrix."""
        return sum(1 for r in self.rows if r.get("correct") is not None)

    def photos_in_cell(self, true_label: str, predicted: str) -> list[str]:
        """Paths of the scored photos of class `true_label` that the model called `predicted`."""
        return [
            r["path"]
            for r in self.rows
            if r.get("correct") is not None and r["true_label"] == true_label and r["predicted"] == predicted
        ]

    def to_csv(self) -> str:
        """One line per photo; top_k as "label score; label score"."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            line = {k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS}
            line["top_k"] = "; ".join(f"{label} {score:.4f}" for label, score in row.get("top_k") or [])
            writer.writerow({k: _csv_safe(v) for k, v in line.items()})
        return out.getvalue()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> BatchResult:
        """A result read back from a job's JSON; refuses what is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise InvalidArgument("a batch result must be a JSON object with a list of rows")
        classes = [str(c) for c in data.get("classes") or []]
        confusion = [[int(v) for v in row] for row in data.get("confusion") or []]
        if confusion and (len(confusion) != len(classes) or any(len(r) != len(classes) for r in confusion)):
            raise InvalidArgument(
                f"a batch result's confusion matrix must be {len(classes)} x {len(classes)}"
            )
        accuracy = data.get("accuracy")
        return cls(
            rows=[dict(r) for r in data["rows"] if isinstance(r, dict)],
            labelled=bool(data.get("labelled")),
            accuracy=None if accuracy is None else float(accuracy),
            classes=classes,
            confusion=confusion,
            unknown_folders={str(k): int(v) for k, v in (data.get("unknown_folders") or {}).items()},
            model=str(data.get("model") or ""),
            source=str(data.get("source") or ""),
        )


def _csv_safe(value: Any) -> Any:
    # a spreadsheet runs a cell that starts with = + - @ as a formula; file and class names are untrusted
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def classify_folder(
    classifier,
    path: str | Path,
    top_k: int = 3,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    thumbs_dir: Path | None = None,
) -> BatchResult:
    """Classify every photo of a folder or a .zip (recursively), scoring those in class-named subfolders.

    Args:
        classifier: an engine.export.predict.Classifier.
        path: a folder, or a .zip file (unpacked safely into a temporary folder under LAB_HOME, then
            removed).
        top_k, batch_size: as Classifier.predict_batch.
        thumbs_dir: where to keep small JPEGs of a zip's photos (rows get "thumbnail"), since the unpacked
            photos are deleted; None keeps none.

    Returns:
        A BatchResult; rows of a zip name the photo by its path inside the zip.

    Raises:
        NotFound: no such folder or file.  InvalidArgument: not a folder or a .zip, or nothing to classify.
        UnsafeArchive, DatasetError: a refused or broken zip.  Cancelled: between batches.
    """
    source = Path(path)
    if not source.exists():
        raise NotFound(f"No such folder or zip file: {archives.printable(str(source))}")
    with ExitStack() as stack:
        if source.is_dir():
            root, shown = source, source
        elif source.is_file() and source.suffix.lower() == ".zip":
            root = _unpack(source, stack, progress, cancel)
            shown = None  # rows name the photo by its path inside the zip
        else:
            raise InvalidArgument(
                f"{archives.printable(str(source))} is neither a folder nor a .zip file of photos"
            )
        root = _content_root(root)
        skipped: list[tuple[Path, str]] = []
        photos = expand_paths([root], skipped)
        photos = [p for p in photos if not any(part.startswith(".") for part in p.relative_to(root).parts)]
        if not photos:
            raise InvalidArgument(
                f"{archives.printable(str(source))} holds no photos "
                f"({', '.join(sorted(images.IMAGE_EXTENSIONS))})"
            )
        predictions = classifier.predict_batch(photos, top_k, batch_size, progress=progress, cancel=cancel)
        result = _score(classifier, root, photos, predictions, shown)
        if shown is None and thumbs_dir is not None:
            _keep_thumbnails(result, photos, Path(thumbs_dir), cancel)
    result.model = str(getattr(getattr(classifier, "choice", None), "name", "") or classifier.name)
    result.source = str(source)
    return result


def _unpack(zip_path: Path, stack: ExitStack, progress: ProgressFn | None, cancel: CancelFn | None) -> Path:
    """Unpack with the archive module's checks into a temporary folder removed when `stack` closes.

    archives.unpack_zip makes every check archives.extract_zip makes, without its install step: a batch is
    not a dataset to keep, and may hold loose photos rather than class folders.
    """
    label = archives.printable(zip_path.name)
    parent = config.cache_dir() / "batches"
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".batch-", dir=parent))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    archives.unpack_zip(zip_path, tmp, label, progress=progress, cancel=cancel)
    return tmp


def _content_root(root: Path) -> Path:
    """`root`, or the single folder a zip tool wrapped everything in (when it is not itself a class)."""
    for _ in range(2):
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
            inner = [p for p in entries[0].iterdir() if not p.name.startswith(".")]
            if any(p.is_dir() for p in inner):  # a wrapper of class folders, not a class of loose photos
                root = entries[0]
                continue
        break
    return root


def _score(classifier, root: Path, photos: list[Path], predictions, shown: Path | None) -> BatchResult:
    classes = list(classifier.class_names)
    by_name = {same_label(c): c for c in classes}
    index = {c: i for i, c in enumerate(classes)}
    confusion = [[0] * len(classes) for _ in classes]
    unknown: dict[str, int] = {}
    rows = []
    for photo, pred in zip(photos, predictions, strict=True):
        rel = photo.relative_to(root)
        folder = rel.parts[0] if len(rel.parts) > 1 else None
        true = by_name.get(same_label(folder)) if folder else None
        if folder and true is None:
            unknown[folder] = unknown.get(folder, 0) + 1
        row = {
            "path": str(photo) if shown is not None else rel.as_posix(),
            "true_label": true,
            "predicted": pred.top1,
            "confidence": pred.scores[0] if pred.scores else None,
            "correct": None,
            "error": pred.error,
            "top_k": [[label, score] for label, score in zip(pred.labels, pred.scores, strict=True)],
        }
        if folder and true is None:
            row["folder"] = folder
        if true is not None and not pred.error:
            row["correct"] = pred.top1 == true
            confusion[index[true]][index[pred.top1]] += 1
        rows.append(row)
    scored = [r for r in rows if r["correct"] is not None]
    accuracy = sum(r["correct"] for r in scored) / len(scored) if scored else None
    labelled = any(r["true_label"] is not None for r in rows)
    return BatchResult(rows, labelled, accuracy, classes, confusion, dict(sorted(unknown.items())))


def _keep_thumbnails(result: BatchResult, photos: list[Path], folder: Path, cancel: CancelFn | None) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for n, (row, photo) in enumerate(zip(result.rows[:MAX_THUMBS], photos, strict=False)):
        if row.get("error"):
            continue
        if n % 32 == 0:
            check_cancel(cancel)
        pixels, _ = images.decode_or_reason(photo, THUMB_SIDE)
        if pixels is None:
            continue
        target = folder / f"{n:05d}.jpg"
        Image.fromarray(pixels).save(target, "JPEG", quality=85)
        row["thumbnail"] = str(target)


def staging_dir() -> Path:
    """Where uploaded zips wait for their batch job (removed by the job when it ends)."""
    folder = config.cache_dir() / "batch-uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def stage_upload(data: bytes, name: str = "upload.zip") -> str:
    """Save an uploaded zip for a batch job; returns its path (pass it with "staged": True to the job).

    Raises:
        InvalidArgument: not a zip by name or magic bytes.  UnsafeArchive: larger than one archive may be.
    """
    label = archives.printable(str(name))
    if not str(name).lower().endswith(".zip"):
        raise InvalidArgument(f"{label} is not a .zip file")
    if len(data) > archives.MAX_TOTAL_BYTES:
        raise archives.UnsafeArchive(f"Refused archive {label}: larger than the limit for one archive")
    if not data.startswith(b"PK"):
        raise InvalidArgument(f"{label} is not a zip archive (it does not start with a zip header)")
    fd, path = tempfile.mkstemp(prefix="batch-", suffix=".zip", dir=staging_dir())
    with open(fd, "wb") as f:
        f.write(data)
    return path


def _remove_staged(path: str) -> None:
    """Delete a staged upload, and only that: never a path outside the staging folder."""
    target = Path(path)
    if target.parent.resolve() == staging_dir().resolve() and target.is_file() and not target.is_symlink():
        target.unlink(missing_ok=True)


def run_job(params: dict[str, Any], progress=None, cancel=None, store=None) -> dict[str, Any]:
    """Job entry point (kind "classify_batch"): params {"choice": ModelChoice.as_dict(), "path": str,
    "top_k": int (default 3), "staged": bool (the path is an upload from `stage_upload`, deleted at the end)}.

    The result is BatchResult.as_dict() plus "csv": the path of the CSV written next to the job's log.
    """
    from engine.export.lineup import ModelChoice, load_choice

    if not isinstance(params, dict) or not isinstance(params.get("path"), str) or not params["path"]:
        raise InvalidArgument(f"classify_batch needs a folder or zip path, got params={params!r}")
    job_id = getattr(progress, "job_id", None)  # the worker's progress reporter knows its job
    folder = None
    if job_id:
        from engine.jobs.queue import job_dir

        folder = job_dir(job_id, store)
    try:
        classifier = load_choice(
            ModelChoice.from_dict(params.get("choice")), store=store, progress=progress, cancel=cancel
        )
        result = classify_folder(
            classifier,
            params["path"],
            top_k=params.get("top_k", 3),
            progress=progress,
            cancel=cancel,
            thumbs_dir=folder / THUMBS_DIR if folder else None,
        )
    finally:
        if params.get("staged"):
            _remove_staged(params["path"])
    out = result.as_dict()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CSV_NAME).write_text(result.to_csv(), encoding="utf-8")
        out["csv"] = str(folder / CSV_NAME)
    return out

"""Image datasets: a folder of class subfolders, validated, counted and split stably.

The train/validation/test split hashes each file's base name exactly as TensorFlow's retrain.py
(`create_image_lists`) does, so an image keeps its split across runs, folders and machines.
Sources (flower_photos, beans, the demo set, uploaded zips) live in engine/sources.py and
engine/archives.py and all end up as such a folder; they are re-exported here.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import config
from engine.data.archives import extract_zip
from engine.data.images import (
    IMAGE_EXTENSIONS,
    content_hash,
    load_image,
    name_problem,
    printable,
    probe_image,
    strip_name,
)
from engine.data.sources import download_beans, download_flowers, make_demo_dataset
from engine.errors import BadImage, DatasetError, InvalidArgument, NotFound
from engine.progress import CancelFn, ProgressFn, check_cancel, emit

__all__ = [
    "SPLITS",
    "Dataset",
    "DuplicateGroup",
    "ImageRecord",
    "SkippedFile",
    "assign_split",
    "check_percentages",
    "dataset_fingerprint",
    "download_beans",
    "download_flowers",
    "extract_zip",
    "find_duplicates",
    "make_demo_dataset",
    "resolve_source",
    "scan_image_dir",
]

SPLITS = ("train", "validation", "test")
MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1  # retrain.py's constant; part of the hash, so never change it
MIN_IMAGES_PER_CLASS = 20  # retrain.py warned below this
IMBALANCE_RATIO = 5  # largest class / smallest class above which results mostly reflect the big class
NAMED_SOURCES = ("flowers", "beans", "demo")
# A scan lists at most this many entries (files and folders) and spends at most this long listing:
# a dataset folder holds thousands of images, a mistyped "/" holds hundreds of thousands of files,
# and the Data page scans inside its script run.
MAX_SCAN_ENTRIES = 100_000
SCAN_LIST_SECONDS = 20.0


@dataclass(frozen=True)
class ImageRecord:
    """One usable image of a dataset."""

    path: str
    label: str  # the class folder's name
    split: str  # "train", "validation" or "test"
    needs_pil: bool  # True when TensorFlow's decoders would get it wrong (see images.probe_image)
    sha256: str = ""  # the file's content hash (images.content_hash); "" when not computed


@dataclass(frozen=True)
class DuplicateGroup:
    """Byte-identical files of a dataset: the same image counted more than once."""

    sha256: str
    records: tuple[ImageRecord, ...]  # in path order

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.records}, key=SPLITS.index)

    @property
    def labels(self) -> list[str]:
        return sorted({r.label for r in self.records})

    @property
    def crosses_splits(self) -> bool:
        """A copy of a training image is evaluated: validation/test accuracy is inflated."""
        return "train" in self.splits and len(self.splits) > 1

    @property
    def crosses_classes(self) -> bool:
        """The same image carries two labels: at most one can be right."""
        return len(self.labels) > 1


@dataclass(frozen=True)
class SkippedFile:
    """A file in a class folder that is not used, and why."""

    path: str  # printable: undecodable bytes as \\xNN, control characters escaped (images.printable)
    reason: str


@dataclass(frozen=True)
class Dataset:
    """A scanned folder of class subfolders with its stable split."""

    name: str
    root: str
    classes: list[str]  # sorted class names; index = label id
    records: list[ImageRecord]
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    validation_percentage: float = 10
    testing_percentage: float = 10
    duplicates: list[DuplicateGroup] = field(default_factory=list)  # see find_duplicates

    def split(self, name: str) -> list[ImageRecord]:
        """The records of one split, in path order."""
        if name not in SPLITS:
            raise InvalidArgument(f"split must be one of {SPLITS}, got split={name!r}")
        return [r for r in self.records if r.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class and split: {label: {"train": n, "validation": n, "test": n}}."""
        table = {label: dict.fromkeys(SPLITS, 0) for label in self.classes}
        for record in self.records:
            table[record.label][record.split] += 1
        return table

    @property
    def label_index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.classes)}

    def summary(self) -> dict[str, Any]:
        """A JSON-able description: counts, totals, warnings and skipped files."""
        counts = self.counts()
        return {
            "name": self.name,
            "root": self.root,
            "classes": list(self.classes),
            "num_classes": len(self.classes),
            "num_images": len(self.records),
            "splits": {s: sum(c[s] for c in counts.values()) for s in SPLITS},
            "counts": counts,
            "validation_percentage": self.validation_percentage,
            "testing_percentage": self.testing_percentage,
            "needs_pil": sum(r.needs_pil for r in self.records),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "warnings": list(self.warnings),
            "duplicates": [
                {
                    "sha256": g.sha256,
                    "files": [{"path": r.path, "label": r.label, "split": r.split} for r in g.records],
                }
                for g in self.duplicates
            ],
            "fingerprint": dataset_fingerprint(self),
        }


def dataset_fingerprint(data: Dataset) -> dict[str, Any]:
    """What identifies a dataset and its split wherever it is stored (paths and folder names left out).

    Two runs are comparable when their `split_hash` is equal: the same image bytes under the same
    class names in the same splits. `content_hash` ignores the split (same images, other percentages).

    Returns:
        {"classes", "counts" ({label: {split: n}}), "num_images", "validation_percentage",
        "testing_percentage", "content_hash", "split_hash"}; hashes are sha256 hex over sorted lines of
        `label<TAB>file sha256` (content) and `label<TAB>split<TAB>file sha256` (split). A record whose
        hash was not computed counts by its base name instead.
    """
    content, split = hashlib.sha256(), hashlib.sha256()
    keyed = sorted((r.label, r.split, r.sha256 or "name:" + Path(r.path).name) for r in data.records)
    for label, digest in sorted((label, digest) for label, _, digest in keyed):
        content.update(f"{label}\t{digest}\n".encode("utf-8", "surrogateescape"))
    for label, part, digest in keyed:
        split.update(f"{label}\t{part}\t{digest}\n".encode("utf-8", "surrogateescape"))
    return {
        "classes": list(data.classes),
        "counts": data.counts(),
        "num_images": len(data.records),
        "validation_percentage": data.validation_percentage,
        "testing_percentage": data.testing_percentage,
        "content_hash": content.hexdigest(),
        "split_hash": split.hexdigest(),
    }


def check_percentages(validation_percentage: float, testing_percentage: float) -> tuple[float, float]:
    """Validate split percentages: each in [0, 100), together leaving some images to train on."""
    for key, value in (
        ("validation_percentage", validation_percentage),
        ("testing_percentage", testing_percentage),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 100:
            raise InvalidArgument(f"{key} must be a number from 0 to under 100, got {key}={value!r}")
    if validation_percentage + testing_percentage >= 100:
        raise InvalidArgument(
            "validation_percentage + testing_percentage must be under 100 to leave training images, "
            f"got validation_percentage={validation_percentage!r}, testing_percentage={testing_percentage!r}"
        )
    return validation_percentage, testing_percentage


def assign_split(file_name: str, validation_percentage: float = 10, testing_percentage: float = 10) -> str:
    """The split of a file, from its base name alone, exactly as retrain.py computes it.

    Anything after '_nohash_' is ignored, so 'bob_nohash_1.jpg' and 'bob_nohash_2.jpg' (the same
    subject) stay together. Unlike retrain.py, which hashed the path as given, only the base name
    is hashed, so the split does not depend on where the folder lives.
    """
    check_percentages(validation_percentage, testing_percentage)
    base = re.split(r"[\\/]", str(file_name))[-1]
    hash_name = re.sub(r"_nohash_.*$", "", base)
    hashed = hashlib.sha1(hash_name.encode("utf-8")).hexdigest()
    percentage_hash = (int(hashed, 16) % (MAX_NUM_IMAGES_PER_CLASS + 1)) * (100.0 / MAX_NUM_IMAGES_PER_CLASS)
    if percentage_hash < validation_percentage:
        return "validation"
    if percentage_hash < validation_percentage + testing_percentage:
        return "test"
    return "train"


class _Lister:
    """Lists folders under a bound: at most `max_entries` entries, at most `seconds` of listing."""

    def __init__(self, root: Path, max_entries: int, seconds: float) -> None:
        self.root, self.max_entries, self.seconds = root, max_entries, seconds
        self.count, self.deadline = 0, time.monotonic() + seconds

    def take(self, n: int) -> None:
        self.count += n
        if self.count > self.max_entries:
            raise DatasetError(
                f"{printable(str(self.root))} holds more than {self.max_entries:,} files and folders; "
                "stopped listing it: choose the folder of class subfolders itself, not a folder above it"
            )
        if time.monotonic() > self.deadline:
            raise DatasetError(
                f"Listing {printable(str(self.root))} took over {self.seconds:g} s (stopped after "
                f"{self.count:,} entries): choose the folder of class subfolders itself, on a local disk"
            )

    def entries(self, folder: Path) -> list[Path]:
        children = []
        for child in folder.iterdir():  # counted one by one: a folder may hold a million files
            self.take(1)
            children.append(child)
        return sorted(children)

    def files(self, folder: Path) -> list[Path]:
        """Every file under a class folder (nested folders included), in a stable order."""
        files = []
        for dirpath, dirnames, filenames in os.walk(folder):
            self.take(len(dirnames) + len(filenames))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
            files.extend(Path(dirpath) / f for f in sorted(filenames))
        return files


def _skip(path: Path, reason: str) -> SkippedFile:
    return SkippedFile(printable(str(path)), reason)


def _check_file(path: Path, relative: str) -> tuple[bool, str, str]:
    """(needs_pil, sha256, "") for a usable image, else (False, "", the reason it is skipped)."""
    if path.name.startswith("."):
        return False, "", "hidden file"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return False, "", f"not an image file (extension '{printable(path.suffix) or 'none'}')"
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return False, "", f"'{printable(relative)}' is not valid UTF-8; rename it"
    try:
        info = probe_image(path)
        if not info.complete:
            load_image(path)  # the header looked fine but the end is missing: decode to decide
        digest = content_hash(path)
    except BadImage as exc:
        return False, "", strip_name(str(exc), path)
    except OSError as exc:
        return False, "", f"cannot read file ({exc.strerror or exc})"
    return info.needs_pil, digest, ""


def find_duplicates(records: list[ImageRecord]) -> list[DuplicateGroup]:
    """Groups of byte-identical records (by `sha256`), largest first; records without a hash are ignored."""
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        if record.sha256:
            by_hash[record.sha256].append(record)
    groups = [
        DuplicateGroup(h, tuple(sorted(rs, key=lambda r: r.path))) for h, rs in by_hash.items() if len(rs) > 1
    ]
    return sorted(groups, key=lambda g: (-len(g.records), g.records[0].path))


def _example(group: DuplicateGroup) -> str:
    return " = ".join(f"{r.label}/{Path(r.path).name} ({r.split})" for r in group.records[:3])


def duplicate_warnings(groups: list[DuplicateGroup]) -> list[str]:
    """What duplicates do to the accuracy, in words, with an example of each kind."""
    notes = []
    leaked = [g for g in groups if g.crosses_splits]
    if leaked:
        copies = sum(sum(r.split != "train" for r in g.records) for g in leaked)
        notes.append(
            f"{copies} validation/test image{'s are' if copies != 1 else ' is'} byte-identical to training "
            f"images (e.g. {_example(leaked[0])}): the model is scored on photos it has seen, so validation "
            "and test accuracy overstate how well it does on new photos; remove the copies"
        )
    confused = [g for g in groups if g.crosses_classes]
    if confused:
        notes.append(
            f"{len(confused)} image{'s appear' if len(confused) != 1 else ' appears'} in more than one class "
            f"(e.g. {_example(confused[0])}): at most one of the labels can be right, so accuracy is capped "
            "and training learns from contradictions; keep each image in one class"
        )
    rest = [g for g in groups if not g.crosses_splits and not g.crosses_classes]
    if rest:
        notes.append(
            f"{len(rest)} image{'s are' if len(rest) != 1 else ' is'} stored more than once in one class, "
            f"never both in training and in validation/test (e.g. {_example(rest[0])}): they only count "
            "more than once"
        )
    return notes


def _warnings(per_class: dict[str, int], records: list[ImageRecord]) -> list[str]:
    notes = []
    for label, n in per_class.items():
        if n < MIN_IMAGES_PER_CLASS:
            notes.append(
                f"Class {label!r} has only {n} image{'s' * (n != 1)} (fewer than {MIN_IMAGES_PER_CLASS}); "
                "its accuracy will be noisy"
            )
    big, small = max(per_class, key=per_class.get), min(per_class, key=per_class.get)
    if per_class[big] > IMBALANCE_RATIO * per_class[small]:
        notes.append(
            f"Classes are strongly imbalanced: {big!r} has {per_class[big]} images, {small!r} only "
            f"{per_class[small]}; overall accuracy will mostly reflect the large classes"
        )
    for split in ("validation", "test"):
        if not any(r.split == split for r in records):
            notes.append(f"No image fell into the {split} split; use more images or a larger percentage")
    return notes


def scan_image_dir(
    path: str | Path,
    validation_percentage: float = 10,
    testing_percentage: float = 10,
    name: str | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    max_entries: int = MAX_SCAN_ENTRIES,
    list_seconds: float = SCAN_LIST_SECONDS,
) -> Dataset:
    """Scan a folder of class subfolders (one per class) into a `Dataset`.

    Headers and cheap structural checks decide which files are usable (see images.probe_image);
    each usable file is hashed to find duplicates. Files that are hidden, not images, unreadable,
    special (FIFOs, devices) or named in undecodable bytes are listed in `skipped` with a reason;
    class folders whose names hold control characters or undecodable bytes are skipped with a
    warning (such a name would shift every label of `labels.txt`); classes left without images are
    dropped with a warning; duplicate files are grouped in `duplicates` with a warning on what
    they do to the accuracy.

    Args:
        max_entries, list_seconds: bounds of the folder listing (a mistyped "/" must not be walked).

    Raises:
        InvalidArgument: bad percentages. NotFound: `path` does not exist.
        DatasetError: no class folders, no usable images, fewer than 2 classes with images, a
            folder path that is not valid UTF-8, or a listing over its bounds.
    """
    check_percentages(validation_percentage, testing_percentage)
    root = Path(path).expanduser().absolute()
    if not root.exists():
        raise NotFound(f"Image folder {printable(str(root))} does not exist")
    if not root.is_dir():
        raise DatasetError(
            f"{printable(str(root))} is not a folder: expected a folder with one subfolder per class"
        )
    try:
        str(root).encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError(f"Folder path {printable(str(root))} is not valid UTF-8: rename it") from None
    lister = _Lister(root, max_entries, list_seconds)
    top = lister.entries(root)
    skipped = [
        _skip(p, "image outside any class folder")
        for p in top
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    candidates = [p for p in top if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
    if not candidates:
        raise DatasetError(
            f"{printable(str(root))} has no class subfolders: expected one folder of images per class"
        )
    class_dirs, warnings = [], []
    for folder in candidates:
        problem = name_problem(folder.name)
        if problem:
            skipped.append(_skip(folder, f"class folder skipped: {problem}"))
            warnings.append(f"Skipped class folder '{printable(folder.name)}': its {problem}")
        else:
            class_dirs.append(folder)
    listing = [(d.name, f) for d in class_dirs for f in lister.files(d)]
    records, per_class = [], dict.fromkeys((d.name for d in class_dirs), 0)
    for i, (label, file) in enumerate(listing):
        if i % 100 == 0:
            check_cancel(cancel)
            emit(progress, "scan", i, len(listing), f"Scanning {root.name}: {i}/{len(listing)} files")
        needs_pil, digest, reason = _check_file(file, str(file.relative_to(root)))
        if reason:
            skipped.append(_skip(file, reason))
            continue
        split = assign_split(file.name, validation_percentage, testing_percentage)
        records.append(ImageRecord(str(file), label, split, needs_pil, digest))
        per_class[label] += 1
    emit(progress, "scan", len(listing), len(listing), f"Scanned {len(records)} images")
    empty = [label for label, n in per_class.items() if n == 0]
    usable = {label: n for label, n in per_class.items() if n > 0}
    if not usable:
        raise DatasetError(
            f"No usable images in {printable(str(root))}: every class folder is empty or unreadable "
            f"({', '.join(empty) or 'no usable class folders'})"
        )
    if len(usable) < 2:
        detail = f"; without images: {', '.join(empty)}" if empty else ""
        raise DatasetError(
            f"Need at least 2 classes with images to train a classifier, found {len(usable)} "
            f"({', '.join(usable)}) in {printable(str(root))}{detail}"
        )
    if empty:
        warnings.append(f"Dropped class folders without usable images: {', '.join(empty)}")
    warnings += _warnings(usable, records)
    duplicates = find_duplicates(records)
    warnings += duplicate_warnings(duplicates)
    if skipped:
        warnings.append(
            f"Skipped {len(skipped)} file{'s' * (len(skipped) != 1)}; see the list of skipped files"
        )
    return Dataset(
        name=name or root.name,
        root=str(root),
        classes=sorted(usable),
        records=records,
        skipped=skipped,
        warnings=warnings,
        validation_percentage=validation_percentage,
        testing_percentage=testing_percentage,
        duplicates=duplicates,
    )


def resolve_source(
    source: str | Path, progress: ProgressFn | None = None, cancel: CancelFn | None = None
) -> Path:
    """The folder of class subfolders for a source: "flowers", "beans", "demo" or a folder path.

    In class mode (config.serve_mode()) a folder path must lie inside the data directory's datasets.

    Raises:
        InvalidArgument: an empty source, or a server folder in class mode.
        NotFound: neither a named source nor an existing folder.
        NetworkUnavailable: a named source that must be downloaded while offline.
    """
    if not isinstance(source, str | Path) or not str(source).strip():
        raise InvalidArgument(f"source must be a folder or one of {NAMED_SOURCES}, got source={source!r}")
    key = str(source).strip()
    if key == "flowers":
        return download_flowers(progress, cancel)
    if key == "beans":
        return download_beans(progress, cancel)
    if key == "demo":
        return make_demo_dataset()
    folder = Path(key).expanduser()
    if config.serve_mode() == "class" and not _inside(folder, config.datasets_dir()):
        raise InvalidArgument(
            f"Server folders are off on a served class (LAB_SERVE_MODE=class): {printable(key)!r} is not "
            "a stored dataset; upload a zip or images per class instead"
        )
    if folder.is_dir():
        return folder
    raise NotFound(
        f"Dataset source {key!r} is neither an existing folder nor one of: {', '.join(NAMED_SOURCES)}"
    )


def _inside(folder: Path, parent: Path) -> bool:
    """True when `folder` (symlinks resolved) is `parent` or below it."""
    try:
        return folder.resolve().is_relative_to(parent.resolve())
    except (OSError, RuntimeError):
        return False

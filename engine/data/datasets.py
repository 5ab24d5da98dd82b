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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.data.archives import extract_zip
from engine.data.images import IMAGE_EXTENSIONS, load_image, probe_image
from engine.data.sources import download_beans, download_flowers, make_demo_dataset
from engine.errors import BadImage, DatasetError, InvalidArgument, NotFound
from engine.progress import CancelFn, ProgressFn, check_cancel, emit

__all__ = [
    "SPLITS",
    "Dataset",
    "ImageRecord",
    "SkippedFile",
    "assign_split",
    "check_percentages",
    "download_beans",
    "download_flowers",
    "extract_zip",
    "make_demo_dataset",
    "resolve_source",
    "scan_image_dir",
]

SPLITS = ("train", "validation", "test")
MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1  # retrain.py's constant; part of the hash, so never change it
MIN_IMAGES_PER_CLASS = 20  # retrain.py warned below this
IMBALANCE_RATIO = 5  # largest class / smallest class above which results mostly reflect the big class
NAMED_SOURCES = ("flowers", "beans", "demo")


@dataclass(frozen=True)
class ImageRecord:
    """One usable image of a dataset."""

    path: str
    label: str  # the class folder's name
    split: str  # "train", "validation" or "test"
    needs_pil: bool  # True when TensorFlow's decoders would get it wrong (see images.probe_image)


@dataclass(frozen=True)
class SkippedFile:
    """A file in a class folder that is not used, and why."""

    path: str
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


def _class_files(folder: Path) -> list[Path]:
    """Every file under a class folder (nested folders included), in a stable order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        files.extend(Path(dirpath) / f for f in sorted(filenames))
    return files


def _reason(exc: BadImage, path: Path) -> str:
    text = str(exc)
    prefix = f"{path.name}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _check_file(path: Path) -> tuple[bool, str]:
    """(needs_pil, "") for a usable image, else (False, the reason it is skipped)."""
    if path.name.startswith("."):
        return False, "hidden file"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return False, f"not an image file (extension {path.suffix or 'none'!r})"
    try:
        info = probe_image(path)
        if not info.complete:
            load_image(path)  # the header looked fine but the end is missing: decode to decide
    except BadImage as exc:
        return False, _reason(exc, path)
    except OSError as exc:
        return False, f"cannot read file ({exc.strerror or exc})"
    return info.needs_pil, ""


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
) -> Dataset:
    """Scan a folder of class subfolders (one per class) into a `Dataset`.

    Only headers are read, so scanning is fast. Files that are hidden, not images, or unreadable
    are listed in `skipped` with a reason; classes left without images are dropped with a warning.

    Raises:
        InvalidArgument: bad percentages. NotFound: `path` does not exist.
        DatasetError: no class folders, no usable images, or fewer than 2 classes with images.
    """
    check_percentages(validation_percentage, testing_percentage)
    root = Path(path).expanduser().absolute()
    if not root.exists():
        raise NotFound(f"Image folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder: expected a folder with one subfolder per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))
    if not class_dirs:
        raise DatasetError(f"{root} has no class subfolders: expected one folder of images per class")
    skipped = [
        SkippedFile(str(p), "image outside any class folder")
        for p in sorted(root.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    listing = [(d.name, f) for d in class_dirs for f in _class_files(d)]
    records, per_class = [], dict.fromkeys((d.name for d in class_dirs), 0)
    for i, (label, file) in enumerate(listing):
        if i % 100 == 0:
            check_cancel(cancel)
            emit(progress, "scan", i, len(listing), f"Scanning {root.name}: {i}/{len(listing)} files")
        needs_pil, reason = _check_file(file)
        if reason:
            skipped.append(SkippedFile(str(file), reason))
            continue
        split = assign_split(file.name, validation_percentage, testing_percentage)
        records.append(ImageRecord(str(file), label, split, needs_pil))
        per_class[label] += 1
    emit(progress, "scan", len(listing), len(listing), f"Scanned {len(records)} images")
    empty = [label for label, n in per_class.items() if n == 0]
    usable = {label: n for label, n in per_class.items() if n > 0}
    if not usable:
        raise DatasetError(
            f"No usable images in {root}: every class folder is empty or unreadable ({', '.join(empty)})"
        )
    if len(usable) < 2:
        detail = f"; without images: {', '.join(empty)}" if empty else ""
        raise DatasetError(
            f"Need at least 2 classes with images to train a classifier, found {len(usable)} "
            f"({', '.join(usable)}) in {root}{detail}"
        )
    warnings = []
    if empty:
        warnings.append(f"Dropped class folders without usable images: {', '.join(empty)}")
    warnings += _warnings(usable, records)
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
    )


def resolve_source(
    source: str | Path, progress: ProgressFn | None = None, cancel: CancelFn | None = None
) -> Path:
    """The folder of class subfolders for a source: "flowers", "beans", "demo" or a folder path.

    Raises:
        InvalidArgument: an empty source. NotFound: neither a named source nor an existing folder.
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
    if folder.is_dir():
        return folder
    raise NotFound(
        f"Dataset source {key!r} is neither an existing folder nor one of: {', '.join(NAMED_SOURCES)}"
    )

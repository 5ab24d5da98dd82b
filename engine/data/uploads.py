"""Datasets built from images uploaded one class at a time, and the list of stored datasets.

Uploaded files are validated by decoding them (engine.data.images) before anything is written; good
files land in datasets_dir()/uploads/<name>/<class>/ under safe names, never replacing a file that
is already there, so adding images to a dataset is safe to repeat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from engine import config
from engine.data.archives import check_dataset_name, uploads_dir
from engine.data.images import IMAGE_EXTENSIONS, decode_image_bytes
from engine.errors import BadImage, DatasetError, InvalidArgument

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CLASS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,79}$")


@dataclass
class UploadResult:
    """What `save_class_images` did: the dataset folder, files written and files refused (with why)."""

    folder: Path
    saved: dict[str, int] = field(default_factory=dict)  # class -> files written
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)


def check_class_name(name: str) -> str:
    """Validate a class name (it becomes a folder name and a label)."""
    if not isinstance(name, str) or not _CLASS_RE.match(name.strip()) or ".." in name:
        raise InvalidArgument(
            "class name must be 1-80 letters, digits, spaces, '.', '_' or '-' and start with a "
            f"letter or digit, got name={name!r}"
        )
    return name.strip()


def safe_file_name(name: str) -> str:
    """A file name without directories or odd characters, keeping an image extension."""
    base = Path(str(name).replace("\\", "/")).name
    stem, suffix = Path(base).stem, Path(base).suffix.lower()
    stem = _UNSAFE.sub("_", stem).strip("._") or "image"
    if suffix not in IMAGE_EXTENSIONS:
        suffix = ".jpg"
    return stem[:80] + suffix


def _free_path(folder: Path, file_name: str) -> Path:
    """`folder/file_name`, or `stem-2.ext`, `stem-3.ext`, ... if that exists already."""
    path = folder / file_name
    stem, suffix = path.stem, path.suffix
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}{suffix}"
        n += 1
    return path


def save_class_images(name: str, files: dict[str, list[tuple[str, bytes]]]) -> UploadResult:
    """Add uploaded images to dataset `name`, one list of (file name, bytes) per class.

    Each file is decoded first; files that are not readable images are refused with the reason
    and nothing is written for them. Existing files are never overwritten.

    Raises:
        InvalidArgument: a bad dataset or class name.
        DatasetError: no class received a valid image.
    """
    name = check_dataset_name(name)
    classes = {check_class_name(label): items for label, items in files.items()}
    folder = uploads_dir() / name
    result = UploadResult(folder=folder)
    for label, items in classes.items():
        for file_name, data in items:
            try:
                decode_image_bytes(data, name=str(file_name))
            except BadImage as exc:
                result.refused.append((str(file_name), str(exc)))
                continue
            target_dir = folder / label
            target_dir.mkdir(parents=True, exist_ok=True)
            path = _free_path(target_dir, safe_file_name(file_name))
            with path.open("xb") as fh:  # "x": never clobber a file another session just wrote
                fh.write(data)
            result.saved[label] = result.saved.get(label, 0) + 1
    if not result.saved:
        reasons = "; ".join(reason for _, reason in result.refused) or "no files were given"
        raise DatasetError(f"No image was saved to {name!r}: {reasons}")
    return result


def _has_class_folders(folder: Path) -> bool:
    return any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def stored_datasets() -> dict[str, Path]:
    """Datasets already under the data directory (downloads, demo sets, uploads): label -> folder."""
    found: dict[str, Path] = {}
    root = config.datasets_dir()
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name.startswith(".") or folder == config.uploads_dir():
            continue
        if _has_class_folders(folder):
            found[folder.name] = folder
    for folder in sorted(uploads_dir().iterdir()):
        if folder.is_dir() and not folder.name.startswith(".") and _has_class_folders(folder):
            found[f"uploads/{folder.name}"] = folder
    return found


__all__ = ["UploadResult", "check_class_name", "safe_file_name", "save_class_images", "stored_datasets"]

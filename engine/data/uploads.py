"""Datasets built from images uploaded one class at a time, and the list of stored datasets.

Uploaded files are validated by decoding them (engine.data.images) before anything is written; good
files land in datasets_dir()/uploads/<name>/<class>/ under safe names, never replacing a file that
is already there (also when several sessions upload under one name at once), so adding images to a
dataset is safe to repeat. A file that cannot be saved is reported with its reason; the rest lands.
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from engine import config
from engine.data.archives import (
    UPLOADS_QUOTA_BYTES,
    check_dataset_name,
    check_folder_name,
    folder_bytes,
    printable,
    uploads_dir,
)
from engine.data.images import IMAGE_EXTENSIONS, decode_image_bytes
from engine.errors import BadImage, DatasetError, InvalidArgument

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}
_MAX_TRIES = 10_000  # free names tried per file before giving up (stem-2 ... stem-10000)


@dataclass
class UploadResult:
    """What `save_class_images` did: the dataset folder, files written and files refused (with why)."""

    folder: Path
    saved: dict[str, int] = field(default_factory=dict)  # class -> files written
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)


def check_class_name(name: str) -> str:
    """Validate a class name (it becomes a folder name and a label)."""
    return check_folder_name(name, "class name")


def safe_file_name(name: str) -> str:
    """A file name without directories or odd characters, keeping an image extension."""
    base = Path(str(name).replace("\\", "/")).name
    stem, suffix = Path(base).stem, Path(base).suffix.lower()
    stem = _UNSAFE.sub("_", stem).strip("._") or "image"
    if suffix not in IMAGE_EXTENSIONS:
        suffix = ".jpg"
    return stem[:80] + suffix


def _write_new(folder: Path, file_name: str, data: bytes) -> Path:
    """Write `data` as `folder/file_name`, or `stem-2.ext`, `stem-3.ext`, ... if that is taken.

    The bytes go to a hidden temporary file first and are then hard-linked under the first free
    name: the link fails if the name exists, so concurrent uploads never clobber each other, and a
    crash never leaves a truncated image under a visible name.
    """
    tmp = folder / f".tmp-{uuid.uuid4().hex}"
    with tmp.open("xb") as fh:
        fh.write(data)
    try:
        stem, suffix = Path(file_name).stem, Path(file_name).suffix
        for n in range(1, _MAX_TRIES + 1):
            path = folder / (file_name if n == 1 else f"{stem}-{n}{suffix}")
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                try:  # no hard links here (FAT, some shares): "x" still never clobbers
                    with path.open("xb") as fh:
                        fh.write(data)
                    return path
                except FileExistsError:
                    continue
        raise FileExistsError(f"no free name after {_MAX_TRIES:,} tries")
    finally:
        tmp.unlink(missing_ok=True)


def save_class_images(
    name: str, files: dict[str, list[tuple[str, bytes]]], quota: int | None = None
) -> UploadResult:
    """Add uploaded images to dataset `name`, one list of (file name, bytes) per class.

    Each file is decoded first; files that are not readable images, that would take the uploads
    folder past its quota, or that cannot be written are refused with the reason and the rest of
    the batch still lands. Existing files are never overwritten (concurrent uploads under one name
    are safe).

    Args:
        quota: bytes the whole uploads folder may hold; default UPLOADS_QUOTA_BYTES.

    Raises:
        InvalidArgument: a bad dataset or class name, or a bad quota.
        DatasetError: no class received a valid image.
    """
    name = check_dataset_name(name)
    quota = UPLOADS_QUOTA_BYTES if quota is None else quota
    if isinstance(quota, bool) or not isinstance(quota, int) or quota < 0:
        raise InvalidArgument(f"quota must be a number of bytes >= 0, got quota={quota!r}")
    classes = {check_class_name(label): items for label, items in files.items()}
    folder = uploads_dir() / name
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):  # the lab never makes these
        raise DatasetError(f"{folder} is not a folder the lab made (a link or a file); nothing was saved")
    result = UploadResult(folder=folder)
    used = folder_bytes(uploads_dir())
    for label, items in classes.items():
        for file_name, data in items:
            shown = printable(str(file_name))[1:-1]
            if not isinstance(data, bytes | bytearray | memoryview):
                result.refused.append((shown, f"{shown}: not file contents (got {type(data).__name__})"))
                continue
            try:
                decode_image_bytes(data, name=shown)
            except BadImage as exc:
                result.refused.append((shown, str(exc)))
                continue
            if used + len(data) > quota:
                reason = f"the uploads folder would pass its quota of {quota / 1024**3:.2f} GiB"
                result.refused.append((shown, f"{shown}: not saved, {reason}"))
                continue
            try:
                target_dir = folder / label
                if target_dir.is_symlink():
                    raise NotADirectoryError(0, "the class folder is a link")
                target_dir.mkdir(parents=True, exist_ok=True)
                _write_new(target_dir, safe_file_name(file_name), data)
            except OSError as exc:  # a full disk, a file where the class folder should be, ...
                result.refused.append((shown, f"{shown}: cannot save ({exc.strerror or exc})"))
                continue
            used += len(data)
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
        if (
            folder.is_dir()
            and not folder.is_symlink()
            and not folder.name.startswith(".")
            and _has_class_folders(folder)
        ):
            found[f"uploads/{folder.name}"] = folder
    return found


__all__ = ["UploadResult", "check_class_name", "safe_file_name", "save_class_images", "stored_datasets"]

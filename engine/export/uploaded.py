"""A `.tflite` classifier and its labels file uploaded from a browser, kept as a ModelChoice.

The bytes are untrusted: they are size-capped, written to a fresh folder below
`config.model_uploads_dir()` and checked by `engine.export.lineup.tflite_choice` (TFLite magic,
one label per output) before the folder gets its final name. The folder is named after the content
hash, so uploading the same pair again (or a page rerun) reuses it instead of filling the disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from engine import config
from engine.data.archives import folder_bytes, printable
from engine.errors import InvalidArgument, LabError
from engine.export import lineup

MAX_MODEL_BYTES = 200 * 1024**2  # InceptionV3 as float32 TFLite is ~95 MB; Coral's classifiers are < 5 MB
MAX_LABELS_BYTES = 1024**2  # 1,000 ImageNet names are ~22 kB
MAX_AREA_BYTES = 2 * 1024**3  # every uploaded model together; a full disk would stop the lab itself
MODEL_FILE, LABELS_FILE, NAME_FILE = "model.tflite", "labels.txt", "name.txt"
MAX_NAME_CHARS = 80


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgument(f"An uploaded model needs a name, got name={name!r}")
    shown = " ".join(name.split())  # newlines and tabs become spaces: it is only a title
    if any(not ch.isprintable() for ch in shown):
        raise InvalidArgument(f"Model name {printable(name)} has unprintable characters")
    return shown[:MAX_NAME_CHARS]


def _labels_text(labels_text: str | bytes) -> str:
    data = labels_text.encode("utf-8") if isinstance(labels_text, str) else bytes(labels_text)
    if len(data) > MAX_LABELS_BYTES:
        raise InvalidArgument(
            f"Labels file is {len(data):,} bytes; at most {MAX_LABELS_BYTES:,} are accepted "
            "(one class name per line)"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"Labels file is not UTF-8 text (byte {exc.start}): one class name per line"
        ) from None
    if not text.strip():
        raise InvalidArgument("Labels file is empty: it needs one class name per line")
    return "\n".join(line.rstrip("\r") for line in text.split("\n"))


def save_model_upload(name: str, data: bytes, labels_text: str | bytes) -> lineup.ModelChoice:
    """Store an uploaded `.tflite` classifier with its labels; return it as a ModelChoice.

    Args:
        name: what the page calls it (the uploaded file's name); only a title, never a path.
        data: the `.tflite` file's bytes.
        labels_text: its labels file (one class name per line, UTF-8).

    Raises:
        InvalidArgument: empty or oversized files, a bad name, labels that are not text, or the
            uploads area full. LabError (from lineup.tflite_choice): not a TFLite model, or its
            outputs do not match the number of labels.
    """
    title = _check_name(name)
    data = bytes(data)
    if not data:
        raise InvalidArgument(f"Model file {printable(title)} is empty")
    if len(data) > MAX_MODEL_BYTES:
        raise InvalidArgument(
            f"Model file {printable(title)} is {len(data) / 1024**2:.0f} MB; at most "
            f"{MAX_MODEL_BYTES // 1024**2} MB are accepted"
        )
    labels = _labels_text(labels_text)
    digest = hashlib.sha256(data + b"\0" + labels.encode("utf-8")).hexdigest()[:24]
    area = config.model_uploads_dir()
    final = area / digest
    if final.is_dir() and not final.is_symlink():
        return _choice(final, title)  # the same pair again: validated when it was first stored
    if folder_bytes(area) + len(data) > MAX_AREA_BYTES:
        raise InvalidArgument(
            f"The uploaded models area {area} holds {MAX_AREA_BYTES // 1024**3} GiB already; "
            "delete old uploads there first"
        )
    staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=area))
    try:
        (staging / MODEL_FILE).write_bytes(data)
        (staging / LABELS_FILE).write_text(labels, encoding="utf-8")
        (staging / NAME_FILE).write_text(title, encoding="utf-8")
        try:
            lineup.tflite_choice(staging / MODEL_FILE, staging / LABELS_FILE)  # raises on a bad pair
        except LabError as exc:  # name what the user uploaded, not the staging folder
            message = (
                str(exc)
                .replace(str(staging / MODEL_FILE), "\0")
                .replace(str(staging / LABELS_FILE), "its labels file")
                .replace(MODEL_FILE, repr(title))
                .replace("\0", f"Model file {title!r}")
            )
            raise type(exc)(message) from None
        try:
            os.rename(staging, final)
        except OSError:  # another session stored the same pair a moment ago: theirs is as good
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _choice(final, title)


def _choice(folder: Path, title: str) -> lineup.ModelChoice:
    return lineup.tflite_choice(folder / MODEL_FILE, folder / LABELS_FILE, title=f"{title} (uploaded)")


def uploaded_choices() -> list[lineup.ModelChoice]:
    """Every model uploaded so far, oldest first (a folder that no longer validates is left out)."""
    area = config.model_uploads_dir()
    folders = [p for p in area.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
    out = []
    for folder in sorted(folders, key=lambda p: p.stat().st_mtime):
        try:
            title = (folder / NAME_FILE).read_text(encoding="utf-8").strip() or folder.name
            out.append(_choice(folder, _check_name(title)))
        except (OSError, UnicodeDecodeError, LabError):
            continue
    return out


__all__ = ["MAX_MODEL_BYTES", "save_model_upload", "uploaded_choices"]

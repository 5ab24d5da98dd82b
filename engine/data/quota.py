"""Upload quotas per display name on a class server (`LAB_SERVE_MODE=class`, `LAB_USER_QUOTA_MB`).

A dataset under uploads/ belongs to the display name that created it; the owner's name is kept in
uploads/.owners/<dataset name> (a dot folder: never listed as a dataset). What a name may still
upload is `LAB_USER_QUOTA_MB` minus the bytes of the datasets it owns. The uploaders
(`uploads.save_class_images`, `archives.extract_zip`) take a `quota=` for the whole uploads folder;
`upload_quota` turns the per-name allowance into that figure (capped by the folder's own quota).
There are no accounts: a display name is a label, not a login, as on any trusted class network.
"""

from __future__ import annotations

import os

from engine import config
from engine.data.archives import UPLOADS_QUOTA_BYTES, check_dataset_name, folder_bytes, uploads_dir

OWNERS = ".owners"
UNNAMED = "(no name)"  # everyone without a display name shares one allowance


def _owner_file(name: str):
    folder = uploads_dir() / OWNERS
    folder.mkdir(exist_ok=True)
    return folder / check_dataset_name(name)


def owner_of(name: str) -> str | None:
    """The display name that created dataset `name` under uploads/, or None if unrecorded."""
    path = _owner_file(name)
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def claim(name: str, author: str | None) -> str:
    """Record `author` as the owner of dataset `name` unless it has one already; returns the owner.

    Of concurrent first claims exactly one wins (the file is created exclusively).
    """
    author = (author or "").strip() or UNNAMED
    path = _owner_file(name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return owner_of(name) or author
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(author)
    return author


def used_by(author: str | None) -> int:
    """Bytes of the uploaded datasets that `author` owns."""
    author = (author or "").strip() or UNNAMED
    folder = uploads_dir() / OWNERS
    if not folder.is_dir():
        return 0
    total = 0
    for entry in folder.iterdir():
        try:
            owned = entry.read_text(encoding="utf-8").strip() == author
        except OSError:
            continue
        if owned:
            dataset = uploads_dir() / entry.name
            if dataset.is_dir() and not dataset.is_symlink():
                total += folder_bytes(dataset)
    return total


def upload_quota(name: str, author: str | None) -> int | None:
    """The `quota=` to pass when `author` uploads into dataset `name`; None outside class mode.

    In class mode the dataset is claimed for `author` if nobody owns it yet, and the figure lets the
    upload through only while the owner's datasets stay within `LAB_USER_QUOTA_MB` (and the whole
    uploads folder within its own quota).

    Raises:
        LabError: a bad `LAB_USER_QUOTA_MB` or `LAB_SERVE_MODE`. InvalidArgument: a bad dataset name.
    """
    allowance = config.user_quota_bytes()
    if allowance is None:
        return None
    owner = claim(name, author)
    whole = folder_bytes(uploads_dir())
    return max(0, min(UPLOADS_QUOTA_BYTES, whole - used_by(owner) + allowance))

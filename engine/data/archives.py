"""Safe unpacking of dataset archives: uploaded zips of class folders and downloaded tarballs.

Everything is checked before a byte is written (entry names, links, counts, sizes, compression
ratios, encryption), extracted into a hidden temporary folder beside the target, and only then
renamed into place, so a refused or failed archive never harms a dataset already stored.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
import uuid
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from engine import config
from engine.data.images import IMAGE_EXTENSIONS
from engine.errors import DatasetError, InvalidArgument, NotFound, UnsafeArchive
from engine.progress import CancelFn, ProgressFn, check_cancel, emit

MAX_ENTRIES = 100_000  # far more files than a hand-made image set has
MAX_TOTAL_BYTES = 2 * 1024**3  # 2 GiB uncompressed
MAX_RATIO = 100  # photos barely compress; a 100:1 entry is a bomb, not a JPEG
_RATIO_FLOOR = 1024**2  # small entries (a text file of zeros) may compress well and harmlessly
_CHUNK = 1024**2
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,79}$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def uploads_dir() -> Path:
    """Where extracted uploads live, one folder per dataset name."""
    return config.uploads_dir()


def check_dataset_name(name: str) -> str:
    """Validate an upload's dataset name (it becomes a folder name); a trailing .zip is dropped."""
    if isinstance(name, str) and name.lower().endswith(".zip"):
        name = name[:-4]
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise InvalidArgument(
            "dataset name must be 1-80 letters, digits, spaces, '.', '_' or '-' and start with a "
            f"letter or digit, got name={name!r}"
        )
    return name.strip()


def install_dir(src: Path, final: Path, replace: bool) -> Path:
    """Move the finished folder `src` to `final` by renames on one file system.

    With replace=False an existing `final` wins (another process got there first) and `src` is
    left for the caller to delete. With replace=True the old folder is swapped out and deleted
    only after the new one is in place.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    src.chmod(0o755)  # mkdtemp made it private; a dataset is as readable as any folder
    if not final.exists():
        try:
            os.rename(src, final)
            return final
        except OSError:
            if not final.exists():
                raise
    if not replace:
        return final
    old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)
    try:
        os.rename(src, final)
    except OSError:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def _entry_parts(raw: str) -> list[str]:
    """The path components of a zip entry, refusing anything that could land outside the target."""
    name = raw.replace("\\", "/")
    if "\x00" in name:
        raise UnsafeArchive(f"Refused archive: entry {raw!r} has a NUL byte in its name")
    if name.startswith("/") or _DRIVE_RE.match(name):
        raise UnsafeArchive(f"Refused archive: entry {raw!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"Refused archive: entry {raw!r} escapes the target folder ('..')")
    return parts


def _is_junk(parts: list[str]) -> bool:
    """macOS resource forks and hidden files (.DS_Store, ._x) are not part of any dataset."""
    return not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def _check_entry(info: zipfile.ZipInfo) -> None:
    if info.flag_bits & 0x1:
        raise UnsafeArchive(
            f"Refused archive: entry {info.filename!r} is encrypted (password-protected zips are "
            "not supported)"
        )
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise UnsafeArchive(f"Refused archive: entry {info.filename!r} is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchive(f"Refused archive: entry {info.filename!r} is not a regular file")
    if info.file_size > _RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise UnsafeArchive(
            f"Refused archive: entry {info.filename!r} expands {info.compress_size:,} bytes to "
            f"{info.file_size:,} (more than {MAX_RATIO}:1), which looks like a zip bomb"
        )


def _plan(zf: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """Check every entry up front; return the (entry, path parts) pairs worth extracting."""
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise UnsafeArchive(
            f"Refused archive: {len(infos):,} entries is more than the limit of {MAX_ENTRIES:,}"
        )
    plan, seen, total = [], set(), 0
    for info in infos:
        parts = _entry_parts(info.filename)
        _check_entry(info)
        if _is_junk(parts) or info.is_dir():
            continue
        key = "/".join(parts)
        if key in seen:
            raise UnsafeArchive(f"Refused archive: entry {info.filename!r} appears twice")
        seen.add(key)
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise UnsafeArchive(
                f"Refused archive: it expands to more than {MAX_TOTAL_BYTES / 1024**3:.0f} GiB"
            )
        plan.append((info, parts))
    return plan


def _copy_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> None:
    written = 0
    with zf.open(info) as src, open(dest, "xb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size:  # a lying header: stop before it fills the disk
                raise UnsafeArchive(f"Refused archive: entry {info.filename!r} is larger than declared")
            out.write(chunk)


def _has_images(folder: Path) -> bool:
    return any(
        p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        for p in folder.rglob("*")
        if p.is_file()
    )


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def find_class_root(folder: Path, label: str = "The archive") -> Path:
    """The folder holding the class folders: `folder` itself or its single top-level folder.

    Raises:
        DatasetError: nothing there is a folder of images.
    """
    root = folder
    for _ in range(3):  # zip tools wrap content in one or two folders
        entries = _visible(root)
        dirs = [p for p in entries if p.is_dir()]
        loose = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        only = dirs[0] if len(dirs) == 1 and not loose else None
        if only is None or any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in only.iterdir()):
            break
        root = only
    entries = _visible(root)
    if any(p.is_dir() and _has_images(p) for p in entries):
        return root
    if not entries:
        raise DatasetError(f"{label} is empty: expected one folder of images per class")
    if any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in entries):
        raise DatasetError(
            f"{label} holds images but no class folders: put each class's images in its own "
            "folder (e.g. cats/1.jpg, dogs/2.jpg) and archive those folders"
        )
    found = ", ".join(p.name for p in entries[:5])
    raise DatasetError(
        f"{label} contains no class folders of images (found: {found}); expected one folder of "
        "images per class, e.g. cats/1.jpg, dogs/2.jpg"
    )


def _open_zip(source: str | os.PathLike | bytes | BinaryIO) -> zipfile.ZipFile:
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, str | os.PathLike):
        if not Path(source).is_file():
            raise NotFound(f"Zip file {source} does not exist")
    elif hasattr(source, "read"):
        if not (hasattr(source, "seekable") and source.seekable()):
            source = io.BytesIO(source.read())
        else:
            source.seek(0)
    else:
        raise InvalidArgument(f"source must be a path, bytes or a file, got {type(source).__name__}")
    try:
        return zipfile.ZipFile(source)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"The upload is not a valid zip archive ({exc})") from None


def extract_zip(
    source: str | os.PathLike | bytes | BinaryIO,
    name: str,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> Path:
    """Safely extract a zip of class folders to datasets_dir()/uploads/<name>.

    A zip whose single top-level folder holds the class folders is accepted too. A dataset
    already stored under `name` is replaced only once the new one is complete.

    Returns:
        The folder of class subfolders.

    Raises:
        InvalidArgument: a bad name. NotFound: a missing zip file.
        UnsafeArchive: path escapes, links, encryption, too many entries, too large, zip bombs.
        DatasetError: not a zip, corrupt entries, or no class folders inside.
    """
    name = check_dataset_name(name)
    with _open_zip(source) as zf:
        plan = _plan(zf)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=uploads_dir()))
        try:
            for i, (info, parts) in enumerate(plan):
                check_cancel(cancel)
                dest = tmp.joinpath(*parts)
                if not dest.resolve().is_relative_to(tmp.resolve()):
                    raise UnsafeArchive(f"Refused archive: entry {info.filename!r} escapes the target")
                try:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    _copy_entry(zf, info, dest)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                    raise DatasetError(f"{info.filename}: corrupt or unsupported zip entry ({exc})") from None
                except OSError as exc:  # a file where a folder should be, a full disk, ...
                    raise DatasetError(f"{info.filename}: cannot extract ({exc.strerror or exc})") from None
                if i % 50 == 0 or i == len(plan) - 1:
                    emit(
                        progress, "download", i + 1, len(plan), f"Unpacking {name}: {i + 1}/{len(plan)} files"
                    )
            root = find_class_root(tmp, "The zip")
            return install_dir(root, uploads_dir() / name, replace=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def extract_tar(archive: Path, dest_dir: Path, cancel: CancelFn | None = None) -> Path:
    """Extract a (trusted but still checked) tarball into a new temporary folder in `dest_dir`.

    Python's "data" filter refuses absolute paths, '..', links leaving the folder and devices.

    Returns:
        The temporary folder; the caller moves what it needs with `install_dir` and deletes it.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-tar-", dir=dest_dir))
    try:
        with tarfile.open(archive) as tar:
            members, total = [], 0
            for member in tar:
                check_cancel(cancel)
                members.append(member)
                total += max(member.size, 0)
                if len(members) > MAX_ENTRIES or total > MAX_TOTAL_BYTES:
                    raise UnsafeArchive(f"Refused archive {archive.name}: too many entries or too large")
            tar.extractall(tmp, members=members, filter="data")
    except tarfile.FilterError as exc:  # absolute paths, '..', links leaving the folder, devices
        shutil.rmtree(tmp, ignore_errors=True)
        raise UnsafeArchive(f"Refused archive {archive.name}: {exc}") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetError(f"{archive.name}: cannot extract ({exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp

"""Safe unpacking of dataset archives: uploaded zips of class folders and downloaded tarballs.

Everything is checked before a byte is written (entry names, links and special files, counts,
sizes, per-entry and overall compression ratios, encryption, the uploads quota) and the bytes are
counted again while streaming, so a lying header cannot pass. An archive is extracted into a hidden
temporary folder beside the target and only then renamed into place under a lock: a refused or
failed archive never harms a dataset already stored, and an existing name is replaced only when the
caller chose replace=True.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
import unicodedata
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

from engine import config
from engine.data.images import IMAGE_EXTENSIONS
from engine.errors import DatasetError, InvalidArgument, NotFound, UnsafeArchive
from engine.progress import CancelFn, ProgressFn, check_cancel, emit

# Limits on one archive. Why: an upload is untrusted, and a few MB of zip can otherwise expand to
# gigabytes (2,040 entries of 1 MiB of zeros: 2.86 MB in, 2.14 GB out).
MAX_ENTRIES = 100_000  # far more files than a hand-made image set has
MAX_TOTAL_BYTES = 2 * 1024**3  # 2 GiB uncompressed: ten flower_photos; counted as declared AND as written
MAX_RATIO = 100  # photos barely compress; 100:1 (one entry or the whole archive) is a bomb, not a JPEG
_RATIO_FLOOR = 1024**2  # small entries (a text file of zeros) may compress well and harmlessly
_ARCHIVE_RATIO_FLOOR = 16 * 1024**2  # below 16 MiB in all, no ratio amplifies enough to matter
MAX_NAME_BYTES = 255  # one file or folder name: the limit of ext4, APFS and NTFS
MAX_PATH_BYTES = 1024  # a whole entry name: deep enough for any real layout, far below PATH_MAX
# The uploads folder as a whole (per LAB_HOME). Why: repeated uploads must not fill the disk of a
# laptop or a class server; room for dozens of flower-sized (218 MB) sets. A per-user quota can pass
# its own figure as `quota=`.
UPLOADS_QUOTA_BYTES = 10 * 1024**3
MIN_FREE_BYTES = 256 * 1024**2  # leave the disk this much after unpacking, so the lab itself keeps working
_CHUNK = 1024**2
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,79}")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_SURROGATE = re.compile(r"\\udc([89a-f][0-9a-f])")
_CONTROL = {"Cc", "Zl", "Zp"}  # C0/C1 controls (NUL, tab, newline, DEL, ...) and Unicode line breaks


def uploads_dir() -> Path:
    """Where extracted uploads live, one folder per dataset name."""
    path = config.datasets_dir() / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def name_problem(text: str) -> str | None:
    """Why `text` cannot be a file or folder name (control character, not UTF-8, too long), or None."""
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cs":
            return "is not valid UTF-8"
        if category in _CONTROL:
            what = unicodedata.name(ch, "") or {"\n": "newline", "\t": "tab", "\r": "carriage return"}.get(
                ch, "control character"
            )
            return f"has a control character (U+{ord(ch):04X} {what.lower()}) in its name"
    if len(text.encode("utf-8")) > MAX_NAME_BYTES:
        return f"has a name longer than {MAX_NAME_BYTES} bytes"
    return None


def printable(text: str, limit: int = 120) -> str:
    """`text` quoted and safe to show on one line: control characters escaped, undecodable bytes as
    \\xNN, and cut to `limit` characters."""
    shown = _SURROGATE.sub(r"\\x\1", repr(text))  # os.fsdecode's stand-ins for bad bytes: show the byte
    return shown if len(shown) <= limit else shown[: limit - 4] + "…" + shown[-3:]


def check_folder_name(name: str, what: str) -> str:
    """Validate a name that becomes a folder (a dataset, a class): control characters are refused, since
    a newline in a class name would shift every line of labels.txt. `what` names it in the message."""
    if isinstance(name, str) and (problem := name_problem(name)):
        raise InvalidArgument(
            f"{what} {problem}: use letters, digits, spaces, '.', '_' or '-', got name={printable(name)}"
        )
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name.strip()) or ".." in name:
        raise InvalidArgument(
            f"{what} must be 1-80 letters, digits, spaces, '.', '_' or '-' and start with a "
            f"letter or digit, got name={name!r}"
        )
    return name.strip()


def check_dataset_name(name: str) -> str:
    """Validate an upload's dataset name (it becomes a folder name); a trailing .zip is dropped."""
    if isinstance(name, str) and name.lower().endswith(".zip"):
        name = name[:-4]
    return check_folder_name(name, "dataset name")


@contextmanager
def _install_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder` (flock on the folder itself, no lock file) while names are checked
    and renamed in it, so two installs under one name cannot both see it free. POSIX only; elsewhere the
    renames below still refuse to replace a non-empty folder."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class DatasetExists(DatasetError):
    """A dataset is already stored under the name asked for, and replacing it was not chosen."""


def install_dir(src: Path, final: Path, replace: bool, exists_ok: bool = True) -> Path:
    """Move the finished folder `src` to `final` by renames on one file system.

    With replace=False an existing `final` wins and `src` is left for the caller to delete:
    silently when exists_ok (a download another process finished first is the same data), else
    DatasetExists. With replace=True the old folder is swapped out and deleted only after the new
    one is in place.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    src.chmod(0o755)  # mkdtemp made it private; a dataset is as readable as any folder
    with _install_lock(final.parent):
        if not (final.exists() or final.is_symlink()):
            try:
                os.rename(src, final)
                return final
            except OSError:
                if not final.exists():
                    raise
        if not replace:
            if exists_ok:
                return final
            raise DatasetExists(
                f"A dataset named {final.name!r} already exists ({final}); nothing was changed. "
                "Choose another name, or choose to replace it (replace=True)"
            )
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
        try:
            os.rename(src, final)
        except OSError:
            os.rename(old, final)
            raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def _entry_parts(raw: str, label: str) -> list[str]:
    """The path components of an archive entry, refusing anything that could land outside the target
    or that cannot be a file name (control characters, undecodable bytes, overlong names)."""
    name = raw.replace("\\", "/")
    shown = printable(raw)
    if "\x00" in name:
        raise UnsafeArchive(f"Refused archive {label}: entry {shown} has a NUL byte in its name")
    if name.startswith("/") or _DRIVE_RE.match(name):
        raise UnsafeArchive(f"Refused archive {label}: entry {shown} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"Refused archive {label}: entry {shown} escapes the target folder ('..')")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise UnsafeArchive(
            f"Refused archive {label}: entry {shown} has a path longer than {MAX_PATH_BYTES} bytes"
        )
    for part in parts:
        if problem := name_problem(part):
            raise UnsafeArchive(
                f"Refused archive {label}: entry {shown} {problem}; rename it and archive again"
            )
    return parts


def _is_junk(parts: list[str]) -> bool:
    """macOS resource forks and hidden files (.DS_Store, ._x) are not part of any dataset."""
    return not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _check_entry(info: zipfile.ZipInfo, label: str) -> None:
    shown = printable(info.filename)
    if info.flag_bits & 0x1:
        raise UnsafeArchive(
            f"Refused archive {label}: entry {shown} is encrypted (password-protected zips are not supported)"
        )
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise UnsafeArchive(f"Refused archive {label}: entry {shown} is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        what = _KINDS.get(kind, f"of file type {kind:#o}")
        raise UnsafeArchive(f"Refused archive {label}: entry {shown} is not a regular file ({what})")
    if info.file_size > _RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise UnsafeArchive(
            f"Refused archive {label}: entry {shown} expands {info.compress_size:,} bytes to "
            f"{info.file_size:,} (more than {MAX_RATIO}:1), which looks like a zip bomb"
        )


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under `folder` (links not followed): what an upload quota counts."""
    total, stack = 0, [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:  # vanished while walking (another install's temp folder)
            continue
    return total


class Budget:
    """Bytes an unpacking may still write: the archive's own cap, the uploads quota and the free disk.

    `spend` is called while streaming, so an archive whose headers lie cannot write past any of them.
    """

    def __init__(self, label: str, quota: int | None, replaced: Path | None = None):
        quota = UPLOADS_QUOTA_BYTES if quota is None else quota
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 0:
            raise InvalidArgument(f"quota must be a number of bytes >= 0, got quota={quota!r}")
        self.label, self.quota, self.written = label, quota, 0
        used = folder_bytes(uploads_dir())
        if replaced is not None and replaced.is_dir() and not replaced.is_symlink():
            used -= folder_bytes(replaced)  # replacing frees what the old version holds
        self.used = max(used, 0)
        self.free = shutil.disk_usage(uploads_dir()).free - MIN_FREE_BYTES

    def check(self, total: int, verb: str = "expands to") -> None:
        if total > MAX_TOTAL_BYTES:
            raise UnsafeArchive(
                f"Refused archive {self.label}: it {verb} more than {_gib(MAX_TOTAL_BYTES)} "
                f"(the limit for one archive)"
            )
        if self.used + total > self.quota:
            raise UnsafeArchive(
                f"Refused archive {self.label}: its {_gib(total)} would take the uploads folder past its "
                f"quota of {_gib(self.quota)} ({_gib(self.used)} used); delete datasets you no longer need"
            )
        if total > self.free:
            raise UnsafeArchive(
                f"Refused archive {self.label}: its {_gib(total)} does not fit on the disk "
                f"(keeping {_gib(MIN_FREE_BYTES)} free)"
            )

    def spend(self, n: int) -> None:
        self.written += n
        self.check(self.written, verb="wrote")


def _plan(
    zf: zipfile.ZipFile, label: str, size: int, budget: Budget
) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """Check every entry up front; return the (entry, path parts) pairs worth extracting."""
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise UnsafeArchive(
            f"Refused archive {label}: {len(infos):,} entries is more than the limit of {MAX_ENTRIES:,}"
        )
    plan, seen, total = [], set(), 0
    for info in infos:
        parts = _entry_parts(info.filename, label)
        _check_entry(info, label)
        if _is_junk(parts) or info.is_dir():
            continue
        key = "/".join(parts)
        if key in seen:
            raise UnsafeArchive(f"Refused archive {label}: entry {printable(info.filename)} appears twice")
        seen.add(key)
        total += info.file_size
        budget.check(total)
        plan.append((info, parts))
    if total > _ARCHIVE_RATIO_FLOOR and total > MAX_RATIO * max(size, 1):
        raise UnsafeArchive(
            f"Refused archive {label}: {size:,} bytes expand to {total:,} (more than {MAX_RATIO}:1 "
            "overall), which looks like a zip bomb"
        )
    return plan


def _copy_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, label: str, budget: Budget) -> None:
    written = 0
    with zf.open(info) as src, open(dest, "xb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size:  # a lying header: stop before it fills the disk
                raise UnsafeArchive(
                    f"Refused archive {label}: entry {printable(info.filename)} is larger than declared"
                )
            budget.spend(len(chunk))
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


def _regular_file(path: Path, stack: ExitStack) -> BinaryIO:
    """Open `path` only if it is a regular file: a link, FIFO (which would block), device or folder is
    refused without being read."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFound(f"Zip file {path} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"Zip file {path}: cannot read it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        what = _KINDS.get(stat.S_IFMT(st.st_mode), "a folder" if stat.S_ISDIR(st.st_mode) else "special")
        raise UnsafeArchive(f"Refused {path}: it is {what}, not a regular zip file")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)  # no follow, no block: the file cannot be swapped for a link or FIFO now
    except OSError as exc:
        raise DatasetError(f"Zip file {path}: cannot open it ({exc.strerror or exc})") from None
    fh = stack.enter_context(os.fdopen(fd, "rb"))
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        raise UnsafeArchive(f"Refused {path}: it is not a regular zip file")
    return fh


def _open_zip(
    source: str | os.PathLike | bytes | BinaryIO, label: str, stack: ExitStack
) -> tuple[zipfile.ZipFile, int]:
    """The zip and its size in bytes (for the overall compression ratio)."""
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, str | os.PathLike):
        source = _regular_file(Path(source), stack)
    elif hasattr(source, "read"):
        if not (hasattr(source, "seekable") and source.seekable()):
            data = source.read(MAX_TOTAL_BYTES + 1)  # bounded: a stream cannot fill the memory
            if len(data) > MAX_TOTAL_BYTES:
                raise UnsafeArchive(f"Refused archive {label}: larger than {_gib(MAX_TOTAL_BYTES)}")
            source = io.BytesIO(data)
    else:
        raise InvalidArgument(f"source must be a path, bytes or a file, got {type(source).__name__}")
    try:
        size = source.seek(0, os.SEEK_END)
        source.seek(0)
        return stack.enter_context(zipfile.ZipFile(source)), size
    except UnicodeDecodeError as exc:
        raw = printable(bytes(exc.object).decode("utf-8", "surrogateescape"))
        raise UnsafeArchive(
            f"Refused archive {label}: entry {raw} is marked UTF-8 but its name is not valid UTF-8"
        ) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OverflowError) as exc:
        raise DatasetError(f"The upload {label} is not a valid zip archive ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"The upload {label} cannot be read ({exc.strerror or exc})") from None


def _archive_label(source, name: str) -> str:
    if isinstance(source, str | os.PathLike):
        return printable(Path(source).name)
    upload_name = getattr(source, "name", None)  # a Streamlit UploadedFile keeps the browser's name
    return printable(upload_name if isinstance(upload_name, str) else f"{name}.zip")


def extract_zip(
    source: str | os.PathLike | bytes | BinaryIO,
    name: str,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    *,
    replace: bool = False,
    quota: int | None = None,
) -> Path:
    """Safely extract a zip of class folders to datasets_dir()/uploads/<name>.

    A zip whose single top-level folder holds the class folders is accepted too. Everything is
    checked before and while writing: names, links and special files, entry count, total size as
    declared and as written, per-entry and overall compression ratio, the uploads quota.

    Args:
        replace: replace a dataset already stored under `name` (only once the new one is
            complete). Default False: an existing dataset is never touched and DatasetExists is raised;
            of concurrent extracts under one new name exactly one succeeds.
        quota: bytes the whole uploads folder may hold; default UPLOADS_QUOTA_BYTES.

    Returns:
        The folder of class subfolders.

    Raises:
        InvalidArgument: a bad name. NotFound: a missing zip file.
        DatasetExists: `name` is taken and replace is False.
        UnsafeArchive: path escapes, bad names, links or special files, encryption, too many entries,
            too large, zip bombs, over quota.
        DatasetError: not a zip, corrupt entries, or no class folders inside.
    """
    name = check_dataset_name(name)
    final = uploads_dir() / name
    label = _archive_label(source, name)
    if not replace and (final.exists() or final.is_symlink()):  # fail before reading a byte
        raise DatasetExists(
            f"A dataset named {name!r} already exists ({final}); nothing was changed. Choose another "
            "name, or choose to replace it (replace=True)"
        )
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=uploads_dir()))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        budget = Budget(label, quota, replaced=final if replace else None)
        unpack_zip(source, tmp, label, budget, progress, cancel)
        root = find_class_root(tmp, f"The zip {label}")
        return install_dir(root, final, replace=replace, exists_ok=False)


def unpack_zip(
    source: str | os.PathLike | bytes | BinaryIO,
    dest_dir: Path,
    label: str,
    budget: Budget | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> None:
    """Unpack a zip into the existing folder `dest_dir` with every check `extract_zip` makes.

    The whole plan is checked before a byte is written (names, links, special files, encryption, entry
    count, declared sizes and ratios); bytes are counted against `budget` while streaming. Nothing is
    installed or cleaned up here: the caller owns `dest_dir` (extract_zip installs it as a dataset, a
    batch classification reads it once and removes it).

    Raises:
        UnsafeArchive, DatasetError: as extract_zip.  Cancelled: between entries.
    """
    budget = budget or Budget(label, None)
    with ExitStack() as stack:
        zf, size = _open_zip(source, label, stack)
        plan = _plan(zf, label, size, budget)
        root = dest_dir.resolve()
        for i, (info, parts) in enumerate(plan):
            check_cancel(cancel)
            dest = dest_dir.joinpath(*parts)
            if not dest.resolve().is_relative_to(root):
                raise UnsafeArchive(
                    f"Refused archive {label}: entry {printable(info.filename)} escapes the target"
                )
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                _copy_entry(zf, info, dest, label, budget)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                raise DatasetError(
                    f"{label}: {printable(info.filename)}: corrupt or unsupported zip entry ({exc})"
                ) from None
            except OSError as exc:  # a file where a folder should be, a full disk, ...
                raise DatasetError(
                    f"{label}: {printable(info.filename)}: cannot extract ({exc.strerror or exc})"
                ) from None
            if i % 50 == 0 or i == len(plan) - 1:
                emit(progress, "download", i + 1, len(plan), f"Unpacking {label}: {i + 1}/{len(plan)} files")


def _tar_member_problem(member: tarfile.TarInfo) -> str | None:
    if member.issym() or member.islnk():
        return "is a link"
    if not (member.isreg() or member.isdir()):
        return "is not a regular file (a FIFO or a device)"
    return None


def extract_tar(archive: Path, dest_dir: Path, cancel: CancelFn | None = None) -> Path:
    """Extract a (downloaded but still checked) tarball into a new temporary folder in `dest_dir`.

    Links, FIFOs and devices, bad names, too many entries, too many bytes in all or per byte of
    archive are refused; Python's "data" filter refuses absolute paths and '..' as a second line.

    Returns:
        The temporary folder; the caller moves what it needs with `install_dir` and deletes it.
    """
    label = printable(archive.name)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-tar-", dir=dest_dir))
    try:
        size = archive.stat().st_size
        with tarfile.open(archive) as tar:
            members, total = [], 0
            for member in tar:
                check_cancel(cancel)
                _entry_parts(member.name, label)
                if problem := _tar_member_problem(member):
                    raise UnsafeArchive(f"Refused archive {label}: entry {printable(member.name)} {problem}")
                members.append(member)
                total += max(member.size, 0)
                if len(members) > MAX_ENTRIES or total > MAX_TOTAL_BYTES:
                    raise UnsafeArchive(
                        f"Refused archive {label}: more than {MAX_ENTRIES:,} entries or "
                        f"{_gib(MAX_TOTAL_BYTES)} (the limits for one archive)"
                    )
            if total > _ARCHIVE_RATIO_FLOOR and total > MAX_RATIO * max(size, 1):
                raise UnsafeArchive(
                    f"Refused archive {label}: {size:,} bytes expand to {total:,} (more than {MAX_RATIO}:1)"
                )
            tar.extractall(tmp, members=members, filter="data")
    except tarfile.FilterError as exc:  # absolute paths, '..', links leaving the folder, devices
        shutil.rmtree(tmp, ignore_errors=True)
        raise UnsafeArchive(f"Refused archive {label}: {exc}") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetError(f"{label}: cannot extract ({exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp

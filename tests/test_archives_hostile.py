"""Hostile zips and tarballs (all generated here): each is refused with a one-line LabError naming the
archive or entry and the reason, or used correctly; nothing already stored is lost, nothing is left over."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import struct
import sys
import tarfile
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import config
from engine.data import archives, sources
from engine.data.archives import DatasetExists, extract_tar, extract_zip
from engine.errors import DatasetError, LabError, NetworkUnavailable, UnsafeArchive


def jpeg_bytes(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make_zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def classes(n: int = 2, tag: str = "") -> dict[str, bytes]:
    return {f"{c}/{c}{tag}_{i}.jpg": jpeg_bytes(i) for c in ("cats", "dogs") for i in range(n)}


def with_info(info: zipfile.ZipInfo, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in classes().items():
            zf.writestr(name, content)
        zf.writestr(info, data)
    return buf.getvalue()


def special(kind: int) -> bytes:
    info = zipfile.ZipInfo("cats/special.jpg")
    info.create_system = 3
    info.external_attr = (kind | 0o644) << 16
    return with_info(info, b"/etc/passwd" if kind == stat.S_IFLNK else b"")


def raw_name_zip(raw: bytes, utf8_flag: bool) -> bytes:
    """A zip with one extra entry whose name bytes are `raw` (zipfile itself only writes valid names)."""
    placeholder = b"Q" * len(raw)
    data = bytearray(with_info(zipfile.ZipInfo(placeholder.decode() + ".jpg"), jpeg_bytes()))
    data = data.replace(placeholder + b".jpg", raw + b".jpg")
    if utf8_flag:
        for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            pos = data.rfind(sig)
            flags = struct.unpack_from("<H", data, pos + offset)[0] | 0x800
            struct.pack_into("<H", data, pos + offset, flags)
    return bytes(data)


def zeros_zip(entries: int, size: int) -> bytes:
    """Many entries of zeros, each under the per-entry ratio floor: the issue's 2.86 MB -> 2.14 GB zip.

    Written by hand (one deflate stream reused for every entry), so 2,040 entries take milliseconds.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = packer.compress(b"\0" * size) + packer.flush()
    crc = zlib.crc32(b"\0" * size)
    out, central = io.BytesIO(), io.BytesIO()
    for i in range(entries):
        name = f"cats/zeros_{i:05d}.jpg".encode()
        offset = out.tell()
        fields = (20, 0, 8, 0, 0x21, crc, len(deflated), size, len(name))
        out.write(struct.pack("<4s5HIIIHH", b"PK\x03\x04", *fields, 0) + name + deflated)
        central.write(
            struct.pack("<4s6HIIIHHHHHII", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, 0, offset) + name
        )
    start = out.tell()
    out.write(central.getvalue())
    out.write(
        struct.pack("<4s4HIIH", b"PK\x05\x06", 0, 0, entries, entries, len(central.getvalue()), start, 0)
    )
    return out.getvalue()


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers() -> list[str]:
    return [p.name for p in archives.uploads_dir().iterdir() if p.name.startswith(".")]


@pytest.fixture
def kept() -> tuple[Path, dict[str, str]]:
    """A dataset already stored under 'keep', and its files' hashes."""
    folder = extract_zip(make_zip(classes(3, "_kept")), "keep")
    return folder, snapshot(folder)


def assert_one_line(exc: LabError, *needles: str) -> None:
    text = str(exc)
    assert "\n" not in text and "\r" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)


def duplicate_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning):
        zf.writestr("cats/a.jpg", jpeg_bytes())
        zf.writestr("dogs/b.jpg", jpeg_bytes())
        zf.writestr("cats/a.jpg", b"evil")
    return buf.getvalue()


# (id, zip bytes maker, error type, words the message must hold); the archive's label is checked too
HOSTILE_ZIPS = [
    (
        "newline-in-class",
        lambda: make_zip({"ca\nts/a.jpg": jpeg_bytes(), **classes()}),
        UnsafeArchive,
        "U+000A",
    ),
    ("tab-in-class", lambda: make_zip({"ca\tts/a.jpg": jpeg_bytes(), **classes()}), UnsafeArchive, "U+0009"),
    ("cr-in-file", lambda: make_zip({"cats/a\r.jpg": jpeg_bytes(), **classes()}), UnsafeArchive, "U+000D"),
    ("del-in-name", lambda: make_zip({"cats/a\x7f.jpg": jpeg_bytes(), **classes()}), UnsafeArchive, "U+007F"),
    (
        "esc-in-class",
        lambda: make_zip({"\x1b[31mcats/a.jpg": jpeg_bytes(), **classes()}),
        UnsafeArchive,
        "U+001B",
    ),
    (
        "c1-next-line",
        lambda: make_zip({"ca\x85ts/a.jpg": jpeg_bytes(), **classes()}),
        UnsafeArchive,
        "U+0085",
    ),
    (
        "line-separator",
        lambda: make_zip({"ca\u2028ts/a.jpg": jpeg_bytes(), **classes()}),
        UnsafeArchive,
        "U+2028",
    ),
    (
        "name-over-255-bytes",
        lambda: make_zip({"cats/" + "é" * 130 + ".jpg": b"x", **classes()}),
        UnsafeArchive,
        "longer than 255 bytes",
    ),
    (
        "path-over-1024-bytes",
        lambda: make_zip({"cats/" + "d/" * 520 + "a.jpg": b"x", **classes()}),
        UnsafeArchive,
        "longer than 1024 bytes",
    ),
    ("dotdot", lambda: make_zip({"cats/../../x.jpg": b"x", **classes()}), UnsafeArchive, "escapes"),
    ("absolute", lambda: make_zip({"/etc/x.jpg": b"x", **classes()}), UnsafeArchive, "absolute path"),
    (
        "utf8-flag-invalid-bytes",
        lambda: raw_name_zip(b"cats/\xff\xfe", utf8_flag=True),
        UnsafeArchive,
        "not valid UTF-8",
    ),
    ("symlink", lambda: special(stat.S_IFLNK), UnsafeArchive, "symbolic link"),
    ("fifo", lambda: special(stat.S_IFIFO), UnsafeArchive, "FIFO"),
    ("char-device", lambda: special(stat.S_IFCHR), UnsafeArchive, "character device"),
    ("block-device", lambda: special(stat.S_IFBLK), UnsafeArchive, "block device"),
    ("socket", lambda: special(stat.S_IFSOCK), UnsafeArchive, "socket"),
    (
        "single-entry-bomb",
        lambda: make_zip({"cats/z.jpg": b"\0" * (4 * 1024**2), **classes()}),
        UnsafeArchive,
        "zip bomb",
    ),
    ("many-small-zeros", lambda: zeros_zip(40, 512 * 1024), UnsafeArchive, "overall"),
    ("duplicate-entry", duplicate_zip, UnsafeArchive, "appears twice"),
    ("not-a-zip", lambda: b"PK\x03\x04" + os.urandom(200), DatasetError, "not a valid zip"),
    ("truncated-zip", lambda: make_zip(classes())[:-30], DatasetError, "not a valid zip"),
    ("empty-bytes", lambda: b"", DatasetError, "not a valid zip"),
]


@pytest.mark.parametrize("replace", [False, True], ids=["new-name", "over-existing"])
@pytest.mark.parametrize("case", HOSTILE_ZIPS, ids=[c[0] for c in HOSTILE_ZIPS])
def test_hostile_zip_is_refused_and_nothing_is_lost(kept, case, replace):
    _, make, error, needle = case
    folder, before = kept
    name = "keep" if replace else "fresh"
    with pytest.raises(error) as info:
        extract_zip(make(), name, replace=replace)
    assert_one_line(info.value, needle)
    if error is UnsafeArchive:
        assert f"{name}.zip" in str(info.value)  # the archive is named
    assert snapshot(folder) == before
    assert not (archives.uploads_dir() / "fresh").exists() and leftovers() == []


def test_the_issue_amplifier_is_refused_before_writing_a_byte(kept):
    data = zeros_zip(2040, 1024**2)  # 2,040 entries of 1 MiB of zeros: ~2 GiB from a few MB
    assert len(data) < 3 * 1024**2
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # a valid zip whose entries really hold 1 MiB of zeros
        assert zf.read("cats/zeros_02039.jpg") == b"\0" * 1024**2
        assert sum(i.file_size for i in zf.infolist()) == 2040 * 1024**2
    folder, before = kept
    used = archives.folder_bytes(archives.uploads_dir())
    t = time.perf_counter()
    with pytest.raises(UnsafeArchive) as info:
        extract_zip(io.BytesIO(data), "amplifier")
    assert time.perf_counter() - t < 10
    assert_one_line(info.value, "amplifier.zip", "zip bomb", "overall")
    assert archives.folder_bytes(archives.uploads_dir()) == used and snapshot(folder) == before


def test_archive_caps_name_the_limit(monkeypatch, kept):
    folder, before = kept
    monkeypatch.setattr(archives, "MAX_TOTAL_BYTES", 1000)
    with pytest.raises(UnsafeArchive) as info:
        extract_zip(make_zip(classes()), "big")
    assert_one_line(info.value, "big.zip", "the limit for one archive")
    monkeypatch.setattr(archives, "MAX_TOTAL_BYTES", 2 * 1024**3)
    monkeypatch.setattr(archives, "MAX_ENTRIES", 3)
    with pytest.raises(UnsafeArchive) as info:
        extract_zip(make_zip(classes()), "many")
    assert_one_line(info.value, "many.zip", "more than the limit of 3")
    assert snapshot(folder) == before and leftovers() == []


def test_uploads_quota_counts_what_is_stored(kept):
    folder, before = kept
    used = archives.folder_bytes(archives.uploads_dir())
    data = make_zip(classes(3, "_new"))
    new_bytes = sum(len(v) for v in classes(3, "_new").values())
    with pytest.raises(UnsafeArchive) as info:
        extract_zip(data, "over", quota=used + new_bytes - 1)
    assert_one_line(info.value, "over.zip", "quota")
    assert extract_zip(data, "fits", quota=used + new_bytes).is_dir()
    # replacing frees what the old version holds, so the same data fits again under the same quota
    assert extract_zip(data, "fits", quota=used + new_bytes, replace=True).is_dir()
    assert snapshot(folder) == before and leftovers() == []


def test_written_bytes_are_counted_while_streaming(kept):
    budget = archives.Budget("lying.zip", quota=10**9)
    budget.spend(500)
    budget.quota = budget.used + 800
    with pytest.raises(UnsafeArchive) as info:
        budget.spend(500)
    assert_one_line(info.value, "lying.zip", "quota")


def test_lying_header_cannot_write_more_than_declared(kept):
    folder, before = kept
    payload = jpeg_bytes(7) * 50
    data = bytearray(make_zip({"cats/big.jpg": payload, **classes()}, method=zipfile.ZIP_STORED))
    # shrink the declared uncompressed size of cats/big.jpg in its local and central headers
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = data.find(sig)
        assert struct.unpack_from("<I", data, pos + offset)[0] == len(payload)
        struct.pack_into("<I", data, pos + offset, 100)
    with pytest.raises(LabError) as info:
        extract_zip(bytes(data), "lying")
    assert_one_line(info.value, "cats/big.jpg")
    assert snapshot(folder) == before and not (archives.uploads_dir() / "lying").exists()


def test_existing_dataset_is_kept_unless_replace_is_chosen(kept):
    folder, before = kept
    with pytest.raises(DatasetExists) as info:
        extract_zip(make_zip(classes(1, "_other")), "keep")
    assert_one_line(info.value, "'keep' already exists", "replace=True")
    assert snapshot(folder) == before
    assert extract_zip(make_zip(classes(1, "_other")), "keep", replace=True) == folder
    assert sorted(snapshot(folder)) == ["cats/cats_other_0.jpg", "dogs/dogs_other_0.jpg"]
    assert leftovers() == []


def test_concurrent_extracts_under_one_new_name_exactly_one_wins():
    zips = [make_zip(classes(2, f"_t{i}")) for i in range(6)]
    outcomes: list = [None] * len(zips)
    start = threading.Barrier(len(zips))

    def run(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = extract_zip(zips[i], "race")
        except LabError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(zips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [i for i, o in enumerate(outcomes) if isinstance(o, Path)]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, DatasetExists) for i, o in enumerate(outcomes) if i != winners[0])
    folder = archives.uploads_dir() / "race"
    tag = f"_t{winners[0]}"
    assert sorted(snapshot(folder)) == sorted(classes(2, tag))  # the winner's files, complete
    assert leftovers() == []


def test_concurrent_replaces_leave_one_complete_dataset(kept):
    folder, _ = kept
    zips = [make_zip(classes(2, f"_r{i}")) for i in range(4)]
    errors: list = []

    def run(data: bytes) -> None:
        try:
            extract_zip(data, "keep", replace=True)
        except Exception as exc:  # noqa: BLE001 - any failure is a test failure
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(z,)) for z in zips]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    names = sorted(snapshot(folder))
    assert any(names == sorted(classes(2, f"_r{i}")) for i in range(4)), names
    assert leftovers() == []


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory", "char-device", "missing"])
def test_zip_path_that_is_not_a_regular_file_is_refused_without_hanging(tmp_path, kind):
    path = tmp_path / "upload.zip"
    real = tmp_path / "real.zip"
    real.write_bytes(make_zip(classes()))
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.symlink_to(real)
    elif kind == "directory":
        path.mkdir()
    elif kind == "char-device":
        path = Path("/dev/null")
    t = time.perf_counter()
    with pytest.raises(LabError) as info:
        extract_zip(path, "pathy")
    assert time.perf_counter() - t < 5
    assert_one_line(
        info.value, str(path), "does not exist" if kind == "missing" else "not a regular zip file"
    )
    assert not (archives.uploads_dir() / "pathy").exists()


def test_non_seekable_stream_and_named_upload():
    class Stream(io.RawIOBase):
        def __init__(self, data: bytes):
            self._buf, self.name = io.BytesIO(data), "phone photos.zip"

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, b) -> int:
            chunk = self._buf.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    folder = extract_zip(Stream(make_zip(classes())), "phone")
    assert sorted(p.name for p in folder.iterdir()) == ["cats", "dogs"]
    with pytest.raises(UnsafeArchive, match="'phone photos.zip'"):
        extract_zip(Stream(special(stat.S_IFLNK)), "phone2")


def test_cp437_names_and_dot_parts_are_used_correctly():
    data = raw_name_zip(b"cats/caf\x82", utf8_flag=False)  # legacy zip tools: cp437, any byte decodes
    folder = extract_zip(data, "legacy")
    assert (folder / "cats" / "café.jpg").is_file()
    folder = extract_zip(make_zip({"./cats/./a.jpg": jpeg_bytes(), "dogs//b.jpg": jpeg_bytes()}), "dots")
    assert sorted(snapshot(folder)) == ["cats/a.jpg", "dogs/b.jpg"]


# --- tarballs (downloads) ------------------------------------------------------------------------


def make_tgz(path: Path, extra: tarfile.TarInfo | None = None, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for label in ("daisy", "roses"):
            blob = jpeg_bytes()
            info = tarfile.TarInfo(f"flower_photos/{label}/{label}0.jpg")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        if extra is not None:
            tar.addfile(extra, io.BytesIO(data) if extra.isreg() else None)
    return path


def tar_info(name: str, kind: bytes, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


HOSTILE_TARS = [
    (
        "internal-symlink",
        tar_info("flower_photos/daisy/x.jpg", tarfile.SYMTYPE, linkname="daisy0.jpg"),
        "link",
    ),
    (
        "hardlink",
        tar_info("flower_photos/daisy/h.jpg", tarfile.LNKTYPE, linkname="flower_photos/daisy/daisy0.jpg"),
        "link",
    ),
    ("fifo", tar_info("flower_photos/daisy/p.jpg", tarfile.FIFOTYPE), "not a regular file"),
    (
        "char-device",
        tar_info("flower_photos/daisy/c.jpg", tarfile.CHRTYPE, devmajor=1, devminor=3),
        "not a regular file",
    ),
    (
        "block-device",
        tar_info("flower_photos/daisy/b.jpg", tarfile.BLKTYPE, devmajor=7, devminor=0),
        "not a regular file",
    ),
    ("newline-name", tar_info("flower_photos/dai\nsy/n.jpg", tarfile.REGTYPE), "U+000A"),
    ("escape", tar_info("flower_photos/../../evil.jpg", tarfile.REGTYPE), "escapes"),
]


@pytest.mark.parametrize("case", HOSTILE_TARS, ids=[c[0] for c in HOSTILE_TARS])
def test_hostile_tar_members_are_refused(tmp_path, case):
    _, info, needle = case
    folder = tmp_path / "dl" / "inner"
    folder.mkdir(parents=True)
    archive = make_tgz(folder / "flower_photos.tgz", info)
    with pytest.raises(UnsafeArchive) as exc:
        extract_tar(archive, folder)
    assert_one_line(exc.value, "flower_photos.tgz", needle)
    assert [p.name for p in folder.iterdir()] == ["flower_photos.tgz"]  # no temp folder left
    assert [p.name for p in folder.parent.iterdir()] == ["inner"]  # nothing escaped


def test_tar_bomb_is_refused_by_ratio(tmp_path):
    size = 20 * 1024**2
    archive = make_tgz(
        tmp_path / "flower_photos.tgz",
        tar_info("flower_photos/daisy/z.jpg", tarfile.REGTYPE, size=size),
        b"\0" * size,
    )
    with pytest.raises(UnsafeArchive) as exc:
        extract_tar(archive, tmp_path)
    assert_one_line(exc.value, "flower_photos.tgz", f"more than {archives.MAX_RATIO}:1")


def test_cached_hostile_flowers_archive_never_becomes_a_dataset(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "network_available", lambda *a, **k: pytest.fail("no network needed"))
    downloads = config.datasets_dir() / "downloads"
    downloads.mkdir(parents=True)
    make_tgz(downloads / "flower_photos.tgz", tar_info("flower_photos/daisy/p.jpg", tarfile.FIFOTYPE))
    with pytest.raises(UnsafeArchive, match="flower_photos.tgz"):
        sources.download_flowers()
    assert not (config.datasets_dir() / "flower_photos").exists()


# --- downloads offline ---------------------------------------------------------------------------


def test_beans_half_prepared_still_probes_and_fails_fast(monkeypatch):
    calls = []
    monkeypatch.setattr(sources, "network_available", lambda host: calls.append(host) or False)
    (config.datasets_dir() / "tfds" / "beans" / "0.1.0.incompleteABC").mkdir(parents=True)
    t = time.perf_counter()
    with pytest.raises(NetworkUnavailable) as info:
        sources.download_beans()
    assert time.perf_counter() - t < 2 and calls == [sources.BEANS_HOST]
    assert_one_line(info.value, "beans", "unreachable")


def test_flowers_offline_uses_the_shared_probe(monkeypatch):
    calls = []
    monkeypatch.setattr(sources, "network_available", lambda host: calls.append(host) or False)
    with pytest.raises(NetworkUnavailable) as info:
        sources.download_flowers()
    assert calls == [sources.FLOWERS_HOST]
    assert_one_line(info.value, "flower_photos", "unreachable", "flower_photos.tgz")


def test_downloads_call_the_shared_bounded_probe():
    from engine.models import backbones

    # the one probe weights downloads use too (bounded DNS included): called, not copied
    assert sources.network_available is backbones.network_available


def test_beans_without_tensorflow_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sources, "network_available", lambda host: True)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails as if not installed
    with pytest.raises(DatasetError) as info:
        sources.download_beans()
    assert_one_line(info.value, "tensorflow-datasets")


def test_unix_socket_path_is_refused(tmp_path):
    path = tmp_path / "s.zip"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(path))
        with pytest.raises(UnsafeArchive) as info:
            extract_zip(path, "sock")
        assert_one_line(info.value, "socket")
    finally:
        sock.close()


def _extract_in_child(data: bytes, queue) -> None:
    try:
        extract_zip(data, "procs")
        queue.put("ok")
    except LabError as exc:
        queue.put(type(exc).__name__)


def test_concurrent_extracts_in_separate_processes_exactly_one_wins():
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # children inherit this test's LAB_HOME
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_extract_in_child, args=(make_zip(classes(2, f"_p{i}")), queue)) for i in range(4)
    ]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(10)
    assert results == ["DatasetExists"] * 3 + ["ok"], results
    assert leftovers() == []

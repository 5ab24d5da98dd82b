"""engine.data.datasets: stable splits, folder scans, safe zip uploads, downloads offline, the demo set."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import stat
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import config
from engine.data import archives, datasets, sources
from engine.data.datasets import (
    assign_split,
    extract_zip,
    make_demo_dataset,
    resolve_source,
    scan_image_dir,
)
from engine.data.images import load_image
from engine.errors import (
    Cancelled,
    DatasetError,
    InvalidArgument,
    NetworkUnavailable,
    NotFound,
    UnsafeArchive,
)
from engine.models.backbones import network_available


def jpeg_bytes(colour=(200, 30, 30), size=(24, 24), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 10, (*size[::-1], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def make_folder(root: Path, classes: dict[str, int]) -> Path:
    """A folder of class subfolders holding n small JPEGs each."""
    for c, (label, n) in enumerate(classes.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / label / f"{label}_{i:03d}.jpg").write_bytes(jpeg_bytes((40 * c, 90, 200), seed=i))
    return root


def retrain_reference(file_name: str, validation: float, testing: float) -> str:
    """retrain.py's create_image_lists, transcribed independently (on the base name)."""
    max_num = 2**27 - 1
    hash_name = re.sub(r"_nohash_.*$", "", file_name)
    digest = hashlib.sha1(hash_name.encode()).hexdigest()
    percentage = (int(digest, 16) % (max_num + 1)) * (100.0 / max_num)
    if percentage < validation:
        return "validation"
    if percentage < testing + validation:
        return "test"
    return "train"


# --- the split --------------------------------------------------------------------------------


def test_split_matches_retrain_py_formula():
    names = [f"img_{i}.jpg" for i in range(2000)] + ["ünïcode_🌷.png", "a b c.JPEG"]
    for v, t in ((10, 10), (20, 5), (0, 30), (12.5, 7.5)):
        assert all(assign_split(n, v, t) == retrain_reference(n, v, t) for n in names)


def test_split_ignores_folder_and_nohash_suffix():
    name = "100080576_f52e8ee070_n.jpg"
    expected = assign_split(name)
    for path in (f"/home/a/daisy/{name}", f"C:\\data\\flowers\\{name}", f"other/{name}", Path("x") / name):
        assert assign_split(path) == expected
    groups = {assign_split(f"speaker{i}_nohash_{k}.wav") for i in range(50) for k in range(3)}
    assert groups <= set(datasets.SPLITS)
    for i in range(50):  # every recording of one speaker lands in one split
        assert len({assign_split(f"speaker{i}_nohash_{k}.jpg") for k in range(5)}) == 1


def test_split_proportions_default_and_custom():
    names = [f"photo_{i:05d}.jpg" for i in range(20_000)]
    for v, t in ((10, 10), (20, 10)):
        splits = [assign_split(n, v, t) for n in names]
        share = {s: splits.count(s) / len(names) * 100 for s in datasets.SPLITS}
        assert abs(share["validation"] - v) < 1.0 and abs(share["test"] - t) < 1.0
    assert {assign_split(n, 0, 0) for n in names[:500]} == {"train"}


@pytest.mark.parametrize(
    "v,t,echo",
    [
        (-1, 10, "validation_percentage=-1"),
        (10, 100, "testing_percentage=100"),
        (60, 50, "validation_percentage=60, testing_percentage=50"),
        ("10", 10, "validation_percentage='10'"),
        (True, 10, "validation_percentage=True"),
        (10, None, "testing_percentage=None"),
        (float("nan"), 10, "validation_percentage=nan"),
    ],
)
def test_bad_percentages_echo_the_value(tmp_path, v, t, echo):
    with pytest.raises(InvalidArgument, match=re.escape(echo)):
        assign_split("a.jpg", v, t)
    with pytest.raises(InvalidArgument, match=re.escape(echo)):
        scan_image_dir(tmp_path, v, t)  # validated before the folder is even looked at


# --- scanning ---------------------------------------------------------------------------------


def test_scan_counts_splits_and_summary(tmp_path):
    root = make_folder(tmp_path / "pets", {"dogs": 30, "cats": 25})
    ds = scan_image_dir(root)
    assert ds.name == "pets" and Path(ds.root).is_absolute()
    assert ds.classes == ["cats", "dogs"] and ds.label_index == {"cats": 0, "dogs": 1}
    counts = ds.counts()
    assert sum(counts["dogs"].values()) == 30 and sum(counts["cats"].values()) == 25
    for split in datasets.SPLITS:
        assert len(ds.split(split)) == sum(c[split] for c in counts.values())
        assert all(r.split == split for r in ds.split(split))
    for r in ds.records:
        assert r.split == assign_split(Path(r.path).name) and r.label == Path(r.path).parent.name
        assert r.needs_pil is False
    summary = json.loads(json.dumps(ds.summary()))
    assert summary["num_images"] == 55 and summary["num_classes"] == 2
    assert summary["splits"] == {s: len(ds.split(s)) for s in datasets.SPLITS}
    assert summary["skipped"] == [] and ds.warnings == []
    with pytest.raises(InvalidArgument, match="split='training'"):
        ds.split("training")
    assert scan_image_dir(root, name="Pets v1").name == "Pets v1"


def test_scan_split_is_stable_across_folders(tmp_path):
    a = make_folder(tmp_path / "a", {"x": 25, "y": 25})
    b = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(a, b)
    (b / "y" / "y_000.jpg").rename(b / "x" / "y_000.jpg")  # even moved to another class
    first = {Path(r.path).name: r.split for r in scan_image_dir(a).records}
    second = {Path(r.path).name: r.split for r in scan_image_dir(b).records}
    assert first == second


def test_scan_skips_bad_files_with_reasons(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 20, "b": 20})
    (root / "a" / "notes.txt").write_text("hello")
    (root / "a" / "noext").write_bytes(b"x")
    (root / "a" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "a" / "._a_000.jpg").write_bytes(b"resource fork")
    (root / "b" / "text.jpg").write_text("I am not a JPEG")
    (root / "b" / "empty.png").write_bytes(b"")
    good = jpeg_bytes()
    (root / "b" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (root / ".git").mkdir()
    (root / ".git" / "HEAD.jpg").write_bytes(good)
    (root / "LICENSE.txt").write_text("CC-BY")
    (root / "loose.jpg").write_bytes(good)
    ds = scan_image_dir(root)
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert reasons["notes.txt"] == "not an image file (extension '.txt')"
    assert reasons["noext"] == "not an image file (extension 'none')"
    assert reasons[".DS_Store"] == reasons["._a_000.jpg"] == "hidden file"
    assert reasons["text.jpg"].startswith("not an image")
    assert reasons["empty.png"] == "empty file"
    assert re.match("truncated or corrupt|unreadable image header", reasons["cut.jpg"])
    assert reasons["loose.jpg"] == "image outside any class folder"
    assert "HEAD.jpg" not in reasons and "LICENSE.txt" not in reasons
    assert len(ds.records) == 40 and ds.classes == ["a", "b"]
    assert any("Skipped 8 files" in w for w in ds.warnings)
    assert len(ds.summary()["skipped"]) == 8


def test_scan_reads_nested_folders_and_odd_modes(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 20, "b": 20})
    (root / "a" / "2024").mkdir()
    Image.new("RGBA", (8, 8), (1, 2, 3, 0)).save(root / "a" / "2024" / "alpha.png")
    Image.new("CMYK", (8, 8)).save(root / "b" / "cmyk.jpg")
    ds = scan_image_dir(root)
    by_name = {Path(r.path).name: r for r in ds.records}
    assert by_name["alpha.png"].label == "a" and by_name["alpha.png"].needs_pil
    assert by_name["cmyk.jpg"].needs_pil and by_name["a_000.jpg"].needs_pil is False


def test_scan_warns_small_and_imbalanced(tmp_path):
    ds = scan_image_dir(make_folder(tmp_path / "d", {"big": 60, "small": 5}))
    text = "\n".join(ds.warnings)
    assert "Class 'small' has only 5 images (fewer than 20)" in text
    assert "Class 'big'" not in text
    assert "strongly imbalanced: 'big' has 60 images, 'small' only 5" in text


def test_scan_drops_empty_classes_with_warning(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 20, "b": 20})
    (root / "empty").mkdir()
    (root / "broken").mkdir()
    (root / "broken" / "x.jpg").write_text("nope")
    ds = scan_image_dir(root)
    assert ds.classes == ["a", "b"] and set(ds.counts()) == {"a", "b"}
    assert "Dropped class folders without usable images: broken, empty" in ds.warnings


def test_scan_refuses_unusable_datasets(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        scan_image_dir(tmp_path / "missing")
    (tmp_path / "file.jpg").write_bytes(jpeg_bytes())
    with pytest.raises(DatasetError, match="is not a folder"):
        scan_image_dir(tmp_path / "file.jpg")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(jpeg_bytes())
    with pytest.raises(DatasetError, match="has no class subfolders"):
        scan_image_dir(flat)
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    (empty / "dogs").mkdir()
    (empty / "dogs" / "bad.jpg").write_text("x")
    with pytest.raises(DatasetError, match=r"No usable images .*\(cats, dogs\)"):
        scan_image_dir(empty)
    one = make_folder(tmp_path / "one", {"cats": 25})
    (one / "dogs").mkdir()
    with pytest.raises(DatasetError, match=r"at least 2 classes .* found 1 \(cats\).*without images: dogs"):
        scan_image_dir(one)


def test_scan_progress_and_cancel(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 120, "b": 100})
    events = []
    scan_image_dir(root, progress=events.append)
    assert {e["phase"] for e in events} == {"scan"}
    assert events[-1]["done"] == events[-1]["total"] == 220
    with pytest.raises(Cancelled):
        scan_image_dir(root, cancel=lambda: True)


def test_scan_real_flowers(flowers_dir):
    t = time.perf_counter()
    ds = scan_image_dir(flowers_dir)
    elapsed = time.perf_counter() - t
    assert elapsed < 1.0, f"scanning 200 photos took {elapsed:.2f}s"
    assert ds.classes == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert all(sum(c.values()) == 40 for c in ds.counts().values())
    # pinned: the split depends only on file names, so it is the same on every machine
    assert ds.summary()["splits"] == {"train": 161, "validation": 20, "test": 19}
    assert ds.skipped == [] and ds.warnings == []
    assert not any(r.needs_pil for r in ds.records)


# --- zip uploads ------------------------------------------------------------------------------


def make_zip(entries: dict[str, bytes], prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(prefix + name, data)
    return buf.getvalue()


def class_entries(n=3) -> dict[str, bytes]:
    return {f"{label}/{label}_{i}.jpg": jpeg_bytes(seed=i) for label in ("cats", "dogs") for i in range(n)}


def leftovers() -> list[str]:
    """Hidden temporary or swapped-out folders left behind in the uploads folder."""
    return [p.name for p in archives.uploads_dir().iterdir() if p.name.startswith(".")]


def test_zip_from_bytes_path_and_file(tmp_path):
    data = make_zip(class_entries())
    folder = extract_zip(data, "pets")
    assert folder == config.datasets_dir() / "uploads" / "pets"
    assert sorted(p.name for p in folder.iterdir()) == ["cats", "dogs"]
    assert scan_image_dir(folder).classes == ["cats", "dogs"]
    (tmp_path / "p.zip").write_bytes(data)
    assert extract_zip(tmp_path / "p.zip", "pets2.zip").name == "pets2"
    assert extract_zip(str(tmp_path / "p.zip"), "pets3").is_dir()
    assert extract_zip(io.BytesIO(data), "pets 4").name == "pets 4"
    assert leftovers() == []


def test_zip_with_single_top_folder_and_mac_junk():
    entries = class_entries()
    entries["__MACOSX/cats/._cats_0.jpg"] = b"fork"
    entries[".DS_Store"] = b"junk"
    entries["cats/.DS_Store"] = b"junk"
    folder = extract_zip(make_zip(entries, prefix="my_photos/"), "wrapped")
    assert sorted(p.name for p in folder.iterdir()) == ["cats", "dogs"]
    assert not list(folder.rglob(".DS_Store")) and not (folder / "__MACOSX").exists()


@pytest.mark.parametrize(
    "entries,match",
    [
        ({}, "is empty"),
        ({"readme.txt": b"hi", "docs/a.txt": b"x"}, "no class folders of images"),
        ({"a.jpg": jpeg_bytes(), "b.jpg": jpeg_bytes()}, "holds images but no class folders"),
    ],
)
def test_zip_without_class_folders(entries, match):
    with pytest.raises(DatasetError, match=match):
        extract_zip(make_zip(entries), "nothing")
    assert not (archives.uploads_dir() / "nothing").exists() and leftovers() == []


@pytest.mark.parametrize(
    "name,match",
    [
        ("../evil.jpg", "escapes the target"),
        ("cats/../../evil.jpg", "escapes the target"),
        ("..\\evil.jpg", "escapes the target"),
        ("/tmp/evil.jpg", "absolute path"),
        ("C:/Windows/evil.jpg", "absolute path"),
        ("c:evil.jpg", "absolute path"),
    ],
)
def test_zip_path_escapes_are_refused(tmp_path, name, match):
    entries = class_entries()
    entries[name] = b"evil"
    with pytest.raises(UnsafeArchive, match=match):
        extract_zip(make_zip(entries), "hostile")
    assert not (archives.uploads_dir() / "hostile").exists() and leftovers() == []
    assert not list(config.lab_home().rglob("evil.jpg")) and not Path("/tmp/evil.jpg").exists()


def zip_with_info(info: zipfile.ZipInfo, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in class_entries().items():
            zf.writestr(name, content)
        zf.writestr(info, data)
    return buf.getvalue()


def test_zip_symlink_and_special_entries_are_refused():
    link = zipfile.ZipInfo("cats/passwd.jpg")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(UnsafeArchive, match="symbolic link"):
        extract_zip(zip_with_info(link, b"/etc/passwd"), "links")
    fifo = zipfile.ZipInfo("cats/pipe.jpg")
    fifo.create_system = 3
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    with pytest.raises(UnsafeArchive, match="not a regular file"):
        extract_zip(zip_with_info(fifo, b""), "links")
    assert leftovers() == []


def test_zip_encrypted_entries_are_refused():
    secret = zipfile.ZipInfo("cats/secret.jpg")
    secret.flag_bits |= 0x1
    data = bytearray(zip_with_info(secret, b"x" * 20))
    # zipfile clears the flag on write; set it in the local and central headers as an encryptor would
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = data.rfind(sig)
        data[pos + offset] |= 0x1
    with pytest.raises(UnsafeArchive, match="encrypted"):
        extract_zip(bytes(data), "secret")


def test_zip_bombs_and_limits(monkeypatch):
    bomb = class_entries()
    bomb["cats/zeros.jpg"] = b"\x00" * (8 * 1024**2)  # 8 MiB -> about 8 KiB
    with pytest.raises(UnsafeArchive, match="zip bomb"):
        extract_zip(make_zip(bomb), "bomb")
    monkeypatch.setattr(archives, "MAX_ENTRIES", 4)
    with pytest.raises(UnsafeArchive, match="6 entries is more than the limit of 4"):
        extract_zip(make_zip(class_entries()), "many")
    monkeypatch.setattr(archives, "MAX_ENTRIES", 100)
    monkeypatch.setattr(archives, "MAX_TOTAL_BYTES", 2000)
    with pytest.raises(UnsafeArchive, match="expands to more than"):
        extract_zip(make_zip(class_entries()), "big")
    assert leftovers() == [] and not list(archives.uploads_dir().iterdir())


def test_zip_duplicates_bad_zips_and_bad_names(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("cats/a.jpg", jpeg_bytes())
        zf.writestr("dogs/a.jpg", jpeg_bytes())
        zf.writestr("cats/a.jpg", b"overwrite")
    with pytest.raises(UnsafeArchive, match="appears twice"):
        extract_zip(buf.getvalue(), "dups")
    clash = class_entries()
    clash["cats/cats_0.jpg/inner.jpg"] = jpeg_bytes()  # a file where a folder must go
    with pytest.raises(DatasetError, match="cannot extract"):
        extract_zip(make_zip(clash), "clash")
    with pytest.raises(DatasetError, match="not a valid zip"):
        extract_zip(b"PK but not really a zip", "junk")
    with pytest.raises(NotFound, match="does not exist"):
        extract_zip(tmp_path / "missing.zip", "missing")
    for bad in ("", "../up", "a/b", ".hidden", "x" * 81, None):
        with pytest.raises(InvalidArgument, match="name="):
            extract_zip(make_zip(class_entries()), bad)


def test_failed_upload_keeps_existing_dataset_and_good_one_replaces_it():
    first = extract_zip(make_zip(class_entries(2)), "pets")
    before = sorted(str(p.relative_to(first)) for p in first.rglob("*"))
    hostile = class_entries(5)
    hostile["../evil.jpg"] = b"evil"
    with pytest.raises(UnsafeArchive):
        extract_zip(make_zip(hostile), "pets", replace=True)
    assert sorted(str(p.relative_to(first)) for p in first.rglob("*")) == before
    corrupt = bytearray(make_zip(class_entries(5)))
    pos = corrupt.find(b"cats/cats_1.jpg") + len(b"cats/cats_1.jpg") + 40
    corrupt[pos] ^= 0xFF  # damage compressed data: the CRC check fails while extracting
    with pytest.raises(DatasetError, match="corrupt"):
        extract_zip(bytes(corrupt), "pets", replace=True)
    assert sorted(str(p.relative_to(first)) for p in first.rglob("*")) == before
    replaced = extract_zip(
        make_zip({"birds/b.jpg": jpeg_bytes(), "fish/f.jpg": jpeg_bytes()}), "pets", replace=True
    )
    assert replaced == first and sorted(p.name for p in replaced.iterdir()) == ["birds", "fish"]
    assert leftovers() == []


# --- downloads --------------------------------------------------------------------------------


@pytest.mark.parametrize("fetch", [datasets.download_flowers, datasets.download_beans])
def test_downloads_fail_fast_when_unreachable(monkeypatch, fetch):
    # an unroutable address makes the real probe fail (or time out) whether or not we are online
    monkeypatch.setattr(sources, "FLOWERS_HOST", "192.0.2.1")
    monkeypatch.setattr(sources, "BEANS_HOST", "192.0.2.1")
    t = time.perf_counter()
    with pytest.raises(NetworkUnavailable, match="unreachable"):
        fetch()
    assert time.perf_counter() - t < 5
    assert [p.name for p in config.datasets_dir().iterdir() if p.name != "downloads"] == []


@pytest.mark.skipif(network_available(), reason="this check is for offline machines")
@pytest.mark.parametrize("source", ["flowers", "beans"])
def test_named_sources_offline_fail_fast(source):
    t = time.perf_counter()
    with pytest.raises(NetworkUnavailable, match=r"Cannot download .*unreachable"):
        resolve_source(source)
    assert time.perf_counter() - t < 5


def flowers_tgz(path: Path, extra: tarfile.TarInfo | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for label in ("daisy", "roses"):
            for i in range(3):
                data = jpeg_bytes(seed=i)
                info = tarfile.TarInfo(f"flower_photos/{label}/{label}{i}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("flower_photos/LICENSE.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"CC-BY"))
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size))
    return path


def offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network must not be needed")

    monkeypatch.setattr(sources, "network_available", no_network)


def test_flowers_from_cached_archive_without_network(monkeypatch):
    offline(monkeypatch)
    (config.datasets_dir() / "downloads").mkdir()
    flowers_tgz(config.datasets_dir() / "downloads" / "flower_photos.tgz")
    events = []
    folder = datasets.download_flowers(progress=events.append)
    assert folder == config.datasets_dir() / "flower_photos"
    assert scan_image_dir(folder).classes == ["daisy", "roses"]
    assert events and {e["phase"] for e in events} == {"download"}
    (config.datasets_dir() / "downloads" / "flower_photos.tgz").unlink()
    assert resolve_source("flowers") == folder  # extracted once, reused after
    assert [p.name for p in config.datasets_dir().iterdir() if p.name.startswith(".")] == []


def test_flowers_corrupt_or_hostile_archive(monkeypatch):
    offline(monkeypatch)
    downloads = config.datasets_dir() / "downloads"
    downloads.mkdir()
    (downloads / "flower_photos.tgz").write_bytes(b"\x1f\x8b half a download")
    with pytest.raises(DatasetError, match="removed"):
        datasets.download_flowers()
    assert not (downloads / "flower_photos.tgz").exists()
    evil = tarfile.TarInfo("../../evil.txt")
    evil.size = 3
    flowers_tgz(downloads / "flower_photos.tgz", extra=evil)
    with pytest.raises(UnsafeArchive, match="evil"):
        datasets.download_flowers()
    assert not (config.datasets_dir() / "flower_photos").exists()
    assert not list(config.lab_home().parent.rglob("evil.txt"))


def test_flowers_download_through_keras_get_file(monkeypatch, tmp_path):
    source = flowers_tgz(tmp_path / "served.tgz")
    monkeypatch.setattr(sources, "FLOWERS_URL", source.as_uri())
    monkeypatch.setattr(sources, "network_available", lambda *a, **k: True)
    folder = datasets.download_flowers()
    assert (config.datasets_dir() / "downloads" / "flower_photos.tgz").is_file()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["daisy", "roses"]


def test_beans_exported_as_class_folders(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(sources, "network_available", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=4):
        folder = datasets.download_beans()
    assert folder == config.datasets_dir() / "beans"
    assert sorted(p.name for p in folder.iterdir()) == ["angular_leaf_spot", "bean_rust", "healthy"]
    files = sorted(folder.rglob("*.*"))
    assert len(files) == 12 and all(load_image(f).ndim == 3 for f in files)
    offline(monkeypatch)
    assert resolve_source("beans") == folder  # exported once, no network afterwards


# --- the demo set -----------------------------------------------------------------------------


def test_demo_is_deterministic_and_reused(tmp_path):
    a = make_demo_dataset(tmp_path / "a", num_classes=4, per_class=6, size=32, seed=7)
    b = make_demo_dataset(tmp_path / "b", num_classes=4, per_class=6, size=32, seed=7)
    c = make_demo_dataset(tmp_path / "c", num_classes=4, per_class=6, size=32, seed=8)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 24 and len({f.parent for f in files}) == 4
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    stamp = (a / files[0]).stat().st_mtime_ns
    assert make_demo_dataset(tmp_path / "a", num_classes=4, per_class=6, size=32, seed=7) == a
    assert (a / files[0]).stat().st_mtime_ns == stamp  # reused, not regenerated
    assert load_image(a / files[0]).shape == (32, 32, 3)
    assert make_demo_dataset(tmp_path / "a", num_classes=2, per_class=3, size=32, seed=7) == a
    assert len(list(a.rglob("*.jpg"))) == 6  # different arguments regenerate it


def test_demo_classes_are_separable():
    folder = make_demo_dataset(num_classes=8, per_class=20, size=48, seed=0)
    assert folder.parent == config.datasets_dir()
    ds = scan_image_dir(folder)
    assert len(ds.classes) == 8 and not ds.skipped

    def feature(path):  # a colour histogram: what even a random CNN picks up
        arr = load_image(path) // 64
        codes = arr[..., 0] * 16 + arr[..., 1] * 4 + arr[..., 2]
        return list(np.bincount(codes.ravel(), minlength=64) / codes.size)

    x = np.array([feature(r.path) + [1.0] for r in ds.records])
    y = np.array([ds.label_index[r.label] for r in ds.records])
    train = np.arange(len(y)) % 2 == 0
    # a linear head (ridge regression onto one-hot labels) fitted on half, scored on the rest
    gram = x[train].T @ x[train] + 1e-3 * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, x[train].T @ np.eye(8)[y[train]])
    assert (np.argmax(x[~train] @ weights, axis=1) == y[~train]).mean() >= 0.9


def test_demo_argument_checks(tmp_path):
    for kwargs, echo in (
        ({"num_classes": 1}, "num_classes=1"),
        ({"num_classes": 9}, "num_classes=9"),
        ({"per_class": 0}, "per_class=0"),
        ({"size": 8}, "size=8"),
        ({"seed": -1}, "seed=-1"),
        ({"size": 32.0}, "size=32.0"),
    ):
        with pytest.raises(InvalidArgument, match=re.escape(echo)):
            make_demo_dataset(tmp_path / "x", **kwargs)
    mine = make_folder(tmp_path / "mine", {"a": 1})
    with pytest.raises(InvalidArgument, match="not a generated demo set"):
        make_demo_dataset(mine)
    assert (mine / "a" / "a_000.jpg").is_file()


# --- resolve_source ---------------------------------------------------------------------------


def test_resolve_source(tmp_path):
    demo = resolve_source("demo")
    assert demo.is_dir() and len(scan_image_dir(demo).classes) == 3
    folder = make_folder(tmp_path / "mine", {"a": 1, "b": 1})
    assert resolve_source(str(folder)) == folder and resolve_source(folder) == folder
    with pytest.raises(NotFound, match="neither an existing folder nor one of: flowers, beans, demo"):
        resolve_source(str(tmp_path / "nope"))
    for bad in ("", "  ", None):
        with pytest.raises(InvalidArgument, match="source="):
            resolve_source(bad)

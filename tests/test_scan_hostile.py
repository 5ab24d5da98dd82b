"""The dataset scan against hostile folders: odd names, special files, broken images, duplicates, huge trees.

Every case builds real files (names as raw bytes via os.mkdir(bytes), FIFOs via os.mkfifo) and
asserts the outcome: skipped with a reason that prints, a warning in words, or a one-line error.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import config
from engine.data import datasets
from engine.data.datasets import assign_split, resolve_source, scan_image_dir
from engine.errors import DatasetError, InvalidArgument, LabError


def image(fmt: str = "JPEG", seed: int = 0, colour=(200, 30, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (24, 32, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def good_dataset(root: Path, classes=("cats", "dogs"), n: int = 6) -> Path:
    for c, label in enumerate(classes):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / label / f"{label}_{i}.jpg").write_bytes(image(seed=i, colour=(60 * c, 90, 200)))
    return root


def printable_everywhere(data: datasets.Dataset) -> None:
    """What the Data page and the CLI show must encode as UTF-8 and hold no line breaks."""
    text = json.dumps(data.summary(), ensure_ascii=False)
    text.encode("utf-8")
    for line in [*data.warnings, *(f"{s.path}: {s.reason}" for s in data.skipped)]:
        line.encode("utf-8")
        assert "\n" not in line and "\r" not in line, line


def skipped(data: datasets.Dataset) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in data.skipped}


# --- names --------------------------------------------------------------------------------------


def test_class_folder_with_a_newline_is_skipped_not_shifting_labels(tmp_path):
    root = good_dataset(tmp_path / "ds")
    bad = os.path.join(os.fsencode(root), b"dai\nsies")
    os.mkdir(bad)
    for i in range(3):
        Path(os.fsdecode(bad), f"d{i}.jpg").write_bytes(image(seed=10 + i, colour=(0, 200, 0)))
    data = scan_image_dir(root)
    assert data.classes == ["cats", "dogs"]  # no label can span two lines of labels.txt
    assert all("\n" not in r.label for r in data.records)
    assert skipped(data)["dai\\nsies"] == (
        "class folder skipped: name 'dai\\nsies' contains control characters (\\n); rename it"
    )
    assert any(w.startswith("Skipped class folder 'dai\\nsies'") for w in data.warnings)
    printable_everywhere(data)


@pytest.mark.parametrize("raw", [b"caf\xe9", b"\xff\xfe", b"ok\x1b[31m"])
def test_undecodable_or_control_class_names_are_skipped_with_a_reason(tmp_path, raw):
    root = good_dataset(tmp_path / "ds")
    bad = os.path.join(os.fsencode(root), raw)
    os.mkdir(bad)
    Path(os.fsdecode(bad), "x.jpg").write_bytes(image(seed=99))
    data = scan_image_dir(root)
    assert data.classes == ["cats", "dogs"]
    (reason,) = [s.reason for s in data.skipped]
    assert reason.startswith("class folder skipped: name '") and reason.endswith("; rename it")
    assert "not valid UTF-8" in reason or "control characters" in reason
    printable_everywhere(data)
    print(data.warnings, data.skipped)  # would raise UnicodeEncodeError with a raw surrogate


def test_undecodable_file_names_inside_a_class_are_skipped(tmp_path):
    root = good_dataset(tmp_path / "ds")
    raw = os.path.join(os.fsencode(root / "cats"), b"caf\xe9.jpg")
    with open(raw, "wb") as f:
        f.write(image(seed=50))
    nested = os.path.join(os.fsencode(root / "dogs"), b"\xffsub")
    os.mkdir(nested)
    with open(os.path.join(nested, b"fine.jpg"), "wb") as f:
        f.write(image(seed=51))
    data = scan_image_dir(root)
    reasons = skipped(data)
    assert reasons["caf\\xe9.jpg"] == "'cats/caf\\xe9.jpg' is not valid UTF-8; rename it"
    assert reasons["fine.jpg"] == "'dogs/\\xffsub/fine.jpg' is not valid UTF-8; rename it"
    assert len(data.records) == 12
    for record in data.records:
        record.path.encode("utf-8")  # every path the pipeline gets can be written anywhere
    printable_everywhere(data)


def test_undecodable_dataset_root_is_a_clear_error(tmp_path):
    root = os.path.join(os.fsencode(tmp_path), b"d\xe9j\xe0")
    os.mkdir(root)
    good_dataset(Path(os.fsdecode(root)))
    with pytest.raises(DatasetError, match=r"d\\xe9j\\xe0 is not valid UTF-8"):
        scan_image_dir(os.fsdecode(root))


# --- special and broken files -------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_fifos_and_folders_named_like_images_are_skipped(tmp_path):
    root = good_dataset(tmp_path / "ds")
    os.mkfifo(root / "cats" / "pipe.jpg")  # opening it for reading would block forever
    os.symlink("/dev/zero", root / "dogs" / "zero.png")  # endless
    data = scan_image_dir(root)
    reasons = skipped(data)
    assert reasons["pipe.jpg"] == "refused: a FIFO (named pipe), not a regular file"
    assert reasons["zero.png"] == "refused: a character device, not a regular file"
    assert len(data.records) == 12


def truncated(fmt: str, seed: int) -> bytes:
    data = image(fmt, seed)
    return data[: len(data) * 2 // 3]


def test_one_bad_file_is_skipped_with_its_reason_never_the_dataset(tmp_path):
    root = good_dataset(tmp_path / "ds")
    (root / "cats" / "cut.bmp").write_bytes(truncated("BMP", 1))
    (root / "cats" / "cut.gif").write_bytes(truncated("GIF", 2))
    (root / "dogs" / "cut.tif").write_bytes(truncated("TIFF", 3))
    png = bytearray(image("PNG", 4))
    png[len(png) // 2] ^= 0xFF
    (root / "dogs" / "flip.png").write_bytes(bytes(png))
    (root / "dogs" / "whole.tif").write_bytes(image("TIFF", 5, colour=(10, 220, 10)))
    data = scan_image_dir(root)
    reasons = skipped(data)
    for name in ("cut.bmp", "cut.gif", "cut.tif"):
        assert reasons[name].startswith("truncated or corrupt image"), (name, reasons[name])
    assert reasons["flip.png"].startswith("corrupt PNG data (checksum mismatch in the IDAT chunk")
    used = {Path(r.path).name: r for r in data.records}
    assert used["whole.tif"].needs_pil and len(used) == 13


# --- duplicates ---------------------------------------------------------------------------------


def name_in(split: str, stem: str) -> str:
    """A file name whose stable split is `split`."""
    return next(f"{stem}{i}.jpg" for i in range(10_000) if assign_split(f"{stem}{i}.jpg") == split)


def test_duplicates_across_splits_and_classes_are_named_with_their_effect(tmp_path):
    root = good_dataset(tmp_path / "ds", n=30)
    photo = image(seed=1234, colour=(1, 2, 3))
    train_copy, test_copy = name_in("train", "a"), name_in("test", "b")
    (root / "cats" / train_copy).write_bytes(photo)
    (root / "cats" / test_copy).write_bytes(photo)
    other = image(seed=4321, colour=(9, 9, 9))
    (root / "cats" / "both_classes.jpg").write_bytes(other)
    (root / "dogs" / "both_classes.jpg").write_bytes(other)
    data = scan_image_dir(root)
    assert len(data.duplicates) == 2
    by_names = {tuple(sorted(Path(r.path).name for r in g.records)): g for g in data.duplicates}
    leak = by_names[tuple(sorted([train_copy, test_copy]))]
    assert leak.crosses_splits and not leak.crosses_classes and leak.splits == ["train", "test"]
    mixed = by_names[("both_classes.jpg", "both_classes.jpg")]
    assert mixed.crosses_classes and mixed.labels == ["cats", "dogs"]
    text = " ".join(data.warnings)
    assert "1 validation/test image is byte-identical to training images" in text
    assert "accuracy overstate" in text
    assert "1 image appears in more than one class" in text and "accuracy is capped" in text
    files = data.summary()["duplicates"][0]["files"]
    assert {"path", "label", "split"} <= set(files[0])


def test_no_duplicates_no_warning_and_hashes_are_the_cache_identity(tmp_path):
    root = good_dataset(tmp_path / "ds", n=25)
    data = scan_image_dir(root)
    assert data.duplicates == [] and not any("identical" in w for w in data.warnings)
    import hashlib

    record = data.records[0]
    assert record.sha256 == hashlib.sha256(Path(record.path).read_bytes()).hexdigest()


# --- bounded walks ------------------------------------------------------------------------------


def test_a_huge_tree_is_not_walked(tmp_path):
    root = good_dataset(tmp_path / "ds")
    deep = root / "dogs" / "junk"
    deep.mkdir()
    for i in range(300):
        (deep / f"{i}.txt").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"holds more than 200 files and folders; stopped listing it"):
        scan_image_dir(root, max_entries=200)
    with pytest.raises(DatasetError, match=r"took over 0 s \(stopped after 1 entries\)"):
        scan_image_dir(root, list_seconds=0)
    assert len(scan_image_dir(root).records) == 12  # within the default bounds


def test_the_default_bound_stops_a_walk_of_the_whole_file_system_quickly():
    import time

    t = time.perf_counter()
    with pytest.raises(DatasetError, match="stopped listing|took over|no class subfolders|No usable"):
        scan_image_dir("/", max_entries=20_000)
    assert time.perf_counter() - t < 30


# --- class mode ---------------------------------------------------------------------------------


def test_class_mode_refuses_server_folders_but_not_stored_datasets(tmp_path, monkeypatch):
    outside = good_dataset(tmp_path / "outside")
    stored = good_dataset(config.datasets_dir() / "mine")
    assert resolve_source(str(outside)) == outside  # local (default): any folder
    monkeypatch.setenv("LAB_SERVE_MODE", "class")
    with pytest.raises(InvalidArgument, match=r"Server folders are off on a served class"):
        resolve_source(str(outside))
    with pytest.raises(InvalidArgument, match="Server folders are off"):
        resolve_source("/")
    link = config.datasets_dir() / "sneaky"
    link.symlink_to(outside)  # a link out of the data directory counts as outside
    with pytest.raises(InvalidArgument, match="Server folders are off"):
        resolve_source(str(link))
    assert resolve_source(str(stored)) == stored
    shutil.rmtree(stored)


def test_serve_mode_setting(monkeypatch):
    monkeypatch.delenv("LAB_SERVE_MODE", raising=False)
    assert config.serve_mode() == "local"
    monkeypatch.setenv("LAB_SERVE_MODE", " Class ")
    assert config.serve_mode() == "class"
    monkeypatch.setenv("LAB_SERVE_MODE", "public")
    with pytest.raises(
        LabError, match=r"LAB_SERVE_MODE must be one of local, class, got LAB_SERVE_MODE='public'"
    ):
        config.serve_mode()

"""Hostile per-class uploads (all generated here): bad names are refused with a one-line message or cleaned,
each bad file is reported on its own while the rest of the batch lands, nothing existing is overwritten."""

from __future__ import annotations

import hashlib
import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from engine.data import archives, uploads
from engine.data.uploads import save_class_images
from engine.errors import DatasetError, InvalidArgument


def jpeg(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def files_of(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def kept():
    result = save_class_images("pets", {"cats": [("a.jpg", jpeg(1))], "dogs": [("b.jpg", jpeg(2))]})
    return result.folder, files_of(result.folder)


BAD_CLASS_NAMES = [
    ("newline", "ca\nts", "U+000A"),
    ("trailing-newline", "cats\n", "U+000A"),
    ("tab", "ca\tts", "U+0009"),
    ("nul", "ca\0ts", "U+0000"),
    ("del", "cats\x7f", "U+007F"),
    ("escape", "\x1b[1mcats", "U+001B"),
    ("c1", "cats\x85", "U+0085"),
    ("line-separator", "ca\u2028ts", "U+2028"),
    ("paragraph-separator", "ca\u2029ts", "U+2029"),
    ("undecodable", os.fsdecode(b"caf\xe9"), "not valid UTF-8"),
    ("dot", ".", "name="),
    ("dotdot", "..", "name="),
    ("empty", "", "name="),
    ("spaces", "   ", "name="),
    ("slash", "a/b", "name="),
    ("parent", "../up", "name="),
    ("over-80", "x" * 81, "name="),
    ("over-255-bytes", "é" * 200, "longer than 255 bytes"),
    ("not-a-string", 7, "name="),
]


@pytest.mark.parametrize("case", BAD_CLASS_NAMES, ids=[c[0] for c in BAD_CLASS_NAMES])
def test_bad_class_names_are_refused_and_nothing_is_written(kept, case):
    _, label, needle = case
    folder, before = kept
    with pytest.raises(InvalidArgument) as info:
        save_class_images("pets", {"good": [("g.jpg", jpeg())], label: [("a.jpg", jpeg())]})
    text = str(info.value)
    assert "\n" not in text and needle in text and text.startswith("class name")
    assert files_of(folder) == before  # not even the good class was written


@pytest.mark.parametrize(
    "name,needle",
    [("pe\nts", "U+000A"), ("pets\0", "U+0000"), (os.fsdecode(b"\xff"), "not valid UTF-8"), ("..", "name=")],
    ids=["newline", "nul", "undecodable", "dotdot"],
)
def test_bad_dataset_names_are_refused(name, needle):
    with pytest.raises(InvalidArgument) as info:
        save_class_images(name, {"cats": [("a.jpg", jpeg())]})
    assert "\n" not in str(info.value) and needle in str(info.value)
    assert list(archives.uploads_dir().iterdir()) == []


ODD_FILE_NAMES = [
    ("newline", "a\nb.jpg"),
    ("nul", "a\0b.jpg"),
    ("tab-and-del", "a\tb\x7f.jpg"),
    ("escape", "\x1b[31mred.jpg"),
    ("traversal", "../../../etc/passwd.jpg"),
    ("windows-traversal", "..\\..\\evil.jpg"),
    ("absolute", "/etc/shadow.png"),
    ("undecodable", os.fsdecode(b"\xff\xfe.jpg")),
    ("dot", "."),
    ("dotdot", ".."),
    ("empty", ""),
    ("hidden", ".bashrc"),
    ("very-long", "é" * 400 + ".jpg"),
    ("line-separator", "a\u2028b.jpg"),
    ("no-extension", "photo"),
    ("wrong-extension", "photo.exe"),
]


@pytest.mark.parametrize("case", ODD_FILE_NAMES, ids=[c[0] for c in ODD_FILE_NAMES])
def test_odd_file_names_are_cleaned_and_saved(kept, case):
    _, file_name = case
    folder, before = kept
    result = save_class_images("pets", {"cats": [(file_name, jpeg(9))]})
    assert result.saved == {"cats": 1} and result.refused == []
    after = files_of(folder)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing existing changed
    (new,) = set(after) - set(before)
    name = new.split("/", 1)[1]
    assert new.startswith("cats/") and "/" not in name and not name.startswith(".")
    assert name.isascii() and name.isprintable() and len(name.encode()) <= 255
    assert name.rsplit(".", 1)[1] in ("jpg", "jpeg", "png", "bmp", "gif", "webp")
    assert not any(p.name.startswith(".") for p in folder.rglob("*"))  # no temporary file left


def test_each_bad_file_is_reported_and_the_rest_lands(kept):
    folder, before = kept
    batch = [
        ("good1.jpg", jpeg(3)),
        ("text.jpg", b"hello"),
        ("empty.jpg", b""),
        ("none.jpg", None),
        ("name\nwith newline.png", b"\x89PNG\r\n\x1a\nbroken"),
        ("good2.jpg", jpeg(4)),
    ]
    result = save_class_images("pets", {"cats": batch})
    assert result.saved == {"cats": 2}
    assert [name for name, _ in result.refused] == [
        "text.jpg",
        "empty.jpg",
        "none.jpg",
        "name\\nwith newline.png",
    ]
    for name, reason in result.refused:
        assert "\n" not in reason and name in reason
    assert set(before) < set(files_of(folder))


def test_a_class_that_cannot_be_written_is_reported_per_file(kept):
    folder, before = kept
    (folder / "birds").write_bytes(b"a file where the class folder should go")
    result = save_class_images(
        "pets", {"birds": [("b1.jpg", jpeg(5)), ("b2.jpg", jpeg(6))], "cats": [("c.jpg", jpeg(7))]}
    )
    assert result.saved == {"cats": 1}
    assert [n for n, _ in result.refused] == ["b1.jpg", "b2.jpg"]
    assert all("cannot save" in reason for _, reason in result.refused)
    assert {k: v for k, v in files_of(folder).items() if k in before} == before


def test_quota_refuses_per_file_and_never_raises_for_a_partial_batch(kept):
    folder, before = kept
    used = archives.folder_bytes(archives.uploads_dir())
    first, second = jpeg(11), jpeg(12)
    result = save_class_images(
        "pets", {"cats": [("q1.jpg", first), ("q2.jpg", second)]}, quota=used + len(first)
    )
    assert result.saved == {"cats": 1}
    assert result.refused[0][0] == "q2.jpg" and "quota" in result.refused[0][1]
    with pytest.raises(DatasetError, match="quota"):
        save_class_images("pets", {"cats": [("q3.jpg", jpeg(13))]}, quota=used)
    with pytest.raises(InvalidArgument, match="quota="):
        save_class_images("pets", {"cats": [("q4.jpg", jpeg(13))]}, quota=-1)
    assert {k: v for k, v in files_of(folder).items() if k in before} == before


def test_same_names_again_never_overwrite(kept):
    folder, before = kept
    for seed in (20, 21, 22):
        save_class_images("pets", {"cats": [("a.jpg", jpeg(seed))]})
    after = files_of(folder)
    assert after["cats/a.jpg"] == before["cats/a.jpg"]
    assert sorted(p for p in after if p.startswith("cats/")) == [
        "cats/a-2.jpg",
        "cats/a-3.jpg",
        "cats/a-4.jpg",
        "cats/a.jpg",
    ]


def test_concurrent_uploads_under_one_name_all_land():
    workers, per_worker = 8, 12  # every file is named img.jpg: all race for one name
    start = threading.Barrier(workers)
    errors: list = []
    saved: list = []

    def run(w: int) -> None:
        batch = {
            "cats": [("img.jpg", jpeg(100 * w + i)) for i in range(per_worker)],
            "dogs": [("d.jpg", jpeg(w))],
        }
        start.wait()
        try:
            saved.append(save_class_images("race", batch).saved)
        except Exception as exc:  # noqa: BLE001 - any escape is the bug this test is about
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and saved == [{"cats": per_worker, "dogs": 1}] * workers
    folder = archives.uploads_dir() / "race"
    cats = files_of(folder / "cats")
    assert len(cats) == workers * per_worker
    expected = {
        hashlib.sha256(jpeg(100 * w + i)).hexdigest() for w in range(workers) for i in range(per_worker)
    }
    assert set(cats.values()) == expected  # every upload is there, none clobbered another
    assert len(files_of(folder / "dogs")) == workers
    assert not [p for p in folder.rglob(".*")]


def test_no_hard_links_falls_back_to_exclusive_create(monkeypatch, kept):
    folder, before = kept

    def no_link(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(uploads.os, "link", no_link)
    result = save_class_images("pets", {"cats": [("a.jpg", jpeg(30)), ("a.jpg", jpeg(31))]})
    assert result.saved == {"cats": 2}
    after = files_of(folder)
    assert after["cats/a.jpg"] == before["cats/a.jpg"] and {"cats/a-2.jpg", "cats/a-3.jpg"} <= set(after)


def test_stored_datasets_ignores_temporary_and_odd_entries(kept):
    folder, _ = kept
    (archives.uploads_dir() / ".tmp-pets-abc").mkdir()
    (archives.uploads_dir() / "stray.txt").write_text("not a dataset")
    os.mkfifo(archives.uploads_dir() / "pipe")
    assert uploads.stored_datasets() == {"uploads/pets": folder}


def test_linked_dataset_or_class_folder_is_never_written_through(tmp_path, kept):
    folder, before = kept
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "birds").symlink_to(outside, target_is_directory=True)
    result = save_class_images("pets", {"birds": [("b.jpg", jpeg(40))], "cats": [("c.jpg", jpeg(41))]})
    assert result.saved == {"cats": 1} and "link" in result.refused[0][1]
    (archives.uploads_dir() / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DatasetError, match="a link or a file"):
        save_class_images("linked", {"cats": [("c.jpg", jpeg(42))]})
    assert list(outside.iterdir()) == []
    assert "uploads/linked" not in uploads.stored_datasets()

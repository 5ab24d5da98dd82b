"""Run bundles (engine.runs.share): the store's author/origin columns, export, import of untrusted bundles."""

from __future__ import annotations

import sqlite3

from engine.runs import store as store_module
from engine.runs.store import SCHEMA_VERSION, RunStore


def test_a_store_of_schema_2_gains_author_and_origin(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    for script in store_module._MIGRATIONS[:2]:
        conn.executescript(script)
    conn.execute(
        "INSERT INTO runs (id, name, kind, status, created, config)"
        " VALUES ('r1', 'old', 'retrain', 'finished', 1.0, '{}')"
    )
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    store = RunStore(path)
    assert store.connection().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    old = store.get_run("r1")
    assert (old.author, old.origin, old.imported) == (None, None, False)
    mine = store.create_run({}, author="Ada")
    origin = {"from": "Bob", "original_run_id": "x1", "bundle_sha256": "f" * 64, "imported_at": 5.0}
    theirs = store.create_run({}, author="Bob", origin=origin)
    assert (mine.author, mine.imported) == ("Ada", False)
    assert (theirs.author, theirs.origin, theirs.imported) == ("Bob", origin, True)
    assert store.find_imported_run("f" * 64, "other", None).id == theirs.id
    assert store.find_imported_run("0" * 64, "x1", "Bob").id == theirs.id
    assert store.find_imported_run("0" * 64, "x1", "Eve") is None
    assert {r.id: r.author for r in store.list_runs()} == {"r1": None, mine.id: "Ada", theirs.id: "Bob"}


def test_the_dataset_fingerprint_names_the_images_and_split_not_where_they_live(tmp_path, flowers_dir):
    import shutil

    from engine.data.datasets import dataset_fingerprint, scan_image_dir

    here = dataset_fingerprint(scan_image_dir(flowers_dir))
    copy = tmp_path / "elsewhere" / "my flowers"
    shutil.copytree(flowers_dir, copy)
    assert dataset_fingerprint(scan_image_dir(copy)) == here  # another folder, another laptop: same data
    assert scan_image_dir(copy).summary()["fingerprint"] == here
    assert here["num_images"] == 200 and sum(c["test"] for c in here["counts"].values()) == 19
    resplit = dataset_fingerprint(scan_image_dir(copy, validation_percentage=20))
    assert resplit["content_hash"] == here["content_hash"] and resplit["split_hash"] != here["split_hash"]
    next(copy.glob("roses/*.jpg")).rename(copy / "tulips" / "moved.jpg")  # one photo relabelled
    moved = dataset_fingerprint(scan_image_dir(copy))
    assert moved["content_hash"] != here["content_hash"] and moved["split_hash"] != here["split_hash"]

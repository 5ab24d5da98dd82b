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

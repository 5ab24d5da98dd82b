"""Run store: runs, experiments, history, phases, concurrent writers and interrupted runs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InvalidArgument, LabError, NotFound, StoreUnavailable
from engine.runs import store as store_module
from engine.runs.store import SCHEMA_VERSION, RunStore, collect_environment, new_id

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(lab_home) -> RunStore:
    return RunStore()


def history_row(step: int) -> dict:
    return {
        "step": step,
        "train_accuracy": 0.5,
        "train_cross_entropy": 1.0,
        "validation_accuracy": 0.4,
        "validation_cross_entropy": 1.2,
        "elapsed": step / 10,
    }


def test_default_path_is_under_lab_home(store, lab_home):
    assert store.path == lab_home / "lab.sqlite"
    run = store.create_run({"a": 1})
    assert store.run_dir(run.id) == lab_home / "runs" / run.id
    assert store.run_dir(run.id).is_dir()


def test_run_lifecycle(store):
    run = store.create_run({"architecture": "mobilenet_0.25_224", "lr": np.float32(0.01)}, name="first")
    assert (run.status, run.name, run.kind, run.config["architecture"]) == (
        "running",
        "first",
        "retrain",
        "mobilenet_0.25_224",
    )
    assert run.pid and run.hostname and run.started and run.finished is None
    store.set_environment(run.id, {"tensorflow": "2.21.0"})
    store.log_phase(run.id, "extract", 2.0)
    store.log_phase(run.id, "extract", 0.5)  # a phase logged twice adds up
    store.log_phase(run.id, "train", 1.0)
    done = store.finish_run(run.id, {"test_accuracy": np.float64(0.8), "confusion": np.eye(2, dtype=int)})
    assert done.status == "finished" and done.finished >= done.started and done.duration >= 0
    assert done.results == {"test_accuracy": 0.8, "confusion": [[1, 0], [0, 1]]}
    assert done.environment == {"tensorflow": "2.21.0"}
    assert done.phases == {"extract": 2.5, "train": 1.0}
    assert done.as_dict()["phases"] == done.phases


def test_history_rows_come_back_in_order_and_fit_pandas(store):
    pd = pytest.importorskip("pandas")
    run = store.create_run({})
    store.log_metrics(run.id, [history_row(s) for s in (0, 10, 20)])
    store.log_metrics(run.id, [{"step": 30, "train_accuracy": np.float32(0.75), "ignored": "x"}])
    rows = store.get_history(run.id)
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    assert rows[0] == {"phase": "train", **history_row(0)}
    assert rows[3]["validation_accuracy"] is None and rows[3]["train_accuracy"] == 0.75
    frame = pd.DataFrame(rows)
    assert list(frame["step"]) == [0, 10, 20, 30]
    store.log_metrics(run.id, [history_row(0)], phase="fine_tune")
    assert len(store.get_history(run.id, phase="fine_tune")) == 1


def test_ids_sort_by_creation_time():
    ids = [new_id() for _ in range(3)]
    time.sleep(0.002)
    later = new_id()
    assert all(i < later for i in ids) and len(set(ids)) == 3


def test_list_runs_newest_first_and_filters(store):
    exp = store.create_experiment("compare", "backbones", {"architectures": ["a", "b"]})
    first = store.create_run({}, experiment_id=exp)
    time.sleep(0.002)
    second = store.create_run({}, kind="bench")
    assert [r.id for r in store.list_runs()] == [second.id, first.id]
    assert [r.id for r in store.list_runs(experiment_id=exp)] == [first.id]
    assert [r.id for r in store.list_runs(kind="bench")] == [second.id]
    (experiment,) = store.list_experiments()
    assert (experiment.id, experiment.kind, experiment.name) == (exp, "compare", "backbones")
    assert experiment.config == {"architectures": ["a", "b"]}
    assert store.get_experiment(exp) == experiment


def test_unknowns_raise_readable_errors(store):
    with pytest.raises(NotFound, match="nope"):
        store.get_run("nope")
    with pytest.raises(NotFound, match="ghost"):
        store.create_run({}, experiment_id="ghost")
    run = store.create_run({})
    with pytest.raises(InvalidArgument, match="status='done'"):
        store.finish_run(run.id, {}, status="done")
    with pytest.raises(NotFound):
        store.finish_run("nope", {})


def test_delete_run_removes_rows_and_folder(store):
    run = store.create_run({})
    store.log_metrics(run.id, [history_row(0)])
    store.log_phase(run.id, "train", 1.0)
    (store.run_dir(run.id) / "model.keras").write_bytes(b"x")
    with pytest.raises(InvalidArgument, match="still running"):
        store.delete_run(run.id)
    store.finish_run(run.id, {})
    store.delete_run(run.id)
    assert not store.run_dir(run.id).exists()
    with pytest.raises(NotFound):
        store.get_run(run.id)
    conn = store.connection()
    assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM phases").fetchone()[0] == 0


def test_schema_is_created_once_and_versioned(tmp_path):
    path = tmp_path / "custom" / "lab.sqlite"
    run = RunStore(path).create_run({"x": 1})
    again = RunStore(path)  # a second open must neither fail nor lose data
    assert again.get_run(run.id).config == {"x": 1}
    conn = again.connection()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert again.run_dir(run.id) == tmp_path / "custom" / "runs" / run.id


def test_artifact_hashes_are_recorded_replaced_and_deleted_with_the_run(store):
    run, other = store.create_run({}), store.create_run({})
    first, second = "ab" * 32, "CD" * 32
    assert store.artifact_hash(run.id, "model.keras") is None  # the lab never wrote it
    store.record_artifact(run.id, "model.keras", first)
    store.record_artifact(run.id, "exports/model.tflite", second)
    assert store.artifact_hash(run.id, "model.keras") == first
    assert store.artifact_hash(run.id, "./exports/model.tflite") == second.lower()
    assert store.artifact_hash(other.id, "model.keras") is None
    store.record_artifact(run.id, "model.keras", second)  # rewritten: the newer hash replaces it
    assert store.artifact_hash(run.id, "model.keras") == second.lower()
    store.finish_run(run.id, {})
    store.delete_run(run.id)
    assert store.artifact_hash(run.id, "model.keras") is None
    assert store.connection().execute("SELECT COUNT(*) FROM artifacts").fetchone()[0] == 0


@pytest.mark.parametrize(
    "relpath, sha256, match",
    [
        ("../elsewhere/model.keras", "a" * 64, "relpath='../elsewhere/model.keras'"),
        ("/etc/passwd", "a" * 64, "relpath='/etc/passwd'"),
        ("", "a" * 64, "relpath=''"),
        ("model.keras", "a" * 63, "sha256='a{63}'"),
        ("model.keras", "g" * 64, "sha256='g{64}'"),
    ],
)
def test_record_artifact_checks_its_arguments(store, relpath, sha256, match):
    run = store.create_run({})
    with pytest.raises(InvalidArgument, match=match):
        store.record_artifact(run.id, relpath, sha256)
    with pytest.raises(NotFound, match="ghost"):
        store.record_artifact("ghost", "model.keras", "a" * 64)


def test_a_store_of_schema_1_is_migrated_and_keeps_its_runs(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(store_module._MIGRATIONS[0])  # what the first released version created
    conn.execute(
        "INSERT INTO runs (id, name, kind, status, created, config)"
        " VALUES ('r1', 'old', 'retrain', 'finished', 1.0, '{\"x\": 1}')"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = RunStore(path)
    old = store.get_run("r1")
    assert old.config == {"x": 1}
    assert (old.author, old.origin, old.imported) == (None, None, False)  # columns of schema 3
    store.record_artifact("r1", "model.keras", "0" * 64)
    assert store.artifact_hash("r1", "model.keras") == "0" * 64
    assert store.connection().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_a_damaged_store_file_is_a_clear_error_and_left_untouched(tmp_path):
    path = tmp_path / "lab.sqlite"
    garbage = b"this is not a database, it was overwritten by mistake\n" * 200
    path.write_bytes(garbage)
    for action in (lambda s: s.list_runs(), lambda s: s.create_run({}), lambda s: s.create_job("count", {})):
        with pytest.raises(
            StoreUnavailable, match=f"{re.escape(str(path))} is not a readable SQLite database"
        ):
            action(RunStore(path))
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.sqlite"]  # no journal or WAL beside it


def test_another_programs_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "lab.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (x INTEGER)")
        conn.execute("INSERT INTO runs VALUES (1)")
    conn.close()
    before = path.read_bytes()
    for action in (lambda s: s.list_runs(), lambda s: s.create_run({})):
        with pytest.raises(StoreUnavailable, match=f"{re.escape(str(path))} is another program's SQLite"):
            action(RunStore(path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.sqlite"]


def test_a_run_with_damaged_json_is_listed_with_its_damage(store):
    good = store.create_run({"architecture": "a"}, name="good")
    bad = store.create_run({"architecture": "b"}, name="bad")
    store.connection().execute(
        "UPDATE runs SET config = '{broken', results = '[1]', environment = 'nope' WHERE id = ?", (bad.id,)
    )
    runs = {run.id: run for run in store.list_runs()}
    assert runs[good.id].damage == () and runs[good.id].config == {"architecture": "a"}
    damaged = runs[bad.id]
    assert (damaged.config, damaged.results, damaged.environment) == ({}, {}, {})
    assert len(damaged.damage) == 3 and all("damaged" in note for note in damaged.damage)
    assert store.get_run(bad.id).damage == damaged.damage


def test_a_store_path_that_is_a_folder_or_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "lab.sqlite").mkdir()
    with pytest.raises(StoreUnavailable, match="lab.sqlite is not a file"):
        RunStore(tmp_path / "lab.sqlite").list_runs()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreUnavailable, match="Cannot create the lab folder .*afile.*set LAB_HOME"):
        RunStore(tmp_path / "afile" / "lab.sqlite")


def test_a_read_only_store_is_a_clear_error(tmp_path, monkeypatch):
    # Opening the file read-only gives SQLite's own "readonly database" error whoever runs the test
    # (chmod does not stop root, under which this suite may run).
    path = tmp_path / "lab.sqlite"
    run = RunStore(path).create_run({})
    real_connect = sqlite3.connect
    monkeypatch.setattr(
        store_module.sqlite3, "connect", lambda p, **kw: real_connect(f"file:{p}?mode=ro", uri=True, **kw)
    )
    store = RunStore(path)
    assert store.get_run(run.id).status == "running"  # reading still works
    with pytest.raises(
        StoreUnavailable, match=f"{re.escape(str(path))} cannot be written .*readonly.*LAB_HOME"
    ):
        store.create_run({})
    with pytest.raises(StoreUnavailable, match="readonly"):
        store.request_cancel("any")


@pytest.fixture
def unwritable_folder(tmp_path) -> Path:
    """A folder holding a store that nobody, root included, can write to (chmod, or chattr +i as root)."""
    folder = tmp_path / "locked"
    store = RunStore(folder / "lab.sqlite")
    store.create_run({"before": "locked"})
    store.connection().close()  # the last connection removes the WAL files
    locked = [folder / "lab.sqlite", folder]
    if os.geteuid() != 0:
        for path in locked:
            path.chmod(0o555)
        yield folder
        for path in locked:
            path.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", *map(str, locked)]).returncode != 0:
        pytest.skip("root without chattr +i: no way to make a folder it cannot write")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", *map(str, locked)], check=True)


def test_an_unwritable_folder_is_a_clear_error(unwritable_folder, monkeypatch):
    for name in ("lab.sqlite", "new.sqlite"):  # a store written before, and none yet
        path = unwritable_folder / name
        with pytest.raises(StoreUnavailable, match=f"{re.escape(str(path))} cannot be .*LAB_HOME"):
            RunStore(path).create_run({})
    monkeypatch.setenv("LAB_HOME", str(unwritable_folder))
    with pytest.raises(LabError, match=re.escape(str(unwritable_folder))):
        RunStore().list_runs()


def test_sql_mistakes_are_not_disguised_as_store_faults(store):
    with pytest.raises(sqlite3.OperationalError, match="no such table"), store.write() as conn:
        conn.execute("SELECT * FROM nowhere")


_WRITER = """
import sys
from engine.runs.store import RunStore
db_path, shared_run, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = RunStore(db_path)
own = store.create_run({"writer": True}, kind="writer")
for step in range(rows):
    row = {"step": step, "train_accuracy": 0.5, "train_cross_entropy": 1.0, "elapsed": step * 0.1}
    store.log_metrics(shared_run, [row])
    store.log_metrics(own.id, [row])
    store.log_phase(shared_run, "train", 1.0)
store.finish_run(own.id, {"rows": rows})
print(rows)
"""


def test_several_processes_write_at_once_without_losing_rows(tmp_path):
    db_path = str(tmp_path / "lab.sqlite")
    shared = RunStore(db_path).create_run({})
    writers, rows = 4, 60
    # separate interpreters, as separate jobs would be (a multiprocessing pool hung the full suite:
    # its spawned children could not re-import this test module after other tests ran)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, db_path, shared.id, str(rows)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(writers)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=120) for p in procs]
    results = [
        int(out.strip()) if p.returncode == 0 else err for p, (out, err) in zip(procs, outputs, strict=True)
    ]
    assert results == [rows] * writers  # an exception ('database is locked') would have been re-raised
    store = RunStore(db_path)
    assert len(store.get_history(shared.id)) == writers * rows
    assert store.get_run(shared.id).phases["train"] == writers * rows
    own = store.list_runs(kind="writer")
    assert len(own) == writers and all(r.status == "finished" for r in own)
    assert all(len(store.get_history(r.id)) == rows for r in own)


def _spawn_run_owner(db_path: Path) -> tuple[subprocess.Popen, str]:
    script = textwrap.dedent(f"""
        import sys, time
        from engine.runs.store import RunStore
        run = RunStore({str(db_path)!r}).create_run({{"owner": "child"}})
        print(run.id, flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_killed_run_is_interrupted_not_running_forever(tmp_path):
    db_path = tmp_path / "lab.sqlite"
    proc, run_id = _spawn_run_owner(db_path)
    store = RunStore(db_path)
    try:
        assert store.get_run(run_id).status == "running"
        proc.send_signal(signal.SIGKILL)
        time.sleep(0.2)  # not reaped yet: the dead child is a zombie and must count as dead
        run = store.get_run(run_id)
    finally:
        proc.kill()
        proc.wait()
    assert run.status == "interrupted" and str(proc.pid) in run.error
    assert [r.status for r in RunStore(db_path).list_runs()] == ["interrupted"]  # persisted


def test_reused_pid_does_not_keep_a_run_alive(store):
    run = store.create_run({})
    younger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with store.write() as conn:  # pretend the run's dead process had the pid of a younger one
            conn.execute(
                "UPDATE runs SET pid = ?, started = ? WHERE id = ?", (younger.pid, time.time() - 600, run.id)
            )
        assert store.get_run(run.id).status == "interrupted"
    finally:
        younger.kill()
        younger.wait()


def test_run_on_another_host_is_judged_by_its_heartbeat(store):
    fresh, stale = store.create_run({}), store.create_run({})
    with store.write() as conn:
        conn.execute(
            "UPDATE runs SET hostname = 'elsewhere', pid = 1 WHERE id IN (?, ?)", (fresh.id, stale.id)
        )
        conn.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time() - 3600, stale.id))
    assert store.get_run(fresh.id).status == "running"
    assert store.get_run(stale.id).status == "interrupted"


def test_finished_runs_are_never_reconciled(store):
    run = store.create_run({})
    store.finish_run(run.id, {}, status="failed", error="bad data")
    with store.write() as conn:
        conn.execute("UPDATE runs SET pid = 999999999 WHERE id = ?", (run.id,))
    run = store.get_run(run.id)
    assert (run.status, run.error) == ("failed", "bad data")


def test_collect_environment_without_tensorflow():
    env = collect_environment(include_tensorflow=False)
    assert env["cpu_model"] and env["cpu_cores"] >= env["usable_cores"] >= 1 and env["python"].count(".") == 2
    assert "gpus" not in env


@pytest.mark.slow
def test_collect_environment_with_tensorflow():
    env = collect_environment()
    assert env["tensorflow_version"].startswith("2.") and env["keras_version"].startswith("3.")
    assert isinstance(env["gpus"], list)

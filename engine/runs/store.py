"""Run store: runs, experiments, metric history and jobs in one SQLite file, artifacts in run folders.

Modelled on MLflow's tracking store: a small interface (`create_run`, `log_metrics`, `finish_run`,
`get_run`, `list_runs`) returning value objects (`Run`, `Experiment`) rather than table rows.
SQLite runs in WAL mode with a busy timeout so several processes can write at once; every thread
and process opens its own connection. A run whose process died is reported as interrupted.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine import config
from engine.errors import InvalidArgument, NotFound

RUN_STATUSES = ("running", "finished", "failed", "cancelled", "interrupted")
METRIC_COLUMNS = (
    "step",
    "train_accuracy",
    "train_cross_entropy",
    "validation_accuracy",
    "validation_cross_entropy",
    "elapsed",
)
# A process on another host cannot be probed; without a heartbeat this long we call it gone.
STALE_HEARTBEAT_SECONDS = 120.0
BUSY_TIMEOUT_MS = 30_000

# Migration i brings the schema from version i to i + 1; append, never edit, to change the schema.
_MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS experiments (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,
        config TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL,
        experiment_id TEXT REFERENCES experiments(id) ON DELETE SET NULL,
        status TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
        pid INTEGER, hostname TEXT, heartbeat REAL,
        config TEXT NOT NULL DEFAULT '{}', environment TEXT NOT NULL DEFAULT '{}',
        results TEXT NOT NULL DEFAULT '{}', error TEXT);
    CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs(experiment_id);
    CREATE TABLE IF NOT EXISTS phases (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, phase TEXT NOT NULL,
        seconds REAL NOT NULL, PRIMARY KEY (run_id, phase));
    CREATE TABLE IF NOT EXISTS metrics (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, phase TEXT NOT NULL DEFAULT 'train',
        step INTEGER NOT NULL, train_accuracy REAL, train_cross_entropy REAL,
        validation_accuracy REAL, validation_cross_entropy REAL, elapsed REAL);
    CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics(run_id, step);
    CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL,
        phase TEXT NOT NULL DEFAULT '', done INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '', eta_seconds REAL, run_id TEXT, error TEXT,
        params TEXT NOT NULL DEFAULT '{}', result TEXT NOT NULL DEFAULT '{}',
        extra TEXT NOT NULL DEFAULT '{}', pid INTEGER, hostname TEXT, heartbeat REAL,
        cancel_requested REAL, created REAL NOT NULL, updated REAL NOT NULL,
        started REAL, finished REAL);
    CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status);
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)


def new_id() -> str:
    """A short id that sorts by creation time (UTC, milliseconds) with a random tail against clashes."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}-{int(now * 1000) % 1000:03d}-{secrets.token_hex(2)}"


def to_json(value: Any) -> str:
    """JSON text for dicts that may hold numpy scalars or arrays (training events do)."""

    def convert(obj: Any) -> Any:
        if hasattr(obj, "tolist"):  # numpy arrays and scalars
            return obj.tolist()
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(f"not JSON-serializable: {type(obj).__name__}")

    return json.dumps(value, default=convert)


def hostname() -> str:
    """This machine's name as recorded with runs and jobs."""
    return socket.gethostname()


def process_alive(pid: int | None, host: str | None, heartbeat: float | None, started: float | None) -> bool:
    """Whether the process that owns a running run or job still exists.

    On this host the pid is probed (a zombie or a pid reused by a younger process counts as dead);
    on another host only the heartbeat can tell.
    """
    if host and host != hostname():
        return heartbeat is not None and time.time() - heartbeat < STALE_HEARTBEAT_SECONDS
    if not pid:
        return False
    try:
        import psutil
    except ImportError:  # psutil is optional: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # 1 s tolerance: create_time and time.time() are read from different clocks
        return started is None or proc.create_time() <= started + 1.0
    except psutil.NoSuchProcess:
        return False


@dataclass(frozen=True)
class Experiment:
    """A named group of runs (e.g. one backbone comparison)."""

    id: str
    kind: str
    name: str
    config: dict[str, Any]
    created: float


@dataclass(frozen=True)
class Run:
    """One training (or other) run as the store knows it; timestamps are Unix seconds."""

    id: str
    name: str
    kind: str
    experiment_id: str | None
    status: str  # one of RUN_STATUSES
    created: float
    started: float | None
    finished: float | None
    pid: int | None
    hostname: str | None
    heartbeat: float | None
    config: dict[str, Any]
    environment: dict[str, Any]
    results: dict[str, Any]
    error: str | None
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, or to now while it runs."""
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for `--json` output and DataFrames)."""
        return asdict(self)


class RunStore:
    """Runs, experiments and jobs in SQLite; run artifacts under `<root>/runs/<run_id>/`.

    Args:
        path: The SQLite file; default `config.lab_home()/lab.sqlite`. Run folders and job logs
            live next to it (`runs/`, `jobs/`).
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else config.store_file()
        self.root = self.path.parent
        self.root.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    # -- connections -------------------------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        """This thread's connection (a fresh one after fork: SQLite handles must not cross processes)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL keeps this crash-safe, and faster
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taking the lock up front, so the busy timeout applies.

        A deferred transaction that reads first and then writes can fail with 'database is
        locked' at once instead of waiting; BEGIN IMMEDIATE avoids that.
        """
        with _immediate(self.connection()) as conn:
            yield conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        with _immediate(conn):  # one process migrates; the others wait, then skip
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for script in _MIGRATIONS[version:]:
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- experiments -------------------------------------------------------------------------
    def create_experiment(self, kind: str, name: str, config: dict[str, Any] | None = None) -> str:
        """Record a new experiment and return its id."""
        exp_id = new_id()
        with self.write() as conn:
            conn.execute(
                "INSERT INTO experiments (id, kind, name, config, created) VALUES (?, ?, ?, ?, ?)",
                (exp_id, kind, name, to_json(config or {}), time.time()),
            )
        return exp_id

    def get_experiment(self, experiment_id: str) -> Experiment:
        """The experiment with this id; raises NotFound."""
        row = self.connection().execute("SELECT * FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
        if row is None:
            raise NotFound(f"No experiment with id {experiment_id!r}")
        return _experiment(row)

    def list_experiments(self, kind: str | None = None) -> list[Experiment]:
        """All experiments (of one kind if given), newest first."""
        sql, args = "SELECT * FROM experiments", ()
        if kind is not None:
            sql, args = sql + " WHERE kind = ?", (kind,)
        return [_experiment(r) for r in self.connection().execute(sql + " ORDER BY id DESC", args)]

    # -- runs: writing -----------------------------------------------------------------------
    def create_run(
        self,
        config: dict[str, Any],
        kind: str = "retrain",
        name: str | None = None,
        experiment_id: str | None = None,
    ) -> Run:
        """Record a run started by this process (status running) and create its folder."""
        if experiment_id is not None:
            self.get_experiment(experiment_id)  # fail with a clear message, not a foreign-key error
        run_id, now = new_id(), time.time()
        with self.write() as conn:
            conn.execute(
                "INSERT INTO runs (id, name, kind, experiment_id, status, created, started, pid, hostname,"
                " heartbeat, config) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (run_id, name or f"{kind} {run_id}", kind, experiment_id, now, now, os.getpid(), hostname(),
                 now, to_json(config)),
            )  # fmt: skip
        self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        return self.get_run(run_id)

    def log_metrics(self, run_id: str, rows: Iterable[dict[str, Any]], phase: str = "train") -> None:
        """Append history rows (keys from METRIC_COLUMNS; others ignored). Also a heartbeat."""
        values = [(run_id, phase, *(_number(row.get(c)) for c in METRIC_COLUMNS)) for row in rows]
        with self.write() as conn:
            conn.executemany(
                f"INSERT INTO metrics (run_id, phase, {', '.join(METRIC_COLUMNS)})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            conn.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time(), run_id))

    def log_phase(self, run_id: str, phase: str, seconds: float) -> None:
        """Add `seconds` to the time spent in `phase` (a phase may be logged more than once)."""
        with self.write() as conn:
            conn.execute(
                "INSERT INTO phases (run_id, phase, seconds) VALUES (?, ?, ?)"
                " ON CONFLICT (run_id, phase) DO UPDATE SET seconds = seconds + excluded.seconds",
                (run_id, phase, float(seconds)),
            )
            conn.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time(), run_id))

    def heartbeat(self, run_id: str) -> None:
        """Tell readers on other hosts that this run's process is still alive."""
        with self.write() as conn:
            conn.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time(), run_id))

    def set_environment(self, run_id: str, env: dict[str, Any]) -> None:
        """Record where the run ran (see `collect_environment`)."""
        with self.write() as conn:
            conn.execute("UPDATE runs SET environment = ? WHERE id = ?", (to_json(env), run_id))

    def finish_run(
        self, run_id: str, results: dict[str, Any], status: str = "finished", error: str | None = None
    ) -> Run:
        """Record the outcome of a run; `status` is finished, failed, cancelled or interrupted."""
        if status not in RUN_STATUSES or status == "running":
            raise InvalidArgument(
                f"finish_run needs a final status from {RUN_STATUSES[1:]}, got status={status!r}"
            )
        with self.write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, results = ?, error = ?, finished = ? WHERE id = ?",
                (status, to_json(results), error, time.time(), run_id),
            )
        if cursor.rowcount == 0:
            raise NotFound(f"No run with id {run_id!r}")
        return self.get_run(run_id)

    def delete_run(self, run_id: str) -> None:
        """Remove a run's rows and its folder. A run still running cannot be deleted."""
        if self.get_run(run_id).status == "running":
            raise InvalidArgument(f"Run {run_id!r} is still running; cancel it before deleting it")
        with self.write() as conn:
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))  # cascades to metrics and phases
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    # -- runs: reading -----------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        """The run's artifact folder (created by `create_run`)."""
        return config.runs_dir(self.root) / run_id

    def get_run(self, run_id: str) -> Run:
        """The run with this id; raises NotFound. A running run whose process died becomes interrupted."""
        row = self.connection().execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(f"No run with id {run_id!r}")
        return self._runs([row])[0]

    def list_runs(self, experiment_id: str | None = None, kind: str | None = None) -> list[Run]:
        """Runs, newest first, optionally of one experiment and/or kind."""
        where, args = [], []
        for column, value in (("experiment_id", experiment_id), ("kind", kind)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        return self._runs(self.connection().execute(sql + " ORDER BY id DESC", args).fetchall())

    def get_history(self, run_id: str, phase: str | None = None) -> list[dict[str, Any]]:
        """Metric rows of a run in the order logged (`pandas.DataFrame(rows)` makes a table)."""
        sql, args = "SELECT phase, " + ", ".join(METRIC_COLUMNS) + " FROM metrics WHERE run_id = ?", [run_id]
        if phase is not None:
            sql, args = sql + " AND phase = ?", [run_id, phase]
        rows = self.connection().execute(sql + " ORDER BY rowid", args)
        return [dict(r) for r in rows]

    def _runs(self, rows: list[sqlite3.Row]) -> list[Run]:
        rows = [self._reconcile(r) for r in rows]
        phases: dict[str, dict[str, float]] = {r["id"]: {} for r in rows}
        if rows:
            marks = ",".join("?" * len(rows))
            for p in self.connection().execute(
                f"SELECT run_id, phase, seconds FROM phases WHERE run_id IN ({marks})", list(phases)
            ):
                phases[p["run_id"]][p["phase"]] = p["seconds"]
        return [_run(r, phases[r["id"]]) for r in rows]

    def _reconcile(self, row: sqlite3.Row) -> sqlite3.Row:
        """Turn a running run whose process is gone into an interrupted one (and persist that)."""
        if row["status"] != "running" or process_alive(
            row["pid"], row["hostname"], row["heartbeat"], row["started"]
        ):
            return row
        message = (
            f"The process running this run (pid {row['pid']} on {row['hostname']}) stopped before it finished"
        )
        with self.write() as conn:
            # only if still running: the process may have finished the run just before it exited
            conn.execute(
                "UPDATE runs SET status = 'interrupted', error = ?, finished = ?"
                " WHERE id = ? AND status = 'running'",
                (message, row["heartbeat"] or time.time(), row["id"]),
            )
        return self.connection().execute("SELECT * FROM runs WHERE id = ?", (row["id"],)).fetchone()


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _experiment(row: sqlite3.Row) -> Experiment:
    return Experiment(row["id"], row["kind"], row["name"], json.loads(row["config"]), row["created"])


def _run(row: sqlite3.Row, phases: dict[str, float]) -> Run:
    values = dict(row)
    for key in ("config", "environment", "results"):
        values[key] = json.loads(values[key])
    return Run(**values, phases=phases)


def collect_environment(include_tensorflow: bool = True) -> dict[str, Any]:
    """Facts about the machine and stack, saved with each run.

    Args:
        include_tensorflow: Import TensorFlow (slow the first time) to record its version, Keras'
            version and the GPUs it can see.

    Returns:
        A JSON-able dict: python, platform, hostname, cpu, cpu_cores, memory_bytes and, with
        TensorFlow, tensorflow, keras, gpus (names).
    """
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": hostname(),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
    }
    try:
        import psutil

        env["cpu_physical_cores"] = psutil.cpu_count(logical=False)
        env["memory_bytes"] = psutil.virtual_memory().total
    except ImportError:
        pass
    if include_tensorflow:
        env.update(_tensorflow_facts())
    return env


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        import cpuinfo  # py-cpuinfo takes about a second, hence the cache

        name = cpuinfo.get_cpu_info().get("brand_raw")
    except Exception:  # optional package; any failure falls back to what platform knows
        name = None
    return name or platform.processor() or platform.machine()


def _tensorflow_facts() -> dict[str, Any]:
    import keras
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append(details.get("device_name", device.name))
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gpus": gpus,
        "cuda_build": bool(tf.test.is_built_with_cuda()),
    }

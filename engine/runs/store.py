"""Run store: runs, experiments, metric history, jobs and artifact hashes in one SQLite file.

Modelled on MLflow's tracking store: a small interface (`create_run`, `log_metrics`, `finish_run`,
`get_run`, `list_runs`; `create_job`, `claim_job`, `finish_job`, `get_job`, `list_jobs`; `register_worker`,
`assign_jobs`, `retire_worker`, `list_workers`) returning value objects (`Run`, `Experiment`, `Job`, `Worker`
in `entities`) rather than table rows. This is the only module that
speaks SQL for them. SQLite runs in WAL mode with a busy timeout so several processes can write at once;
every thread and process opens its own connection. A run or job whose process died is reported as
interrupted. A database that cannot be opened, written or read raises `StoreUnavailable`, never a
traceback, and a file that is not SQLite is never written to.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from engine import config
from engine.errors import InvalidArgument, NotFound, StoreUnavailable
from engine.runs.entities import (
    ACTIVE_STATUSES,
    JOB_STATUSES,
    RUN_STATUSES,
    Experiment,
    Job,
    Run,
    Worker,
    experiment_from_row,
    job_from_row,
    run_from_row,
    worker_from_row,
)
from engine.training.config import HISTORY_KEYS

METRIC_COLUMNS = HISTORY_KEYS  # the metrics table's columns are the history rows' keys
# A process on another host cannot be probed; without a heartbeat this long we call it gone.
STALE_HEARTBEAT_SECONDS = 120.0
BUSY_TIMEOUT_MS = 30_000
# A job given a queue slot whose worker has not started after this long goes back in line.
SPAWN_GRACE_SECONDS = 60.0

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
    # 2: the content hash of each artifact the lab wrote, so it uses only files it wrote itself
    """
    CREATE TABLE IF NOT EXISTS artifacts (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, relpath TEXT NOT NULL,
        sha256 TEXT NOT NULL, recorded REAL NOT NULL, PRIMARY KEY (run_id, relpath));
    """,
    # 3: who started a run (a display name) and, for a run imported from a bundle, where it came from (JSON)
    """
    ALTER TABLE runs ADD COLUMN author TEXT;
    ALTER TABLE runs ADD COLUMN origin TEXT;
    """,
    # 4: the warm worker pool (engine.jobs.pool), and how long a job's run waited and took to its first
    # curve point
    """
    CREATE TABLE IF NOT EXISTS workers (
        pid INTEGER NOT NULL, hostname TEXT NOT NULL, state TEXT NOT NULL, job_id TEXT,
        started REAL NOT NULL, heartbeat REAL, rss_mb REAL, jobs_done INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (hostname, pid));
    ALTER TABLE runs ADD COLUMN queue_seconds REAL;
    ALTER TABLE runs ADD COLUMN first_metric_seconds REAL;
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


class RunStore:
    """Runs, experiments, jobs and artifact hashes in SQLite; run artifacts under `<root>/runs/<run_id>/`.

    Args:
        path: The SQLite file; default `config.store_file()`. Run folders and job logs live next to
            it (`runs/`, `jobs/`).

    Raises:
        StoreUnavailable: The folder for the file cannot be created (the other methods raise it
            when the database cannot be opened, written or read).
    """

    def __init__(self, path: str | Path | None = None):
        try:
            self.path = Path(path) if path is not None else config.store_file()
            self.root = self.path.parent
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            folder = exc.filename or (Path(path).parent if path is not None else "LAB_HOME")
            raise StoreUnavailable(
                f"Cannot create the lab folder {folder}: {exc.strerror or exc}; "
                "set LAB_HOME to a folder you can write"
            ) from exc
        self._local = threading.local()

    # -- connections -------------------------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        """This thread's connection (a fresh one after fork: SQLite handles must not cross processes)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            with self._errors():
                conn = self._open()
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _open(self) -> sqlite3.Connection:
        if self.path.exists() and not self.path.is_file():
            raise StoreUnavailable(f"The run store {self.path} is not a file; move it aside or set LAB_HOME")
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # reads the header first: a file that is not SQLite fails here, before anything is written
            conn.execute("PRAGMA schema_version").fetchone()
            self._check_ours(conn)  # before WAL mode: that alone would rewrite another program's file
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL keeps this crash-safe, and faster
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_ours(self, conn: sqlite3.Connection) -> None:
        """Refuse a database this lab did not create: the migrations set user_version in the same
        transaction that creates the first table, so tables at version 0 belong to another program."""
        if conn.execute("PRAGMA user_version").fetchone()[0] > 0:
            return
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if tables:
            shown = ", ".join(repr(t) for t in sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise StoreUnavailable(
                f"The run store {self.path} is another program's SQLite database (tables {shown}); "
                "it was left untouched: move it aside or set LAB_HOME to another folder"
            )

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """All rows of one read, with SQLite failures turned into StoreUnavailable."""
        conn = self.connection()
        with self._errors():
            return conn.execute(sql, tuple(args)).fetchall()

    def _one(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Row | None:
        """The first row of one read, or None."""
        rows = self._query(sql, args)
        return rows[0] if rows else None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite's environment failures (read-only, locked, damaged file) into StoreUnavailable."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            reason = _environment_fault(exc, self.path)
            if reason is None:  # a fault of this module's SQL: a bug, keep the traceback
                raise
            raise StoreUnavailable(f"The run store {self.path} {reason}") from exc

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taking the lock up front, so the busy timeout applies.

        A deferred transaction that reads first and then writes can fail with 'database is
        locked' at once instead of waiting; BEGIN IMMEDIATE avoids that.
        """
        conn = self.connection()
        with self._errors(), _immediate(conn):
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
        row = self._one("SELECT * FROM experiments WHERE id = ?", (experiment_id,))
        if row is None:
            raise NotFound(f"No experiment with id {experiment_id!r}")
        return experiment_from_row(row)

    def list_experiments(self, kind: str | None = None) -> list[Experiment]:
        """All experiments (of one kind if given), newest first."""
        sql, args = "SELECT * FROM experiments", ()
        if kind is not None:
            sql, args = sql + " WHERE kind = ?", (kind,)
        return [experiment_from_row(r) for r in self._query(sql + " ORDER BY id DESC", args)]

    # -- runs: writing -----------------------------------------------------------------------
    def create_run(
        self,
        config: dict[str, Any],
        kind: str = "retrain",
        name: str | None = None,
        experiment_id: str | None = None,
        *,
        author: str | None = None,
        origin: dict[str, Any] | None = None,
    ) -> Run:
        """Record a run started by this process (status running) and create its folder.

        Args:
            config: The run's configuration (JSON data).
            kind: What the run does (`retrain`, `bench`, ...).
            name: A display name (default: kind and id).
            experiment_id: The experiment the run belongs to, if any.
            author: The display name of who started it (None: unknown).
            origin: For a run imported from a bundle, where it came from (`engine.runs.share` writes
                `from`, `original_run_id`, `bundle_sha256`, `imported_at`); None for a local run.
        """
        if experiment_id is not None:
            self.get_experiment(experiment_id)  # fail with a clear message, not a foreign-key error
        run_id, now = new_id(), time.time()
        with self.write() as conn:
            conn.execute(
                "INSERT INTO runs (id, name, kind, experiment_id, status, created, started, pid, hostname,"
                " heartbeat, config, author, origin) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, name or f"{kind} {run_id}", kind, experiment_id, now, now, os.getpid(), hostname(),
                 now, to_json(config), author, None if origin is None else to_json(origin)),
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

    def set_run_timing(
        self, run_id: str, queue_seconds: float | None = None, first_metric_seconds: float | None = None
    ) -> None:
        """Record how long a job's run waited for a worker and took to its first evaluation row
        (a value already recorded is kept when None is given)."""
        with self.write() as conn:
            conn.execute(
                "UPDATE runs SET queue_seconds = COALESCE(?, queue_seconds),"
                " first_metric_seconds = COALESCE(?, first_metric_seconds) WHERE id = ?",
                (_number(queue_seconds), _number(first_metric_seconds), run_id),
            )

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
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))  # cascades to metrics, phases, artifacts
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    # -- artifacts ---------------------------------------------------------------------------
    def record_artifact(self, run_id: str, relpath: str, sha256: str) -> None:
        """Record the content hash of a file the lab wrote in a run's folder (replacing an older one).

        Args:
            run_id: The run owning the file.
            relpath: The file's path inside the run folder, with forward slashes (e.g. `model.keras`).
            sha256: Its SHA-256 as 64 hex digits.

        Raises:
            InvalidArgument: A path that leaves the run folder, or a malformed hash.
            NotFound: No run with this id.
        """
        relpath, sha256 = _artifact_path(relpath), _sha256_hex(sha256)
        try:
            with self.write() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO artifacts (run_id, relpath, sha256, recorded)"
                    " VALUES (?, ?, ?, ?)",
                    (run_id, relpath, sha256, time.time()),
                )
        except sqlite3.IntegrityError as exc:  # the foreign key: no such run
            raise NotFound(f"No run with id {run_id!r} to record artifact {relpath!r} for") from exc

    def artifact_hash(self, run_id: str, relpath: str) -> str | None:
        """The SHA-256 recorded for a run's file by `record_artifact`, or None if the lab never wrote it."""
        row = self._one(
            "SELECT sha256 FROM artifacts WHERE run_id = ? AND relpath = ?", (run_id, _artifact_path(relpath))
        )
        return None if row is None else row["sha256"]

    # -- runs: reading -----------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        """The run's artifact folder (created by `create_run`)."""
        return config.runs_dir(self.root) / run_id

    def get_run(self, run_id: str) -> Run:
        """The run with this id; raises NotFound. A running run whose process died becomes interrupted."""
        row = self._one("SELECT * FROM runs WHERE id = ?", (run_id,))
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
        return self._runs(self._query(sql + " ORDER BY id DESC", args))

    def find_imported_run(self, bundle_sha256: str, original_run_id: str, author: str | None) -> Run | None:
        """The run imported from this bundle (same content hash, or same original run and author), if any."""
        for row in self._query("SELECT * FROM runs WHERE origin IS NOT NULL ORDER BY id"):
            origin = json.loads(row["origin"])
            if origin.get("bundle_sha256") == bundle_sha256 or (
                origin.get("original_run_id") == original_run_id and origin.get("from") == author
            ):
                return self._runs([row])[0]
        return None

    def get_history(self, run_id: str, phase: str | None = None) -> list[dict[str, Any]]:
        """Metric rows of a run in the order logged (`pandas.DataFrame(rows)` makes a table)."""
        sql, args = "SELECT phase, " + ", ".join(METRIC_COLUMNS) + " FROM metrics WHERE run_id = ?", [run_id]
        if phase is not None:
            sql, args = sql + " AND phase = ?", [run_id, phase]
        return [dict(r) for r in self._query(sql + " ORDER BY rowid", args)]

    def _runs(self, rows: list[sqlite3.Row]) -> list[Run]:
        rows = [self._reconcile(r) for r in rows]
        phases: dict[str, dict[str, float]] = {r["id"]: {} for r in rows}
        if rows:
            marks = ",".join("?" * len(rows))
            for p in self._query(
                f"SELECT run_id, phase, seconds FROM phases WHERE run_id IN ({marks})", phases
            ):
                phases[p["run_id"]][p["phase"]] = p["seconds"]
        return [run_from_row(r, phases[r["id"]]) for r in rows]

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
        return self._one("SELECT * FROM runs WHERE id = ?", (row["id"],))

    # -- jobs --------------------------------------------------------------------------------
    def create_job(self, kind: str, params: dict[str, Any]) -> Job:
        """Record a queued job on this host (its worker is started by `engine.jobs.queue`).

        Raises:
            InvalidArgument: `params` that are not JSON data.
        """
        try:
            params_json = to_json(params)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"Job parameters must be JSON data, got params={params!r} ({exc})") from exc
        job_id, now = new_id(), time.time()
        with self.write() as conn:
            conn.execute(
                "INSERT INTO jobs (id, kind, status, params, hostname, created, updated)"
                " VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                (job_id, kind, params_json, hostname(), now, now),
            )
        return self.get_job(job_id)

    def set_job_worker(self, job_id: str, pid: int) -> None:
        """Record the worker process started for a job, unless the worker has claimed it already."""
        with self.write() as conn:
            conn.execute(
                "UPDATE jobs SET pid = ?, started = COALESCE(started, ?) WHERE id = ? AND pid IS NULL",
                (pid, time.time(), job_id),
            )

    # A job holds one of the host's slots from the moment it is given one (`started` set) until it
    # ends; a queued job with no `started` waits in line. `started - created` is its queue time.
    _HOLDS_SLOT = "(status = 'running' OR (status = 'queued' AND started IS NOT NULL))"
    _WAITING = "status = 'queued' AND started IS NULL"

    def promote_jobs(self, max_jobs: int, spawn_grace: float = SPAWN_GRACE_SECONDS) -> list[str]:
        """Give the oldest waiting jobs of this host the slots that are free; return their ids.

        At most `max_jobs` jobs of this host hold a slot at once. Dead workers are reconciled first
        (their slots are freed); a job given a slot whose worker was not started within `spawn_grace`
        seconds (its starter died) goes back in line. The slots are counted and given in one
        `BEGIN IMMEDIATE` transaction, so concurrent callers never give out more than `max_jobs`.
        The caller starts a worker for each id returned (`engine.jobs.queue`).
        """
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise InvalidArgument(f"max_jobs must be a whole number >= 1, got max_jobs={max_jobs!r}")
        host = hostname()
        if self._one(f"SELECT 1 FROM jobs WHERE hostname = ? AND {self._WAITING} LIMIT 1", (host,)) is None:
            return []  # the common case of a poll: nobody waits, no write lock taken
        for row in self._query(f"SELECT * FROM jobs WHERE hostname = ? AND {self._HOLDS_SLOT}", (host,)):
            self._reconcile_job(row)  # a worker killed -9 frees its slot here
        now = time.time()
        with self.write() as conn:
            conn.execute(
                "UPDATE jobs SET started = NULL WHERE hostname = ? AND status = 'queued'"
                " AND started IS NOT NULL AND pid IS NULL AND started < ?",
                (host, now - spawn_grace),
            )
            busy = conn.execute(
                f"SELECT COUNT(*) FROM jobs WHERE hostname = ? AND {self._HOLDS_SLOT}", (host,)
            ).fetchone()[0]
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT id FROM jobs WHERE hostname = ? AND {self._WAITING}"
                    " ORDER BY created, id LIMIT ?",
                    (host, max(0, max_jobs - busy)),
                )
            ]
            conn.executemany(
                "UPDATE jobs SET started = ?, updated = ? WHERE id = ?", [(now, now, i) for i in ids]
            )
        return ids

    def queue_positions(self) -> dict[str, int]:
        """Waiting jobs of this host and their place in line (1 = next to get a slot)."""
        rows = self._query(
            f"SELECT id FROM jobs WHERE hostname = ? AND {self._WAITING} ORDER BY created, id", (hostname(),)
        )
        return {row["id"]: i for i, row in enumerate(rows, start=1)}

    def cancel_waiting_job(self, job_id: str) -> bool:
        """Cancel a job no worker has begun: waiting in line, or given a slot or a warm worker that has
        not claimed it yet (a claim needs the job still queued, so it never runs). False otherwise."""
        now = time.time()
        with self.write() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET status = 'cancelled', cancel_requested = COALESCE(cancel_requested, ?),"
                " error = 'Cancelled before it started', eta_seconds = NULL, finished = ?, updated = ?"
                " WHERE id = ? AND status = 'queued'",
                (now, now, now, job_id),
            )
        return cursor.rowcount > 0

    def claim_job(self, job_id: str) -> Job | None:
        """Mark a queued job running in this process; None if it is not queued (missing, cancelled, done)."""
        now = time.time()
        with self.write() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET status = 'running', pid = ?, started = COALESCE(started, ?), updated = ?,"
                " heartbeat = ? WHERE id = ? AND status = 'queued'",
                (os.getpid(), now, now, now, job_id),
            )
        return self.get_job(job_id) if cursor.rowcount else None

    def update_job_progress(self, job_id: str, event: dict[str, Any], extra: dict[str, Any]) -> None:
        """Write a job's latest progress event (phase, done, total, message, eta_seconds, run_id).

        Args:
            job_id: The job.
            event: A progress event (see `engine.progress`) with its `eta_seconds`.
            extra: The latest extra fields of all its events so far.
        """
        now = time.time()
        with self.write() as conn:
            conn.execute(
                "UPDATE jobs SET phase = ?, done = ?, total = ?, message = ?, eta_seconds = ?, extra = ?,"
                " run_id = COALESCE(?, run_id), updated = ?, heartbeat = ? WHERE id = ?",
                (str(event.get("phase") or ""), _count(event.get("done")), _count(event.get("total")),
                 str(event.get("message") or ""), event.get("eta_seconds"), to_json(extra),
                 event.get("run_id"), now, now, job_id),
            )  # fmt: skip

    def job_heartbeat(self, job_id: str) -> None:
        """Tell readers on other hosts that this job's worker is still alive."""
        with self.write() as conn:
            conn.execute("UPDATE jobs SET heartbeat = ? WHERE id = ?", (time.time(), job_id))

    def request_cancel(self, job_id: str) -> None:
        """Set an active job's cancel flag (its worker polls it); the first request's time is kept."""
        with self.write() as conn:
            conn.execute(
                "UPDATE jobs SET cancel_requested = COALESCE(cancel_requested, ?)"
                " WHERE id = ? AND status IN ('queued', 'running')",
                (time.time(), job_id),
            )

    def cancel_requested(self, job_id: str) -> bool:
        """Whether a cancel was asked for this job (True too for a job that no longer exists)."""
        row = self._one("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))
        return row is None or row["cancel_requested"] is not None

    def finish_job(
        self,
        job_id: str,
        status: str,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        only_if_active: bool = False,
    ) -> None:
        """Record how a job ended.

        Args:
            job_id: The job.
            status: finished, failed, cancelled or interrupted.
            result: The kind's result (its `run_id`, if any, is also recorded as the job's run).
            error: A one-line message for the user.
            only_if_active: Leave a job that has ended already as it is (for anyone but its worker).
        """
        if status not in JOB_STATUSES or status in ACTIVE_STATUSES:
            raise InvalidArgument(
                f"finish_job needs a final status from {JOB_STATUSES[2:]}, got status={status!r}"
            )
        now = time.time()
        sql = (
            "UPDATE jobs SET status = ?, result = COALESCE(?, result), error = ?,"
            " run_id = COALESCE(?, run_id), eta_seconds = NULL, finished = ?, updated = ? WHERE id = ?"
        )
        if only_if_active:
            sql += " AND status IN ('queued', 'running')"
        run_id = (result or {}).get("run_id")
        with self.write() as conn:
            conn.execute(
                sql, (status, None if result is None else to_json(result), error, run_id, now, now, job_id)
            )

    def get_job(self, job_id: str) -> Job:
        """The job with this id; raises NotFound. An active job whose worker died has ended (see below)."""
        row = self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise NotFound(f"No job with id {job_id!r}")
        return job_from_row(self._reconcile_job(row))

    def list_jobs(self, active_only: bool = False, limit: int = 200) -> list[Job]:
        """Jobs, newest first; with `active_only` just the queued and running ones (after reconciling)."""
        sql = "SELECT * FROM jobs" + (" WHERE status IN ('queued', 'running')" if active_only else "")
        jobs = [
            job_from_row(self._reconcile_job(r))
            for r in self._query(sql + " ORDER BY id DESC LIMIT ?", (limit,))
        ]
        return [j for j in jobs if j.active] if active_only else jobs

    def _reconcile_job(self, row: sqlite3.Row) -> sqlite3.Row:
        """End an active job whose worker is gone: cancelled if a cancel was asked for, else interrupted.

        A worker killed while it starts up (before its signal handler or heartbeat exists) is
        cancelled, not interrupted, when the kill answered the user's cancel.
        """
        if row["status"] not in ACTIVE_STATUSES or row["pid"] is None:
            return row
        if process_alive(row["pid"], row["hostname"], row["heartbeat"], row["started"]):
            return row
        if row["cancel_requested"] is not None:
            status, message = "cancelled", "Cancelled by the user (the worker stopped before it finished)"
        else:
            status, message = "interrupted", f"The worker process (pid {row['pid']}) stopped unexpectedly"
        self.finish_job(row["id"], status, error=message, only_if_active=True)
        return self._one("SELECT * FROM jobs WHERE id = ?", (row["id"],))

    # -- warm workers (engine.jobs.pool) ---------------------------------------------------------
    # A worker registers itself; the queue gives a promoted job to an idle worker by writing the
    # worker's pid on the job and marking the worker busy, in one transaction; the worker polls for
    # a queued job carrying its pid and claims it. A worker leaves only from "idle", in a transaction,
    # so a job given to it at that moment is never lost.
    def register_worker(self, pid: int, state: str = "idle", job_id: str | None = None) -> None:
        """Record a worker process of this host. A row its starter wrote already (`engine.jobs.pool`
        registers a worker it starts, so a second start does not start another) keeps its state: a
        job may have been given to it meanwhile."""
        now = time.time()
        with self.write() as conn:
            row = conn.execute(
                "SELECT started FROM workers WHERE hostname = ? AND pid = ?", (hostname(), pid)
            ).fetchone()
            if row is not None and process_alive(pid, hostname(), None, row["started"]):
                conn.execute(
                    "UPDATE workers SET heartbeat = ? WHERE hostname = ? AND pid = ?", (now, hostname(), pid)
                )
                return
            conn.execute(
                "INSERT OR REPLACE INTO workers (pid, hostname, state, job_id, started, heartbeat, jobs_done)"
                " VALUES (?, ?, ?, ?, ?, ?, 0)",
                (pid, hostname(), state, job_id, now, now),
            )

    def worker_heartbeat(self, pid: int, rss_mb: float | None) -> None:
        """A worker's sign of life and its resident memory."""
        with self.write() as conn:
            conn.execute(
                "UPDATE workers SET heartbeat = ?, rss_mb = COALESCE(?, rss_mb)"
                " WHERE hostname = ? AND pid = ?",
                (time.time(), _number(rss_mb), hostname(), pid),
            )

    def set_worker_busy(self, pid: int, job_id: str) -> None:
        """A worker began a job (one it was given or one it was started for)."""
        with self.write() as conn:
            conn.execute(
                "UPDATE workers SET state = 'busy', job_id = ?, heartbeat = ? WHERE hostname = ? AND pid = ?",
                (job_id, time.time(), hostname(), pid),
            )

    def set_worker_idle(self, pid: int, jobs_done: int, rss_mb: float | None) -> None:
        """A worker is free for the next job (busy still if a job was given to it already)."""
        host = hostname()
        with self.write() as conn:
            given = conn.execute(
                "SELECT id FROM jobs WHERE hostname = ? AND pid = ? AND status = 'queued'"
                " ORDER BY created, id LIMIT 1",
                (host, pid),
            ).fetchone()
            conn.execute(
                "UPDATE workers SET state = ?, job_id = ?, jobs_done = ?, heartbeat = ?,"
                " rss_mb = COALESCE(?, rss_mb) WHERE hostname = ? AND pid = ?",
                ("idle" if given is None else "busy", None if given is None else given[0], jobs_done,
                 time.time(), _number(rss_mb), host, pid),
            )  # fmt: skip

    def retire_worker(self, pid: int, keep_idle: int | None = None) -> bool:
        """Let an idle worker leave: True if it may exit now (its row is removed), False if a job was
        given to it meanwhile (it must run it) or, with `keep_idle`, fewer than that many other workers
        of this host are idle (it is needed as a warm one)."""
        host = hostname()
        with self.write() as conn:
            row = conn.execute(
                "SELECT state FROM workers WHERE hostname = ? AND pid = ?", (host, pid)
            ).fetchone()
            if row is not None and row["state"] != "idle":
                return False
            if keep_idle is not None:
                others = conn.execute(
                    "SELECT COUNT(*) FROM workers WHERE hostname = ? AND state = 'idle' AND pid != ?",
                    (host, pid),
                ).fetchone()[0]
                if others < keep_idle:
                    return False
            if conn.execute(
                "SELECT 1 FROM jobs WHERE hostname = ? AND pid = ? AND status = 'queued' LIMIT 1", (host, pid)
            ).fetchone():
                return False
            conn.execute("DELETE FROM workers WHERE hostname = ? AND pid = ?", (host, pid))
        return True

    def remove_worker(self, pid: int) -> None:
        """Forget a worker that is exiting whatever its state (after SIGTERM, or a failure)."""
        with self.write() as conn:
            conn.execute("DELETE FROM workers WHERE hostname = ? AND pid = ?", (hostname(), pid))

    def list_workers(self) -> list[Worker]:
        """The live workers of this host, oldest first; rows of dead processes are removed."""
        alive = []
        for row in self._query("SELECT * FROM workers WHERE hostname = ? ORDER BY started", (hostname(),)):
            if process_alive(row["pid"], row["hostname"], row["heartbeat"], row["started"]):
                alive.append(worker_from_row(row))
            else:
                with self.write() as conn:
                    conn.execute(
                        "DELETE FROM workers WHERE hostname = ? AND pid = ? AND started = ?",
                        (row["hostname"], row["pid"], row["started"]),
                    )
        return alive

    def assign_jobs(self, job_ids: Iterable[str]) -> list[str]:
        """Give promoted jobs to idle live workers of this host (the ones holding most memory first:
        those have TensorFlow and a backbone loaded); returns the ids left without a worker."""
        job_ids = list(job_ids)
        if not job_ids:
            return []
        idle = {w.pid for w in self.list_workers() if w.state == "idle"}
        if not idle:
            return job_ids
        host, left = hostname(), []
        with self.write() as conn:
            pids = [
                r[0]
                for r in conn.execute(
                    "SELECT pid FROM workers WHERE hostname = ? AND state = 'idle'"
                    " ORDER BY COALESCE(rss_mb, 0) DESC, started",
                    (host,),
                )
                if r[0] in idle
            ]
            for job_id in job_ids:
                if not pids:
                    left.append(job_id)
                    continue
                cursor = conn.execute(
                    "UPDATE jobs SET pid = ?, updated = ? WHERE id = ? AND status = 'queued' AND pid IS NULL",
                    (pids[0], time.time(), job_id),
                )
                if cursor.rowcount:  # else it was cancelled or taken meanwhile: it needs no worker
                    conn.execute(
                        "UPDATE workers SET state = 'busy', job_id = ? WHERE hostname = ? AND pid = ?",
                        (job_id, host, pids.pop(0)),
                    )
        return left

    def assigned_job(self, pid: int) -> str | None:
        """The oldest queued job given to this worker, if any."""
        row = self._one(
            "SELECT id FROM jobs WHERE hostname = ? AND pid = ? AND status = 'queued'"
            " ORDER BY created, id LIMIT 1",
            (hostname(), pid),
        )
        return None if row is None else row["id"]


def _environment_fault(exc: sqlite3.DatabaseError, path: Path) -> str | None:
    """What to tell the user when SQLite fails because of the file or folder; None for other failures."""
    text, folder = str(exc).lower(), path.parent
    if "readonly" in text or "read-only" in text:
        return f"cannot be written ({exc}): make {folder} writable, or set LAB_HOME to a folder you can write"
    if "unable to open" in text:
        return (
            f"cannot be opened ({exc}): check that you can write {folder}, "
            "or set LAB_HOME to a folder you can write"
        )
    if "not a database" in text or "malformed" in text or "encrypted" in text:
        return (
            f"is not a readable SQLite database ({exc}); it was left untouched: "
            "move it aside to start a new, empty store"
        )
    if "locked" in text or "busy" in text:
        return f"stayed locked by another process for {BUSY_TIMEOUT_MS / 1000:g} s ({exc}); try again later"
    if "disk i/o" in text or "full" in text:
        return f"could not be read or written ({exc}): check the disk it is on"
    return None


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


def _count(value: Any) -> int | float:
    number = float(value or 0)  # also turns numpy numbers into plain ones
    return int(number) if number.is_integer() else number


def _artifact_path(relpath: str) -> str:
    path = PurePosixPath(str(relpath))
    if not str(relpath).strip() or path.is_absolute() or ".." in path.parts or "\\" in str(relpath):
        raise InvalidArgument(
            f"An artifact path is relative to its run folder, with '/' and no '..', got relpath={relpath!r}"
        )
    return path.as_posix()


def _sha256_hex(sha256: str) -> str:
    digest = str(sha256).lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidArgument(f"A SHA-256 is 64 hex digits, got sha256={sha256!r}")
    return digest


def collect_environment(include_tensorflow: bool = True) -> dict[str, Any]:
    """Facts about the machine and stack, saved with each run: `engine.machine.machine_facts()`.

    Args:
        include_tensorflow: Import TensorFlow (slow the first time) to record the GPUs it can see
            and how it was built.
    """
    from engine.machine import machine_facts

    return machine_facts(include_tensorflow)

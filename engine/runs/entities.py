"""Value objects of the run store (`Run`, `Experiment`, `Job`), separate from its table rows.

Like MLflow's entities: the store turns each row into one of these frozen dataclasses, so callers never
see SQL rows or JSON text. Timestamps are Unix seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

RUN_STATUSES = ("running", "finished", "failed", "cancelled", "interrupted")
JOB_STATUSES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
ACTIVE_STATUSES = ("queued", "running")


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
    author: str | None = None  # display name of who started it (None: unknown)
    # for a run imported from a bundle: {"from", "original_run_id", "bundle_sha256", "imported_at"}
    origin: dict[str, Any] | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    # what was wrong with the stored row (a JSON column that did not parse, read as empty); () if nothing
    damage: tuple[str, ...] = ()
    # for a run made by a job: seconds from the job's submission until a worker began it, and until the
    # run's first evaluation row (the first curve point a page can show); None otherwise
    queue_seconds: float | None = None
    first_metric_seconds: float | None = None

    @property
    def imported(self) -> bool:
        """True for a run imported from a bundle (see `origin`)."""
        return self.origin is not None

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, or to now while it runs."""
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for `--json` output and DataFrames)."""
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """A background job as last written by its worker; timestamps are Unix seconds."""

    id: str
    kind: str
    status: str  # one of JOB_STATUSES
    phase: str  # the current progress phase ("" before the first event)
    done: int | float  # units of the phase (float only if the events sent fractions)
    total: int | float  # 0 when the phase's size is unknown
    message: str
    eta_seconds: float | None  # time left in the current phase, from its rate so far
    run_id: str | None
    error: str | None  # a message for the user, never a traceback (that is in the log)
    params: dict[str, Any]
    result: dict[str, Any]
    extra: dict[str, Any]  # latest extra fields of progress events (e.g. train_accuracy, hits)
    pid: int | None
    hostname: str | None
    heartbeat: float | None
    cancel_requested: float | None
    created: float
    updated: float
    started: float | None
    finished: float | None

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.status in ACTIVE_STATUSES

    @property
    def fraction(self) -> float:
        """Progress of the current phase in [0, 1] (0 when the size is unknown)."""
        return min(1.0, self.done / self.total) if self.total else 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


WORKER_STATES = ("idle", "busy", "exiting")


@dataclass(frozen=True)
class Worker:
    """A warm job worker process as it last registered itself (see `engine.jobs.pool`)."""

    pid: int
    hostname: str
    state: str  # one of WORKER_STATES
    job_id: str | None  # the job it was given or runs (busy), None when idle
    started: float  # when it registered
    heartbeat: float | None  # its last sign of life
    rss_mb: float | None  # resident memory at its last heartbeat
    jobs_done: int  # jobs it has run so far

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


def worker_from_row(row: Mapping[str, Any]) -> Worker:
    """A `Worker` from a row of the workers table."""
    return Worker(**dict(row))


def _loads(text: Any, default: Any, what: str, damage: list[str] | None = None) -> Any:
    """A stored JSON column, or `default` (noted in `damage`) when it is damaged or of the wrong kind.

    Another program, a disk fault or an older version may have written the column: one bad row must
    not keep every other run from being listed.
    """
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        value = _DAMAGED
    if value is _DAMAGED or not isinstance(value, type(default)):
        if damage is not None:
            damage.append(f"its stored {what} is damaged and was read as empty")
        return type(default)()
    return value


_DAMAGED = object()


def experiment_from_row(row: Mapping[str, Any]) -> Experiment:
    """An `Experiment` from a row of the experiments table."""
    config = _loads(row["config"], {}, "config")
    return Experiment(row["id"], row["kind"], row["name"], config, row["created"])


def run_from_row(row: Mapping[str, Any], phases: dict[str, float]) -> Run:
    """A `Run` from a row of the runs table and its phase times; damaged JSON columns go in `damage`."""
    values, damage = dict(row), []
    for key in ("config", "environment", "results"):
        values[key] = _loads(values[key], {}, key, damage)
    origin = values.get("origin")
    values["origin"] = None if origin is None else (_loads(origin, {}, "origin", damage) or None)
    return Run(**values, phases=phases, damage=tuple(damage))


def job_from_row(row: Mapping[str, Any]) -> Job:
    """A `Job` from a row of the jobs table (a damaged JSON column reads as empty)."""
    values = dict(row)
    for key in ("params", "result", "extra"):
        values[key] = _loads(values[key], {}, key)
    return Job(**values)

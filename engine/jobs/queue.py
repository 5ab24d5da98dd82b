"""Background jobs: start long work in a detached worker process, follow its progress, cancel it.

A job is a row in the run store's `jobs` table, written by the worker (`python -m engine.jobs.worker`)
and polled by whoever shows it. The worker runs in its own session, so a Streamlit rerun or a
closed browser tab does not stop it, and a new session finds it again with
`list_jobs(active_only=True)`. A job whose worker died is reported as interrupted.

The queue is bounded: at most `config.max_jobs()` (`LAB_MAX_JOBS`) jobs of this machine run at once;
the others wait as "queued" with their place in line (`queue_position`). There is no daemon: whenever a
job is started, polled or ends, `fill_slots` lets the store hand free slots to the oldest waiting jobs
(one transaction) and hands them to workers: an idle warm worker of `engine.jobs.pool` (TensorFlow
already imported, backbones built), or a newly started process when none is idle. A dead worker's slot is
freed when it is reconciled, and its job is interrupted.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine import config
from engine.errors import InvalidArgument, LabError
from engine.jobs import pool
from engine.jobs.pool import LOG_NAME
from engine.progress import CancelFn, ProgressFn, check_cancel, emit
from engine.runs.entities import ACTIVE_STATUSES, JOB_STATUSES, Job
from engine.runs.store import RunStore, hostname, process_alive

log = logging.getLogger(__name__)

# Job and its statuses live with the store's value objects; re-exported for callers of the queue.
__all__ = [
    "ACTIVE_STATUSES",
    "JOB_KINDS",
    "JOB_STATUSES",
    "Job",
    "cancel_job",
    "count_job",
    "fill_slots",
    "get_job",
    "job_dir",
    "job_log",
    "list_jobs",
    "queue_position",
    "queue_positions",
    "queue_seconds",
    "resolve_kind",
    "start_job",
]

# kind -> "module:function"; the function is fn(params, progress, cancel, store) -> dict.
# Import strings, not functions: the worker imports only what its job needs (TensorFlow is slow).
JOB_KINDS: dict[str, str] = {
    "retrain": "engine.runs.retrain:run_job",
    "experiment": "engine.runs.experiments:run_job",
    "count": "engine.jobs.queue:count_job",
    "convert": "engine.export.pipeline:run_job",
    "timing": "engine.timing.lab:run_job",
    "health": "engine.runs.health:run_job",
    "classify_batch": "engine.export.batch:run_job",
}
CANCEL_GRACE_SECONDS = 5.0  # how long a worker gets to notice the cancel flag before it is terminated


def job_dir(job_id: str, store: RunStore | None = None) -> Path:
    """The folder holding a job's log."""
    return config.jobs_dir((store or RunStore()).root) / job_id


def job_log(job_id: str, store: RunStore | None = None, max_chars: int = 20_000) -> str:
    """The end of a job's worker log (stdout, stderr and tracebacks); "" if there is none yet."""
    path = job_dir(job_id, store) / LOG_NAME
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - max_chars))
        return f.read().decode("utf-8", errors="replace")


def start_job(kind: str, params: dict[str, Any], store: RunStore | None = None) -> str:
    """Queue a job and return its id at once; it runs in a detached worker process when a slot is free.

    Args:
        kind: A key of JOB_KINDS.
        params: JSON-able arguments for the kind's function.
        store: The store holding the job row; the default store if None.

    Raises:
        InvalidArgument: Unknown kind or params that are not JSON-able.
        LabError: Its worker could not be started (the job is recorded as failed), or a bad
            `LAB_MAX_JOBS`.
    """
    store = store or RunStore()
    if kind not in JOB_KINDS:
        raise InvalidArgument(f"Unknown job kind {kind!r}; valid kinds: {', '.join(sorted(JOB_KINDS))}")
    limit = config.max_jobs()  # a bad setting fails before anything is queued
    job_id = store.create_job(kind, params).id
    failures = _fill(store, limit)
    if job_id in failures:
        raise failures[job_id]
    return job_id


def fill_slots(store: RunStore | None = None) -> list[str]:
    """Give free slots to the oldest waiting jobs and start their workers; returns the ids started.

    Called when a job is started, polled or ends. A worker that cannot be started fails its job
    (with the reason) and the next one in line gets the slot.
    """
    store = store or RunStore()
    started: list[str] = []
    failures = _fill(store, config.max_jobs(), started)
    return [job_id for job_id in started if job_id not in failures]


def _fill(store: RunStore, limit: int, started: list[str] | None = None) -> dict[str, LabError]:
    failures: dict[str, LabError] = {}
    while True:
        promoted = store.promote_jobs(limit)
        failed = pool.start_workers(store, promoted)  # idle warm workers first, new processes else
        failures.update(failed)
        if started is not None:
            started.extend(promoted)
        if not failed:
            return failures


def queue_positions(store: RunStore | None = None) -> dict[str, int]:
    """Jobs waiting for a slot on this machine -> their place in line (1 = next)."""
    return (store or RunStore()).queue_positions()


def queue_position(job_id: str, store: RunStore | None = None) -> int | None:
    """A waiting job's place in line (1 = next to run); None once it has a slot or has ended."""
    return queue_positions(store).get(job_id)


def queue_seconds(job: Job) -> float | None:
    """Seconds the job waited from submission until it got a slot; None while it still waits."""
    return None if job.started is None else max(0.0, job.started - job.created)


def get_job(job_id: str, store: RunStore | None = None) -> Job:
    """The job with this id; raises NotFound.

    An active job whose worker died is reported interrupted, or cancelled when a cancel was asked for.
    Polling also fills free slots (a slot freed by a dead worker goes to the next job in line).
    """
    store = store or RunStore()
    fill_slots(store)
    return store.get_job(job_id)


def list_jobs(active_only: bool = False, store: RunStore | None = None, limit: int = 200) -> list[Job]:
    """Jobs, newest first; with `active_only` just the queued and running ones (after reconciling)."""
    store = store or RunStore()
    fill_slots(store)
    return store.list_jobs(active_only=active_only, limit=limit)


def cancel_job(
    job_id: str,
    store: RunStore | None = None,
    grace_seconds: float = CANCEL_GRACE_SECONDS,
    wait: bool = False,
) -> Job:
    """Ask a job to stop; terminate its worker if it has not stopped after `grace_seconds`.

    Args:
        job_id: The job.
        store: The store holding it; the default store if None.
        grace_seconds: Time the worker gets to stop by itself (it polls the flag between steps).
        wait: Block until the job has stopped; otherwise a daemon thread enforces the deadline so
            a page can return at once.

    Returns:
        The job as it is now (still running unless `wait` or it was not running). A job still
        waiting for a slot is cancelled at once and never starts.
    """
    store = store or RunStore()
    job = get_job(job_id, store)
    if not job.active:
        return job
    if store.cancel_waiting_job(job_id):
        return store.get_job(job_id)
    store.request_cancel(job_id)
    enforce = threading.Thread(target=_enforce_cancel, args=(job_id, store.path, grace_seconds), daemon=True)
    enforce.start()
    if wait:
        enforce.join()
    return get_job(job_id, store)


def _enforce_cancel(job_id: str, db_path: Path, grace_seconds: float) -> None:
    store = RunStore(db_path)  # a thread of its own: its own store object, its own connection
    deadline = time.time() + grace_seconds
    while time.time() < deadline:
        if not get_job(job_id, store).active:
            return
        time.sleep(0.1)
    job = get_job(job_id, store)
    if not job.active:
        return
    if job.pid and job.hostname == hostname():
        _terminate(job.pid)
    message = f"Cancelled: the job did not stop within {grace_seconds:g} s and was terminated"
    store.finish_job(job_id, "cancelled", error=message, only_if_active=True)
    _cancel_its_run(store, get_job(job_id, store).run_id or job.run_id, message)


def _cancel_its_run(store: RunStore, run_id: str | None, message: str) -> None:
    """The run of a terminated job follows the job: "cancelled", not "running" and later "interrupted"
    (SIGKILL leaves no chance to record it)."""
    if not run_id:
        return
    try:
        if store.get_run(run_id).status in ("running", "interrupted"):
            store.finish_run(run_id, {}, status="cancelled", error=message)
    except LabError:  # the run is gone or the store failed: the job's record is what matters
        log.warning("could not mark run %s of a terminated job cancelled", run_id, exc_info=True)


def _terminate(pid: int) -> None:
    """SIGTERM the worker's process group, then SIGKILL what is left after a moment."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)  # the worker leads its own session and process group
        except (ProcessLookupError, PermissionError):
            return
        for _ in range(30):
            if not process_alive(pid, None, None, None):
                return
            time.sleep(0.1)


def resolve_kind(kind: str) -> Callable[..., dict[str, Any]]:
    """Import the function registered for `kind`; raises InvalidArgument for an unknown kind."""
    if kind not in JOB_KINDS:
        raise InvalidArgument(f"Unknown job kind {kind!r}; valid kinds: {', '.join(sorted(JOB_KINDS))}")
    module_name, _, attr = JOB_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def count_job(
    params: dict[str, Any], progress: ProgressFn | None, cancel: CancelFn | None, store: RunStore | None
) -> dict[str, Any]:
    """The built-in "count" kind: count to `n`, sleeping `delay` s per step, to exercise the job machinery.

    Params: n (int >= 0, default 10), delay (seconds >= 0, default 0.1), fail_at (optional step at
    which an unexpected RuntimeError is raised, to check how crashes are reported).
    """
    n, delay, fail_at = params.get("n", 10), params.get("delay", 0.1), params.get("fail_at")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InvalidArgument(f"count needs a whole number n >= 0, got n={n!r}")
    if not isinstance(delay, int | float) or delay < 0:
        raise InvalidArgument(f"count needs a delay >= 0 seconds, got delay={delay!r}")
    for step in range(1, n + 1):
        check_cancel(cancel)
        time.sleep(delay)
        if step == fail_at:
            raise RuntimeError(f"deliberate failure at step {step}")
        emit(progress, "count", step, n, f"Counted {step} of {n}", value=step)
    return {"counted": n}

"""The warm worker pool: job workers that stay alive between jobs, so a job skips the start-up cost.

A fresh `python -m engine.jobs.worker` spends seconds importing TensorFlow and building the backbone
before its job's first step. A warm worker (`--warm`) keeps those between jobs: after its job it
registers as idle in the store and waits for the next. `engine.jobs.queue` gives each job that got
a slot to an idle worker (`RunStore.assign_jobs`) and starts a new worker only when none is idle, so
there are never more workers than slots (`config.max_jobs()`); at most `config.warm_workers()` wait
idle, each for `config.worker_idle_seconds()`, and a worker is replaced after
`config.worker_max_jobs()` jobs or above `config.worker_max_rss_mb()` (recycling bounds leaks). A dead
worker's job is reconciled as interrupted by the store and its slot goes to the next job in line.
`prewarm()` starts one worker ahead of the first job (the dashboard calls it when it opens).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from engine import config
from engine.errors import LabError
from engine.runs.entities import Worker
from engine.runs.store import RunStore

log = logging.getLogger(__name__)

LOG_NAME = "worker.log"  # a job's log in its job folder


def pool_enabled() -> bool:
    """Whether jobs run in warm workers (`LAB_WARM_WORKERS` >= 1) rather than one fresh process each."""
    return config.warm_workers() > 0


def start_workers(store: RunStore, job_ids: list[str]) -> dict[str, LabError]:
    """Get each promoted job a worker: an idle warm one, else a newly started process.

    Returns:
        job id -> why its worker could not be started (the job is recorded as failed, its slot free).
    """
    failures: dict[str, LabError] = {}
    warm = pool_enabled()
    left = store.assign_jobs(job_ids) if warm else list(job_ids)
    for job_id in left:
        try:
            pid = spawn_worker(store, job_id, warm=warm)
        except LabError as exc:
            store.finish_job(job_id, "failed", error=str(exc), only_if_active=True)
            failures[job_id] = exc
            continue
        store.set_job_worker(job_id, pid)
    return failures


def spawn_worker(store: RunStore, job_id: str | None = None, warm: bool = True, preload: bool = False) -> int:
    """Start a detached worker process for `job_id` (and, if `warm`, later jobs); returns its pid.

    A one-shot worker writes to the job's log; a warm one to its own log under
    `config.worker_logs_dir()` (each job's lines also go to that job's log).

    Raises:
        LabError: the process could not be started.
    """
    if job_id is not None and not warm:
        folder = config.jobs_dir(store.root) / job_id
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / LOG_NAME
    else:
        from engine.runs.store import new_id

        log_path = config.worker_logs_dir(store.root) / f"{new_id()}.log"
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # the worker must import this engine even when started from another working directory
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "engine.jobs.worker"]
    command += [job_id] if job_id is not None else []
    command += ["--warm"] if warm else []
    command += ["--preload"] if preload else []
    command += ["--db", str(store.path)]
    try:
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own session: survives the Streamlit script and its signals
            )
    except OSError as exc:
        raise LabError(f"Could not start the worker process: {exc}") from exc
    return proc.pid


def list_workers(store: RunStore | None = None) -> list[Worker]:
    """The live workers of this machine (idle or busy), with their resident memory."""
    return (store or RunStore()).list_workers()


def prewarm(store: RunStore | None = None) -> int | None:
    """Start one warm worker that loads TensorFlow and the default backbone before any job asks.

    Does nothing (returns None) when a worker of this machine is alive already, when the pool is off
    (`LAB_WARM_WORKERS=0` or `LAB_PREWARM=0`), or when it fails (logged: a page must still open).

    Returns:
        The new worker's pid, or None.
    """
    try:
        if not (pool_enabled() and config.prewarm_enabled()):
            return None
        store = store or RunStore()
        if store.list_workers():
            return None
        pid = spawn_worker(store, None, warm=True, preload=True)
        store.register_worker(pid, "idle")  # at once: the next call sees it and starts no second one
        return pid
    except LabError:
        log.warning("could not start a warm worker", exc_info=True)
        return None


def rss_mb() -> float | None:
    """This process's resident memory in MB (None where it cannot be read)."""
    try:
        import psutil

        return round(psutil.Process().memory_info().rss / 1024**2, 1)
    except Exception:  # psutil is optional
        try:
            with open("/proc/self/statm") as f:
                return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**2, 1)
        except (OSError, ValueError, IndexError):
            return None

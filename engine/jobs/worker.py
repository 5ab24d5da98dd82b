"""The job worker process, started by `engine.jobs.queue`.

`python -m engine.jobs.worker JOB_ID [--db PATH]` runs one job and exits (the one-shot mode, used
when `LAB_WARM_WORKERS=0`). `python -m engine.jobs.worker [JOB_ID] --warm [--preload]` runs the job, if
any, and then stays warm (see `engine.jobs.pool`): it waits idle for the next job the queue gives it,
keeping TensorFlow, built backbones and traced functions, until it has been idle
`LAB_WORKER_IDLE_SECONDS`, has run `LAB_WORKER_MAX_JOBS` jobs or holds more than `LAB_WORKER_MAX_RSS_MB`.
`--preload` builds the default backbone and traces the head's loop before the first job.

For each job it runs the job kind's function and turns its progress events into throttled job-row
updates (with an ETA), answers the cancel check from the job's cancel flag, records how the job
ended and, for a run the job made, `queue_seconds` and `first_metric_seconds`, and hands its queue
slot to the next job in line. Users see one-line messages; tracebacks go to the job's log.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from engine import config
from engine.errors import Cancelled, LabError, NotFound
from engine.jobs.pool import rss_mb
from engine.jobs.queue import LOG_NAME, fill_slots, job_dir, resolve_kind
from engine.runs.store import RunStore

log = logging.getLogger("engine.jobs.worker")

WRITE_INTERVAL = 0.3  # seconds between progress writes: fresh enough for a 1-2 s page poll
CANCEL_POLL_INTERVAL = 0.25  # seconds between reads of the cancel flag
HEARTBEAT_INTERVAL = 2.0  # seconds between heartbeats (and flushes of a pending event)
IDLE_POLL_SECONDS = 0.02  # an idle warm worker looks for a job given to it this often (one indexed read)
IDLE_TICK_SECONDS = 1.0  # ... and this often beats its heart, fills free slots and checks it is needed
_CORE_KEYS = ("phase", "done", "total", "message")


class JobReporter:
    """The progress callback of a job: writes the latest event to the job row, throttled.

    Thread-safe, because a heartbeat thread flushes an event held back by the throttle.
    """

    def __init__(
        self,
        store: RunStore,
        job_id: str,
        interval: float = WRITE_INTERVAL,
        submitted: float | None = None,
        began: float | None = None,
    ):
        self.store, self.job_id, self.interval = store, job_id, interval
        # run timing: the job's submission and the moment a worker began it (Unix seconds)
        self.submitted, self.began = submitted, began
        self._run_id: str | None = None
        self.first_metric: dict[str, float] = {}  # run id -> seconds from submission to its first row
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._last_write = 0.0
        self._extra: dict[str, Any] = {}
        self._phase: str | None = None
        self._last_event = time.monotonic()
        self._phase_start = (self._last_event, 0.0)  # (time, done) where the current phase began

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("run_id"):
            self._run_id = event["run_id"]
        if event.get("row") and self._run_id and self._run_id not in self.first_metric:
            self._first_row(self._run_id)
        with self._lock:
            now = time.monotonic()
            new_phase = event.get("phase") != self._phase
            if new_phase:  # it began when the previous one ended, at 0 units done
                self._phase, self._phase_start = event.get("phase"), (self._last_event, 0.0)
            self._last_event = now
            self._extra.update({k: v for k, v in event.items() if k not in _CORE_KEYS})
            self._pending = {**event, "eta_seconds": self._eta(event, now)}
            # a phase change or a run id is worth showing at once; the rest waits for the interval
            if new_phase or "run_id" in event or now - self._last_write >= self.interval:
                self._write(now)

    def _first_row(self, run_id: str) -> None:
        """Record the run's first evaluation row (its first curve point) the moment it is made."""
        if self.submitted is None:
            return
        self.first_metric[run_id] = round(time.time() - self.submitted, 3)
        try:
            self.store.set_run_timing(run_id, self.queue_seconds, self.first_metric[run_id])
        except LabError:  # a timing is not worth failing the run for
            log.warning("could not record the timing of run %s", run_id, exc_info=True)

    @property
    def queue_seconds(self) -> float | None:
        """Seconds from the job's submission until a worker began it."""
        if self.submitted is None or self.began is None:
            return None
        return round(max(0.0, self.began - self.submitted), 3)

    def timing(self) -> dict[str, float | None]:
        """For a job that made a run: its queue_seconds and first_metric_seconds (of its first run)."""
        if not self.first_metric:
            return {}
        return {
            "queue_seconds": self.queue_seconds,
            "first_metric_seconds": next(iter(self.first_metric.values())),
        }

    def flush(self) -> None:
        """Write the event held back by the throttle, if any."""
        with self._lock:
            if self._pending is not None:
                self._write(time.monotonic())

    def _eta(self, event: dict[str, Any], now: float) -> float | None:
        done, total = float(event.get("done") or 0), float(event.get("total") or 0)
        start_time, start_done = self._phase_start
        elapsed, progressed = now - start_time, done - start_done
        if total <= 0 or progressed <= 0 or elapsed <= 0:
            return None
        return max(0.0, (total - done) * elapsed / progressed)

    def _write(self, now: float) -> None:
        event, self._pending, self._last_write = self._pending, None, now
        self.store.update_job_progress(self.job_id, event, self._extra)


class CancelCheck:
    """The cancel callback of a job: True once the job's cancel flag is set (read at most every 0.25 s)
    or this process got SIGTERM (even if the exception that raised was swallowed, e.g. inside an import).
    """

    def __init__(self, store: RunStore, job_id: str, interval: float = CANCEL_POLL_INTERVAL):
        self.store, self.job_id, self.interval = store, job_id, interval
        self._last_poll = 0.0
        self._cancelled = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if _terminated.is_set():
            self._cancelled = True
        if not self._cancelled and now - self._last_poll >= self.interval:
            self._last_poll = now
            self._cancelled = self.store.cancel_requested(self.job_id)
        return self._cancelled


def _heartbeat_loop(store: RunStore, job_id: str, reporter: JobReporter, stop: threading.Event) -> None:
    # Keeps the row fresh for readers on other hosts and shows events the throttle held back.
    while not stop.wait(HEARTBEAT_INTERVAL):
        try:
            reporter.flush()
            store.job_heartbeat(job_id)
        except Exception:  # a missed heartbeat must never kill the job
            log.exception("heartbeat failed")


_terminated = threading.Event()  # set by SIGTERM, so the cancel check answers True from then on


def _raise_cancelled(signum: int, frame: Any) -> None:
    # SIGTERM from cancel_job: unwind through the kind's cleanup like a polite cancel would
    _terminated.set()
    raise Cancelled("Cancelled by the user")


def run(job_id: str, store: RunStore) -> str:
    """Run one queued job to its end in this process and return its final status."""
    job = store.claim_job(job_id)
    if job is None:
        status = _status_of(store, job_id)
        log.error("job %s is not queued (%s); nothing to do", job_id, status)
        return status
    # every job gets its own reporter, cancel check and heartbeat: nothing carries over to the next
    reporter = JobReporter(store, job_id, submitted=job.created, began=time.time())
    cancel, stop = CancelCheck(store, job_id), threading.Event()
    beat = threading.Thread(target=_heartbeat_loop, args=(store, job_id, reporter, stop), daemon=True)
    beat.start()
    status, result, error = "failed", None, None
    try:
        if cancel():
            raise Cancelled("Cancelled before it started")
        result = resolve_kind(job.kind)(job.params, reporter, cancel, store) or {}
        status = "finished"
    except Cancelled as exc:
        status, error = "cancelled", str(exc)
    except LabError as exc:
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        error = str(exc)
    except Exception as exc:  # unexpected: a short message for the user, the traceback for the log
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        error = f"Unexpected error {type(exc).__name__}: {exc} (details in the job log)"
    finally:
        stop.set()
        beat.join()
    if status != "finished" and _terminated.is_set():
        # SIGTERM's Cancelled may have been swallowed or wrapped (e.g. by an import it interrupted)
        status, error = "cancelled", "Cancelled by the user"
    reporter.flush()
    if result is not None and reporter.timing():
        result = {**result, **reporter.timing()}
    store.finish_job(job_id, status, result or {}, error)
    log.info("job %s %s%s", job_id, status, f": {error}" if error else "")
    return status


def _status_of(store: RunStore, job_id: str) -> str:
    try:
        return store.get_job(job_id).status
    except NotFound:
        return "missing"


def main(argv: list[str] | None = None) -> int:
    """Entry point; the exit code is 0 when the (last) job finished or a warm worker retired, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m engine.jobs.worker", description=__doc__.splitlines()[0])
    parser.add_argument("job_id", nargs="?", help="the job to run first (required without --warm)")
    parser.add_argument("--db", default=None, help="the run store's SQLite file (default: under LAB_HOME)")
    parser.add_argument("--warm", action="store_true", help="stay alive for later jobs (engine.jobs.pool)")
    parser.add_argument(
        "--preload", action="store_true", help="with --warm: build the default backbone first"
    )
    args = parser.parse_args(argv)
    if args.job_id is None and not args.warm:
        parser.error("a JOB_ID is required without --warm")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    signal.signal(signal.SIGTERM, _raise_cancelled)
    store = RunStore(args.db)
    if args.warm:
        return serve(store, args.job_id, preload=args.preload)
    log.info(
        "worker pid %d for job %s (log %s)", os.getpid(), args.job_id, job_dir(args.job_id, store) / LOG_NAME
    )
    status = _run_guarded(args.job_id, store)
    _hand_on_slot(store)
    return 0 if status == "finished" else 1


def _run_guarded(job_id: str, store: RunStore) -> str:
    try:
        return run(job_id, store)
    except Cancelled as exc:  # SIGTERM before the job's own handling began (e.g. while it was claimed)
        store.finish_job(job_id, "cancelled", error=str(exc), only_if_active=True)
        return "cancelled"


# -- the warm mode -----------------------------------------------------------------------------


def serve(store: RunStore, first_job: str | None = None, preload: bool = False) -> int:
    """Run `first_job` (if any), then the jobs the queue gives this worker, until it is not needed.

    Returns:
        The exit code: 0 when the last job finished (or there was none), 1 otherwise.
    """
    pid, jobs_done, status = os.getpid(), 0, "finished"
    log.info("warm worker pid %d (store %s)", pid, store.path)
    try:
        store.register_worker(pid, "busy" if first_job else "idle", first_job)
        job_id = first_job
        while True:
            if job_id is not None:
                store.set_worker_busy(pid, job_id)
                status = _run_with_log(job_id, store)
                jobs_done += 1
            if _terminated.is_set() or _worn_out(jobs_done):
                break
            store.set_worker_idle(pid, jobs_done, rss_mb())
            _hand_on_slot(store)  # the next job in line may come straight back to this worker
            if preload:
                preload = False
                _preload(store, pid)
            job_id = _wait_for_job(store, pid, jobs_done)
            if job_id is None:  # retired: idle too long, or not needed as a warm one
                return 0 if status == "finished" else 1
    except Cancelled:  # SIGTERM while idle or between jobs
        log.info("warm worker pid %d terminated", pid)
    except LabError as exc:  # the store failed: a worker that cannot read its jobs has nothing to do
        log.error("warm worker pid %d stops: %s", pid, exc)
    finally:
        with suppress(Exception):
            store.remove_worker(pid)
    _hand_on_slot(store)  # jobs waiting for this worker's slot get a new worker
    return 0 if status == "finished" else 1


def _worn_out(jobs_done: int) -> bool:
    """Recycle after LAB_WORKER_MAX_JOBS jobs or above LAB_WORKER_MAX_RSS_MB: bounds what leaks pile up."""
    try:
        limit_jobs, limit_mb = config.worker_max_jobs(), config.worker_max_rss_mb()
    except LabError as exc:
        log.error("%s; the worker exits after each job", exc)
        return True
    memory = rss_mb() or 0.0
    if jobs_done >= limit_jobs or memory > limit_mb:
        log.info("worker retires after %d jobs at %.0f MB", jobs_done, memory)
        return True
    return False


def _wait_for_job(store: RunStore, pid: int, jobs_done: int) -> str | None:
    """Wait idle for a job given to this worker; None when it should exit (its row is removed then)."""
    idle_since, last_tick = time.monotonic(), 0.0
    try:
        idle_limit, keep_idle = config.worker_idle_seconds(), config.warm_workers()
    except LabError as exc:
        log.error("%s; the worker does not wait idle", exc)
        idle_limit, keep_idle = 0, 0
    while True:
        job_id = store.assigned_job(pid)
        if job_id is not None:
            return job_id
        now = time.monotonic()
        if now - last_tick >= IDLE_TICK_SECONDS:
            last_tick = now
            if not store.path.exists():  # its data directory was removed: nobody will give it a job
                return None
            if store.retire_worker(pid, keep_idle=keep_idle):  # more warm workers idle than wanted
                return None
            # heartbeat; also frees this worker if a job given to it was cancelled before it claimed it
            store.set_worker_idle(pid, jobs_done, rss_mb())
            _hand_on_slot(store)  # jobs that wait while a slot is free (no page is polling) start here
        if now - idle_since >= idle_limit and store.retire_worker(pid):
            log.info("warm worker pid %d idle for %d s: exits", pid, idle_limit)
            return None
        time.sleep(IDLE_POLL_SECONDS)


@contextmanager
def _job_log(job_id: str, store: RunStore) -> Iterator[None]:
    """Send this process's log lines to the job's own log while it runs (a warm worker runs many)."""
    folder = job_dir(job_id, store)
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / LOG_NAME, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _run_with_log(job_id: str, store: RunStore) -> str:
    with _job_log(job_id, store):
        log.info("warm worker pid %d runs job %s", os.getpid(), job_id)
        return _run_guarded(job_id, store)


def _preload(store: RunStore, pid: int) -> None:
    """Import TensorFlow, build the default backbone's extractor and classifier base, and trace the
    head's training loop, so the first Train press starts at its first step; stops early when a job
    is given to this worker (the job builds what it needs itself)."""
    steps = (_load_tensorflow, _build_default_backbone, _trace_head)
    start = time.perf_counter()
    for step in steps:
        if store.assigned_job(pid) is not None:
            break
        try:
            step()
        except LabError as exc:  # e.g. the weights are not cached: nothing to preload
            log.info("preload stopped: %s", exc)
            break
    log.info("preloaded in %.1f s (%.0f MB)", time.perf_counter() - start, rss_mb() or 0)
    store.worker_heartbeat(pid, rss_mb())


def _load_tensorflow() -> None:
    import tensorflow  # noqa: F401

    from engine.runs.store import collect_environment

    collect_environment()  # what every run records first


def _build_default_backbone() -> None:
    from engine.features import extract
    from engine.models import backbones
    from engine.runs import retrain

    name = backbones.DEFAULT_BACKBONE
    if not backbones.weights_cached(name):
        raise LabError(f"the ImageNet weights of {name} are not cached")
    extract.feature_extractor(name, "imagenet", 0, images=200)  # what a cold 200-photo run uses
    retrain.build_classifier_base(name, "imagenet", 0)  # what its save step uses


def _trace_head() -> None:
    import numpy as np

    from engine.models import backbones
    from engine.training.config import TrainConfig
    from engine.training.head import train_head

    dim = backbones.get_backbone(backbones.DEFAULT_BACKBONE).feature_dim
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, dim)).astype(np.float32), np.arange(10, dtype=np.int32) % 2
    train_head(x, y, x, y, 2, TrainConfig(steps=2, eval_interval=1, batch_size=4))


def _hand_on_slot(store: RunStore) -> None:
    """Start the next job in line now that this one's slot is free (no daemon does it)."""
    try:
        started = fill_slots(store)
    except Exception:  # the next poll fills the slot anyway; never turn a finished job into a crash
        log.exception("could not start the next queued job")
        return
    if started:
        log.info("started the next queued job(s): %s", ", ".join(started))


if __name__ == "__main__":
    sys.exit(main())

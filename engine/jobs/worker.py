"""The job worker process: `python -m engine.jobs.worker JOB_ID [--db PATH]`, started by `jobs.start_job`.

It runs the job kind's function and turns its progress events into throttled job-row updates
(with an ETA), answers the cancel check from the job's cancel flag, records how the job
ended, and hands its queue slot to the next job in line. Users see one-line messages; tracebacks go to
the job's log (this process's stdout).
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
from typing import Any

from engine.errors import Cancelled, LabError, NotFound
from engine.jobs.queue import LOG_NAME, fill_slots, job_dir, resolve_kind
from engine.runs.store import RunStore

log = logging.getLogger("engine.jobs.worker")

WRITE_INTERVAL = 0.3  # seconds between progress writes: fresh enough for a 1-2 s page poll
CANCEL_POLL_INTERVAL = 0.25  # seconds between reads of the cancel flag
HEARTBEAT_INTERVAL = 2.0  # seconds between heartbeats (and flushes of a pending event)
_CORE_KEYS = ("phase", "done", "total", "message")


class JobReporter:
    """The progress callback of a job: writes the latest event to the job row, throttled.

    Thread-safe, because a heartbeat thread flushes an event held back by the throttle.
    """

    def __init__(self, store: RunStore, job_id: str, interval: float = WRITE_INTERVAL):
        self.store, self.job_id, self.interval = store, job_id, interval
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._last_write = 0.0
        self._extra: dict[str, Any] = {}
        self._phase: str | None = None
        self._last_event = time.monotonic()
        self._phase_start = (self._last_event, 0.0)  # (time, done) where the current phase began

    def __call__(self, event: dict[str, Any]) -> None:
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
    reporter, cancel, stop = JobReporter(store, job_id), CancelCheck(store, job_id), threading.Event()
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
    store.finish_job(job_id, status, result or {}, error)
    log.info("job %s %s%s", job_id, status, f": {error}" if error else "")
    return status


def _status_of(store: RunStore, job_id: str) -> str:
    try:
        return store.get_job(job_id).status
    except NotFound:
        return "missing"


def main(argv: list[str] | None = None) -> int:
    """Entry point; the exit code is 0 when the job finished, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m engine.jobs.worker", description=__doc__.splitlines()[0])
    parser.add_argument("job_id")
    parser.add_argument("--db", default=None, help="the run store's SQLite file (default: under LAB_HOME)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    signal.signal(signal.SIGTERM, _raise_cancelled)
    store = RunStore(args.db)
    log.info(
        "worker pid %d for job %s (log %s)", os.getpid(), args.job_id, job_dir(args.job_id, store) / LOG_NAME
    )
    try:
        status = run(args.job_id, store)
    except Cancelled as exc:  # SIGTERM before the job's own handling began (e.g. while it was claimed)
        store.finish_job(args.job_id, "cancelled", error=str(exc), only_if_active=True)
        status = "cancelled"
    _hand_on_slot(store)
    return 0 if status == "finished" else 1


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

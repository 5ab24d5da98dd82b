"""Background jobs: real worker processes for the count kind, cancellation, crashes, and the reporter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from engine.errors import Cancelled, InvalidArgument, NotFound
from engine.jobs import queue as jobs
from engine.jobs import worker
from engine.runs.store import RunStore

DEADLINE = 60.0  # generous: the test machine is shared and slow to start interpreters


@pytest.fixture
def store(lab_home) -> RunStore:
    return RunStore()


def wait_for(job_id: str, store: RunStore, predicate, timeout: float = DEADLINE) -> list[jobs.Job]:
    """Poll a job until `predicate(job)`; returns every state seen (the last satisfies it)."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        seen.append(jobs.get_job(job_id, store))
        if predicate(seen[-1]):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job never got there; last state: {seen[-1]}")


def queued_job(store: RunStore, kind: str = "count", params: dict | None = None) -> str:
    """A job row with no worker, for running `worker.run` in this process."""
    return store.create_job(kind, params or {}).id


def test_count_job_runs_to_the_end_with_progress_and_eta(store):
    job_id = jobs.start_job("count", {"n": 20, "delay": 0.1}, store=store)
    seen = wait_for(job_id, store, lambda j: not j.active)
    job = seen[-1]
    assert job.status == "finished", job.error
    assert job.result == {"counted": 20} and (job.done, job.total, job.phase) == (20, 20, "count")
    assert job.extra == {"value": 20} and job.eta_seconds is None and job.error is None
    running = [j for j in seen if j.status == "running" and 0 < j.done < 20]
    assert len({j.done for j in running}) >= 2, "progress should be seen advancing"
    assert any(j.eta_seconds is not None and 0 < j.eta_seconds < 10 for j in running)
    assert job.finished >= job.started >= job.created
    assert "finished" in jobs.job_log(job_id, store)


def test_a_new_session_finds_the_running_job(store):
    job_id = jobs.start_job("count", {"n": 400, "delay": 0.05}, store=store)
    try:
        wait_for(job_id, store, lambda j: j.status == "running")
        assert [j.id for j in jobs.list_jobs(active_only=True, store=RunStore())] == [job_id]
    finally:
        jobs.cancel_job(job_id, store=store, wait=True)
    assert jobs.list_jobs(active_only=True, store=store) == []
    assert [j.id for j in jobs.list_jobs(store=store)] == [job_id]


def test_cancel_stops_a_long_job_within_seconds(store):
    job_id = jobs.start_job("count", {"n": 10_000, "delay": 0.05}, store=store)
    wait_for(job_id, store, lambda j: j.done >= 2)
    asked = time.time()
    jobs.cancel_job(job_id, store=store)  # returns at once
    job = wait_for(job_id, store, lambda j: not j.active, timeout=10)[-1]
    assert job.status == "cancelled" and job.error == "Cancelled by the user"
    assert time.time() - asked < 5 and job.done < 10_000


def test_a_worker_that_ignores_the_flag_is_terminated(store):
    # one step sleeps 60 s, so the flag is not seen in time: SIGTERM must end it
    job_id = jobs.start_job("count", {"n": 2, "delay": 60}, store=store)
    job = wait_for(job_id, store, lambda j: j.status == "running")[-1]
    started = time.time()
    job = jobs.cancel_job(job_id, store=store, grace_seconds=0.5, wait=True)
    assert job.status == "cancelled" and time.time() - started < 10
    assert wait_for(job_id, store, lambda j: not worker_alive(job.pid))


def worker_alive(pid: int) -> bool:
    from engine.runs.store import process_alive

    return process_alive(pid, None, None, None)


def test_killed_worker_is_reported_interrupted(store):
    job_id = jobs.start_job("count", {"n": 1000, "delay": 0.05}, store=store)
    job = wait_for(job_id, store, lambda j: j.status == "running")[-1]
    os.kill(job.pid, signal.SIGKILL)
    job = wait_for(job_id, store, lambda j: not j.active, timeout=10)[-1]
    assert job.status == "interrupted" and str(job.pid) in job.error


def test_bad_params_fail_with_a_readable_message(store):
    job_id = jobs.start_job("count", {"n": "many"}, store=store)
    job = wait_for(job_id, store, lambda j: not j.active)[-1]
    assert job.status == "failed"
    assert job.error == "count needs a whole number n >= 0, got n='many'"
    assert "Traceback" in jobs.job_log(job_id, store)  # the details stay in the log


def test_unexpected_errors_are_short_for_users_and_full_in_the_log(store):
    job_id = queued_job(store, params={"n": 5, "delay": 0, "fail_at": 3})
    assert worker.run(job_id, store) == "failed"
    job = jobs.get_job(job_id, store)
    assert job.error.startswith("Unexpected error RuntimeError: deliberate failure at step 3")
    assert "Traceback" not in job.error and job.done == 2


def test_start_job_checks_its_arguments(store):
    with pytest.raises(InvalidArgument, match="'nope'; valid kinds: .*count"):
        jobs.start_job("nope", {}, store=store)
    with pytest.raises(InvalidArgument, match="JSON"):
        jobs.start_job("count", {"n": object()}, store=store)
    with pytest.raises(NotFound, match="missing"):
        jobs.get_job("missing", store)
    assert jobs.list_jobs(store=store) == []


def test_worker_runs_a_queued_job_once(store):
    job_id = queued_job(store, params={"n": 3, "delay": 0})
    assert worker.run(job_id, store) == "finished"
    assert worker.run(job_id, store) == "finished"  # not queued any more: nothing runs again
    assert jobs.get_job(job_id, store).result == {"counted": 3}


def test_a_job_cancelled_before_it_starts_never_runs(store):
    job_id = queued_job(store, params={"n": 3, "delay": 0})
    store.request_cancel(job_id)
    assert worker.run(job_id, store) == "cancelled"
    assert jobs.get_job(job_id, store).done == 0


def test_reporter_throttles_writes_but_keeps_the_last_event(store):
    job_id = queued_job(store)
    writes = []
    reporter = worker.JobReporter(store, job_id, interval=10.0)
    real_write = reporter._write
    reporter._write = lambda now: (writes.append(now), real_write(now))
    reporter({"phase": "extract", "done": 1, "total": 100, "message": "", "hits": 1})
    for done in range(2, 51):
        reporter({"phase": "extract", "done": done, "total": 100, "message": f"{done}", "hits": done})
    assert len(writes) == 1  # only the phase change went through
    reporter(
        {"phase": "train", "done": 5, "total": 10, "message": "t", "train_accuracy": 0.5, "run_id": "r1"}
    )
    reporter({"phase": "train", "done": 6, "total": 10, "message": "t6", "train_accuracy": 0.6})
    reporter.flush()
    job = jobs.get_job(job_id, store)
    assert len(writes) == 3 and (job.phase, job.done, job.total, job.message) == ("train", 6, 10, "t6")
    assert job.extra == {"hits": 50, "train_accuracy": 0.6, "run_id": "r1"} and job.run_id == "r1"


def test_reporter_eta_follows_the_phase_rate(store):
    reporter = worker.JobReporter(store, queued_job(store))
    reporter._phase, reporter._phase_start = "train", (100.0, 0.0)
    event = {"phase": "train", "done": 25, "total": 100}
    assert reporter._eta(event, now=110.0) == pytest.approx(30.0)  # 25 units in 10 s, 75 to go
    assert reporter._eta({"phase": "train", "done": 3, "total": 0}, now=110.0) is None


def test_cancel_check_polls_the_flag(store):
    job_id = queued_job(store)
    check = worker.CancelCheck(store, job_id, interval=0.0)
    assert check() is False
    store.request_cancel(job_id)
    assert check() is True


def test_cancel_check_answers_true_after_sigterm_even_if_the_exception_was_swallowed(store, monkeypatch):
    # SIGTERM's Cancelled can be swallowed by code it interrupts (an import's `except Exception`)
    monkeypatch.setattr(worker, "_terminated", threading.Event())
    check = worker.CancelCheck(store, queued_job(store), interval=3600.0)
    assert check() is False
    with pytest.raises(Cancelled):
        worker._raise_cancelled(signal.SIGTERM, None)
    assert check() is True  # without reading the flag again (the interval has not passed)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_worker_is_interrupted_unless_a_cancel_was_asked_for(store):
    crashed, cancelled = queued_job(store), queued_job(store)
    for job_id in (crashed, cancelled):
        store.set_job_worker(job_id, dead_pid())
    store.request_cancel(cancelled)
    job = store.get_job(crashed)
    assert job.status == "interrupted" and str(job.pid) in job.error
    job = store.get_job(cancelled)
    assert job.status == "cancelled" and job.error.startswith("Cancelled by the user")
    assert job.finished is not None and not job.active


def test_cancel_during_start_up_ends_cancelled_not_interrupted(store):
    # cancelled at once with no grace: the worker is killed while Python starts or claims the job
    for _ in range(3):
        job_id = jobs.start_job("count", {"n": 1000, "delay": 0.05}, store=store)
        jobs.cancel_job(job_id, store=store, grace_seconds=0.0)
        seen = wait_for(job_id, store, lambda j: not j.active, timeout=20)
        assert seen[-1].status == "cancelled", seen[-1]
        assert seen[-1].done < 1000
        assert wait_for(job_id, store, lambda j: not worker_alive(j.pid))


def test_the_store_speaks_for_jobs(store):
    job = store.create_job("count", {"n": 1})
    assert (job.status, job.params, job.pid, job.cancel_requested) == ("queued", {"n": 1}, None, None)
    with pytest.raises(InvalidArgument, match="JSON"):
        store.create_job("count", {"n": {1, 2}})
    claimed = store.claim_job(job.id)
    assert claimed.status == "running" and claimed.pid == os.getpid() and claimed.started
    assert store.claim_job(job.id) is None  # claimed once only
    assert store.claim_job("missing") is None
    store.update_job_progress(
        job.id, {"phase": "count", "done": 2.0, "total": 4, "eta_seconds": 1.5}, {"v": 1}
    )
    job = store.get_job(job.id)
    assert (job.phase, job.done, job.total, job.eta_seconds, job.extra, job.fraction) == (
        "count", 2, 4, 1.5, {"v": 1}, 0.5,
    )  # fmt: skip
    assert store.cancel_requested(job.id) is False
    store.request_cancel(job.id)
    first = store.get_job(job.id).cancel_requested
    store.request_cancel(job.id)
    assert store.cancel_requested(job.id) and store.get_job(job.id).cancel_requested == first
    with pytest.raises(InvalidArgument, match="status='running'"):
        store.finish_job(job.id, "running")
    store.finish_job(job.id, "finished", {"run_id": "r1", "n": 1})
    store.finish_job(job.id, "interrupted", error="late", only_if_active=True)  # ended: left as it is
    job = store.get_job(job.id)
    assert (job.status, job.result, job.run_id, job.error, job.eta_seconds) == (
        "finished", {"run_id": "r1", "n": 1}, "r1", None, None,
    )  # fmt: skip
    assert [j.id for j in store.list_jobs()] == [job.id] and store.list_jobs(active_only=True) == []


def test_the_run_of_a_terminated_job_follows_it_to_cancelled(store):
    # SIGKILL after the grace leaves the worker no chance to record its run: the enforcer does
    running, done = store.create_run({}, name="busy"), store.create_run({}, name="done")
    store.finish_run(done.id, {"test_accuracy": 0.5})
    for run in (running, done):
        jobs._cancel_its_run(store, run.id, "Cancelled: terminated")
    assert store.get_run(running.id).status == "cancelled"
    assert store.get_run(running.id).error == "Cancelled: terminated"
    assert store.get_run(done.id).status == "finished"
    jobs._cancel_its_run(store, "no-such-run", "x")  # nothing to follow: no error
    jobs._cancel_its_run(store, None, "x")

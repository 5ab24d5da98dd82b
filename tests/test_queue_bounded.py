"""The bounded job queue: at most LAB_MAX_JOBS jobs run at once, the rest wait in line with a position."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from engine import config
from engine.errors import LabError
from engine.jobs import pool
from engine.jobs import queue as jobs
from engine.runs.store import RunStore

DEADLINE = 90.0  # the test machine is shared: interpreters start slowly


@pytest.fixture
def store(lab_home, monkeypatch) -> RunStore:
    monkeypatch.setenv("LAB_MAX_JOBS", "1")
    return RunStore()


def poll_until(store: RunStore, predicate, timeout: float = DEADLINE) -> list[dict[str, jobs.Job]]:
    """Poll every job (through the queue, as a page does) until `predicate(jobs_by_id)`; all states seen."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        seen.append({j.id: j for j in jobs.list_jobs(store=store)})
        if predicate(seen[-1]):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"never got there; last states: {[(j.id, j.status) for j in seen[-1].values()]}")


def test_max_jobs_setting(monkeypatch):
    monkeypatch.setenv("LAB_MAX_JOBS", "3")
    assert config.max_jobs() == 3
    monkeypatch.delenv("LAB_MAX_JOBS")
    assert config.max_jobs() == max(1, len(os.sched_getaffinity(0)) // 2)
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv("LAB_MAX_JOBS", bad)
        with pytest.raises(
            LabError, match=f"LAB_MAX_JOBS must be a whole number >= 1, got LAB_MAX_JOBS='{bad}'"
        ):
            jobs.start_job("count", {"n": 1}, store=RunStore())
    assert RunStore().list_jobs() == []  # nothing was queued under a bad setting


def test_one_slot_three_jobs_wait_in_line_and_run_in_order(store):
    ids = [jobs.start_job("count", {"n": 8, "delay": 0.1}, store=store) for _ in range(3)]
    first = jobs.get_job(ids[0], store)
    assert first.status in ("queued", "running") and first.started is not None  # it has the slot
    assert jobs.queue_positions(store) == {ids[1]: 1, ids[2]: 2}
    assert [jobs.queue_position(i, store) for i in ids] == [None, 1, 2]
    waiting = jobs.get_job(ids[2], store)
    assert (waiting.status, waiting.started, waiting.pid, jobs.queue_seconds(waiting)) == (
        "queued",
        None,
        None,
        None,
    )

    seen = poll_until(store, lambda by_id: by_id[ids[0]].status == "finished")
    if seen[-1][ids[1]].status in ("queued", "running") and seen[-1][ids[2]].started is None:
        assert jobs.queue_positions(store) in ({ids[2]: 1}, {})  # moved up (or just got the slot)
    seen += poll_until(store, lambda by_id: all(not j.active for j in by_id.values()))
    for states in seen:  # never more than one at a time, whoever polled
        assert sum(j.status == "running" for j in states.values()) <= 1
        assert sum(j.started is not None and j.active for j in states.values()) <= 1
    final = [seen[-1][i] for i in ids]
    assert [j.status for j in final] == ["finished"] * 3, [j.error for j in final]
    assert [j.result for j in final] == [{"counted": 8}] * 3
    # in order: each got the slot only after the one before it had finished
    assert final[0].finished <= final[1].started and final[1].finished <= final[2].started
    waits = [jobs.queue_seconds(j) for j in final]
    assert waits[0] < waits[1] < waits[2] and waits[2] >= 2 * 0.8  # two jobs of >= 0.8 s ahead of it
    assert jobs.queue_positions(store) == {}


def test_cancel_a_queued_job_it_never_starts(store):
    running = jobs.start_job("count", {"n": 400, "delay": 0.05}, store=store)
    waiting = jobs.start_job("count", {"n": 3, "delay": 0.0}, store=store)
    last = jobs.start_job("count", {"n": 3, "delay": 0.0}, store=store)
    assert jobs.queue_positions(store) == {waiting: 1, last: 2}
    job = jobs.cancel_job(waiting, store=store)  # at once: no grace period, no worker to stop
    assert (job.status, job.error, job.started, job.pid, job.done) == (
        "cancelled",
        "Cancelled before it started",
        None,
        None,
        0,
    )
    assert jobs.queue_positions(store) == {last: 1}
    jobs.cancel_job(running, store=store, wait=True)
    states = poll_until(store, lambda by_id: not by_id[last].active)[-1]
    assert states[running].status == "cancelled" and states[last].status == "finished"
    job = jobs.get_job(waiting, store)
    assert (job.status, job.started, job.pid, job.done) == ("cancelled", None, None, 0)
    assert not (config.jobs_dir(store.root) / waiting / jobs.LOG_NAME).exists()  # no worker ever ran


def test_a_killed_worker_frees_its_slot_for_the_next(store):
    victim = jobs.start_job("count", {"n": 1000, "delay": 0.05}, store=store)
    following = jobs.start_job("count", {"n": 3, "delay": 0.0}, store=store)
    by_id = poll_until(store, lambda b: b[victim].status == "running")[-1]
    assert by_id[following].status == "queued" and jobs.queue_position(following, store) == 1
    os.kill(by_id[victim].pid, signal.SIGKILL)
    by_id = poll_until(store, lambda b: b[following].status == "finished")[-1]
    assert by_id[victim].status == "interrupted" and str(by_id[victim].pid) in by_id[victim].error
    assert by_id[following].started >= by_id[victim].started


def test_a_worker_that_cannot_start_fails_its_job_and_frees_the_slot(store, monkeypatch):
    real_popen, calls = pool.subprocess.Popen, []

    def flaky_popen(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise OSError("no processes left")
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(pool.subprocess, "Popen", flaky_popen)
    with pytest.raises(LabError, match="Could not start the worker process: no processes left"):
        jobs.start_job("count", {"n": 1, "delay": 0.0}, store=store)
    (failed,) = store.list_jobs()
    assert failed.status == "failed" and "no processes left" in failed.error
    next_one = jobs.start_job("count", {"n": 1, "delay": 0.0}, store=store)
    assert poll_until(store, lambda by_id: not by_id[next_one].active)[-1][next_one].status == "finished"


def test_a_slot_given_to_a_job_whose_starter_died_goes_back_in_line(store):
    stranded = store.create_job("count", {"n": 1, "delay": 0.0}).id
    assert store.promote_jobs(1) == [stranded]  # the slot is given, then nobody starts the worker
    assert store.promote_jobs(1) == [] and store.queue_positions() == {}
    later = store.create_job("count", {"n": 1, "delay": 0.0}).id
    assert store.promote_jobs(1) == [] and store.queue_positions() == {later: 1}
    assert store.promote_jobs(1, spawn_grace=0.0) == [stranded]  # past the grace: first in line again
    assert store.queue_positions() == {later: 1}


def test_promote_never_gives_out_more_than_the_slots(store):
    ids = [store.create_job("count", {}).id for _ in range(5)]
    assert store.promote_jobs(2) == ids[:2]
    assert store.promote_jobs(2) == []
    assert store.promote_jobs(3) == ids[2:3]
    assert store.queue_positions() == {ids[3]: 1, ids[4]: 2}


@pytest.mark.slow
def test_five_students_share_two_slots(lab_home, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import load_class

    report = load_class.run_load(students=5, max_jobs=2, steps=20, timeout=600.0, home=lab_home)
    assert report["finished"] == 5 and report["problems"] == [], report
    assert report["max_running_seen"] <= 2
    assert report["peak_rss_mb"] > 0

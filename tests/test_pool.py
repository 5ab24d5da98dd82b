"""The warm worker pool: jobs reuse a live worker, it leaves when idle or worn out, a dead one is replaced,
cancel works in every state, and runs record queue_seconds and first_metric_seconds."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from engine import config
from engine.errors import LabError
from engine.jobs import pool, worker
from engine.jobs import queue as jobs
from engine.runs import store as store_module
from engine.runs.store import RunStore, process_alive

DEADLINE = 90.0  # the test machine is shared: interpreters start slowly


@pytest.fixture
def store(lab_home, monkeypatch) -> RunStore:
    monkeypatch.setenv("LAB_MAX_JOBS", "1")
    monkeypatch.setenv("LAB_WARM_WORKERS", "1")
    return RunStore()


def wait_for(predicate, timeout: float = DEADLINE, what: str = "it"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} never happened")


def ended(job_id: str, store: RunStore) -> jobs.Job | None:
    job = jobs.get_job(job_id, store)
    return None if job.active else job


def run_to_end(store: RunStore, kind: str = "count", params: dict | None = None) -> jobs.Job:
    job_id = jobs.start_job(kind, params if params is not None else {"n": 2, "delay": 0.0}, store=store)
    return wait_for(lambda: ended(job_id, store), what=f"end of {job_id}")


def alive(pid: int) -> bool:
    return process_alive(pid, None, None, None)


def test_jobs_reuse_one_warm_worker_which_leaves_when_idle(store, monkeypatch):
    monkeypatch.setenv("LAB_WORKER_IDLE_SECONDS", "2")
    done = [run_to_end(store) for _ in range(3)]
    assert [j.status for j in done] == ["finished"] * 3, [j.error for j in done]
    assert len({j.pid for j in done}) == 1  # one process ran all three
    (warm,) = wait_for(
        lambda: [w for w in pool.list_workers(store) if w.state == "idle" and w.jobs_done == 3]
    )
    assert warm.pid == done[0].pid and warm.rss_mb > 0 and warm.job_id is None
    for job in done:  # each job's lines go to its own log, not the others'
        text = jobs.job_log(job.id, store)
        assert f"runs job {job.id}" in text and f"job {job.id} finished" in text
        assert all(other.id not in text for other in done if other is not job)
    wait_for(lambda: not alive(warm.pid), timeout=30, what="the idle worker's exit")
    assert pool.list_workers(store) == []
    assert "idle for 2 s: exits" in "".join(p.read_text() for p in config.worker_logs_dir().glob("*.log"))


def test_a_worker_is_replaced_after_its_max_jobs(store, monkeypatch):
    monkeypatch.setenv("LAB_WORKER_MAX_JOBS", "2")
    pids = [run_to_end(store).pid for _ in range(3)]
    assert pids[0] == pids[1] != pids[2]


def test_without_warm_workers_every_job_gets_a_fresh_process(store, monkeypatch):
    monkeypatch.setenv("LAB_WARM_WORKERS", "0")
    first, second = run_to_end(store), run_to_end(store)
    assert first.status == second.status == "finished" and first.pid != second.pid
    assert pool.list_workers(store) == [] and pool.prewarm(store) is None
    assert "finished" in jobs.job_log(first.id, store)  # a one-shot worker writes to the job's log


def test_cancel_in_every_state_keeps_the_warm_worker(store):
    long = jobs.start_job("count", {"n": 2000, "delay": 0.05}, store=store)
    waiting = jobs.start_job("count", {"n": 2, "delay": 0.0}, store=store)
    following = jobs.start_job("count", {"n": 3, "delay": 0.0}, store=store)
    pid = wait_for(lambda: (j := jobs.get_job(long, store)).status == "running" and j.pid)
    # queued: ends at once, never runs
    job = jobs.cancel_job(waiting, store=store)
    assert (job.status, job.error, job.pid) == ("cancelled", "Cancelled before it started", None)
    # running: the flag stops it; the same worker then runs the next job, whose own flag is clear
    assert jobs.cancel_job(long, store=store, wait=True).status == "cancelled"
    after = wait_for(lambda: ended(following, store))
    assert (after.status, after.result, after.pid) == ("finished", {"counted": 3}, pid)
    # the worker is idle now: cancelling a finished job changes nothing and kills nothing
    assert jobs.cancel_job(following, store=store, wait=True).status == "finished" and alive(pid)
    assert run_to_end(store).pid == pid


def test_a_job_given_to_an_idle_worker_can_be_cancelled_before_it_claims_it(store):
    me = os.getpid()  # this test process plays the idle worker
    store.register_worker(me, "idle")
    job_id = store.create_job("count", {"n": 3, "delay": 0.0}).id
    assert store.promote_jobs(1) == [job_id] and store.assign_jobs([job_id]) == []
    assert store.assigned_job(me) == job_id and store.get_job(job_id).pid == me
    assert [w.state for w in store.list_workers()] == ["busy"]
    assert store.retire_worker(me) is False  # it was given a job: it may not leave
    store.request_cancel(job_id)
    assert worker.run(job_id, store) == "cancelled"
    job = store.get_job(job_id)
    assert (job.status, job.error, job.done) == ("cancelled", "Cancelled before it started", 0)
    store.set_worker_idle(me, 1, 50.0)
    assert store.assigned_job(me) is None and [w.state for w in store.list_workers()] == ["idle"]
    # cancelled through the queue while given to the worker: at once, and the worker is free again
    second = store.create_job("count", {"n": 3, "delay": 0.0}).id
    assert store.promote_jobs(1) == [second] and store.assign_jobs([second]) == []
    job = jobs.cancel_job(second, store=store)
    assert (job.status, job.error) == ("cancelled", "Cancelled before it started") and job.started
    assert worker.run(second, store) == "cancelled"  # the late claim finds nothing to run
    assert [w.state for w in store.list_workers()] == ["busy"]
    store.set_worker_idle(me, 1, 50.0)  # what the worker's next idle tick does
    assert [w.state for w in store.list_workers()] == ["idle"]
    assert store.assigned_job(me) is None and store.retire_worker(me) is True
    assert store.list_workers() == []


def test_idle_workers_beyond_the_warm_count_leave(store):
    me, other = os.getpid(), os.getppid()  # two live processes as two idle workers
    store.register_worker(me, "idle")
    store.register_worker(other, "idle")
    assert store.retire_worker(me, keep_idle=2) is False  # only one other is idle: both are wanted
    assert store.retire_worker(me, keep_idle=1) is True
    assert store.retire_worker(other, keep_idle=1) is False  # the last one stays warm
    assert [w.pid for w in store.list_workers()] == [other]


def test_a_dead_workers_row_is_dropped_and_its_jobs_go_to_a_new_process(store):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    store.register_worker(proc.pid, "idle")  # it died idle (kill -9 leaves its row)
    job_id = store.create_job("count", {}).id
    assert store.promote_jobs(1) == [job_id]
    assert store.assign_jobs([job_id]) == [job_id]  # no live idle worker: the queue starts one
    assert store.list_workers() == []


def test_a_killed_idle_worker_is_replaced(store):
    first = run_to_end(store)
    wait_for(lambda: [w for w in pool.list_workers(store) if w.state == "idle"])
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: not alive(first.pid))
    second = run_to_end(store)
    assert second.status == "finished" and second.pid != first.pid
    assert [w.pid for w in wait_for(lambda: pool.list_workers(store))] == [second.pid]


def test_the_reporter_records_the_runs_queue_and_first_metric_seconds(store):
    run = store.create_run({}, name="timed")
    job = store.create_job("retrain", {})
    reporter = worker.JobReporter(store, job.id, submitted=job.created, began=job.created + 0.5)
    assert reporter.timing() == {}  # no run made yet
    reporter({"phase": "scan", "done": 0, "total": 0, "message": "", "run_id": run.id})
    assert store.get_run(run.id).first_metric_seconds is None
    row = {"step": 10, "train_accuracy": 0.5}
    reporter({"phase": "train", "done": 10, "total": 20, "message": "", "row": row})
    first = store.get_run(run.id)
    assert first.queue_seconds == 0.5 and 0 <= first.first_metric_seconds < 60
    reporter({"phase": "train", "done": 20, "total": 20, "message": "", "row": {**row, "step": 20}})
    assert store.get_run(run.id).first_metric_seconds == first.first_metric_seconds  # the first row only
    assert reporter.timing() == {"queue_seconds": 0.5, "first_metric_seconds": first.first_metric_seconds}
    assert first.as_dict()["queue_seconds"] == 0.5


def test_an_older_store_gains_the_new_columns_and_keeps_its_runs(lab_home):
    path = config.store_file()
    conn = sqlite3.connect(path)
    for script in store_module._MIGRATIONS[:3]:  # the schema before the pool
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 3")
    conn.execute(
        "INSERT INTO runs (id, name, kind, status, created)"
        " VALUES ('old-run', 'old', 'retrain', 'finished', 1.0)"
    )
    conn.commit()
    conn.close()
    store = RunStore(path)
    run = store.get_run("old-run")
    assert (run.name, run.queue_seconds, run.first_metric_seconds) == ("old", None, None)
    assert store.list_workers() == []
    store.set_run_timing("old-run", 1.25, None)
    assert store.get_run("old-run").queue_seconds == 1.25


def test_pool_settings(monkeypatch):
    assert (config.warm_workers(), config.worker_idle_seconds()) == (1, 5)  # 5: tests/conftest.py
    monkeypatch.delenv("LAB_WORKER_IDLE_SECONDS")
    assert (config.worker_idle_seconds(), config.worker_max_jobs(), config.worker_max_rss_mb()) == (
        600,
        50,
        3000,
    )
    for name, bad in (
        ("LAB_WARM_WORKERS", "-1"),
        ("LAB_WORKER_IDLE_SECONDS", "0"),
        ("LAB_WORKER_MAX_JOBS", "x"),
        ("LAB_WORKER_MAX_RSS_MB", "10"),
    ):
        monkeypatch.setenv(name, bad)
        getter = {
            "LAB_WARM_WORKERS": config.warm_workers,
            "LAB_WORKER_IDLE_SECONDS": config.worker_idle_seconds,
            "LAB_WORKER_MAX_JOBS": config.worker_max_jobs,
            "LAB_WORKER_MAX_RSS_MB": config.worker_max_rss_mb,
        }[name]
        with pytest.raises(LabError, match=f"{name} must be a whole number >= \\d+, got {name}='{bad}'"):
            getter()
        monkeypatch.delenv(name)
    assert config.prewarm_enabled() is False  # tests/conftest.py: page tests start no worker


@pytest.mark.slow
def test_a_prewarmed_worker_runs_train_and_records_its_timing(
    store, flowers_dir, seeded_keras_home, monkeypatch
):
    from dataclasses import asdict

    from engine.runs.retrain import RunConfig
    from engine.training.config import TrainConfig

    monkeypatch.setenv("LAB_PREWARM", "1")
    monkeypatch.setenv("LAB_WORKER_IDLE_SECONDS", "60")
    pid = pool.prewarm(store)
    assert pid and pool.prewarm(store) is None  # one warm worker is enough
    try:
        wait_for(
            lambda: "preloaded in" in "".join(p.read_text() for p in config.worker_logs_dir().glob("*.log")),
            timeout=180,
            what="preloading",
        )
        (warm,) = pool.list_workers(store)
        assert warm.pid == pid and warm.state == "idle" and warm.rss_mb > 200  # TensorFlow and a backbone
        params = asdict(RunConfig(source=str(flowers_dir), train=TrainConfig(steps=100)))
        job = run_to_end(store, "retrain", params)
        assert job.status == "finished", job.error
        assert job.pid == pid  # the prewarmed worker ran it
        run = store.get_run(job.run_id)
        assert run.status == "finished" and store.get_history(run.id)
        assert 0 <= run.queue_seconds <= run.first_metric_seconds <= job.finished - job.created
        assert job.result["queue_seconds"] == run.queue_seconds
        assert job.result["first_metric_seconds"] == run.first_metric_seconds
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), timeout=30, what="the worker's exit on SIGTERM")
    assert pool.list_workers(store) == []

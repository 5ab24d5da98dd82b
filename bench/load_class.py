"""Load test of a class on one server: N simulated students against one LAB_HOME and a bounded job queue.

Each student is its own process that, through the engine's APIs only:
  1. uploads a small generated class-folder set (even students one class at a time through
     engine.data.uploads, odd students as a zip through engine.data.archives), with the class-mode quota;
  2. starts a retrain job through engine.jobs.queue (random weights, few steps);
  3. polls get_job until the job has ended, as a page does;
  4. classifies a photo with the run's model (engine.export.predict.Classifier.from_run).
The parent samples, every 0.25 s, the sum of RSS over its whole process tree (it is a child subreaper,
so job workers whose starter exited stay in its tree) and how many jobs run at once. At the end it
checks the store: every job finished, every run finished with a model, no orphan folders. It stops by
itself after --timeout seconds (what is left is terminated and reported).

    python bench/load_class.py [--students 20] [--max-jobs 2] [--steps 20] [--timeout 1200] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCH = "mobilenet_0.25_128"  # the smallest backbone: the test is about the server, not the model
CLASSES, PER_CLASS, SIZE = 2, 20, 64
POLL_SECONDS = 0.5
PR_SET_CHILD_SUBREAPER = 36


# -- one student ---------------------------------------------------------------------------------
def student(index: int, steps: int, timeout: float, out: Path) -> int:
    """One simulated student; writes what happened to `out` (JSON) and returns an exit code."""
    from engine.data import archives, quota, sources, uploads
    from engine.jobs import queue
    from engine.runs.retrain import RunConfig
    from engine.training.config import TrainConfig

    rng = random.Random(index)
    report: dict = {"student": index, "ok": False}
    t0 = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix=f"student{index}-") as tmp:
            photos = sources.make_demo_dataset(Path(tmp) / "set", CLASSES, PER_CLASS, SIZE, seed=index)
            files = {
                c.name: [(p.name, p.read_bytes()) for p in sorted(c.iterdir())]
                for c in sorted(photos.iterdir())
                if c.is_dir()
            }
            photo = next(iter(files.values()))[0][1]
        name = f"student-{index:02d}"
        allowed = quota.upload_quota(name, f"student {index}")  # the class-mode quota per name
        if index % 2 == 0:
            folder = uploads.save_class_images(name, files, quota=allowed).folder
        else:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as zf:
                for label, items in files.items():
                    for file_name, data in items:
                        zf.writestr(f"{label}/{file_name}", data)
            folder = archives.extract_zip(buffer.getvalue(), name, quota=allowed)
        report["upload_seconds"] = time.time() - t0

        train = TrainConfig(steps=steps, learning_rate=rng.choice([0.005, 0.01, 0.05]), eval_interval=5)
        params = asdict(RunConfig(source=str(folder), architecture=ARCH, weights="random", train=train,
                                  name=f"student {index}"))  # fmt: skip
        t1 = time.time()
        job_id = queue.start_job("retrain", params)
        report["job_id"], positions = job_id, []
        deadline = t1 + timeout
        while True:
            job = queue.get_job(job_id)
            if not job.active or time.time() > deadline:
                break
            place = queue.queue_position(job_id)
            if place is not None and (not positions or positions[-1] != place):
                positions.append(place)
            time.sleep(POLL_SECONDS)
        report.update(
            status=job.status,
            error=job.error,
            run_id=job.run_id,
            positions_seen=positions,
            queue_seconds=queue.queue_seconds(job),
            job_seconds=time.time() - t1,
        )
        if job.status != "finished":
            return 1

        from engine.export.predict import Classifier

        t2 = time.time()
        prediction = Classifier.from_run(job.run_id).classify([photo], top_k=1)[0]
        report.update(
            classify_seconds=time.time() - t2, top1=prediction.top1, classify_error=prediction.error
        )
        report["ok"] = prediction.error is None and prediction.top1 in files
        return 0 if report["ok"] else 1
    except Exception as exc:  # reported, not raised: the parent sums up every student
        report["exception"] = f"{type(exc).__name__}: {exc}"
        return 1
    finally:
        report["total_seconds"] = time.time() - t0
        out.write_text(json.dumps(report))


# -- the class -----------------------------------------------------------------------------------
class Sampler(threading.Thread):
    """Samples the process tree's RSS and the number of running jobs; reaps adopted workers."""

    def __init__(self, students: set[int], store, interval: float = 0.25):
        super().__init__(daemon=True)
        self.students, self.store, self.interval = students, store, interval
        self.peak_rss = self.peak_processes = self.max_running = 0
        self.peak_workers_rss = self.peak_worker_rss = 0  # all job workers together; the biggest one
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            rss, count, workers = me.memory_info().rss, 1, []
            for child in me.children(recursive=True):
                try:
                    if child.status() == psutil.STATUS_ZOMBIE:
                        if child.ppid() == me.pid and child.pid not in self.students:
                            os.waitpid(child.pid, os.WNOHANG)  # an adopted worker that ended
                        continue
                    child_rss = child.memory_info().rss
                    rss += child_rss
                    count += 1
                    if "engine.jobs.worker" in child.cmdline():
                        workers.append(child_rss)
                except (psutil.NoSuchProcess, ChildProcessError):
                    continue
            self.peak_rss, self.peak_processes = max(self.peak_rss, rss), max(self.peak_processes, count)
            self.peak_workers_rss = max(self.peak_workers_rss, sum(workers))
            self.peak_worker_rss = max([self.peak_worker_rss, *workers])
            try:
                running = sum(j.status == "running" for j in self.store.list_jobs(active_only=True))
                self.max_running = max(self.max_running, running)
            except Exception:
                pass
            self.stop.wait(self.interval)


def check_store(home: Path, expected: int) -> list[str]:
    """What is wrong with the store after the class: unfinished jobs or runs, missing models, orphans."""
    from engine import config
    from engine.runs.store import RunStore

    store, problems = RunStore(config.store_file(home)), []
    jobs, runs = store.list_jobs(limit=10_000), store.list_runs()
    if len(jobs) != expected or len(runs) != expected:
        problems.append(f"{len(jobs)} jobs and {len(runs)} runs for {expected} students")
    problems += [f"job {j.id} is {j.status}: {j.error}" for j in jobs if j.status != "finished"]
    problems += [f"job {j.id} has no run" for j in jobs if j.status == "finished" and not j.run_id]
    for run in runs:
        model = store.run_dir(run.id) / "model.keras"
        if run.status != "finished":
            problems.append(f"run {run.id} is {run.status}: {run.error}")
        elif not model.is_file() or store.artifact_hash(run.id, "model.keras") is None:
            problems.append(f"run {run.id} has no recorded model.keras")
    run_ids, job_ids = {r.id for r in runs}, {j.id for j in jobs}
    problems += [
        f"orphan run folder {p.name}" for p in config.runs_dir(home).iterdir() if p.name not in run_ids
    ]
    problems += [
        f"orphan job folder {p.name}" for p in config.jobs_dir(home).iterdir() if p.name not in job_ids
    ]
    uploads = home / "datasets" / "uploads"
    names = {f"student-{i:02d}" for i in range(expected)}
    found = {p.name for p in uploads.iterdir() if p.name != ".owners"} if uploads.is_dir() else set()
    problems += [f"unexpected entry in uploads: {n}" for n in sorted(found - names)]
    problems += [f"upload missing: {n}" for n in sorted(names - found)]
    return problems


def run_load(
    students: int = 20, max_jobs: int = 2, steps: int = 20, timeout: float = 1200.0, home: Path | None = None
) -> dict:
    """Run the class and return its figures (see the module docstring)."""
    from engine import config
    from engine.runs.store import RunStore

    home = Path(home or tempfile.mkdtemp(prefix="lab-class-")).resolve()
    env = {**os.environ, "LAB_HOME": str(home), "LAB_MAX_JOBS": str(max_jobs), "LAB_SERVE_MODE": "class"}
    env.update(
        TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    )
    env.setdefault("LAB_USER_QUOTA_MB", "50")
    with contextlib.suppress(OSError, AttributeError):  # adopt workers whose starter exited: their RSS counts
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    outs = [home / f".student-{i:02d}.json" for i in range(students)]
    start = time.time()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--student",
                str(i),
                "--steps",
                str(steps),
                "--timeout",
                str(timeout),
                "--out",
                str(outs[i]),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(students)
    ]
    sampler = Sampler({p.pid for p in procs}, RunStore(config.store_file(home)))
    sampler.start()
    timed_out = False
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, start + timeout + 60 - time.time()))
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait()
    wall = time.time() - start
    sampler.stop.set()
    sampler.join()
    if timed_out:  # workers still going: cancel them through the queue (it terminates their groups)
        from engine.jobs import queue

        store = RunStore(config.store_file(home))
        for job in store.list_jobs(active_only=True):
            queue.cancel_job(job.id, store=store, grace_seconds=1.0, wait=True)
    reports = [json.loads(o.read_text()) if o.is_file() else {"ok": False, "missing": True} for o in outs]
    for out in outs:
        out.unlink(missing_ok=True)
    problems = check_store(home, students)
    stderr = [p.stderr.read()[-500:] for p in procs if p.returncode]
    done = [r for r in reports if r.get("ok")]
    queue_waits = sorted(r["queue_seconds"] for r in reports if r.get("queue_seconds") is not None)
    return {
        "students": students,
        "max_jobs": max_jobs,
        "steps": steps,
        "cores": os.cpu_count(),
        "finished": len(done),
        "timed_out": timed_out,
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(sampler.peak_rss / 1024**2),
        "peak_workers_rss_mb": round(sampler.peak_workers_rss / 1024**2),
        "peak_one_worker_rss_mb": round(sampler.peak_worker_rss / 1024**2),
        "peak_processes": sampler.peak_processes,
        "max_running_seen": sampler.max_running,
        "queue_seconds_median": round(queue_waits[len(queue_waits) // 2], 1) if queue_waits else None,
        "queue_seconds_max": round(queue_waits[-1], 1) if queue_waits else None,
        "job_seconds_max": round(max((r.get("job_seconds") or 0) for r in reports), 1),
        "classify_seconds_max": round(max((r.get("classify_seconds") or 0) for r in reports), 1),
        "problems": problems + [f"student {i}: {r}" for i, r in enumerate(reports) if not r.get("ok")],
        "student_errors": [s for s in stderr if s],
        "lab_home": str(home),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--max-jobs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds before it stops by itself")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--student", type=int, help=argparse.SUPPRESS)  # the child process' role
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.student is not None:
        return student(args.student, args.steps, args.timeout, args.out)
    if not 1 <= args.students <= 100 or not 1 <= args.max_jobs <= 16 or not 1 <= args.steps <= 4000:
        parser.error("need 1-100 students, 1-16 jobs at once and 1-4000 steps")
    report = run_load(args.students, args.max_jobs, args.steps, args.timeout)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>22}: {value}")
    return 0 if report["finished"] == args.students and not report["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())

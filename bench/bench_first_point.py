"""First curve point after pressing Train: a fresh worker per job (the old way) vs the warm worker pool.

Measured through the job API the dashboard uses: `engine.jobs.queue.start_job("retrain", ...)`, then
polling the job and the run's history every 20 ms until the first evaluation row is in the store, as
the Train page would. The work is the issue's: the 200 flower photos, MobileNet 0.25 ImageNet, 4,000
steps. "cold" is 200 photos the bottleneck cache has never seen (the flowers re-encoded with one pixel
changed), "warm cache" the same photos again. Targets (issue 12):
  warm worker, warm cache: first curve point <= 3 s after submission
  warm worker, cold cache: first curve point <= 6 s
  fixed cost per job in a warm worker (the job's wall time, submission to finished, minus a bare
  `train_head` on the same bottlenecks in this process, best of --repeats each, sampled in turn:
  everything but decode, forward and training steps) <= 0.5 s
and the warm worker's resident memory. All figures come from this one run, as ratios to the target.

    python bench/bench_first_point.py [--repeats 3] [--json]   # needs ../shared/assets
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ASSETS = ROOT.parent / "shared" / "assets"
FLOWERS = ASSETS / "flower_photos_small_set"
WEIGHTS = ASSETS / "keras_weights" / "mobilenet_2_5_224_tf_no_top.h5"
ARCH, STEPS = "mobilenet_0.25_224", 4000
TARGET_WARM, TARGET_COLD, TARGET_FIXED = 3.0, 6.0, 0.5
POLL = 0.02
JOB_TIMEOUT = 300.0


def new_photos(dest: Path, delta: int) -> Path:
    """The flowers re-encoded with one pixel changed by `delta`: contents the cache has not seen."""
    from PIL import Image

    for src in sorted(FLOWERS.rglob("*.jpg")):
        out = dest / src.parent.name / src.name
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as img:
            img = img.convert("RGB")
            r, g, b = img.getpixel((0, 0))
            img.putpixel((0, 0), ((r + delta) % 256, g, b))
            img.save(out, quality=95)
    return dest


def params(source: Path) -> dict:
    from engine.runs.retrain import RunConfig
    from engine.training.config import TrainConfig

    return asdict(RunConfig(source=str(source), architecture=ARCH, train=TrainConfig(steps=STEPS)))


def first_point(source: Path) -> dict:
    """Submit one retrain job and poll as a page would; seconds to its first curve point and to its end."""
    from engine.jobs import queue
    from engine.runs.store import RunStore

    store = RunStore()
    submitted = time.time()
    job_id = queue.start_job("retrain", params(source), store=store)
    first = None
    deadline = submitted + JOB_TIMEOUT
    while time.time() < deadline:
        job = queue.get_job(job_id, store)
        if first is None and job.run_id and store.get_history(job.run_id):
            first = time.time() - submitted
        if not job.active:
            break
        time.sleep(POLL if first is None else 0.25)  # then as rarely as a page: do not slow the job
    if job.status != "finished":
        raise SystemExit(f"job {job_id} {job.status}: {job.error}\n{queue.job_log(job_id, store)[-3000:]}")
    run = store.get_run(job.run_id)
    return {
        "first_point_s": round(first, 3),
        "job_s": round(job.finished - job.created, 3),
        "queue_seconds": run.queue_seconds,
        "first_metric_seconds": run.first_metric_seconds,
        "phases": run.phases,
        "pid": job.pid,
        "run_id": run.id,
    }


def bare_train_head(source: Path):
    """A bare train_head call (traced once first) on the run's own bottlenecks, in this process: returns
    a function giving its seconds, so it can be sampled between the jobs (the machine is shared)."""
    from engine.runs.retrain import RunConfig, prepare
    from engine.training.config import TrainConfig
    from engine.training.head import train_head

    config = RunConfig(source=str(source), architecture=ARCH, train=TrainConfig(steps=STEPS))
    prepared = prepare(config)  # all cache hits by now
    args = (*prepared.part("train"), *prepared.part("validation"), len(prepared.data.classes), config.train)
    train_head(*args)  # trace

    def timed() -> float:
        start = time.perf_counter()
        train_head(*args)
        return time.perf_counter() - start

    return timed


def wait_preloaded(timeout: float = 180.0) -> float:
    """Seconds until the prewarmed worker says it has preloaded (its log line)."""
    from engine import config

    start = time.time()
    while time.time() - start < timeout:
        for path in config.worker_logs_dir().glob("*.log"):
            if "preloaded in" in path.read_text(errors="replace"):
                return time.time() - start
        time.sleep(0.1)
    raise SystemExit("the prewarmed worker did not preload in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="warm-cache jobs in the warm worker")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for path in (FLOWERS, WEIGHTS):
        if not path.exists():
            raise SystemExit(f"needs the shared offline asset {path}")
    work = Path(tempfile.mkdtemp(prefix="bench_first_point_"))
    try:
        os.environ.update(LAB_HOME=str(work / "home"), KERAS_HOME=str(work / "keras"), LAB_MAX_JOBS="1")
        (work / "keras" / "models").mkdir(parents=True)
        shutil.copy(WEIGHTS, work / "keras" / "models" / WEIGHTS.name)
        report = measure(work, args.repeats)
    finally:
        from engine.jobs import pool

        for worker in pool.list_workers():  # leave no warm worker behind
            os.kill(worker.pid, 15)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report) if args.json else render(report))


def measure(work: Path, repeats: int) -> dict:
    from engine.jobs import pool

    fresh_a, fresh_b = new_photos(work / "new_a", 7), new_photos(work / "new_b", 131)
    report: dict = {}
    # the old way: one fresh process per job
    os.environ["LAB_WARM_WORKERS"] = "0"
    report["fresh_cold"] = first_point(fresh_a)
    report["fresh_warm_cache"] = first_point(fresh_a)
    # the pool: one worker prewarmed when the dashboard opens, then every job goes to it
    os.environ["LAB_WARM_WORKERS"] = "1"
    pool.prewarm()
    report["preload_s"] = round(wait_preloaded(), 2)
    report["preloaded_rss_mb"] = max((w.rss_mb or 0) for w in pool.list_workers())
    report["warm_cold"] = first_point(fresh_b)
    bare, bare_s, warm = bare_train_head(fresh_a), [], []
    for _ in range(repeats):  # a warm job, then the reference, in turn
        warm.append(first_point(fresh_a))
        bare_s.append(bare())
    report["warm_warm_cache"] = warm
    workers = pool.list_workers()
    report["worker_rss_mb"] = max((w.rss_mb or 0) for w in workers)
    report["worker_jobs_done"] = max(w.jobs_done for w in workers)
    report["warm_pids"] = sorted({r["pid"] for r in [report["warm_cold"], *warm]})
    report["bare_train_head_s"] = round(min(bare_s), 3)
    report["warm_first_point_s"] = statistics.median(r["first_point_s"] for r in warm)
    report["warm_job_s"] = min(r["job_s"] for r in warm)
    report["fixed_cost_s"] = round(report["warm_job_s"] - report["bare_train_head_s"], 3)
    # the same, all inside one job: its wall time less its own training phase
    report["outside_train_s"] = round(min(r["job_s"] - r["phases"].get("train", 0.0) for r in warm), 3)
    return report


def render(r: dict) -> str:
    warm, cold, fixed = r["warm_first_point_s"], r["warm_cold"]["first_point_s"], r["fixed_cost_s"]
    lines = [
        f"first curve point, 200 flowers, {ARCH}, {STEPS} steps, through start_job + polling every {POLL} s",
        f"  fresh worker (LAB_WARM_WORKERS=0), cold cache : {r['fresh_cold']['first_point_s']:6.2f} s",
        f"  fresh worker (LAB_WARM_WORKERS=0), warm cache : {r['fresh_warm_cache']['first_point_s']:6.2f} s",
        f"  warm worker, cold cache (200 new photos)      : {cold:6.2f} s"
        f"  = {cold / TARGET_COLD:.2f} x the {TARGET_COLD:g} s target",
        f"  warm worker, warm cache (median of {len(r['warm_warm_cache'])})      : {warm:6.2f} s"
        f"  = {warm / TARGET_WARM:.2f} x the {TARGET_WARM:g} s target",
        f"  warm vs fresh, warm cache: {r['fresh_warm_cache']['first_point_s'] / warm:.1f} x sooner",
        f"fixed cost per job in a warm worker: job {r['warm_job_s']} s - bare train_head"
        f" {r['bare_train_head_s']} s (best of {len(r['warm_warm_cache'])} each) = {fixed:.3f} s"
        f"  = {fixed / TARGET_FIXED:.2f} x the {TARGET_FIXED:g} s target",
        f"  within the job: wall time less its own train phase = {r['outside_train_s']:.3f} s"
        f"  = {r['outside_train_s'] / TARGET_FIXED:.2f} x the target",
        f"  phases of a warm job: {r['warm_warm_cache'][-1]['phases']}",
        f"  recorded on the run: queue_seconds={r['warm_warm_cache'][-1]['queue_seconds']}"
        f" first_metric_seconds={r['warm_warm_cache'][-1]['first_metric_seconds']}",
        f"warm worker: preloaded in {r['preload_s']} s at {r['preloaded_rss_mb']:.0f} MB RSS;"
        f" {r['worker_rss_mb']:.0f} MB after {r['worker_jobs_done']} jobs; pids {r['warm_pids']}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

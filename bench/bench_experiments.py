"""Bench: a 4-rate learning-rate race costs <= 1.2 x (one extraction + 4 head trainings measured alone).

`python bench/bench_experiments.py [--steps 4000] [--repeats 3] [--seeds 3]`

Both sides run warm in one process (TensorFlow imported, the extractor built, the training
function traced, the saving backbone built), each with an empty bottleneck cache, alternating so
that load from other processes hits both alike:
  - alone: `extract_features` on the 200 shared flower photos, then `train_head` once per rate;
  - race:  `experiments.lr_race` end to end (scan, one extraction, per rate a stored run with its
    history, test evaluation and model.keras).
A race that re-extracted per rate would cost about 4 extractions and fail by a wide margin.
Prints seconds per repeat, the ratio of the fastest race to the fastest "alone" (the least
disturbed of each on a shared machine), the per-repeat spread, and PASS/FAIL; exit 0 on PASS.
The ratio is taken on one seed per rate (4 heads on each side). Then, for information, a race of
4 rates x `--seeds` seeds on cached bottlenecks: its wall time and the summed train and save seconds
of its runs (saves run in a background thread while the next head trains).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "assets"
FLOWERS = SHARED / "flower_photos_small_set"
WEIGHTS = SHARED / "keras_weights" / "mobilenet_2_5_224_tf_no_top.h5"
ARCH = "mobilenet_0.25_224"
RATES = (0.005, 0.01, 0.1, 1.0)
LIMIT = 1.2


def fresh_home(tmp: Path, name: str) -> Path:
    """Point LAB_HOME at an empty folder: an empty bottleneck cache and run store."""
    home = tmp / name
    shutil.rmtree(home, ignore_errors=True)
    os.environ["LAB_HOME"] = str(home)
    return home


def alone(steps: int, tmp: Path) -> dict[str, float]:
    from engine.data import datasets
    from engine.features.extract import extract_features
    from engine.training.config import TrainConfig
    from engine.training.head import train_head

    fresh_home(tmp, "alone")
    data = datasets.scan_image_dir(FLOWERS)
    start = time.perf_counter()
    feats = extract_features(data.records, ARCH, "imagenet")
    extract = time.perf_counter() - start
    assert feats.stats.misses == len(data.records), feats.stats
    split = [r.split for r in data.records]
    labels = [data.label_index[r.label] for r in data.records]
    part = {
        s: (
            feats.features[[i for i, v in enumerate(split) if v == s]],
            [labels[i] for i, v in enumerate(split) if v == s],
        )
        for s in ("train", "validation")
    }
    start = time.perf_counter()
    for rate in RATES:
        config = TrainConfig(learning_rate=rate, steps=steps)
        train_head(*part["train"], *part["validation"], len(data.classes), config)
    train = time.perf_counter() - start
    return {"extract": extract, "train": train, "total": extract + train}


def race(steps: int, tmp: Path) -> dict[str, float]:
    from engine.runs import experiments
    from engine.runs.retrain import RunConfig
    from engine.training.config import TrainConfig

    fresh_home(tmp, "race")
    start = time.perf_counter()
    result = experiments.lr_race(
        RunConfig(source=str(FLOWERS), architecture=ARCH, train=TrainConfig(steps=steps)), RATES, seeds=1
    )
    total = time.perf_counter() - start
    (stats,) = result.extraction
    assert stats["misses"] == 200 and stats["hits"] == 0, stats  # extracted once, from scratch
    assert all(r["steps"] == steps for r in result.rows), result.rows
    runs = experiments.experiment_runs(result.experiment_id)
    per_phase = {p: sum(r.phases.get(p, 0.0) for r in runs) for p in ("train", "save")}
    return {"extract": stats["seconds"], "total": total, **per_phase}


def warm_up(tmp: Path) -> None:
    from engine.runs import experiments
    from engine.runs.retrain import RunConfig
    from engine.training.config import TrainConfig

    fresh_home(tmp, "warm")
    config = RunConfig(source=str(FLOWERS), architecture=ARCH, train=TrainConfig(steps=20))
    experiments.lr_race(config, (0.01,), seeds=1)


def seeded_race(steps: int, seeds: int) -> dict[str, float]:
    """A 4-rate x `seeds` race on bottlenecks already cached (the LAB_HOME the last race left)."""
    from engine.runs import experiments
    from engine.runs.retrain import RunConfig
    from engine.training.config import TrainConfig

    start = time.perf_counter()
    config = RunConfig(source=str(FLOWERS), architecture=ARCH, train=TrainConfig(steps=steps))
    result = experiments.lr_race(config, RATES, seeds=seeds)
    total = time.perf_counter() - start
    assert result.extraction[0]["hits"] == 200, result.extraction  # every bottleneck from the cache
    runs = experiments.experiment_runs(result.experiment_id)
    assert len(runs) == len(RATES) * seeds
    per_phase = {p: sum(r.phases.get(p, 0.0) for r in runs) for p in ("train", "save")}
    return {"total": total, **per_phase}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per rate of the informational race")
    args = parser.parse_args()
    if not (FLOWERS.is_dir() and WEIGHTS.is_file()):
        print(f"SKIP: needs {FLOWERS} and {WEIGHTS}")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tmp = Path(tempfile.mkdtemp(prefix="bench_experiments_"))
    (tmp / "keras" / "models").mkdir(parents=True)
    shutil.copy(WEIGHTS, tmp / "keras" / "models" / WEIGHTS.name)
    os.environ["KERAS_HOME"] = str(tmp / "keras")
    try:
        warm_up(tmp)
        ratios, alone_totals, race_totals = [], [], []
        for i in range(args.repeats):
            a = alone(args.steps, tmp)
            r = race(args.steps, tmp)
            alone_totals.append(a["total"])
            race_totals.append(r["total"])
            ratios.append(r["total"] / a["total"])
            print(
                f"repeat {i + 1}: alone {a['total']:.2f} s (extract {a['extract']:.2f} + 4 heads "
                f"{a['train']:.2f}); race {r['total']:.2f} s (extract {r['extract']:.2f}, 4 heads "
                f"{r['train']:.2f}, 4 saves {r['save']:.2f}); "
                f"ratio {ratios[-1]:.3f}"
            )
        seeded = seeded_race(args.steps, args.seeds)
        print(
            f"4 rates x {args.seeds} seeds on cached bottlenecks, {args.steps} steps: "
            f"{seeded['total']:.2f} s "
            f"({4 * args.seeds} heads {seeded['train']:.2f} s, {4 * args.seeds} saves {seeded['save']:.2f} s "
            "in the background)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # The machine is shared, so single repeats swing widely; the fastest of each side is the
    # least disturbed measurement of it (timeit's advice), and the per-repeat spread is shown too.
    ratio = min(race_totals) / min(alone_totals)
    verdict = "PASS" if ratio <= LIMIT else "FAIL"
    print(
        f"per-repeat ratios: median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, "
        f"max {max(ratios):.3f}"
    )
    print(
        f"4-rate race / (one extraction + 4 head trainings), {args.steps} steps: fastest race "
        f"{min(race_totals):.2f} s / fastest alone {min(alone_totals):.2f} s = {ratio:.3f} "
        f"<= {LIMIT}: {verdict}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

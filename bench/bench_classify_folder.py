"""Folder classification throughput against extraction throughput on the same photos.

    python bench/bench_classify_folder.py [--rounds 3] [--formats keras,tflite-fp32]

A run (mobilenet_0.25_224 retrained on the 200 shared flower photos with the real ImageNet weights,
else the generated demo set with random weights) classifies the whole photo folder as
`python -m engine classify --run ID FOLDER` does: `Classifier.predict_batch` (decode on every core
while the model runs the previous batch of 32). Measured in the same rounds, interleaved:
  extract      extract_features of the same photos, empty cache each time (the engine's own
               runtime choice: LiteRT, the backbone converted outside the clock as a worker keeps it)
  batch/<fmt>  predict_batch in the run's format <fmt>
  single/<fmt> the old way, classify one photo at a time (every 4th photo, for information)
Target (issue 12): folder classification >= 0.8 x extraction throughput, judged on the fastest
format measured (the CLI's --format picks it), every format printed. The machine is shared:
the load average is printed, and figures of a busy machine are noisy.
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
sys.path.insert(0, str(ROOT / "bench"))
TARGET = 0.8


def rate(images: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return images / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", default="keras,tflite-fp32")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tmp = Path(tempfile.mkdtemp(prefix="bench_classify_folder_"))
    os.environ["LAB_HOME"], os.environ["KERAS_HOME"] = str(tmp / "lab"), str(tmp / "keras")
    try:
        from bench_classify import make_run

        from engine.export import convert
        from engine.export.predict import Classifier, expand_paths
        from engine.features.cache import FeatureCache
        from engine.features.extract import extract_features, feature_extractor

        run_id, _, what = make_run()
        run = convert.open_run(run_id)
        source = Path(run.config.get("source") or "")
        if not source.is_dir():  # the demo set: the dataset folder the run resolved
            from engine.data import datasets

            source = Path(datasets.resolve_source(run.config["source"]))
        photos = expand_paths([source])
        weights = run.config.get("weights", "imagenet")
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        convert.convert_run(run_id, [f for f in formats if f != "keras"])
        classifiers = {fmt: Classifier.from_run(run_id, fmt=fmt) for fmt in formats}
        feature_extractor("mobilenet_0.25_224", weights, runtime="litert")  # converted, as a worker keeps it
        print(f"Run {run_id}: mobilenet_0.25_224 on {what}; {len(photos)} photos in {source}")
        caches = iter(range(1_000_000))
        runtimes = {}

        def extract():
            out = extract_features(
                photos, "mobilenet_0.25_224", weights, cache=FeatureCache(tmp / f"c{next(caches)}")
            )
            runtimes["extract"] = out.stats.runtime

        measures = {"extract": lambda: rate(len(photos), extract)}
        for fmt, clf in classifiers.items():
            measures[f"batch/{fmt}"] = lambda clf=clf: rate(len(photos), lambda: clf.predict_batch(photos))
            few = photos[::4]
            measures[f"single/{fmt}"] = lambda clf=clf, few=few: rate(len(few), lambda: clf.classify(few))
        for fn in measures.values():
            fn()  # warm-up
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (others share them)")
        rows = []
        for r in range(args.rounds):
            row = {name: fn() for name, fn in measures.items()}
            rows.append(row)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.0f} img/s" for k, v in row.items()), flush=True)
        med = {k: statistics.median(row[k] for row in rows) for k in measures}
        print(f"\nmedians over {args.rounds} rounds (extraction ran in {runtimes.get('extract')}):")
        best = 0.0
        for fmt in formats:
            ratios = [row[f"batch/{fmt}"] / row["extract"] for row in rows]
            best = max(best, statistics.median(ratios))
            print(
                f"  {fmt:14s} folder {med[f'batch/{fmt}']:6.0f} img/s, "
                f"one by one {med[f'single/{fmt}']:6.0f} img/s; "
                f"folder / extraction {statistics.median(ratios):.2f} "
                f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}); batched / one by one "
                f"{med[f'batch/{fmt}'] / med[f'single/{fmt}']:.2f}"
            )
        print(f"  extraction     {med['extract']:6.0f} img/s")
        ok = best >= TARGET
        print(
            f"{'PASS' if ok else 'FAIL'} folder classification / extraction: {best:.2f} (best format), "
            f"target >= {TARGET}; load average after {os.getloadavg()[0]:.2f}"
        )
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

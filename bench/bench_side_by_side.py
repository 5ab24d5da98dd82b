"""Latency of the side-by-side view: each model alone against the whole lineup, on the same photos.

    python bench/bench_side_by_side.py [--rounds 5]

Three models, as the Classify page and `classify --run A --run A:tflite-int8 --tflite F --labels L`
set them: a run (mobilenet_0.25_224 retrained on the 200 shared flower photos with the real ImageNet
weights; else the demo set with random weights) in keras, the same run in tflite-int8, and the Coral
ImageNet classifier mobilenet_v2_1.0_224_quant.tflite. The photos are the shared sample images (6).
Measured in the same rounds, interleaved (medians printed):
  alone/<model>        side_by_side([that model], photos, familiar=False): the same-run reference
  lineup               side_by_side(all three, photos, familiar=False)
  lineup+familiar      side_by_side(all three, photos): adds the "none of these" check (one backbone
                       pass per photo for the run, both formats judged once)
Loading (and converting the int8 export, calibrating the check) happens once, outside the clock, as
the page keeps loaded models. The machine is shared: the load average is printed.
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
ASSETS = ROOT.parent / "shared" / "assets"
CORAL = ASSETS / "coral_tflite" / "mobilenet_v2_1.0_224_quant.tflite"
CORAL_LABELS = ASSETS / "coral_tflite" / "imagenet_labels.txt"


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1000, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tmp = Path(tempfile.mkdtemp(prefix="bench_side_by_side_"))
    os.environ["LAB_HOME"], os.environ["KERAS_HOME"] = str(tmp / "lab"), str(tmp / "keras")
    try:
        from bench_classify import make_run

        from engine.export import lineup
        from engine.export.predict import expand_paths

        run_id, _, what = make_run()
        choices = [lineup.parse_run_choice(run_id), lineup.parse_run_choice(f"{run_id}:tflite-int8")]
        if CORAL.is_file():
            choices.append(lineup.tflite_choice(CORAL, CORAL_LABELS))
        load_ms, classifiers = timed(lambda: [lineup.load_choice(c) for c in choices])
        samples = ASSETS / "sample_images"
        photos = expand_paths([samples]) if samples.is_dir() else []
        if not photos:
            from engine.data import datasets
            from engine.export import convert

            root = datasets.resolve_source(convert.open_run(run_id).config["source"])
            photos = expand_paths([root])[:6]
        first_ms, _ = timed(lambda: lineup.side_by_side(classifiers, photos))  # calibrates, builds backbone
        print(
            f"Run {run_id}: mobilenet_0.25_224 on {what}; {len(photos)} photos; load {load_ms:.0f} ms "
            f"(incl. int8 conversion), first lineup {first_ms:.0f} ms (incl. familiarity calibration)"
        )
        titles = [c.name for c in choices]
        measures = {
            f"alone/{t}": (lambda c=c: lineup.side_by_side([c], photos, familiar=False))
            for t, c in zip(titles, classifiers, strict=True)
        }
        measures["lineup"] = lambda: lineup.side_by_side(classifiers, photos, familiar=False)
        measures["lineup+familiar"] = lambda: lineup.side_by_side(classifiers, photos)
        walls: dict[str, list[float]] = {k: [] for k in measures}
        per_model: dict[str, list[float]] = {t: [] for t in titles}
        for _ in range(args.rounds):
            for name, fn in measures.items():
                ms, result = timed(fn)
                walls[name].append(ms / len(photos))
                if name == "lineup":
                    for m, title in enumerate(titles):
                        per_model[title].extend(row[m].latency_ms for row in result.predictions)
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {args.rounds} rounds")
        print(f"{'measure':<58} {'ms / photo':>10}")
        for name, values in walls.items():
            print(f"{name:<58} {statistics.median(values):>10.1f}")
        print("latency_ms per model inside the lineup (decode + forward, median):")
        for title, values in per_model.items():
            print(f"  {title:<56} {statistics.median(values):>10.1f}")
        alone = sum(statistics.median(walls[f"alone/{t}"]) for t in titles)
        lineup_ms = statistics.median(walls["lineup"])
        familiar_ms = statistics.median(walls["lineup+familiar"])
        print(
            f"lineup / sum of models alone = {lineup_ms / alone:.2f}; "
            f"familiarity adds {familiar_ms - lineup_ms:.1f} ms per photo"
        )
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

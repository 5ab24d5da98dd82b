"""Single-photo classify overhead of the engine, and every format's latency and size.

    python bench/bench_classify.py [--rounds 7] [--calls 40]

1. The engine's classify path for a TFLite float32 model (`Classifier.from_run(run, fmt="tflite-fp32")
   .classify([photo])`: decode, resize, infer, top-k) against a bare loop on the same photo in the
   same process: PIL decode (with the same JPEG draft scaling) + resize + LiteRT `invoke`. Rounds
   alternate the two so machine noise hits both alike; target: engine <= 1.3 x bare (medians).
2. The comparison matrix (engine.export.compare) of every format on the run's test split: size, load
   time, p50/p95 single-image latency, batch throughput, agreement with Keras.

The run is MobileNet 0.25_224 retrained on the shared flower photos when ../shared/assets is
there (real ImageNet weights), else on the generated demo set with random weights (same shapes,
so the same timings). Everything lives in a temporary LAB_HOME.
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
ASSETS = ROOT.parent / "shared" / "assets"
TARGET = 1.3


def make_run() -> tuple[str, Path, str]:
    from engine.runs.retrain import RunConfig, retrain
    from engine.training.config import TrainConfig

    weights = ASSETS / "keras_weights" / "mobilenet_2_5_224_tf_no_top.h5"
    flowers = ASSETS / "flower_photos_small_set"
    if weights.is_file() and flowers.is_dir():
        models = Path(os.environ["KERAS_HOME"]) / "models"
        models.mkdir(parents=True, exist_ok=True)
        shutil.copy(weights, models / weights.name)
        config = RunConfig(source=str(flowers), architecture="mobilenet_0.25_224", train=TrainConfig())
        photo = ASSETS / "sample_images" / "classic-daisy.jpg"
        what = "flowers, ImageNet weights"
    else:
        config = RunConfig(source="demo", architecture="mobilenet_0.25_224", weights="random")
        photo = None
        what = "generated demo set, random weights"
    summary = retrain(config)
    if photo is None or not photo.is_file():
        from engine.export import convert
        from engine.export.compare import held_out_split

        photo = Path(held_out_split(convert.open_run(summary.run_id))[0][0].path)
    return summary.run_id, photo, what


def bare_loop(model_path: Path, photo: Path, size: int):
    """The least a program must do: decode + resize with PIL, one LiteRT invoke, read the output."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    from engine.export.runtimes import _threads

    it = Interpreter(model_path=str(model_path), num_threads=_threads())
    it.allocate_tensors()
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def once():
        with Image.open(photo) as img:
            img.draft("RGB", (size, size))
            pixels = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        it.set_tensor(inp, pixels[None].astype(np.float32))
        it.invoke()
        return it.get_tensor(out)

    return once


def per_call_ms(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tmp = Path(tempfile.mkdtemp(prefix="bench_classify_"))
    os.environ["LAB_HOME"], os.environ["KERAS_HOME"] = str(tmp / "lab"), str(tmp / "keras")
    try:
        from engine.export import compare, convert
        from engine.export.predict import Classifier

        run_id, photo, what = make_run()
        print(f"Run {run_id}: mobilenet_0.25_224 on {what}; photo {photo.name}")
        convert.convert_run(run_id, convert.DEFAULT_FORMATS)
        classifier = Classifier.from_run(run_id, fmt="tflite-fp32")
        size = classifier.input_size
        bare = bare_loop(convert.model_path(convert.open_run(run_id), "tflite-fp32"), photo, size)

        def engine():
            return classifier.classify([photo], top_k=5)

        assert engine()[0].error is None
        for fn in (engine, bare):
            per_call_ms(fn, 5)  # warm both
        engine_ms, bare_ms = [], []
        for _ in range(args.rounds):
            engine_ms.append(per_call_ms(engine, args.calls))
            bare_ms.append(per_call_ms(bare, args.calls))
        e, b = statistics.median(engine_ms), statistics.median(bare_ms)
        ratio = e / b
        print(f"\nclassify one photo, TFLite fp32 ({args.rounds} rounds x {args.calls} calls, medians):")
        print(f"  engine classify path  {e:7.3f} ms   (rounds: {', '.join(f'{x:.2f}' for x in engine_ms)})")
        print(f"  bare decode + invoke  {b:7.3f} ms   (rounds: {', '.join(f'{x:.2f}' for x in bare_ms)})")
        print(f"  ratio {ratio:.3f} (target <= {TARGET})  {'PASS' if ratio <= TARGET else 'FAIL'}")

        report = compare.compare_formats(run_id, ["keras", *convert.DEFAULT_FORMATS, "tensorrt-fp16"])
        print(f"\nformats on the run's {report['test_count']} test images (model only, pre-decoded pixels):")
        print("| format | size MB | load s | p50 ms | p95 ms | batch img/s | accuracy | agreement | max Δp |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in report["rows"]:
            if r["status"] != "ok":
                print(f"| {r['format']} | unavailable: {r['reason']} |||||||")
                continue
            print(
                f"| {r['format']} | {r['size_bytes'] / 1e6:.2f} | {r['load_seconds']:.2f} | "
                f"{r['latency_p50_ms']:.2f} | {r['latency_p95_ms']:.2f} | {r['throughput_ips']:.0f} | "
                f"{r['accuracy']:.3f} | {r['agreement']:.3f} | {r['max_prob_diff']:.2g} |"
            )
        print(f"prediction flips between formats: {len(report['flips'])}")
        return 0 if ratio <= TARGET else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Bottleneck extraction speed: engine.features.extract.extract_features against the machine's limit.

Work: the 200 flower JPEGs of ../shared/assets/flower_photos_small_set through mobilenet_0.25_224
(ImageNet weights when ../shared/assets/keras_weights has them, else random: same cost). Measured in
this one run, interleaved per round, after a warm-up (model built and traced once, as in a worker):
  decode     the engine's own tf.data decode + resize pipeline alone (dataset built outside the clock)
  forward    TensorFlow's compiled forward function on pre-decoded batches
  forward_litert  the same backbone converted to LiteRT (XNNPACK, engine/features/litert.py)
  forward_onnx    the same backbone converted to ONNX, in ONNX Runtime's CPU provider (graph
             optimisation ALL, one intra-op thread per usable core; engine/features/onnx_forward.py)
  limit      1 / (1/decode + 1/fastest forward): decoding, then running the model, each with all
             the cores, with the fastest of the three forwards measured in that round; limit_tf
             (the old limit) uses TensorFlow's forward
  engine     extract_features on scanned records with an empty cache (hashing, lookup, pipeline,
             model, cache writes), runtime "auto" (the backbone was converted to both runtimes in
             warm-up; "auto" runs the one its conversion timed faster); engine_tensorflow the same
             with runtime="tensorflow"
  inception  InceptionV3 (random weights) on every 4th photo: engine ("auto") against TensorFlow's
             batched forward alone (issue 12: >= 2x), with the LiteRT and ONNX Runtime forwards
             alone beside them
  per-image  retrain.py's way: decode one image, call the model on a batch of 1, for each image;
             "model()" calls the Keras model directly (judged), "compiled" calls the engine's
             tf.function, the analogue of retrain.py's sess.run (printed for information: a
             batch-1 forward of this small model costs only ~2.5x a batched one, so no batching
             can be 15x faster than it)
Targets (issues 2 and 12): engine >= 0.85 x limit, engine >= 15 x per-image model() calls,
InceptionV3 extraction >= 2 x TensorFlow's batched forward.

The machine is shared: every measurement also records the CPU other processes used meanwhile
(from /proc/stat). A round is "quiet" when they used under 10% of the machine during each of its
measurements; targets are judged on the median of quiet rounds when there are at least two, and
on all rounds otherwise. CPU milliseconds per image are printed too: they barely move with load.

    python bench/bench_extract.py [--rounds 7] [--batch-size 32] [--sweep] [--intra N --inter N] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ASSETS = ROOT.parent / "shared" / "assets"
FLOWERS = ASSETS / "flower_photos_small_set"
WEIGHTS = ASSETS / "keras_weights" / "mobilenet_2_5_224_tf_no_top.h5"
BACKBONE = "mobilenet_0.25_224"
INCEPTION = "inception_v3"
INCEPTION_TARGET = 2.0  # InceptionV3 extraction >= 2 x TensorFlow's batched forward alone
LIMIT_TARGET, PER_IMAGE_TARGET = 0.85, 15.0
QUIET = 0.10  # largest share of the machine other processes may use during a quiet measurement
CORES = len(os.sched_getaffinity(0))
TICK = os.sysconf("SC_CLK_TCK")


def setup(tmp: Path) -> str:
    """Point LAB_HOME and KERAS_HOME at `tmp`; seed the weights when we have them."""
    os.environ["LAB_HOME"] = str(tmp / "lab")
    os.environ["KERAS_HOME"] = str(tmp / "keras")
    if WEIGHTS.is_file():
        (tmp / "keras" / "models").mkdir(parents=True)
        shutil.copy(WEIGHTS, tmp / "keras" / "models" / WEIGHTS.name)
        return "imagenet"
    return "random"


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK


def measure(images: int, fn) -> dict:
    """Run `fn()` (which processes `images` images) once: rate, our CPU cost, others' CPU share."""
    busy, cpu, wall = busy_seconds(), time.process_time(), time.perf_counter()
    fn()
    wall, cpu, busy = time.perf_counter() - wall, time.process_time() - cpu, busy_seconds() - busy
    others = max(0.0, busy - cpu) / (wall * CORES)
    return {"rate": images / wall, "cpu_ms": cpu / images * 1000, "others": others}


def make_measures(
    weights: str, batch_size: int, tmp: Path, sweep: bool = False, inception: bool = True
) -> dict:
    import tensorflow as tf

    from engine.data import datasets
    from engine.features import decode as pipeline
    from engine.features.cache import FeatureCache
    from engine.features.extract import extract_features, feature_extractor

    # the records a retrain run extracts: scanned (probed) once, outside the clock
    records = datasets.scan_image_dir(FLOWERS).records
    paths, flags = [r.path for r in records], [r.needs_pil for r in records]
    few = paths[::4]  # the per-image ways are slow: measured on every 4th photo
    extractor = feature_extractor(BACKBONE, weights, runtime="tensorflow")
    # converted once here (a worker keeps it on disk), outside the clock, like the traced function
    lite = feature_extractor(BACKBONE, weights, runtime="litert")
    onnx = feature_extractor(BACKBONE, weights, runtime="onnx")
    size = extractor.input_size
    decoded = list(pipeline.decode_dataset(paths, flags, size, batch_size))
    decoded_np = [b.numpy() for b in decoded]
    caches = iter(range(1_000_000))

    def decode():
        ds = pipeline.decode_dataset(paths, flags, size, batch_size)
        return measure(len(paths), lambda: [None for _ in ds])

    def forward():
        return measure(len(paths), lambda: [extractor.forward(b).numpy() for b in decoded])

    def forward_litert():
        return measure(len(paths), lambda: [lite.run(b) for b in decoded_np])

    def forward_onnx():
        return measure(len(paths), lambda: [onnx.run(b) for b in decoded_np])

    def engine(settings=None, batch=batch_size, runtime="auto", name=BACKBONE, wts=weights, recs=records):
        cache = FeatureCache(tmp / f"cache{next(caches)}")  # empty every time
        default, pipeline.SETTINGS = pipeline.SETTINGS, settings or pipeline.SETTINGS
        out = {}

        def run():
            out["r"] = extract_features(recs, name, wts, batch_size=batch, cache=cache, runtime=runtime)

        try:
            result = measure(len(recs), run)
        finally:
            pipeline.SETTINGS = default
        assert cache.count() == len(recs)
        result["runtime"] = out["r"].stats.runtime
        return result

    def decode_one(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return pipeline._resize(image, size)[None]  # the same decode + resize, one image at a time

    def per_image_call():  # Keras 3's direct way: model(batch of one) per image
        return measure(len(few), lambda: [extractor.model(decode_one(p)).numpy() for p in few])

    def per_image_compiled():  # retrain.py's sess.run per image: a compiled call per image
        return measure(len(few), lambda: [extractor.forward(decode_one(p)).numpy() for p in few])

    if sweep:
        return {
            "decode": decode,
            "forward": forward,
            "forward_litert": forward_litert,
            "forward_onnx": forward_onnx,
            **sweep_measures(engine),
        }
    measures = {
        "decode": decode,
        "forward": forward,
        "forward_litert": forward_litert,
        "forward_onnx": forward_onnx,
        "engine": engine,
        "engine_tensorflow": functools.partial(engine, runtime="tensorflow"),
        "per_image_call": per_image_call,
        "per_image_compiled": per_image_compiled,
    }
    if inception:  # the big backbone: random weights (same cost), on every 4th photo
        inc = feature_extractor(INCEPTION, "random", runtime="tensorflow")
        # converted to both outside the clock (as a worker finds them on disk)
        inc_lite = feature_extractor(INCEPTION, "random", runtime="litert")
        inc_onnx = feature_extractor(INCEPTION, "random", runtime="onnx")
        inc_records = records[::4]
        inc_batches = [
            b.numpy()
            for b in pipeline.decode_dataset(
                [r.path for r in inc_records], [r.needs_pil for r in inc_records], inc.input_size, batch_size
            )
        ]
        measures["inception_forward_tf"] = lambda: measure(
            len(inc_records), lambda: [inc.forward(b).numpy() for b in inc_batches]
        )
        measures["inception_forward_litert"] = lambda: measure(
            len(inc_records), lambda: [inc_lite.run(b) for b in inc_batches]
        )
        measures["inception_forward_onnx"] = lambda: measure(
            len(inc_records), lambda: [inc_onnx.run(b) for b in inc_batches]
        )
        measures["inception_engine"] = functools.partial(
            engine, name=INCEPTION, wts="random", recs=inc_records
        )
    return measures


def sweep_measures(engine) -> dict:
    """extract_features under other pipeline settings and batch sizes (same cores, same round)."""
    from dataclasses import replace

    from engine.features.decode import SETTINGS

    variants = {
        "engine": {},
        "naive (tf.data defaults, AUTOTUNE)": dict(
            decode_threads=-1, private_pool=0, op_threads=0, prefetch=-1, autotune=True
        ),
        "autotune thread on": dict(autotune=True),
        "shared inter-op pool": dict(private_pool=0),
        "op fan-out (intra-op default)": dict(op_threads=0),
        "1 decoder": dict(decode_threads=1, private_pool=1),
        "4 decoders": dict(decode_threads=4, private_pool=4),
        "decode AUTOTUNE": dict(decode_threads=-1),
        "prefetch AUTOTUNE": dict(prefetch=-1),
    }
    measures = {
        name: functools.partial(engine, replace(SETTINGS, **changes)) for name, changes in variants.items()
    }
    for batch in (8, 16, 64, 128):
        measures[f"batch {batch}"] = functools.partial(engine, batch=batch)
    return measures


def set_threads(intra: int, inter: int) -> None:
    """TensorFlow's global pools (0 = its default, one thread per core); only before first use."""
    import tensorflow as tf

    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def run_rounds(measures: dict, rounds: int) -> list[dict]:
    """Each round: every measure once. A row: rate (img/s), cpu_ms, others per measure, limit, quiet."""
    rows = []
    for r in range(rounds):
        results = {name: fn() for name, fn in measures.items()}
        row = {
            "rate": {k: v["rate"] for k, v in results.items()},
            "cpu_ms": {k: v["cpu_ms"] for k, v in results.items()},
            "others": {k: v["others"] for k, v in results.items()},
        }
        # limit: decode (+) the fastest forward pass here; limit_tf: decode (+) TensorFlow's (the old one)
        fastest = max(row["rate"][k] for k in ("forward", "forward_litert", "forward_onnx"))
        row["limit"] = 1 / (1 / row["rate"]["decode"] + 1 / fastest)
        row["limit_tf"] = 1 / (1 / row["rate"]["decode"] + 1 / row["rate"]["forward"])
        row["runtime"] = {k: v["runtime"] for k, v in results.items() if "runtime" in v}
        row["quiet"] = max(row["others"].values()) < QUIET
        rows.append(row)
        print(
            f"round {r + 1} ({'quiet' if row['quiet'] else 'busy'}, others used up to "
            f"{max(row['others'].values()):.0%}): limit {row['limit']:.0f} img/s "
            f"(with TensorFlow's forward: {row['limit_tf']:.0f})",
            flush=True,
        )
        for k in measures:
            print(
                f"   {k:38s} {row['rate'][k]:6.0f} img/s  {row['cpu_ms'][k]:6.2f} CPU ms/img  "
                f"others {row['others'][k]:4.0%}  {row['runtime'].get(k, '')}",
                flush=True,
            )
    return rows


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def judged(rows: list[dict]) -> tuple[list[dict], str]:
    quiet = [r for r in rows if r["quiet"]]
    if len(quiet) >= 2:
        return quiet, f"{len(quiet)} quiet rounds of {len(rows)}"
    return rows, f"all {len(rows)} rounds (fewer than 2 were quiet)"


def verdict(name: str, values: list[float], target: float, basis: str) -> bool:
    s = stats(values)
    ok = s["median"] >= target
    print(
        f"{'PASS' if ok else 'FAIL'} {name}: median {s['median']:.2f} "
        f"(min {s['min']:.2f}, max {s['max']:.2f}; {basis}), target >= {target}"
    )
    return ok


def report_targets(rows: list[dict]) -> tuple[bool, dict]:
    ratios = {
        "engine/limit": lambda r: r["rate"]["engine"] / r["limit"],
        "engine/limit (TensorFlow forward, the old limit)": lambda r: r["rate"]["engine"] / r["limit_tf"],
        "engine/engine with TensorFlow": lambda r: r["rate"]["engine"] / r["rate"]["engine_tensorflow"],
        "engine with TensorFlow/limit (TensorFlow forward)": (
            lambda r: r["rate"]["engine_tensorflow"] / r["limit_tf"]
        ),
        "LiteRT forward/TensorFlow forward": lambda r: r["rate"]["forward_litert"] / r["rate"]["forward"],
        "ONNX Runtime forward/TensorFlow forward": lambda r: r["rate"]["forward_onnx"] / r["rate"]["forward"],
        "engine/per-image model()": lambda r: r["rate"]["engine"] / r["rate"]["per_image_call"],
        "engine/per-image compiled": lambda r: r["rate"]["engine"] / r["rate"]["per_image_compiled"],
    }
    for name, fn in ratios.items():
        print(f"per round {name}: " + ", ".join(f"{fn(r):.2f}{'' if r['quiet'] else '*'}" for r in rows))
    print("(* = busy round: other processes used >= 10% of the machine during one of its measurements)")
    cpu = {k: statistics.median(r["cpu_ms"][k] for r in rows) for k in rows[0]["cpu_ms"]}
    print(
        f"median CPU ms/img: decode {cpu['decode']:.2f} + forward {cpu['forward']:.2f} = "
        f"{cpu['decode'] + cpu['forward']:.2f}; engine {cpu['engine']:.2f} "
        f"(x{cpu['engine'] / (cpu['decode'] + cpu['forward']):.2f}); per-image model() "
        f"{cpu['per_image_call']:.2f}, compiled {cpu['per_image_compiled']:.2f}; LiteRT forward "
        f"{cpu['forward_litert']:.2f}, ONNX Runtime forward {cpu['forward_onnx']:.2f}, engine with "
        f"TensorFlow {cpu['engine_tensorflow']:.2f}"
    )
    fastest = min(("forward", "forward_litert", "forward_onnx"), key=cpu.get)
    print(
        f"fastest forward by CPU ms/img: {fastest}; CPU limit decode + fastest forward = "
        f"{cpu['decode'] + cpu[fastest]:.2f} ms/img, engine / that: "
        f"x{(cpu['decode'] + cpu[fastest]) / cpu['engine']:.2f} (as a rate ratio)"
    )
    basis_rows, basis = judged(rows)
    print(
        f"engine {statistics.median(r['rate']['engine'] for r in basis_rows):.0f} img/s, "
        f"limit {statistics.median(r['limit'] for r in basis_rows):.0f} img/s (medians, {basis})"
    )
    ok = verdict("engine / limit", [ratios["engine/limit"](r) for r in basis_rows], LIMIT_TARGET, basis)
    ok &= verdict(
        "engine / per-image model() calls",
        [ratios["engine/per-image model()"](r) for r in basis_rows],
        PER_IMAGE_TARGET,
        basis,
    )
    if "inception_engine" in rows[0]["rate"]:
        inc = [r["rate"]["inception_engine"] / r["rate"]["inception_forward_tf"] for r in rows]
        print(
            "per round InceptionV3 engine/TensorFlow batched forward: " + ", ".join(f"{v:.2f}" for v in inc)
        )
        runtimes = sorted({r["runtime"].get("inception_engine", "") for r in rows})
        inc_fastest = min(cpu["inception_forward_litert"], cpu["inception_forward_onnx"])
        print(
            f"median CPU ms/img InceptionV3: TensorFlow forward {cpu['inception_forward_tf']:.1f}, "
            f"LiteRT forward {cpu['inception_forward_litert']:.1f}, ONNX Runtime forward "
            f"{cpu['inception_forward_onnx']:.1f}, engine {cpu['inception_engine']:.1f} "
            f"(runtime {'/'.join(runtimes)}); CPU ratio TensorFlow forward / engine "
            f"x{cpu['inception_forward_tf'] / cpu['inception_engine']:.2f}, / fastest forward alone "
            f"x{cpu['inception_forward_tf'] / inc_fastest:.2f}"
        )
        ok &= verdict(
            "InceptionV3 extraction / TensorFlow batched forward",
            [r["rate"]["inception_engine"] / r["rate"]["inception_forward_tf"] for r in basis_rows],
            INCEPTION_TARGET,
            basis,
        )
    verdict(
        "engine / per-image compiled calls (informative)",
        [ratios["engine/per-image compiled"](r) for r in basis_rows],
        PER_IMAGE_TARGET,
        basis,
    )
    summary = {name: stats([fn(r) for r in basis_rows]) for name, fn in ratios.items()}
    return ok, {"basis": basis, "ratios": summary, "cpu_ms_per_image": cpu}


def report_sweep(rows: list[dict]) -> dict:
    basis_rows, basis = judged(rows)
    names = [k for k in rows[0]["rate"] if k not in ("decode", "forward")]
    print(f"variant: median img/s, median / limit (min..max), median CPU ms/img  [{basis}]")
    summary = {}
    for name in names:
        ratio = stats([r["rate"][name] / r["limit"] for r in basis_rows])
        summary[name] = {
            "images_per_second": statistics.median(r["rate"][name] for r in basis_rows),
            "cpu_ms_per_image": statistics.median(r["cpu_ms"][name] for r in rows),
            "vs_limit": ratio,
        }
        v = summary[name]
        print(
            f"  {name:38s} {v['images_per_second']:5.0f}  {ratio['median']:.2f} "
            f"({ratio['min']:.2f}..{ratio['max']:.2f})  {v['cpu_ms_per_image']:.2f}"
        )
    return {"basis": basis, "variants": summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sweep", action="store_true", help="compare pipeline settings and batch sizes")
    parser.add_argument("--intra", type=int, default=0, help="TensorFlow intra-op threads (0: default)")
    parser.add_argument("--inter", type=int, default=0, help="TensorFlow inter-op threads (0: default)")
    parser.add_argument("--no-inception", action="store_true", help="skip the InceptionV3 measures")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not FLOWERS.is_dir():
        print(f"SKIP: the flower photos are absent ({FLOWERS}); nothing to measure")
        return 0
    set_threads(args.intra, args.inter)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        weights = setup(tmp)
        t0 = time.perf_counter()
        measures = make_measures(weights, args.batch_size, tmp, args.sweep, not args.no_inception)
        for fn in measures.values():  # warm-up: model traced, file cache, allocator
            fn()
        print(
            f"{BACKBONE} ({weights} weights) on the flower photos, batch {args.batch_size}, {CORES} cores, "
            f"intra/inter-op threads {args.intra or 'default'}/{args.inter or 'default'}, "
            f"warm-up {time.perf_counter() - t0:.1f} s, load average {os.getloadavg()[0]:.2f}"
        )
        rows = run_rounds(measures, args.rounds)
    print(f"load average after: {os.getloadavg()[0]:.2f} (other processes share these cores)")
    ok, summary = (True, report_sweep(rows)) if args.sweep else report_targets(rows)
    if args.json:
        print(json.dumps({"backbone": BACKBONE, "weights": weights, "rounds": rows, "summary": summary}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Head-training speed: engine.training.head.train_head against a bare compiled loop and Keras `fit`.

The work is retrain.py's default: 4,000 steps of batch 100 on 1,024-d bottlenecks (5 classes,
3,000 training and 400 validation examples, synthetic), evaluating every 10 steps. Targets (issue 2):
  ours <= 1.5 x bare: a tf.function SGD step (in-graph batch sampling) called 4,000 times, no evaluation
  ours <  fit:        Keras Dense softmax model, model.fit for 4,000 steps of batch 100, no evaluation
All three are measured in this one run, interleaved, after a warm-up; each figure is the best of
--repeats rounds (the median is printed too: the machine is shared and noisy).

    python bench/bench_train.py [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

STEPS, BATCH, EVAL_INTERVAL, LR = 4000, 100, 10, 0.01
CLASSES, DIM, N_TRAIN, N_VAL = 5, 1024, 3000, 400


def make_features(seed: int = 0):
    """Synthetic bottlenecks: non-negative (post-ReLU-like) noisy class centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, DIM)).astype(np.float32)

    def split(n):
        y = rng.integers(0, CLASSES, n).astype(np.int32)
        x = np.maximum(centres[y] + rng.normal(scale=3.0, size=(n, DIM)), 0).astype(np.float32)
        return x, y

    return (*split(N_TRAIN), *split(N_VAL))


def make_ours(x, y, vx, vy):
    from engine.training.config import TrainConfig
    from engine.training.head import train_head

    config = TrainConfig(learning_rate=LR, steps=STEPS, batch_size=BATCH, eval_interval=EVAL_INTERVAL)

    def run():
        return train_head(x, y, vx, vy, CLASSES, config).history[-1]

    return run


def make_bare(x, y):
    import tensorflow as tf

    xs, ys = tf.constant(x), tf.constant(y)
    kernel, bias = tf.Variable(tf.zeros([DIM, CLASSES])), tf.Variable(tf.zeros([CLASSES]))

    @tf.function
    def step(t):
        idx = tf.random.stateless_uniform(
            [BATCH], seed=tf.stack([0, t]), minval=0, maxval=N_TRAIN, dtype=tf.int32
        )
        xb, yb = tf.gather(xs, idx), tf.gather(ys, idx)
        with tf.GradientTape() as tape:
            logits = tf.matmul(xb, kernel) + bias
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits))
        grad_k, grad_b = tape.gradient(loss, [kernel, bias])
        kernel.assign_sub(LR * grad_k)
        bias.assign_sub(LR * grad_b)

    steps = [tf.constant(i) for i in range(STEPS)]

    def run():
        for t in steps:
            step(t)
        return float(kernel.numpy().sum())  # wait for the last step

    return run


def make_fit(x, y):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(CLASSES, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="sparse_categorical_crossentropy")
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(N_TRAIN, seed=0).repeat().batch(BATCH)
    data = data.prefetch(tf.data.AUTOTUNE)

    def run():
        return model.fit(data, steps_per_epoch=STEPS, epochs=1, verbose=0, shuffle=False).history["loss"][-1]

    return run


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each figure is the best of them")
    parser.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    args = parser.parse_args()

    x, y, vx, vy = make_features()
    runners = {"ours": make_ours(x, y, vx, vy), "bare": make_bare(x, y), "fit": make_fit(x, y)}
    final = runners["ours"]()  # warm-up: traces every compiled function once
    runners["bare"]()
    runners["fit"]()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):  # interleaved, so load changes hit all three alike
        for name, fn in runners.items():
            times[name].append(timed(fn))

    best = {name: min(ts) for name, ts in times.items()}
    median = {name: statistics.median(ts) for name, ts in times.items()}
    print(
        f"head training: {STEPS} steps x batch {BATCH}, {DIM}-d features, {CLASSES} classes, "
        f"{N_TRAIN} train / {N_VAL} validation, eval every {EVAL_INTERVAL} steps (ours only)"
    )
    print(f"final row of ours: {final}")
    for name in runners:
        rounds = ", ".join(f"{t:.3f}" for t in times[name])
        print(f"  {name:5s} best {best[name]:.3f} s  median {median[name]:.3f} s  (rounds: {rounds})")
    ratio_bare = best["ours"] / best["bare"]
    ratio_fit = best["ours"] / best["fit"]
    print(f"ours / bare = {ratio_bare:.3f} (median {median['ours'] / median['bare']:.3f})")
    print(f"ours / fit  = {ratio_fit:.3f} (median {median['ours'] / median['fit']:.3f})")
    ok_bare, ok_fit = ratio_bare <= 1.5, ratio_fit < 1.0
    print(f"{'PASS' if ok_bare else 'FAIL'}: ours <= 1.5 x bare compiled loop ({ratio_bare:.3f})")
    print(f"{'PASS' if ok_fit else 'FAIL'}: ours faster than Keras fit ({ratio_fit:.3f})")
    if args.json:
        print(
            json.dumps(
                {
                    "seconds_best": best,
                    "seconds_median": median,
                    "seconds_rounds": times,
                    "ours_over_bare": ratio_bare,
                    "ours_over_fit": ratio_fit,
                    "pass": {"bare": ok_bare, "fit": ok_fit},
                }
            )
        )
    return 0 if ok_bare and ok_fit else 1


if __name__ == "__main__":
    sys.exit(main())

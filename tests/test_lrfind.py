"""Honest learning-rate lessons: spread over seeds and its verdict, the range test, schedules' rates."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InvalidArgument
from engine.training import lrfind, summaries
from engine.training.config import TrainConfig
from engine.training.optim import schedule_curve

ROOT = Path(__file__).resolve().parents[1]


def blobs(n: int, seed: int, dim: int = 32, classes: int = 3, noise: float = 2.0):
    """Gaussian clusters around fixed centres (non-negative like bottlenecks), overlapping by `noise`."""
    centres = np.random.default_rng(99).normal(0, 1, (classes, dim))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.int32)
    x = np.maximum(centres[y] + rng.normal(0, noise, (n, dim)), 0).astype(np.float32)
    return x, y


def race_on_features(rates, seeds=3, steps=60):
    """Heads trained per rate x seed on one generated feature set; their rows as the race reads them."""
    from engine.training.head import train_head

    x, y = blobs(240, seed=1)
    vx, vy = blobs(400, seed=2)
    rows = []
    for rate in rates:
        for seed in range(seeds):
            config = TrainConfig(
                learning_rate=rate, steps=steps, eval_interval=steps, batch_size=16, seed=seed
            )
            head = train_head(x, y, vx, vy, 3, config)
            row = summaries.race_row(head.history, None, 0.8, 3)
            rows.append(
                {**row, "group": f"lr={rate:g}", "learning_rate": rate, "seed": seed, "status": "finished"}
            )
    return rows


def verdicts(rows, n_val=400):
    return summaries.separation(summaries.race_groups(rows), n_val)


def test_two_rates_that_truly_differ_are_called_different():
    out = verdicts(race_on_features((0.00003, 0.3)))
    (pair,) = out["pairs"]
    assert pair["a"] == "lr=0.3" and pair["b"] == "lr=3e-05"
    assert pair["differ"] and pair["gap"] > 0.2, pair
    assert "differ" in pair["line"] and "ranges do not overlap" in pair["line"]
    assert out["warning"] is None  # 400 validation examples: one is a quarter of a point


def test_two_rates_that_do_not_differ_are_within_the_spread():
    rows = race_on_features((0.2, 0.25))
    groups = summaries.race_groups(rows)
    assert [g["runs"] for g in groups] == [3, 3] and all(g["validation_accuracy"]["sd"] > 0 for g in groups)
    (pair,) = verdicts(rows)["pairs"]
    assert not pair["differ"] and "within the spread" in pair["line"], pair


def test_one_seed_gives_no_verdict_and_a_small_split_warns():
    rows = [
        {"group": g, "status": "finished", "final_validation_accuracy": a, "learning_rate": r}
        for g, a, r in (("lr=0.1", 0.85, 0.1), ("lr=1", 0.80, 1.0))
    ]
    out = summaries.separation(summaries.race_groups(rows), 20)
    assert out["pairs"] == [] and "One seed per setting" in out["lines"][0]
    assert out["warning"].startswith("n = 20 validation photos: one photo = 5 points")
    assert out["photo_step"] == pytest.approx(0.05)


def test_ranges_apart_by_less_than_one_photo_do_not_differ():
    rows = [
        {"group": g, "status": "finished", "final_validation_accuracy": a}
        for g, values in (("a", (0.90, 0.91, 0.905)), ("b", (0.88, 0.885, 0.89)))
        for a in values
    ]
    (pair,) = summaries.separation(summaries.race_groups(rows), 20)["pairs"]  # one photo = 5 points
    assert not pair["differ"] and "less than one validation photo" in pair["line"]
    (pair,) = summaries.separation(summaries.race_groups(rows), 1000)["pairs"]  # one photo = 0.1 point
    assert pair["differ"]


# --- schedules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["constant", "exponential", "cosine"])
def test_schedule_curves_match_the_training_loop(schedule):
    from engine.training.optim import schedule_lr

    curve = schedule_curve(schedule, 0.5, 0.1, 1000, points=50)
    assert curve[0] == {"step": 1, "learning_rate": pytest.approx(0.5)}
    assert curve[-1]["step"] == 1000 and len(curve) == 51
    for point in curve[::10]:
        tf_rate = float(schedule_lr(schedule, 0.5, 0.1, point["step"] - 1, 1000))
        assert point["learning_rate"] == pytest.approx(tf_rate, rel=1e-5)
    rates = [p["learning_rate"] for p in curve]
    if schedule == "constant":
        assert set(rates) == {0.5}
    else:  # both decay towards 0.1 x the rate, never below it
        assert all(b <= a + 1e-12 for a, b in zip(rates, rates[1:], strict=False))
        assert 0.05 <= rates[-1] < 0.06


# --- the range test ------------------------------------------------------------------------------


def test_range_test_sweeps_exponentially_stops_on_divergence_and_applies_its_rule():
    x, y = blobs(300, seed=3, noise=1.0)
    x = x * 20  # large features: large rates blow the loss up well before 10
    events = []
    found = lrfind.range_test(x, y, 3, TrainConfig(seed=1), 1e-5, 10.0, 200, progress=events.append)
    ratios = np.diff(np.log(found.rates))
    assert np.allclose(ratios, math.log(1e6) / 199)  # exponential: one constant factor per step
    assert found.stopped_early and len(found.rates) < 200
    assert found.smoothed[-1] > lrfind.DIVERGE_FACTOR * min(found.smoothed[:-1]) or not math.isfinite(
        found.smoothed[-1]
    )
    # the rule as stated: steepest descent before the minimum .. a tenth of the minimum's rate
    steepest, minimum, suggested = lrfind.suggest(found.rates, found.smoothed)
    assert (found.steepest, found.minimum) == (steepest, minimum)
    assert found.suggested == tuple(sorted((steepest, minimum / 10)))
    assert steepest <= minimum
    assert events and events[-1]["phase"] == lrfind.PHASE and events[-1]["done"] == len(found.rates)


@pytest.mark.parametrize(
    "start, stop, steps, match",
    [(0, 1, 100, "start"), (1, 0.1, 100, "below stop"), (1e-5, math.inf, 100, "stop"), (1e-5, 1, 5, "steps")],
)
def test_bad_sweeps_are_refused(start, stop, steps, match):
    with pytest.raises(InvalidArgument, match=match):
        lrfind.check_sweep(start, stop, steps)


@pytest.mark.slow
def test_finder_on_real_flowers_suggests_a_sensible_range(flowers_dir, seeded_keras_home):
    from engine.runs import experiments
    from engine.runs.retrain import RunConfig

    base = RunConfig(source=str(flowers_dir), architecture="mobilenet_0.25_224")
    found = experiments.lr_find(base, rates=(0.005, 0.01, 0.1, 1.0))
    assert found["train_images"] > 100 and found["classes"] == 5
    low, high = found["suggested"]
    # SGD on MobileNet bottlenecks: the useful rates lie between about 1e-3 and 3 (the race trains all of
    # 0.005..1 to ~85 %); the suggestion must lie in there and follow the stated rule exactly
    assert 1e-3 <= low < high <= 3, found["suggested"]
    assert (low, high) == tuple(sorted((found["steepest"], found["minimum"] / 10)))
    assert found["race_rates"] == [0.005, 0.01, 0.1, 1.0]
    assert found["stopped_early"]  # rates towards 10 blow the loss up


def test_cli_lrfind_json(lab_home):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = ["experiment", "lrfind", "--image_dir", "demo", "--weights", "random"]
    args += ["--architecture", "mobilenet_0.25_128", "--steps", "60", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (
        out["study"] == "lr_find"
        and 10 <= len(out["rates"]) <= 60
        and len(out["smoothed"]) == len(out["rates"])
    )
    assert out["rule"] == lrfind.RULE and "Suggested range" in proc.stdout
    bad = ["experiment", "lrfind", "--image_dir", "demo", "--start", "1", "--stop", "0.1"]
    proc = subprocess.run(
        [sys.executable, "-m", "engine", *bad], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert (
        proc.returncode == 2 and "start must be below stop" in proc.stderr and "Traceback" not in proc.stderr
    )


def test_charts_draw_mean_and_band_per_rate_and_mark_the_finder():
    import pandas as pd

    from dashboard import charts_lr

    curves = pd.DataFrame(
        [
            {"group": g, "seed": s, "step": step, "validation_accuracy": acc + 0.1 * s}
            for g, acc in (("lr=0.1", 0.5), ("lr=1", 0.3))
            for s in range(3)
            for step in (10, 20)
        ]
    )
    fig = charts_lr.band_curves(curves, target=0.8)
    bands = [t for t in fig.data if t.fill == "toself"]
    means = [t for t in fig.data if t.fill != "toself"]
    assert [t.name for t in means] == ["lr=0.1 (3 seeds)", "lr=1 (3 seeds)"]
    assert list(means[0].y) == pytest.approx([0.6, 0.6])  # mean of 0.5, 0.6, 0.7
    assert list(bands[0].y) == pytest.approx([0.7, 0.7, 0.5, 0.5])  # highest forward, lowest back
    found = {"rates": [1e-3, 1e-2, 1e-1, 1.0], "losses": [1.6, 1.4, 1.0, 3.0],
             "smoothed": [1.6, 1.5, 1.2, 2.0], "steepest": 1e-2, "minimum": 1e-1,
             "suggested": [1e-2, 1e-2]}  # fmt: skip
    fig = charts_lr.finder(found, race_rates=(0.005, 0.1))
    assert [s.x0 for s in fig.layout.shapes if s.type == "line"] == [0.005, 0.1]  # the race's rates
    assert any(t.name == "suggested 0.01 .. 0.01" for t in fig.data)
    axis = fig.layout.xaxis  # plain labels at 1, 2, 5 of each decade, no minor "3 4 5 6 7 8 9"
    assert axis.type == "log" and axis.minor.ticks == "" and "0.005" in axis.ticktext

"""Experiments: the summary logic on constructed histories, and a real learning-rate race on flowers."""

from __future__ import annotations

import csv
import io
import math

import pytest

from engine.errors import InvalidArgument
from engine.training import summaries


def hist(val_acc, *, val_xent=None, train_acc=None, train_xent=None, interval=10, seconds_per_row=0.1):
    """A history with one row per evaluation from lists of values."""
    n = len(val_acc)
    val_xent = val_xent or [1.0 - 0.5 * a for a in val_acc]
    train_acc = train_acc or list(val_acc)
    train_xent = train_xent or list(val_xent)
    return [
        {
            "step": (i + 1) * interval,
            "train_accuracy": train_acc[i],
            "train_cross_entropy": train_xent[i],
            "validation_accuracy": val_acc[i],
            "validation_cross_entropy": val_xent[i],
            "elapsed": round((i + 1) * seconds_per_row, 4),
        }
        for i in range(n)
    ]


def rising(n=40, start=0.2, end=0.9):
    return [start + (end - start) * min(1.0, i / (n * 0.6)) for i in range(n)]


# --- time to target ------------------------------------------------------------------------------


def test_time_to_target_is_the_first_evaluation_at_or_above_it():
    h = hist([0.5, 0.79, 0.8, 0.7, 0.95])
    assert summaries.time_to_target(h, 0.8) == (30, 0.3)
    assert summaries.time_to_target(h, 0.95) == (50, 0.5)


def test_time_to_target_never_reached():
    assert summaries.time_to_target(hist([0.1, 0.5, 0.79]), 0.8) == (None, None)
    assert summaries.time_to_target([], 0.8) == (None, None)


def test_time_to_target_falls_back_to_train_accuracy_without_validation():
    h = hist([0.0] * 3, train_acc=[0.5, 0.85, 0.9])
    for row in h:
        row["validation_accuracy"] = row["validation_cross_entropy"] = None
    assert summaries.time_to_target(h, 0.8) == (20, 0.2)


def test_race_row_says_never_in_the_display():
    row = summaries.race_row(hist([0.3, 0.4, 0.5]), test_accuracy=0.5, target=0.8)
    assert row["steps_to_target"] is None and row["seconds_to_target"] is None
    assert row["final_validation_accuracy"] == 0.5 and row["test_accuracy"] == 0.5
    assert row["final_cross_entropy"] == pytest.approx(0.75)
    assert row["steps"] == 30


# --- divergence, collapse, oscillation ----------------------------------------------------------


def test_smooth_run_is_stable_and_says_when_it_reached_the_target():
    d = summaries.diagnose(hist(rising()), target=0.8)
    assert d.flag is None
    assert d.explanation.startswith("Stable: reached 80% validation accuracy at step")


def test_slow_run_is_stable_but_slow():
    d = summaries.diagnose(hist([0.2 + 0.01 * i for i in range(40)]), target=0.8)
    assert d.flag is None and "slow" in d.explanation


@pytest.mark.parametrize("bad", [math.nan, math.inf, None])
def test_non_finite_loss_is_divergence(bad):
    values = rising()
    xent = [1.0] * len(values)
    xent[25] = bad  # None: SQLite stores NaN as NULL, so a history read back has None there
    d = summaries.diagnose(hist(values, val_xent=xent))
    assert d.flag == "diverged" and d.step == 260
    assert "NaN" in d.explanation and "step 260" in d.explanation


def test_missing_validation_set_is_not_divergence():
    h = hist(rising())
    for row in h:
        row["validation_accuracy"] = row["validation_cross_entropy"] = None
    assert summaries.diagnose(h).flag is None


def test_accuracy_collapse():
    values = rising(30) + [0.2] * 10
    d = summaries.diagnose(hist(values))
    assert d.flag == "collapsed"
    assert "reached 90%" in d.explanation and "fell to 20%" in d.explanation


def test_a_small_dip_is_not_a_collapse():
    assert summaries.diagnose(hist(rising(30) + [0.8] * 10)).flag is None


def test_large_step_to_step_swings_are_oscillation():
    values = rising(20) + [0.9, 0.55] * 10  # jumps of 35 points every evaluation
    d = summaries.diagnose(hist(values))
    assert d.flag == "oscillating"
    assert d.explanation.startswith("Oscillated:") and "accuracy jumped" in d.explanation


def test_loss_swings_alone_are_oscillation():
    values = [0.85] * 40
    xent = [0.5] * 20 + [0.4, 3.0] * 10  # accuracy steady, loss jumping sevenfold
    d = summaries.diagnose(hist(values, val_xent=xent))
    assert d.flag == "oscillating" and "loss changed" in d.explanation


def test_noise_of_one_validation_image_is_not_oscillation():
    # 20 validation images: one image is 5 points; jitter of one image is ordinary
    values = [0.2 + 0.6 * min(1, i / 20) for i in range(20)] + [0.8, 0.85] * 10
    assert summaries.diagnose(hist(values)).flag is None


def test_divergence_wins_over_oscillation():
    values = rising(20) + [0.9, 0.5] * 10
    xent = [1.0] * 39 + [math.inf]
    assert summaries.diagnose(hist(values, val_xent=xent)).flag == "diverged"


# --- steps study and CSV ------------------------------------------------------------------------


def test_steps_table_reads_checkpoints_from_one_history():
    h = hist([i / 100 for i in range(1, 101)], interval=20)  # steps 20..2000
    table = summaries.steps_table(h, (100, 400, 1000, 4000), test_accuracy=0.77)
    by = {r["checkpoint"]: r for r in table}
    assert by[100]["step"] == 100 and by[100]["validation_accuracy"] == pytest.approx(0.05)
    assert by[1000]["validation_accuracy"] == pytest.approx(0.5)
    assert by[100]["test_accuracy"] is None  # test accuracy exists only for the final weights
    assert by[4000]["step"] is None and "not reached" in by[4000]["note"]
    assert summaries.steps_table(h, (2000,), test_accuracy=0.77)[0]["test_accuracy"] == 0.77


def test_steps_table_uses_the_last_evaluation_before_a_checkpoint():
    h = hist([0.1, 0.2, 0.3], interval=30)  # steps 30, 60, 90
    row = summaries.steps_table(h, (50,))[0]
    assert row["step"] == 30 and "nearest evaluation at step 30" in row["note"]


def test_to_csv_round_trips():
    text = summaries.to_csv([{"a": 1, "b": None}, {"a": 0.5, "b": "never"}], ["a", "b"])
    assert list(csv.DictReader(io.StringIO(text))) == [{"a": "1", "b": ""}, {"a": "0.5", "b": "never"}]


def test_bad_experiment_arguments_are_refused():
    from engine.runs import experiments

    with pytest.raises(InvalidArgument, match="rates"):
        experiments.check_rates([0.1, -1])
    with pytest.raises(InvalidArgument, match="target"):
        experiments.check_target(1.5)


# --- end to end on real data --------------------------------------------------------------------

RATES = (0.005, 0.01, 0.1, 1.0)


@pytest.fixture
def extraction_spy(monkeypatch):
    """Counts calls of engine.features.extract.extract_features and keeps their stats."""
    from engine.features import extract as features

    calls = []
    real = features.extract_features

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(result.stats)
        return result

    monkeypatch.setattr(features, "extract_features", spy)
    return calls


def _flowers(flowers_dir, **train):
    from engine.runs.retrain import RunConfig
    from engine.training.config import TrainConfig

    return RunConfig(source=str(flowers_dir), architecture="mobilenet_0.25_224", train=TrainConfig(**train))


@pytest.mark.slow
def test_lr_race_on_flowers_extracts_once_and_every_rate_trains_fully(
    flowers_dir, seeded_keras_home, extraction_spy
):
    from engine.runs import experiments
    from engine.runs.store import RunStore

    events = []
    result = experiments.lr_race(
        _flowers(flowers_dir, steps=500), RATES, target=0.8, progress=events.append, seeds=1
    )

    # one extraction, all of it cache misses; every rate trained on those same arrays
    assert len(extraction_spy) == 1
    assert (extraction_spy[0].misses, extraction_spy[0].hits) == (200, 0)
    assert result.extraction[0]["misses"] == 200

    store = RunStore()
    runs = experiments.experiment_runs(result.experiment_id, store)
    assert [r.config["train"]["learning_rate"] for r in runs] == list(RATES)
    assert len(store.list_runs(experiment_id=result.experiment_id)) == 4
    for run in runs:
        assert run.status == "finished" and run.experiment_id == result.experiment_id
        assert [row["step"] for row in store.get_history(run.id)] == list(range(10, 501, 10))
        assert (store.run_dir(run.id) / "model.keras").is_file()
        assert "extract" not in run.phases and run.results["shared_phases"]["extract"] > 0

    # live curves: train events carry the rate, the run id and the history row
    train_events = [e for e in events if e["phase"] == "train" and "row" in e]
    assert len(train_events) == 4 * 50
    assert {(e["rate"], e["run_id"]) for e in train_events} == {
        (rate, run.id) for rate, run in zip(RATES, runs, strict=True)
    }
    assert all(e["experiment_id"] == result.experiment_id for e in train_events)

    rows = {r["learning_rate"]: r for r in result.rows}
    assert set(rows) == set(RATES)
    for row in rows.values():
        assert row["steps"] == 500 and row["status"] == "finished"
        assert 0 <= row["final_validation_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1
        assert row["explanation"]
    assert rows[0.01]["final_validation_accuracy"] >= 0.7 and rows[0.01]["steps_to_target"] is not None
    # a learning rate of 1.0 memorises the 160 training images with huge weights: the worst loss, flagged
    worst = max(rows.values(), key=lambda r: r["final_cross_entropy"])
    assert worst["learning_rate"] == 1.0 and worst["flag"] is not None

    # CSV export and the steps study read the same stored runs
    table = list(csv.DictReader(io.StringIO(experiments.experiment_csv(result.experiment_id))))
    assert [float(r["learning_rate"]) for r in table] == list(RATES)
    assert set(experiments.RACE_COLUMNS) == set(table[0])
    steps = experiments.steps_study(runs[1].id, (100, 400, 1000))
    assert steps[0]["validation_accuracy"] is not None and steps[2]["step"] is None
    assert experiments.list_experiments()[0]["runs"] == 4


@pytest.mark.slow
def test_same_seed_gives_the_same_curves(flowers_dir, seeded_keras_home):
    from engine.runs import experiments
    from engine.runs.store import RunStore

    def curves(seed, schedule="cosine"):
        result = experiments.lr_race(
            _flowers(flowers_dir, steps=100, seed=seed, schedule=schedule), (0.1, 1.0), seeds=1
        )
        runs = experiments.experiment_runs(result.experiment_id)
        drop = {"elapsed"}
        return [
            [{k: v for k, v in r.items() if k not in drop} for r in RunStore().get_history(run.id)]
            for run in runs
        ]

    first = curves(0)
    assert curves(0) == first
    assert curves(1) != first


def test_run_job_freezing_and_dataset_comparison_on_generated_images(lab_home):
    from dataclasses import asdict

    from engine.data import sources
    from engine.runs import experiments
    from engine.runs.retrain import RunConfig
    from engine.training.config import TrainConfig

    one = sources.make_demo_dataset(num_classes=3, per_class=12, size=48, seed=1)
    two = sources.make_demo_dataset(num_classes=2, per_class=12, size=48, seed=2)
    base = RunConfig(
        source=str(one),
        architecture="mobilenet_0.25_128",
        weights="random",
        validation_percentage=20,
        testing_percentage=20,
        train=TrainConfig(steps=30, fine_tune_steps=4, fine_tune_batch_size=4),
    )
    out = experiments.run_job({"study": "freezing", "config": asdict(base), "layers": [0, 2]})
    rows = {r["fine_tune_layers"]: r for r in out["rows"]}
    assert rows[0]["trainable_parameters"] == 256 * 3 + 3
    assert rows[2]["trainable_parameters"] > rows[0]["trainable_parameters"]
    assert all(r["seconds_per_step"] > 0 and r["total_seconds"] > 0 for r in rows.values())
    assert len(out["extraction"]) == 1  # both runs trained their heads on one extraction

    out = experiments.run_job({"study": "datasets", "config": asdict(base), "sources": [str(one), str(two)]})
    assert [r["classes"] for r in out["rows"]] == [3, 2]
    details = experiments.dataset_details(out["experiment_id"])
    assert [len(d["confusion_matrix"]) for d in details] == [3, 2]
    table = list(csv.DictReader(io.StringIO(experiments.experiment_csv(out["experiment_id"]))))
    assert list(table[0]) == list(experiments.DATASET_COLUMNS)
    assert [(r["source"], r["classes"], r["images"]) for r in table] == [
        (str(one), "3", "36"),
        (str(two), "2", "24"),
    ]
    for row, detail in zip(table, details, strict=True):  # "daisy=50.0%; rose=n/a; ..." for every class
        assert [c.split("=")[0] for c in row["per_class_accuracy"].split("; ")] == detail["class_names"]

    out = experiments.run_job(
        {"study": "lr_race", "config": asdict(base), "rates": [0.01, 0.5], "target": 0.9, "name": "tiny"}
    )
    # three seeds per rate by default, named by rate and seed within the experiment
    pairs = [(r["learning_rate"], r["seed"]) for r in out["rows"]]
    assert pairs == [(0.01, 0), (0.01, 1), (0.01, 2), (0.5, 0), (0.5, 1), (0.5, 2)]
    assert [r["name"] for r in out["rows"]][:2] == ["lr=0.01 · seed 0", "lr=0.01 · seed 1"]
    assert [g["group"] for g in out["summary"]["groups"]] == ["lr=0.01", "lr=0.5"]
    assert out["summary"]["separation"]["rule"] == summaries.SEPARATION_RULE
    assert out["summary"]["done"] == out["summary"]["planned"] == 6
    # a schedule race: one group per (rate, schedule), each with its rate curve
    out = experiments.run_job(
        {"study": "lr_race", "config": asdict(base), "rates": [0.5], "seeds": 1,
         "schedules": ["constant", "cosine"]}
    )  # fmt: skip
    assert [r["name"] for r in out["rows"]] == ["lr=0.5 · constant", "lr=0.5 · cosine"]
    curves = out["summary"]["schedule_curves"]
    cosine = [c["learning_rate"] for c in curves if c["group"] == "lr=0.5 · cosine"]
    assert cosine[0] == pytest.approx(0.5) and cosine[-1] < 0.1
    assert {c["learning_rate"] for c in curves if c["group"] == "lr=0.5 · constant"} == {0.5}
    names = [e["name"] for e in experiments.list_experiments()]
    assert names[0].startswith("MobileNet 0.25 128 · ") and " · schedule race · " in names[0]
    assert out["extraction"][0]["misses"] == 0  # the freezing study already cached these images
    with pytest.raises(InvalidArgument, match="study"):
        experiments.run_job({"study": "nope", "config": asdict(base)})


def test_cli_lr_race_json_has_one_entry_per_rate(lab_home):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    args = ["experiment", "lr", "--image_dir", "demo", "--weights", "random"]
    args += ["--architecture", "mobilenet_0.25_128", "--rates", "0.01,1.0", "--steps", "40", "--seeds", "2"]
    args += ["--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=root,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["kind"] == "lr_race" and [r["learning_rate"] for r in out["rows"]] == [0.01, 0.01, 1.0, 1.0]
    assert [g["group"] for g in out["summary"]["groups"]] == ["lr=0.01", "lr=1"]
    assert "Rule: Two settings differ when" in proc.stdout
    assert all(r["steps"] == 40 and "explanation" in r for r in out["rows"])
    assert out["extraction"][0]["misses"] > 0
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "experiment", "lr", "--image_dir", "demo", "--rates", "0.1,-1"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "rates must be distinct positive numbers" in proc.stderr
    assert "Traceback" not in proc.stderr

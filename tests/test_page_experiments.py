"""AppTest of the Experiments page: studies render, stored results show, Start runs a background job."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.data import sources
from engine.jobs import queue as jobs
from engine.runs import experiments
from engine.runs.retrain import RunConfig
from engine.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds per script run; the first imports are slow on a busy machine


def page(study: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "dashboard" / "experiments.py"), default_timeout=TIMEOUT)
    if study:
        at.session_state["experiment_study"] = study
    return at


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def widget(items, label: str):
    return next(w for w in items if w.label == label)


def texts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


@pytest.fixture
def demo_base() -> RunConfig:
    folder = sources.make_demo_dataset(num_classes=3, per_class=12, size=48, seed=3)
    return RunConfig(
        source=str(folder),
        architecture="mobilenet_0.25_128",
        weights="random",
        validation_percentage=20,
        testing_percentage=20,
        train=TrainConfig(steps=30, fine_tune_steps=3, fine_tune_batch_size=4),
    )


@pytest.mark.parametrize("study", ["lr_race", "freezing", "steps", "datasets"])
def test_each_study_renders_on_an_empty_lab(study):
    at = ok(page(study).run())
    assert at.title and "Experiments" in at.title[0].value
    assert at.info, "an empty lab explains what to do"


def test_stored_race_shows_spread_verdict_flags_curves_and_csv(demo_base):
    result = experiments.lr_race(demo_base, (0.01, 1.0), target=0.9, seeds=2)
    at = ok(page("lr_race").run())
    groups = at.dataframe[0].value  # one row per rate: mean and range over its seeds
    assert list(groups["Setting"]) == ["lr=0.01", "lr=1"]
    assert list(groups["Seeds done"]) == ["2 of 2", "2 of 2"]
    runs = at.dataframe[1].value  # every run, named by rate and seed
    assert list(runs["Run"]) == ["lr=0.01 · seed 0", "lr=0.01 · seed 1", "lr=1 · seed 0", "lr=1 · seed 1"]
    assert set(runs["Steps to target"]) <= {"never"} | {str(s) for s in range(10, 31, 10)}
    assert all(t == "never" or t.endswith(("ms", " s")) for t in runs["Time to target"])  # for people
    assert "lr=0.01 vs lr=1" in texts(at) and "Rule: Two settings differ" in texts(at)
    # 20 % of 36 photos are for validation: one photo is several points, and the page says so
    assert any(
        w.value.startswith("n = ") and "validation photos: one photo = " in w.value for w in at.warning
    )
    assert len(at.get("plotly_chart")) >= 3  # accuracy and cross-entropy bands, rate against step
    assert at.get("download_button"), "the result table downloads as CSV"
    assert result.experiment_id in widget(at.selectbox, "Results of").options[0]


def test_finder_button_starts_a_finder_job_and_its_result_is_drawn(demo_base, monkeypatch):
    from dataclasses import asdict

    from engine.runs.store import RunStore

    started = []
    monkeypatch.setattr(jobs, "start_job", lambda kind, params, store=None: started.append(params) or "job-x")
    at = page("lr_race").run()
    widget(at.button, "Run the learning-rate finder").click().run()
    [params] = started
    assert params["study"] == "lr_find" and params["rates"] == list(experiments.DEFAULT_RATES)
    # the job's work, run here, and its result stored as the worker would
    params["config"] = asdict(demo_base)
    result = experiments.run_job({**params, "steps": 40})
    store = RunStore()
    job = store.create_job("experiment", params)
    store.finish_job(job.id, "finished", result)
    at = ok(page("lr_race").run())
    assert "Learning-rate finder" in texts(at) and "Suggested learning rates" in texts(at)
    assert any("Suggested range: from the rate where" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == 1  # no race yet: the finder's curve alone


def test_steps_study_reads_one_run(demo_base):
    experiments.lr_race(demo_base, (0.1,))
    at = ok(page("steps").run())
    widget(at.text_input, "Steps").set_value("10, 20, 1000")
    at = ok(at.run())
    frame = at.dataframe[0].value
    assert list(frame["Checkpoint"]) == ["10", "20", "1000"]
    assert "not reached" in frame["Note"].iloc[-1]
    assert at.get("plotly_chart")


def test_freezing_and_dataset_results_render(demo_base):
    experiments.freezing_study(demo_base, (0, 1))
    at = ok(page("freezing").run())
    frame = at.dataframe[0].value
    assert list(frame["Unfrozen layers"]) == ["0", "1"]
    assert int(frame["Trainable params"].iloc[1]) > int(frame["Trainable params"].iloc[0])

    other = sources.make_demo_dataset(num_classes=2, per_class=12, size=48, seed=4)
    experiments.dataset_comparison(demo_base, [demo_base.source, str(other)])
    at = ok(page("datasets").run())
    assert list(at.dataframe[0].value["Classes"]) == ["3", "2"]
    assert len(at.get("plotly_chart")) >= 4  # curves, per-class bars, two confusion matrices


def test_bad_rates_are_refused_with_a_message():
    at = page("lr_race").run()
    widget(at.text_input, "Learning rates").set_value("0.1, fast")
    at = widget(at.button, "Start experiment").click().run()
    assert not at.exception
    assert any("Learning rates must be comma-separated numbers, got 'fast'" in e.value for e in at.error)


def test_freezing_form_defaults_come_from_the_engine(monkeypatch):
    """An untouched freezing form asks for the engine's layer counts and TrainConfig()'s settings."""
    from dataclasses import asdict

    started = []
    monkeypatch.setattr(jobs, "start_job", lambda kind, params, store=None: started.append(params) or "job-x")
    at = page("freezing").run()
    widget(at.button, "Start experiment").click().run()
    assert not at.exception
    [params] = started
    assert params["layers"] == list(experiments.DEFAULT_LAYERS)
    # the page's one deliberate difference: a study trains several heads, so fewer steps each
    steps = params["config"]["train"]["steps"]
    assert steps < TrainConfig().steps
    expected = RunConfig(source=params["config"]["source"], train=TrainConfig(steps=steps))
    assert params["config"] == asdict(expected)


@pytest.mark.slow
def test_start_runs_a_race_as_a_background_job(demo_base):
    earlier = experiments.lr_race(demo_base, (0.1,))
    at = page("lr_race").run()
    assert widget(at.selectbox, "Results of").value == earlier.experiment_id
    widget(at.selectbox, "Dataset").set_value(demo_base.source)
    widget(at.selectbox, "Backbone").set_value("mobilenet_0.25_128")
    widget(at.radio, "Weights").set_value("random")
    widget(at.number_input, "Training steps").set_value(20)
    widget(at.text_input, "Learning rates").set_value("0.01, 0.5")
    at = ok(widget(at.button, "Start experiment").click().run())
    job_id = at.session_state["experiment_job"]
    job = jobs.get_job(job_id)
    assert job.kind == "experiment" and job.params["rates"] == [0.01, 0.5] and job.params["seeds"] == 3
    deadline = time.time() + 300
    while jobs.get_job(job_id).active and time.time() < deadline:
        time.sleep(0.5)
    job = jobs.get_job(job_id)
    assert job.status == "finished", (job.status, job.error, jobs.job_log(job_id)[-2000:])
    at = ok(at.run())
    assert list(at.dataframe[0].value["Setting"]) == ["lr=0.01", "lr=0.5"]
    assert any(m.value.startswith("**Race finished: 6 runs") for m in at.markdown)
    assert widget(at.selectbox, "Results of").value == job.result["experiment_id"]

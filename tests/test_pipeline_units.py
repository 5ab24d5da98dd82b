"""Pipeline pieces that need no model: config validation and batched metric writes."""

from __future__ import annotations

import pytest

from engine.errors import InvalidArgument
from engine.runs.retrain import RunConfig, _MetricsBuffer
from engine.runs.store import RunStore


def test_metric_rows_are_batched_and_flushed_on_exit():
    store = RunStore()
    run = store.create_run({"architecture": "mobilenet_0.25_224"})
    with _MetricsBuffer(store, run.id, every=3600) as buffer:
        for step in (10, 20, 30):
            buffer.add({"step": step, "train_accuracy": 0.5})
        # the first row goes out at once (it is the first curve point a page shows), the rest wait
        assert [r["step"] for r in store.get_history(run.id)] == [10]
    assert [r["step"] for r in store.get_history(run.id)] == [10, 20, 30]


def test_metric_rows_survive_a_failure_mid_training():
    store = RunStore()
    run = store.create_run({})
    with pytest.raises(RuntimeError), _MetricsBuffer(store, run.id, every=3600) as buffer:
        buffer.add({"step": 10})
        buffer.add({"step": 20})
        raise RuntimeError("boom")
    assert [r["step"] for r in store.get_history(run.id)] == [10, 20]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"source": ""}, "source=''"),
        (
            {"source": "demo", "validation_percentage": 60, "testing_percentage": 40},
            "validation_percentage=60, testing_percentage=40",
        ),
        ({"source": "demo", "validation_percentage": 10.5}, "validation_percentage=10.5"),
        ({"source": "demo", "testing_percentage": -1}, "testing_percentage=-1"),
        ({"source": "demo", "weights": "best"}, "weights='best'"),
    ],
)
def test_run_config_rejects_bad_values_with_the_value(kwargs, needle):
    with pytest.raises(InvalidArgument, match=needle.replace("+", r"\+")):
        RunConfig(**kwargs)


def test_run_config_round_trips_through_a_dict():
    from dataclasses import asdict

    config = RunConfig(source="demo", train={"learning_rate": 0.05, "steps": 30})
    assert RunConfig.from_dict(asdict(config)) == config


def test_test_results_score_the_split_and_list_the_mistakes():
    from types import SimpleNamespace

    import numpy as np

    from engine.runs.results import test_results

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    records = [SimpleNamespace(path=f"img{i}.jpg") for i in range(3)]
    history = [{"step": 10, "validation_accuracy": 0.4}, {"step": 20, "validation_accuracy": 0.7}]
    res = test_results(probs, np.array([0, 1, 1]), records, ["a", "b"], history)
    assert res.test_accuracy == pytest.approx(2 / 3) and res.test_count == 3
    assert res.misclassified == [{"path": "img2.jpg", "true": "b", "predicted": "a", "probability": 0.6}]
    assert res.validation_accuracy == 0.7 and res.confusion_matrix == [[1, 0], [1, 1]]
    empty = test_results(np.zeros((0, 2)), np.array([], int), [], ["a", "b"], history)
    assert empty.test_accuracy is None and empty.as_dict()["note"] == "The test split is empty."

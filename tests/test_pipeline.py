"""End to end on real data: retrain mobilenet_0.25_224 on the shared flower photos."""

from __future__ import annotations

import hashlib
import json

import keras
import pytest

from engine.export.predict import Classifier
from engine.runs.retrain import RunConfig, retrain
from engine.runs.store import RunStore
from engine.training.config import TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flower_home(tmp_path_factory):
    return tmp_path_factory.mktemp("flower_lab")


@pytest.fixture
def shared_home(flower_home, monkeypatch, seeded_keras_home):
    """One LAB_HOME for this module, so later tests see the first run and its cache."""
    monkeypatch.setenv("LAB_HOME", str(flower_home))
    return flower_home


def _config(flowers_dir, **kw) -> RunConfig:
    return RunConfig(source=str(flowers_dir), architecture="mobilenet_0.25_224", train=TrainConfig(**kw))


def test_imagenet_weights_learn_flowers(shared_home, flowers_dir):
    summary = retrain(_config(flowers_dir))
    assert summary.test_accuracy >= 0.70, summary
    assert summary.cache["misses"] == 200 and summary.cache["hits"] == 0
    run = RunStore().get_run(summary.run_id)
    assert run.status == "finished"
    assert set(run.results["per_class_accuracy"]) == {"daisy", "dandelion", "roses", "sunflowers", "tulips"}
    assert sum(map(sum, run.results["confusion_matrix"])) == run.results["test_count"]
    assert {"scan", "extract", "train", "evaluate", "save"} <= set(run.phases)
    assert len(RunStore().get_history(summary.run_id)) == 4000 // 10


def test_second_run_extracts_nothing(shared_home, flowers_dir):
    summary = retrain(_config(flowers_dir, learning_rate=0.005, steps=200))
    assert summary.cache["misses"] == 0 and summary.cache["hits"] == 200


def test_run_folder_is_portable_and_classifies_a_daisy(shared_home, sample_images_dir):
    run = next(r for r in RunStore().list_runs() if r.status == "finished")
    folder = RunStore().run_dir(run.id)
    for name in ("model.keras", "labels.txt", "config.json", "metrics.json", "environment.json"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["results"]["test_accuracy"] == run.results["test_accuracy"]
    assert metrics["results"]["cache"]["hits"] + metrics["results"]["cache"]["misses"] == 200
    assert json.loads((folder / "environment.json").read_text())["tensorflow_version"]
    assert json.loads((folder / "config.json").read_text())["architecture"] == "mobilenet_0.25_224"
    recorded = RunStore().artifact_hash(run.id, "model.keras")  # the lab vouches for what it saved
    assert recorded == hashlib.sha256((folder / "model.keras").read_bytes()).hexdigest()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")]
    model = keras.saving.load_model(folder / "model.keras", safe_mode=True, compile=False)
    assert model.output.shape[-1] == 5
    result = Classifier.from_run(run.id).classify([sample_images_dir / "classic-daisy.jpg"], top_k=3)[0]
    assert result.top1 == "daisy", result


def test_random_weights_stay_near_chance(shared_home, flowers_dir):
    """Proof the ImageNet weights matter: the same head on random-init features barely learns."""
    config = _config(flowers_dir)
    config.weights = "random"
    summary = retrain(config)
    assert summary.test_accuracy <= 0.45, summary

"""Classifier.predict_batch: a folder in batches gives, photo by photo, what classify gives alone."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import Cancelled, InvalidArgument
from engine.export.predict import Classifier
from engine.models import backbones

REAL = "mobilenet_0.25_224"
CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


@pytest.fixture(scope="module")
def classifier_factory():
    """A classifier on the real ImageNet backbone with a seeded 5-class softmax head."""
    made = {}

    def make() -> Classifier:
        if "c" not in made:
            import keras

            keras.utils.set_random_seed(3)
            features = backbones.build_feature_extractor(REAL, "imagenet")
            inputs = keras.Input(shape=(224, 224, 3))
            # a head scaled so the probabilities are spread out, not all ~0.2
            head = keras.layers.Dense(len(CLASSES), activation="softmax", kernel_initializer="glorot_normal")
            model = keras.Model(inputs, head(keras.layers.Rescaling(4.0)(features(inputs))))
            made["c"] = Classifier(model, CLASSES, 224, "test head")
        return made["c"]

    return make


@pytest.mark.slow
def test_batches_match_single_photos(flowers_dir, seeded_keras_home, tmp_path, classifier_factory):
    clf = classifier_factory()
    photos = sorted(flowers_dir.glob("*/*.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photos[0].read_bytes()[:200])
    items = [
        *photos[:70],
        broken,
        photos[70].read_bytes(),
        *photos[71:],
    ]  # 200 photos (one as bytes), a broken file
    events = []
    batched = clf.predict_batch(items, top_k=5, batch_size=32, progress=events.append)
    single = clf.classify(items, top_k=5)
    assert len(batched) == len(single) == 201
    assert batched[70].error and batched[70].source == str(broken) and not batched[70].labels
    assert batched[71].source == "upload" and batched[71].error is None
    spread = []
    for b, s in zip(batched, single, strict=True):
        assert b.source == s.source and (b.error is None) == (s.error is None)
        if s.error:
            continue
        assert b.top1 == s.top1
        by_label = dict(zip(s.labels, s.scores, strict=True))
        for label, score in zip(b.labels, b.scores, strict=True):
            assert abs(score - by_label[label]) <= 1e-5, (b.source, label)
        assert b.latency_ms > 0
        spread.append(s.scores[0])
    assert max(spread) - min(spread) > 0.1  # the probabilities are not all alike
    assert events[-1]["done"] == events[-1]["total"] == 201 and events[-1]["phase"] == "classify"
    assert [e["done"] for e in events] == [32, 64, 96, 128, 160, 192, 201]


def _tiny_classifier() -> Classifier:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    return Classifier(model, ["a", "b", "c"], 32, "tiny")


def test_bad_arguments_cancel_and_empty_input(tmp_path):
    from PIL import Image

    clf = _tiny_classifier()
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 30, 3), 50 * i, np.uint8)).save(path)
        paths.append(path)
    with pytest.raises(InvalidArgument, match="batch_size"):
        clf.predict_batch(paths, batch_size=0)
    with pytest.raises(InvalidArgument, match="top_k"):
        clf.predict_batch(paths, top_k=0)
    assert clf.predict_batch([]) == []
    seen = []
    with pytest.raises(Cancelled):
        clf.predict_batch(paths, batch_size=2, progress=seen.append, cancel=lambda: len(seen) >= 1)
    assert len(seen) == 1
    out = clf.predict_batch(paths, top_k=9, batch_size=2)
    assert [len(p.labels) for p in out] == [3] * 5  # top_k capped at the number of classes
    assert [p.top1 for p in out] == [p.top1 for p in clf.classify(paths, top_k=3)]

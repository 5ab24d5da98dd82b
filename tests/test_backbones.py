"""The backbone registry: names, validation, preprocessing and the offline weights error."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.errors import InvalidArgument, NotFound, WeightsMissing
from engine.models import backbones


def test_registry_has_retrain_py_and_keras_names():
    names = backbones.list_backbones()
    for alpha in ("1.0", "0.75", "0.50", "0.25"):
        for size in (224, 192, 160, 128):
            assert f"mobilenet_{alpha}_{size}" in names
    for name in (
        "mobilenet_v2_1.0_224",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "inception_v3",
        "efficientnet_b0",
    ):
        assert name in names
    assert backbones.get_backbone("inception_v3").input_size == 299
    assert backbones.get_backbone("mobilenet_0.50_160").feature_dim == 512


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(NotFound) as info:
        backbones.get_backbone("resnet_50")
    assert "resnet_50" in str(info.value) and "mobilenet_0.25_224" in str(info.value)


def test_bad_weights_choice_echoes_value():
    with pytest.raises(InvalidArgument, match="weights='imagenet21k'"):
        backbones.check_weights("imagenet21k")


def test_missing_weights_offline_fail_fast_naming_file_and_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(backbones, "network_available", lambda *a, **k: False)
    start = time.perf_counter()
    with pytest.raises(WeightsMissing) as info:
        backbones.build_backbone("mobilenet_0.25_224", weights="imagenet")
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert "mobilenet_2_5_224_tf_no_top.h5" in message
    assert str(tmp_path / "keras_home" / "models") in message


def test_network_probe_is_bounded_here():
    """On this offline machine the real probe must answer (False) well within the 2 s budget."""
    start = time.perf_counter()
    backbones.network_available(timeout=1.0)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("mobilenet_0.25_224", -1.0, 1.0), ("inception_v3", -1.0, 1.0), ("efficientnet_b0", 0, 255)],
)
def test_preprocessing_is_applied_in_one_place(name, low, high):
    """MobileNet v1/v2 and Inception expect [-1, 1]; MobileNetV3/EfficientNet rescale inside the model."""
    layer = backbones.preprocessing_layer(name)
    out = np.asarray(layer(np.array([[0.0, 255.0]], dtype="float32")))
    np.testing.assert_allclose(out[0], [low, high], atol=1e-6)


def test_cached_weights_are_used(seeded_keras_home):
    """The real Keras ImageNet file loads offline and differs from random init."""
    model = backbones.build_feature_extractor("mobilenet_0.25_224", weights="imagenet")
    assert model.output.shape[-1] == 256
    random_model = backbones.build_feature_extractor("mobilenet_0.25_224", weights="random", seed=1)
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 224, 224, 3)).astype("float32")
    assert not np.allclose(model.predict(x, verbose=0), random_model.predict(x, verbose=0))

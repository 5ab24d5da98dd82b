"""engine.features.litert: the backbone through LiteRT gives TensorFlow's features, cached on disk."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import Cancelled, LabError
from engine.features import extract, litert, onnx_forward
from engine.features.cache import FeatureCache, model_key
from engine.features.extract import extract_features, feature_extractor

pytest.importorskip("ai_edge_litert.interpreter")

REAL = "mobilenet_0.25_224"
SMALL = "mobilenet_0.25_128"


pytestmark = pytest.mark.usefixtures("forget_converted_extractors")


@pytest.mark.slow
def test_litert_features_match_tensorflow_on_real_weights_and_photos(
    flowers_dir, seeded_keras_home, tmp_path
):
    paths = sorted(flowers_dir.glob("*/*.jpg"))
    events = []
    lite = extract_features(
        paths, REAL, "imagenet", runtime="litert", progress=events.append, cache=FeatureCache(tmp_path / "a")
    )
    tf_ = extract_features(paths, REAL, "imagenet", runtime="tensorflow", cache=FeatureCache(tmp_path / "b"))
    assert lite.stats.runtime == "litert" and tf_.stats.runtime == "tensorflow"
    assert lite.stats.fallback_reason == "" and lite.stats.misses == len(paths) == 200
    assert lite.hashes == tf_.hashes
    assert np.abs(lite.features - tf_.features).max() <= litert.TOLERANCE
    # the features are not trivially equal: ImageNet features of real photos, a wide range
    assert lite.features.max() > 1.0 and np.isfinite(lite.features).all()
    convert = [e for e in events if e["phase"] == "convert"]
    assert [e["done"] for e in convert] == [0, 1, 2, 3] and all(e["total"] == 3 for e in convert)
    assert litert.cached(model_key(REAL, "imagenet"))


def test_a_converted_backbone_is_loaded_from_disk_without_building_keras(tmp_path, monkeypatch):
    first = feature_extractor(SMALL, "random", runtime="litert")
    assert first.runtime == "litert" and first.model is None
    extract._FAST["litert"].clear()

    def no_build(*args, **kwargs):
        raise AssertionError("the Keras model was built although the converted backbone is on disk")

    monkeypatch.setattr(extract, "_build_extractor", no_build)
    again = feature_extractor(SMALL, "random", runtime="auto", images=3)  # few images: no conversion
    assert again.runtime == "litert" and again.forward.path == first.forward.path
    assert litert.details(model_key(SMALL, "random"))["cpu_ms_per_image"] > 0  # timed at conversion
    # the input is resized to a batch once and kept; another size resizes, then back
    pixels = np.random.default_rng(1).uniform(0, 255, (5, 128, 128, 3)).astype(np.float32)
    out5 = again.run(pixels)
    out2 = again.run(pixels[:2])
    assert out5.shape == (5, 256) and again.forward._batch == 2
    np.testing.assert_allclose(out2, out5[:2], atol=1e-5)


def test_auto_uses_tensorflow_for_a_few_images_when_nothing_is_converted(tmp_path):
    paths = []
    from PIL import Image

    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 50, 3), 40 * i, np.uint8)).save(path)
        paths.append(path)
    result = extract_features(paths, SMALL, "random")
    assert result.stats.runtime == "tensorflow"
    assert "do not repay converting" in result.stats.fallback_reason
    assert not litert.cached(model_key(SMALL, "random"))


@pytest.mark.parametrize(
    "runtime",
    [
        "litert",
        pytest.param(
            "onnx", marks=pytest.mark.skipif(bool(onnx_forward.available()), reason="no ONNX Runtime")
        ),
    ],
)
def test_conversion_is_cancellable_between_steps_and_writes_nothing(tmp_path, runtime):
    """Both runtimes run engine/features/converted.py's driver: a cancel after the first step
    leaves no file, no remembered refusal and no work folder."""
    seen = []
    with pytest.raises(Cancelled):
        feature_extractor(
            SMALL, "random", runtime=runtime, progress=seen.append, cancel=lambda: len(seen) >= 1
        )
    module = extract.CONVERTED[runtime]
    assert seen and seen[0]["phase"] == "convert" and seen[0]["format"] == f"{runtime}-backbone"
    key = model_key(SMALL, "random")
    assert not module.cached(key) and module.known_failure(key) is None
    assert not list(module.model_path(key).parent.glob(".convert-*"))  # the work folder is gone


def test_a_conversion_that_disagrees_falls_back_to_tensorflow_with_its_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(litert, "TOLERANCE", -1.0)  # no conversion can agree this well
    with pytest.raises(LabError, match="differ from TensorFlow's"):
        feature_extractor(SMALL, "random", runtime="litert")
    key = model_key(SMALL, "random")
    assert not litert.cached(key) and "differ" in litert.known_failure(key)
    # remembered: "auto" does not convert again, and says why it used TensorFlow
    monkeypatch.setattr(litert, "convert", lambda *a, **k: pytest.fail("converted again"))
    fallback = feature_extractor(SMALL, "random", runtime="auto", images=3)
    assert fallback.runtime == "tensorflow" and "differ from TensorFlow's" in fallback.fallback_reason


def test_unknown_runtime_is_refused(tmp_path):
    from engine.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="runtime must be one of"):
        extract_features([], SMALL, "random", runtime="gpu")

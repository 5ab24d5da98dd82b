"""engine.features.onnx_forward: the backbone through ONNX Runtime gives TensorFlow's features, and
"auto" runs each backbone in the converted runtime whose conversion measured it faster."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.errors import LabError
from engine.features import extract, litert, onnx_forward
from engine.features.cache import FeatureCache, model_key
from engine.features.extract import extract_features, feature_extractor

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

REAL = "mobilenet_0.25_224"
SMALL = "mobilenet_0.25_128"


pytestmark = pytest.mark.usefixtures("forget_converted_extractors")


@pytest.mark.slow
def test_onnx_features_match_tensorflow_on_real_weights_and_photos(flowers_dir, seeded_keras_home, tmp_path):
    paths = sorted(flowers_dir.glob("*/*.jpg"))[::4]
    events = []
    onnx = extract_features(
        paths, REAL, "imagenet", runtime="onnx", progress=events.append, cache=FeatureCache(tmp_path / "a")
    )
    tf_ = extract_features(paths, REAL, "imagenet", runtime="tensorflow", cache=FeatureCache(tmp_path / "b"))
    assert onnx.stats.runtime == "onnx" and tf_.stats.runtime == "tensorflow"
    assert onnx.stats.fallback_reason == "" and onnx.stats.misses == len(paths) == 50
    assert onnx.hashes == tf_.hashes
    assert np.abs(onnx.features - tf_.features).max() <= onnx_forward.TOLERANCE
    assert onnx.features.max() > 1.0 and np.isfinite(onnx.features).all()  # real, wide-ranged features
    convert = [e for e in events if e["phase"] == "convert"]
    assert [e["done"] for e in convert] == [0, 1, 2, 3] and {e["format"] for e in convert} == {
        "onnx-backbone"
    }
    key = model_key(REAL, "imagenet")
    recorded = onnx_forward.details(key)
    assert onnx_forward.cached(key) and recorded["max_abs_diff"] <= onnx_forward.TOLERANCE
    assert recorded["cpu_ms_per_image"] > 0


def test_auto_runs_the_runtime_whose_conversion_measured_faster(tmp_path):
    key = model_key(SMALL, "random")
    events = []
    first = feature_extractor(SMALL, "random", runtime="auto", progress=events.append)  # converts both
    assert litert.cached(key) and onnx_forward.cached(key)
    costs = {name: module.details(key)["cpu_ms_per_image"] for name, module in extract.CONVERTED.items()}
    weighted = {name: cost * extract.HANDICAP[name] for name, cost in costs.items()}
    assert first.runtime == min(weighted, key=weighted.get) and first.fallback_reason == ""
    assert {e["format"] for e in events if e["phase"] == "convert"} == {"litert-backbone", "onnx-backbone"}

    # the recorded figures decide: make the other one clearly faster, ask again (few images: no conversion)
    other = next(name for name in costs if name != first.runtime)
    path = extract.CONVERTED[other].model_path(key).with_suffix(".json")
    info = json.loads(path.read_text())
    path.write_text(json.dumps({**info, "cpu_ms_per_image": costs[first.runtime] / 10}))
    for kept in extract._FAST.values():
        kept.clear()
    again = feature_extractor(SMALL, "random", runtime="auto", images=3)
    assert again.runtime == other and again.model is None
    pixels = np.random.default_rng(2).uniform(0, 255, (3, 128, 128, 3)).astype(np.float32)
    np.testing.assert_allclose(again.run(pixels), first.run(pixels), atol=2 * onnx_forward.TOLERANCE)


def test_a_refused_onnx_conversion_is_remembered_and_auto_uses_litert(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_forward, "TOLERANCE", -1.0)  # no conversion can agree this well
    with pytest.raises(LabError, match="cannot run in ONNX Runtime: ONNX Runtime features differ"):
        feature_extractor(SMALL, "random", runtime="onnx")
    key = model_key(SMALL, "random")
    assert not onnx_forward.cached(key) and "differ" in onnx_forward.known_failure(key)
    monkeypatch.setattr(onnx_forward, "convert", lambda *a, **k: pytest.fail("converted again"))
    chosen = feature_extractor(SMALL, "random", runtime="auto")
    assert chosen.runtime == "litert"


def test_a_damaged_onnx_file_is_removed_not_loaded(tmp_path):
    path = onnx_forward.model_path(model_key(SMALL, "random"))
    path.write_bytes(b"not an onnx model")
    assert onnx_forward.load(model_key(SMALL, "random")) is None and not path.exists()

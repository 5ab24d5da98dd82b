"""Heatmaps: Grad-CAM finds the daisy in a real flowers run, follows the chosen class; occlusion on TFLite."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from engine.errors import Cancelled, InvalidArgument
from engine.export import heatmap
from engine.export.predict import Classifier
from tests.conftest import FLOWERS, MOBILENET_025_WEIGHTS, SAMPLE_IMAGES

CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def centre_to_border(heat: np.ndarray) -> float:
    """Mean heat on the central half of the photo over the mean on a border band 1/8 of the side wide."""
    h, w = heat.shape
    band = h // 8
    centre = heat[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean()
    border = np.concatenate(
        [heat[:band].ravel(), heat[-band:].ravel(), heat[:, :band].ravel(), heat[:, -band:].ravel()]
    ).mean()
    return float(centre / max(border, 1e-6))


# -- without TensorFlow: a stand-in classifier whose evidence sits in a known square -------------------
class SquareRuntime:
    """'daisy' is as likely as the top-left quarter is bright; the rest of the photo does not matter."""

    fmt = "stand-in"

    def __init__(self):
        self.calls = 0

    def predict(self, pixels):
        self.calls += 1
        quarter = pixels[:, :16, :16].mean(axis=(1, 2, 3)) / 255.0
        p = np.clip(quarter, 0.01, 0.99)
        return np.stack([p, 1 - p, 0 * p, 0 * p, 0 * p], axis=1).astype(np.float32)


@pytest.fixture
def square():
    return Classifier(None, CLASSES, 32, "square stand-in", runtime=SquareRuntime())


def test_occlusion_finds_the_evidence_and_auto_uses_it_without_keras(square):
    bright = np.full((32, 32, 3), 230, np.uint8)
    result = heatmap.explain(square, bright)
    assert result.method == "occlusion" and result.class_name == "daisy" and result.class_index == 0
    assert result.heat.shape == (32, 32) and result.heat.dtype == np.float32
    assert result.heat.min() >= 0 and result.heat.max() == pytest.approx(1.0)
    assert result.heat[:16, :16].mean() > 3 * result.heat[16:, 16:].mean()
    assert "daisy" in result.sentence and "not why" in result.sentence
    batches = square.runtime.calls
    assert batches <= 1 + 1 + 3  # the photo twice (probabilities, baseline) + 74 patches in batches of 32


def test_bad_arguments_are_one_line_errors(square):
    photo = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(InvalidArgument, match="Unknown class 'cat'.*daisy"):
        heatmap.explain(square, photo, class_name="cat")
    with pytest.raises(InvalidArgument, match="Unknown heatmap method 'lime'"):
        heatmap.explain(square, photo, method="lime")
    with pytest.raises(InvalidArgument, match="Grad-CAM needs a Keras model"):
        heatmap.explain(square, photo, method="grad-cam")
    with pytest.raises(Cancelled):
        heatmap.explain(square, photo, cancel=lambda: True)


def test_an_empty_map_says_so(square):
    dark = np.zeros((32, 32, 3), np.uint8)  # p(daisy) at its floor: no patch can lower it
    result = heatmap.explain(square, dark, class_name="daisy")
    assert result.heat.max() == 0 and result.sentence.startswith("No region stands out")


def test_overlay_blends_by_heat():
    photo = np.full((40, 40, 3), 100, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[:4, :4] = 1.0
    out = heatmap.overlay(photo, heat)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    hot, cold = np.abs(out[:10, :10].astype(int) - 100).sum(), np.abs(out[30:, 30:].astype(int) - 100).sum()
    assert hot > cold > 0
    assert np.array_equal(heatmap.overlay(photo, heat, alpha=0.0), photo)
    with pytest.raises(InvalidArgument, match="alpha"):
        heatmap.overlay(photo, heat, alpha=2)


def test_grad_cam_follows_a_flat_keras_model():
    """No nested backbone: the feature map is tapped at the top level, and the map shows where it looked."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.MaxPooling2D(4)(x)  # an 8x8 feature map
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    clf = Classifier(keras.Model(inputs, outputs), ["a", "b"], 32, "flat")
    photo = np.zeros((32, 32, 3), np.uint8)
    photo[8:16, 8:16] = 255  # the only non-zero input: every activation, hence all evidence, lies there
    result = heatmap.explain(clf, photo, class_name="a")
    other = heatmap.explain(clf, photo, class_name="b")
    assert result.method == "grad-cam" and result.grid == 8
    assert result.heat.shape == (32, 32)
    lit = [r for r in (result, other) if r.heat.max() > 0]
    assert lit, "one of the two classes must be raised by the bright square"
    for r in lit:
        assert r.heat[8:16, 8:16].mean() > 3 * r.heat[24:, 24:].mean()


# -- a real flowers run -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    """One mobilenet_0.25_224 run on the shared flowers: its Keras classifier and its tflite-int8 export."""
    for path in (FLOWERS, MOBILENET_025_WEIGHTS, SAMPLE_IMAGES):
        if not path.exists():
            pytest.skip(f"needs the shared offline asset {path}")
    from engine.runs.retrain import RunConfig, retrain
    from engine.training.config import TrainConfig

    home = tmp_path_factory.mktemp("heatmap_lab")
    (home / "keras" / "models").mkdir(parents=True)
    shutil.copy(MOBILENET_025_WEIGHTS, home / "keras" / "models" / MOBILENET_025_WEIGHTS.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_HOME", str(home / "lab"))
        mp.setenv("KERAS_HOME", str(home / "keras"))
        config = RunConfig(source=str(FLOWERS), architecture="mobilenet_0.25_224", train=TrainConfig())
        run_id = retrain(config).run_id
        return Classifier.from_run(run_id), Classifier.from_run(run_id, fmt="tflite-int8")


@pytest.mark.slow
def test_grad_cam_puts_the_daisy_on_the_flower_and_follows_the_class(flowers):
    keras_clf, _ = flowers
    daisy = SAMPLE_IMAGES / "classic-daisy.jpg"
    heatmap.explain(keras_clf, daisy)  # builds the tap once
    start = time.perf_counter()
    top = heatmap.explain(keras_clf, daisy)
    seconds = time.perf_counter() - start
    tulips = heatmap.explain(keras_clf, daisy, class_name="tulips")
    print(
        f"grad-cam daisy: centre/border {centre_to_border(top.heat):.2f} in {seconds:.2f} s; "
        f"as tulips: {centre_to_border(tulips.heat):.2f}"
    )
    assert top.method == "grad-cam" and top.class_name == "daisy" and top.grid == 7
    assert top.heat.shape == (224, 224) and top.heat.dtype == np.float32
    assert top.heat.min() >= 0 and top.heat.max() == pytest.approx(1.0)
    assert centre_to_border(top.heat) > 1.5  # measured 2.19: the flower fills the centre
    assert "'daisy'" in top.sentence and "7x7" in top.sentence
    assert tulips.class_name == "tulips" and tulips.probability < 0.01
    assert np.abs(top.heat - tulips.heat).mean() > 0.1  # another class, another map (measured: on the border)
    assert centre_to_border(tulips.heat) < centre_to_border(top.heat)
    assert seconds < 3.0  # measured 0.2-0.5 s on 2 shared cores


@pytest.mark.slow
def test_occlusion_on_a_tflite_export_favours_the_flower(flowers):
    _, tflite = flowers
    daisy = SAMPLE_IMAGES / "classic-daisy.jpg"
    start = time.perf_counter()
    result = heatmap.explain(tflite, daisy)
    seconds = time.perf_counter() - start
    ratio = centre_to_border(result.heat)
    print(f"occlusion tflite-int8 daisy: centre/border {ratio:.1f} in {seconds:.2f} s")
    assert result.method == "occlusion" and result.class_name == "daisy"
    assert result.heat.shape == (224, 224) and result.grid == heatmap.OCCLUSION_STEPS
    assert ratio > 2.0  # measured: the border band carries (almost) no heat
    assert seconds < 3.0
    with pytest.raises(InvalidArgument, match="Grad-CAM needs a Keras model"):
        heatmap.explain(tflite, daisy, method="grad-cam")

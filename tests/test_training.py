"""Head training, its config and optimiser maths, evaluation and fine-tuning (engine/training/)."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest

from engine.errors import Cancelled, InvalidArgument
from engine.training.config import HISTORY_KEYS, TrainConfig
from engine.training.evaluate import evaluate, head_probabilities
from engine.training.head import train_head
from engine.training.optim import schedule_lr

CLASSES = 3


def separable(n: int, dim: int = 32, seed: int = 0, spread: float = 0.5):
    """Features around three well-separated, non-negative class centres."""
    rng = np.random.default_rng(seed)
    centres = np.eye(CLASSES, dim, dtype=np.float32) * 4.0
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    x = np.maximum(centres[y] + rng.normal(scale=spread, size=(n, dim)), 0).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def data():
    return (*separable(240, seed=1), *separable(60, seed=2))


def small(**overrides) -> TrainConfig:
    return TrainConfig(**{"steps": 150, "batch_size": 32, "eval_interval": 10, **overrides})


def strip_elapsed(history):
    return [{k: v for k, v in row.items() if k != "elapsed"} for row in history]


# ---------------------------------------------------------------------------------------------
# TrainConfig


def test_defaults_are_retrain_py_and_round_trip():
    config = TrainConfig()
    assert (config.learning_rate, config.steps, config.batch_size, config.eval_interval) == (
        0.01,
        4000,
        100,
        10,
    )
    assert (config.optimizer, config.schedule, config.fine_tune_layers) == ("sgd", "constant", 0)
    assert TrainConfig.from_dict(asdict(config)) == config
    assert not config.distorts and TrainConfig(random_crop=10).distorts


@pytest.mark.parametrize(
    "key, value",
    [
        ("learning_rate", 0),
        ("learning_rate", -0.1),
        ("learning_rate", float("nan")),
        ("learning_rate", float("inf")),
        ("learning_rate", float("-inf")),
        ("learning_rate", 1e308),
        ("learning_rate", 10.5),
        ("learning_rate", "0.1"),
        ("learning_rate", True),
        ("steps", 0),
        ("steps", 1.5),
        ("batch_size", 0),
        ("batch_size", 10**9),
        ("steps", 10**12),
        ("eval_interval", 10**7),
        ("fine_tune_batch_size", 100_000),
        ("fine_tune_layers", 10**9),
        ("eval_interval", -1),
        ("optimizer", "rmsprop"),
        ("schedule", "linear"),
        ("seed", -1),
        ("seed", 2**31),
        ("final_lr_fraction", 0.0),
        ("final_lr_fraction", 1.5),
        ("fine_tune_layers", -1),
        ("fine_tune_steps", 0),
        ("fine_tune_learning_rate", float("inf")),
        ("flip_left_right", "yes"),
        ("random_crop", 101),
        ("random_brightness", -5),
    ],
)
def test_bad_config_values_are_refused_and_echoed(key, value):
    with pytest.raises(InvalidArgument) as info:
        TrainConfig(**{key: value})
    assert f"{key}={value!r}" in str(info.value)


def test_the_limits_themselves_are_accepted():
    from engine.training import config

    top = TrainConfig(
        learning_rate=config.MAX_LEARNING_RATE,
        steps=config.MAX_STEPS,
        batch_size=config.MAX_BATCH_SIZE,
        fine_tune_batch_size=config.MAX_FINE_TUNE_BATCH_SIZE,
        final_lr_fraction=1.0,
    )
    assert (top.learning_rate, top.steps, top.batch_size) == (10.0, 1_000_000, 65_536)


@pytest.mark.parametrize("value", ["1e308", "nan", "inf", "-0.01", "0"])
def test_cli_refuses_an_absurd_learning_rate_with_one_line(value, capsys):
    from engine.cli.main import main

    assert main(["retrain", "--image_dir", "demo", "--learning_rate", value]) == 2
    err = capsys.readouterr().err
    assert f"learning_rate={float(value)!r}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(InvalidArgument, match="learning_rat"):
        TrainConfig.from_dict({"learning_rat": 0.1})


def test_numbers_are_normalised():
    config = TrainConfig(learning_rate=1, steps=np.int64(20))
    assert isinstance(config.learning_rate, float) and type(config.steps) is int


# ---------------------------------------------------------------------------------------------
# train_head


@pytest.mark.parametrize("optimizer, rate", [("sgd", 0.05), ("adam", 0.01)])
def test_learns_separable_features(data, optimizer, rate):
    x, y, vx, vy = data
    result = train_head(x, y, vx, vy, CLASSES, small(optimizer=optimizer, learning_rate=rate))
    assert result.kernel.shape == (x.shape[1], CLASSES) and result.bias.shape == (CLASSES,)
    last = result.history[-1]
    assert last["validation_accuracy"] >= 0.95 and last["train_accuracy"] >= 0.9
    assert last["validation_cross_entropy"] < result.history[0]["validation_cross_entropy"]
    ev = evaluate(head_probabilities(result.kernel, result.bias, vx), vy, ["a", "b", "c"])
    assert ev.accuracy == pytest.approx(last["validation_accuracy"], abs=1e-6)


@pytest.mark.parametrize("schedule", ["constant", "exponential", "cosine"])
def test_same_seed_same_history(data, schedule):
    x, y, vx, vy = data
    config = small(steps=40, schedule=schedule, optimizer="adam", learning_rate=0.01)
    first = train_head(x, y, vx, vy, CLASSES, config)
    second = train_head(x, y, vx, vy, CLASSES, config)
    assert strip_elapsed(first.history) == strip_elapsed(second.history)
    np.testing.assert_array_equal(first.kernel, second.kernel)
    other = train_head(x, y, vx, vy, CLASSES, small(steps=40, schedule=schedule, optimizer="adam", seed=1))
    assert not np.array_equal(first.kernel, other.kernel)


def test_eval_rows_every_interval_and_at_the_last_step(data):
    x, y, vx, vy = data
    events = []
    result = train_head(x, y, vx, vy, CLASSES, small(steps=25, eval_interval=10), progress=events.append)
    assert [row["step"] for row in result.history] == [10, 20, 25]
    assert all(tuple(row) == HISTORY_KEYS for row in result.history)
    assert [(e["phase"], e["done"], e["total"]) for e in events] == [("train", s, 25) for s in (10, 20, 25)]
    assert events[-1]["row"] == result.history[-1]
    assert events[-1]["validation_accuracy"] == result.history[-1]["validation_accuracy"]
    assert "Step 25/25" in events[-1]["message"]
    elapsed = [row["elapsed"] for row in result.history]
    assert elapsed == sorted(elapsed)


def test_cancel_stops_mid_training(data):
    x, y, vx, vy = data
    events = []
    with pytest.raises(Cancelled):
        train_head(
            x, y, vx, vy, CLASSES, small(steps=1000), progress=events.append, cancel=lambda: len(events) >= 2
        )
    assert len(events) == 2


def test_empty_validation_set_gives_no_validation_metrics(data):
    x, y, _, _ = data
    for vx, vy in ((None, None), (np.zeros((0, x.shape[1])), np.zeros(0))):
        result = train_head(x, y, vx, vy, CLASSES, small(steps=20))
        last = result.history[-1]
        assert last["validation_accuracy"] is None and last["validation_cross_entropy"] is None
        assert last["train_accuracy"] > 0


def test_batch_larger_than_training_set_samples_with_replacement():
    x, y = separable(6, seed=3)
    result = train_head(x, y, None, None, CLASSES, small(steps=30, batch_size=50, learning_rate=0.1))
    assert len(result.history) == 3 and result.history[-1]["train_accuracy"] == 1.0


def test_non_finite_loss_is_recorded_and_training_goes_on():
    x, y = separable(60, seed=4)
    huge = x * 1e30  # any step overflows float32
    result = train_head(huge, y, huge, y, CLASSES, small(steps=30, learning_rate=10.0))
    assert [row["step"] for row in result.history] == [10, 20, 30]
    assert not all(math.isfinite(row["train_cross_entropy"]) for row in result.history)


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros((4, 3)), np.zeros(4), None, None, 1), "num_classes=1"),
        ((np.zeros((4, 3)), np.array([0, 1, 2, 3]), None, None, 3), "labels must be in"),
        ((np.zeros((4, 3)), np.zeros(5), None, None, 2), "shape"),
        ((np.zeros((0, 3)), np.zeros(0), None, None, 2), "empty"),
        ((np.zeros((4, 3)), np.zeros(4), np.zeros((2, 5)), np.zeros(2), 2), "dimensions"),
    ],
)
def test_bad_training_inputs(args, match):
    with pytest.raises(InvalidArgument, match=match):
        train_head(*args, config=small(steps=1))


def test_schedules_start_at_the_rate_and_end_at_the_fraction():
    import tensorflow as tf

    for schedule in ("exponential", "cosine"):
        start = schedule_lr(schedule, 0.5, 0.1, tf.constant(0), tf.constant(100))
        end = schedule_lr(schedule, 0.5, 0.1, tf.constant(100), tf.constant(100))
        middle = schedule_lr(schedule, 0.5, 0.1, tf.constant(50), tf.constant(100))
        assert float(start) == pytest.approx(0.5) and float(end) == pytest.approx(0.05)
        assert 0.05 < float(middle) < 0.5
    assert schedule_lr("constant", 0.5, 0.1, tf.constant(50), tf.constant(100)) == 0.5


# ---------------------------------------------------------------------------------------------
# evaluate, head_probabilities


def test_evaluate_on_a_hand_made_example():
    probs = np.array(
        [
            [0.8, 0.1, 0.1],  # true 0 -> 0
            [0.6, 0.3, 0.1],  # true 0 -> 0
            [0.2, 0.7, 0.1],  # true 0 -> 1
            [0.1, 0.8, 0.1],  # true 1 -> 1
            [0.1, 0.2, 0.7],  # true 1 -> 2
        ]
    )
    labels = np.array([0, 0, 0, 1, 1])
    ev = evaluate(probs, labels, ["cat", "dog", "fox"])
    assert ev.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 0]]
    assert ev.accuracy == pytest.approx(3 / 5)
    assert ev.per_class_accuracy == {"cat": pytest.approx(2 / 3), "dog": 0.5, "fox": None}
    np.testing.assert_array_equal(ev.predicted, [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(ev.misclassified(labels), [2, 4])


def test_evaluate_empty_and_bad_inputs():
    ev = evaluate(np.zeros((0, 2)), np.zeros(0), ["a", "b"])
    assert ev.accuracy is None and ev.confusion == [[0, 0], [0, 0]]
    with pytest.raises(InvalidArgument, match="probabilities.shape"):
        evaluate(np.zeros((2, 3)), np.zeros(2), ["a", "b"])
    with pytest.raises(InvalidArgument, match="labels must be in"):
        evaluate(np.ones((2, 2)) / 2, np.array([0, 2]), ["a", "b"])


def test_head_probabilities_is_a_stable_softmax():
    kernel = np.array([[1.0, -1.0], [0.0, 2.0]], np.float32)
    bias = np.array([0.5, 0.0], np.float32)
    x = np.array([[1.0, 1.0], [1000.0, 0.0]], np.float32)
    probs = head_probabilities(kernel, bias, x)
    logits = x[:1] @ kernel + bias
    np.testing.assert_allclose(probs[0], np.exp(logits[0]) / np.exp(logits[0]).sum(), rtol=1e-6)
    np.testing.assert_allclose(probs[1], [1.0, 0.0], atol=1e-6)
    with pytest.raises(InvalidArgument, match="x.shape"):
        head_probabilities(kernel, bias, np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------
# Fine-tuning (tiny images, a small random-weights backbone, a few steps: the CPU is slow)

BACKBONE = "mobilenet_0.25_128"


def tiny_images(n: int = 12, side: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % CLASSES).astype(np.int32)
    images = rng.uniform(0, 255, (n, side, side, 3)).astype(np.float32)
    images[..., 0] += labels[:, None, None] * 40  # a weak colour cue per class
    return np.clip(images, 0, 255), labels


def random_head(dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=0.1, size=(dim, CLASSES)).astype(np.float32), np.zeros(CLASSES, np.float32)


def ft_config(**overrides) -> TrainConfig:
    base = {
        "fine_tune_layers": 2,
        "fine_tune_steps": 3,
        "fine_tune_batch_size": 4,
        "eval_interval": 2,
        "flip_left_right": True,
        "random_crop": 10,
        "random_scale": 10,
        "random_brightness": 10,
    }
    return TrainConfig(**{**base, **overrides})


@pytest.fixture
def feature_model():
    from engine.models.backbones import build_feature_extractor

    return build_feature_extractor(BACKBONE, weights="random", seed=0)


def test_fine_tune_trains_top_layers_and_streams_rows(feature_model):
    images, labels = tiny_images()
    before = [w.numpy().copy() for w in feature_model.weights]
    events = []
    from engine.training.finetune import fine_tune

    result = fine_tune(
        {"train": (images, labels), "validation": (images[:5], labels[:5])},
        BACKBONE,
        "random",
        ft_config(),
        random_head(feature_model.output.shape[-1]),
        progress=events.append,
        feature_model=feature_model,
    )
    assert result.bypasses_cache and "bypasses the bottleneck cache" in result.note
    assert result.unfrozen_layers == ["conv_dw_13", "conv_pw_13"]
    assert result.trainable_params == 3 * 3 * 256 + 256 * 256 + 256 * CLASSES + CLASSES
    # a row after the first step (the curves start at once), then every eval_interval and at the end
    assert [row["step"] for row in result.history] == [1, 2, 3]
    assert all(tuple(row) == HISTORY_KEYS for row in result.history)
    assert all(row["validation_accuracy"] is not None for row in result.history)
    rows = [e for e in events if "row" in e]
    assert {e["phase"] for e in events} == {"fine_tune"} and len(rows) == 3
    assert "bottleneck cache" in events[0]["message"]
    # the seconds before the first step (pipeline, graph compilation) are said, not silent at 0 / N
    first_said = [e["message"] for e in events if e["done"] == 0]
    assert any("pipeline" in m for m in first_said) and any("Compiling" in m for m in first_said)
    assert [e["done"] for e in events if e["done"]] == [1, 2, 3]  # every step reports
    model, history = result
    assert history is result.history
    assert model(np.zeros((2, 128, 128, 3), np.float32)).shape == (2, CLASSES)
    # frozen layers, BatchNorm statistics included, are untouched
    trained = {id(v) for v in feature_model.trainable_weights}
    for weight, old in zip(feature_model.weights, before, strict=True):
        if id(weight) not in trained:
            np.testing.assert_array_equal(weight.numpy(), old, err_msg=weight.path)


def test_fine_tune_from_a_tf_data_pipeline_with_adam_and_cancel(feature_model):
    import tensorflow as tf

    from engine.training.finetune import fine_tune

    images, labels = tiny_images(side=128)
    pipeline = tf.data.Dataset.from_tensor_slices((images.astype(np.uint8), labels.astype(np.int64)))
    head = random_head(feature_model.output.shape[-1])
    config = ft_config(optimizer="adam", fine_tune_layers=1, fine_tune_steps=2, eval_interval=1)
    result = fine_tune({"train": pipeline}, BACKBONE, "random", config, head, feature_model=feature_model)
    assert [row["validation_accuracy"] for row in result.history] == [None, None]
    assert result.unfrozen_layers == ["conv_pw_13"]
    events = []
    with pytest.raises(Cancelled):
        fine_tune(
            {"train": pipeline},
            BACKBONE,
            "random",
            ft_config(fine_tune_steps=50),
            head,
            progress=events.append,
            cancel=lambda: len(events) >= 1,
            feature_model=feature_model,
        )


def test_fine_tune_reads_a_scanned_dataset(tmp_path, feature_model):
    from PIL import Image

    from engine.data.datasets import Dataset, ImageRecord
    from engine.training.finetune import fine_tune

    images, labels = tiny_images(n=9, side=48)
    records = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = tmp_path / f"{i}.png"
        Image.fromarray(image.astype(np.uint8)).save(path)
        split = "validation" if i < 3 else "train"
        records.append(ImageRecord(str(path), "abc"[label], split, needs_pil=False))
    data = Dataset("tiny", str(tmp_path), ["a", "b", "c"], records)
    head = random_head(feature_model.output.shape[-1])
    model, history = fine_tune(data, BACKBONE, "random", ft_config(), head, feature_model=feature_model)
    assert len(history) == 3 and history[-1]["validation_accuracy"] is not None


def test_fine_tune_refuses_bad_arguments(feature_model):
    from engine.training.finetune import fine_tune

    images, labels = tiny_images()
    head = random_head(feature_model.output.shape[-1])
    kwargs = {"feature_model": feature_model}
    with pytest.raises(InvalidArgument, match="fine_tune_layers=9999"):
        fine_tune(
            {"train": (images, labels)}, BACKBONE, "random", ft_config(fine_tune_layers=9999), head, **kwargs
        )
    with pytest.raises(InvalidArgument, match="kernel.shape"):
        fine_tune({"train": (images, labels)}, BACKBONE, "random", ft_config(), random_head(7), **kwargs)
    with pytest.raises(InvalidArgument, match="empty training set"):
        fine_tune({"train": (images[:0], labels[:0])}, BACKBONE, "random", ft_config(), head, **kwargs)
    with pytest.raises(InvalidArgument, match="Dataset or a dict"):
        fine_tune([images, labels], BACKBONE, "random", ft_config(), head, **kwargs)
    with pytest.raises(InvalidArgument, match="trained head"):
        fine_tune({"train": (images, labels)}, BACKBONE, "random", ft_config(), None, **kwargs)


def test_distortions_are_seeded_and_bounded():
    import tensorflow as tf

    from engine.training.finetune import distort_image, precrop_size

    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (50, 60, 3)), tf.float32)
    config = ft_config(random_crop=20, random_scale=30, random_brightness=50)
    assert precrop_size(100, config) == math.ceil(100 * 1.2 * 1.3)
    a = distort_image(image, 32, config, [1, 2])
    b = distort_image(image, 32, config, [1, 2])
    c = distort_image(image, 32, config, [1, 3])
    assert a.shape == (32, 32, 3)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())
    assert float(tf.reduce_min(a)) >= 0 and float(tf.reduce_max(a)) <= 255
    # with every distortion off the image is only resized
    plain = distort_image(image, 32, TrainConfig(), [1, 2])
    np.testing.assert_allclose(plain.numpy(), tf.image.resize(image, [32, 32]).numpy(), atol=1e-3)
    # brightness alone scales every pixel by one factor in [0.5, 1.5]
    dim = distort_image(image * 0 + 100, 32, TrainConfig(random_brightness=50), [4, 5]).numpy()
    assert np.allclose(dim, dim.flat[0]) and 50 <= dim.flat[0] <= 150


@pytest.mark.slow
def test_fine_tune_changes_only_unfrozen_layers_of_the_real_backbone(seeded_keras_home):
    """Random-weight MobileNets output near-zero features, so gradient flow needs real weights."""
    from engine.models.backbones import build_feature_extractor
    from engine.training.finetune import fine_tune

    model = build_feature_extractor("mobilenet_0.25_224", weights="imagenet")
    before = {w.path: w.numpy().copy() for w in model.weights}
    images, labels = tiny_images()
    config = ft_config(fine_tune_steps=2, fine_tune_learning_rate=0.1)
    head = random_head(model.output.shape[-1])
    result = fine_tune(
        {"train": (images, labels)}, "mobilenet_0.25_224", "imagenet", config, head, feature_model=model
    )
    changed = sorted(w.path for w in model.weights if not np.array_equal(w.numpy(), before[w.path]))
    assert changed == ["conv_dw_13/kernel", "conv_pw_13/kernel"]
    assert result.unfrozen_layers == ["conv_dw_13", "conv_pw_13"]


@pytest.mark.slow
def test_a_fine_tuned_run_stores_its_fine_tuning_curve():
    """retrain logs the fine-tuning rows (phase "fine_tune"), so the Train page draws them live."""
    from engine.data.sources import make_demo_dataset
    from engine.runs.retrain import RunConfig, retrain
    from engine.runs.store import RunStore

    source = make_demo_dataset(num_classes=2, per_class=8, size=32)
    train = TrainConfig(
        steps=4, eval_interval=2, fine_tune_layers=1, fine_tune_steps=3, fine_tune_batch_size=4
    )
    config = RunConfig(source=str(source), architecture=BACKBONE, weights="random", train=train)
    run_id = retrain(config).run_id
    store = RunStore()
    assert [row["step"] for row in store.get_history(run_id, phase="fine_tune")] == [1, 2, 3]
    assert [row["step"] for row in store.get_history(run_id, phase="train")] == [2, 4]

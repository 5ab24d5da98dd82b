"""The backbone registry: names, validation, preprocessing and the offline weights error."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine import machine
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
    machine.network_available(timeout=1.0)
    assert time.perf_counter() - start < 2.0


def test_network_probe_is_bounded_when_dns_never_answers(monkeypatch):
    """A black-hole DNS: getaddrinfo would wait ~10 s; the whole probe still answers within ~timeout."""
    monkeypatch.setattr(machine.socket, "getaddrinfo", lambda *a, **k: time.sleep(10) or [])
    start = time.perf_counter()
    assert machine.network_available(timeout=1.0) is False
    assert time.perf_counter() - start < 2.0


def test_network_probe_connects_to_what_resolves(monkeypatch):
    import socket

    real = socket.getaddrinfo
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        # the probe asks for port 443; answer with the local server's address instead
        local = lambda host, _port, **kwargs: real("127.0.0.1", port, **kwargs)  # noqa: E731
        monkeypatch.setattr(machine.socket, "getaddrinfo", local)
        assert machine.network_available("example.invalid", timeout=1.0) is True


WEIGHTS_FILE = "mobilenet_2_5_224_tf_no_top.h5"


def _damaged(kind: str, folder, seeded=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / WEIGHTS_FILE
    if kind == "empty":
        target.write_bytes(b"")
    elif kind == "not hdf5":
        target.write_bytes(b"<html>Service Unavailable</html>")
    else:  # the first half of the real file, as an interrupted copy leaves it
        target.write_bytes(seeded[: len(seeded) // 2])


@pytest.mark.parametrize("kind", ["empty", "not hdf5", "truncated"])
def test_damaged_weights_file_says_which_file_to_delete(kind, seeded_keras_home):
    models = seeded_keras_home / "models"
    real = (models / WEIGHTS_FILE).read_bytes()
    _damaged(kind, models, real)
    with pytest.raises(WeightsMissing) as info:
        backbones.build_backbone("mobilenet_0.25_224", weights="imagenet")
    message = str(info.value)
    assert f"delete {models / WEIGHTS_FILE}" in message and "\n" not in message
    assert {"empty": "0 bytes", "not hdf5": "not an HDF5", "truncated": "truncated"}[kind] in message


def test_weights_file_of_another_model_is_a_clear_error(seeded_keras_home):
    """A whole HDF5 file that is not this model's weights: Keras' ValueError becomes WeightsMissing."""
    h5py = pytest.importorskip("h5py")
    target = seeded_keras_home / "models" / WEIGHTS_FILE
    target.unlink()
    with h5py.File(target, "w") as f:
        f.create_dataset("nothing", data=np.zeros(3))
    with pytest.raises(WeightsMissing, match=f"{target} cannot be loaded into mobilenet_0.25_224"):
        backbones.build_backbone("mobilenet_0.25_224", weights="imagenet")


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

"""Classify photos with a run's classifier or an ImageNet-pretrained backbone (label_image's job)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import config
from engine.data import images
from engine.errors import InvalidArgument, NotFound, WeightsMissing
from engine.models import backbones

IMAGENET_INDEX_URL = "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json"


@dataclass
class Prediction:
    """Top-k result for one image."""

    source: str
    labels: list[str]
    scores: list[float]
    latency_ms: float  # decode + resize + forward for this image
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def top1(self) -> str | None:
        return self.labels[0] if self.labels else None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "source": self.source,
            "labels": self.labels,
            "scores": self.scores,
            "latency_ms": self.latency_ms,
        }
        if self.error:
            out["error"] = self.error
        return out


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given, folders expanded to the images they hold (sorted)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(
                sorted(
                    p for p in path.rglob("*") if p.suffix.lower() in images.IMAGE_EXTENSIONS and p.is_file()
                )
            )
        elif path.is_file():
            out.append(path)
        elif path.exists():  # a FIFO or device would block the decoder forever
            raise InvalidArgument(f"{path} is not a regular file or folder; refusing to read it")
        else:
            raise NotFound(f"No such file or folder: {path}")
    return out


class Classifier:
    """A Keras classifier taking 0..255 pixels, with its class names and input size."""

    def __init__(self, model, class_names: list[str], input_size: int, name: str, runtime=None) -> None:
        from engine.export.runtimes import KerasRuntime

        self.model, self.class_names, self.input_size, self.name = model, class_names, input_size, name
        # the backend that turns pixels into probabilities: Keras by default, or any exported format
        self.runtime = runtime if runtime is not None else KerasRuntime(model, input_size)
        self.fmt = self.runtime.fmt

    @classmethod
    def from_run(cls, run_id: str, store=None, fmt: str = "keras") -> Classifier:
        """Load a run's `model.keras` (safe mode: no arbitrary code) and its labels.

        With `fmt` other than "keras" (see engine.export.runtimes.FORMATS) the run's export in that
        format is used instead, converted first if it is missing or not the one the lab wrote.

        Raises:
            NotFound: no such run or no model. LabError: the model is damaged, changed since the lab
                saved it, or has another number of outputs than labels.txt has names.
        """
        from engine.runs.folder import RunFolder

        if fmt != "keras":  # LiteRT and ONNX Runtime formats load without importing TensorFlow
            from engine.export.convert import load_run_runtime

            runtime, info = load_run_runtime(run_id, fmt, store)
            probs = runtime.predict(np.zeros((1, info.input_size, info.input_size, 3), np.float32))
            info.files.check_outputs(int(np.shape(probs)[-1]))
            return cls(None, info.class_names, info.input_size, f"run {info.run_id} ({fmt})", runtime=runtime)
        folder = RunFolder.of(run_id, store)
        model = folder.load_model()
        return cls(model, folder.class_names(), folder.input_size(), f"run {folder.run_id}")

    def predict_arrays(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of (N, size, size, 3) 0..255 pixels."""
        return self.runtime.predict(np.asarray(pixels, dtype=np.float32))

    def classify(self, items: list[Any], top_k: int = 5) -> list[Prediction]:
        """Classify image files or raw bytes one by one (per-image latency is what users feel).

        Unreadable images produce a Prediction with `error` set instead of stopping the batch.
        """
        if not isinstance(top_k, int) or top_k < 1:
            raise InvalidArgument(f"top_k must be a positive integer, got top_k={top_k!r}")
        k = min(top_k, len(self.class_names))
        results = []
        for item in items:
            source = item if isinstance(item, (str, Path)) else getattr(item, "name", "upload")
            start = time.perf_counter()
            try:
                if isinstance(item, (str, Path)):
                    pixels = images.load_image(item, self.input_size)
                else:
                    data = item if isinstance(item, bytes) else item.getvalue()
                    pixels = images.decode_image_bytes(data, self.input_size, name=str(source))
            except Exception as exc:  # BadImage and friends: report per image, keep going
                results.append(Prediction(str(source), [], [], 0.0, error=str(exc)))
                continue
            probs = self.predict_arrays(pixels[None])[0]
            latency = (time.perf_counter() - start) * 1000
            order = np.argsort(-probs)[:k]
            results.append(
                Prediction(
                    str(source),
                    [self.class_names[i] for i in order],
                    [round(float(probs[i]), 6) for i in order],
                    round(latency, 2),
                )
            )
        return results


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet class names, from Keras' cached `imagenet_class_index.json`."""
    path = config.keras_models_dir() / "imagenet_class_index.json"
    if not path.is_file():
        if not backbones.network_available():
            raise WeightsMissing(
                f"ImageNet class names are not cached: expected imagenet_class_index.json in {path.parent} "
                f"(download it from {IMAGENET_INDEX_URL}); the network is unreachable."
            )
        import keras

        path = Path(
            keras.utils.get_file(
                path.name, IMAGENET_INDEX_URL, cache_dir=str(config.keras_home()), cache_subdir="models"
            )
        )
    index = json.loads(path.read_text())
    return [index[str(i)][1] for i in range(len(index))]


def pretrained_classifier(name: str) -> Classifier:
    """The ImageNet 1,000-class classifier of a backbone, with Keras' own weights."""
    import keras

    backbone = backbones.get_backbone(name)
    weights = backbones.ensure_weights(name, top=True)
    labels = imagenet_labels()
    cls = getattr(keras.applications, backbone.keras_class)
    base = cls(
        include_top=True, weights=str(weights), input_shape=backbone.input_shape, **backbone.builder_kwargs
    )
    inputs = keras.Input(shape=backbone.input_shape, name="image")
    model = keras.Model(inputs, base(backbones.preprocessing_layer(name)(inputs)))
    return Classifier(model, labels, backbone.input_size, f"{name} (ImageNet)")

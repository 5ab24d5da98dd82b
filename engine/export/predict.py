"""Classify photos with a run's classifier or an ImageNet-pretrained backbone (label_image's job)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import config
from engine.data import images
from engine.errors import InvalidArgument, NotFound, WeightsMissing
from engine.machine import usable_cores
from engine.models import backbones
from engine.progress import CancelFn, ProgressFn, check_cancel, emit

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


def expand_paths(paths: list[str | Path], skipped: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Files as given, folders expanded to the images they hold (sorted).

    Inside a folder, an image-named entry that is not a regular file (a FIFO, a device, a socket) is
    never opened: it is left out, and listed with its reason in `skipped` when a list is given.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            named = sorted(p for p in path.rglob("*") if p.suffix.lower() in images.IMAGE_EXTENSIONS)
            out.extend(p for p in named if p.is_file())
            if skipped is not None:
                skipped.extend((p, "not a regular file") for p in named if not p.is_file() and not p.is_dir())
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
        self.run_id: str | None = None  # the run it comes from (from_run), for the familiarity check

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
            made = cls(None, info.class_names, info.input_size, f"run {info.run_id} ({fmt})", runtime=runtime)
            made.run_id = info.run_id
            return made
        folder = RunFolder.of(run_id, store)
        model = folder.load_model()
        made = cls(model, folder.class_names(), folder.input_size(), f"run {folder.run_id}")
        made.run_id = folder.run_id
        return made

    def predict_arrays(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of (N, size, size, 3) 0..255 pixels."""
        return self.runtime.predict(np.asarray(pixels, dtype=np.float32))

    def _top(self, source: str, probs: np.ndarray, k: int, latency_ms: float) -> Prediction:
        order = np.argsort(-probs)[:k]
        return Prediction(
            source,
            [self.class_names[i] for i in order],
            [round(float(probs[i]), 6) for i in order],
            round(latency_ms, 2),
        )

    def _decode(self, item: Any) -> tuple[str, np.ndarray | None, str | None, float]:
        """(source, pixels or None, error, seconds): the one decode both paths share."""
        source = str(item) if isinstance(item, (str, Path)) else str(getattr(item, "name", "upload"))
        start = time.perf_counter()
        try:
            if isinstance(item, (str, Path)):
                pixels = images.load_image(item, self.input_size)
            else:
                data = item if isinstance(item, bytes) else item.getvalue()
                pixels = images.decode_image_bytes(data, self.input_size, name=source)
        except Exception as exc:  # BadImage and friends: report per image, keep going
            return source, None, str(exc), 0.0
        return source, pixels, None, time.perf_counter() - start

    def classify(self, items: list[Any], top_k: int = 5) -> list[Prediction]:
        """Classify image files or raw bytes one by one (per-image latency is what users feel).

        Unreadable images produce a Prediction with `error` set instead of stopping the batch.
        """
        k = _check_top_k(top_k, len(self.class_names))
        results = []
        for item in items:
            source, pixels, error, decode_seconds = self._decode(item)
            if error is not None:
                results.append(Prediction(source, [], [], 0.0, error=error))
                continue
            start = time.perf_counter()
            probs = self.predict_arrays(pixels[None])[0]
            latency = (decode_seconds + time.perf_counter() - start) * 1000
            results.append(self._top(source, probs, k, latency))
        return results

    def predict_batch(
        self,
        items: list[Any],
        top_k: int = 5,
        batch_size: int = 32,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
    ) -> list[Prediction]:
        """Classify many image files or raw bytes in batches: the same results as `classify`.

        Each photo is decoded exactly as `classify` decodes it (`images.load_image` or
        `decode_image_bytes`), on one thread per core while the model runs the previous batch;
        batches of `batch_size` go through the model at once. Per photo, the top-1 is the same as
        `classify`'s and the probabilities agree within 1e-5 (tests/test_predict_batch.py).
        `latency_ms` is the photo's decode time plus its share of its batch's forward pass.
        Unreadable images get a Prediction with `error` set, in their place.

        Raises:
            InvalidArgument: bad top_k or batch_size.  Cancelled: between batches.
        """
        k = _check_top_k(top_k, len(self.class_names))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgument(f"batch_size must be a positive integer, got batch_size={batch_size!r}")
        items = list(items)
        results: list[Prediction | None] = [None] * len(items)
        chunks = [range(i, min(i + batch_size, len(items))) for i in range(0, len(items), batch_size)]
        with ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="classify-decode") as pool:

            def decode(chunk: range):
                return [pool.submit(self._decode, items[i]) for i in chunk]

            pending = decode(chunks[0]) if chunks else []
            for n, chunk in enumerate(chunks):
                check_cancel(cancel)
                decoded = [f.result() for f in pending]
                pending = decode(chunks[n + 1]) if n + 1 < len(chunks) else []  # decodes during forward
                good = [(i, d) for i, d in zip(chunk, decoded, strict=True) if d[2] is None]
                for i, (source, _, error, _) in zip(chunk, decoded, strict=True):
                    if error is not None:
                        results[i] = Prediction(source, [], [], 0.0, error=error)
                if good:
                    start = time.perf_counter()
                    probs = self.predict_arrays(np.stack([d[1] for _, d in good]))
                    share = (time.perf_counter() - start) / len(good)
                    for (i, (source, _, _, seconds)), row in zip(good, probs, strict=True):
                        results[i] = self._top(source, row, k, (seconds + share) * 1000)
                done = chunk.stop
                emit(progress, "classify", done, len(items), f"Classified {done} of {len(items)} photos")
        return [r for r in results if r is not None]


def _check_top_k(top_k: Any, classes: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InvalidArgument(f"top_k must be a positive integer, got top_k={top_k!r}")
    return min(top_k, classes)


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

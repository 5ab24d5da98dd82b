"""Why a classifier decided: a heatmap over the photo (Grad-CAM, or occlusion where there are no gradients).

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017) weights the backbone's last convolutional feature maps by the gradient of the
class score and keeps the positive part. The feature map is found in the real model (the last layer with a
spatial output, inside the nested backbone if there is one), never by a layer name per backbone, and the
tapped model is checked against the real model's probabilities before it is trusted.

Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014) slides a grey
patch over the photo and records how much the class's probability drops; it needs only forward passes, so it
works for TFLite and ONNX exports too (batched through `Classifier.predict_arrays`, cancellable).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.data import images
from engine.errors import InvalidArgument, LabError
from engine.progress import CancelFn, check_cancel

log = logging.getLogger(__name__)

METHODS = ("auto", "grad-cam", "occlusion")
OCCLUSION_STEPS = 8  # cells per side of the photo: patches move one cell (1/8 of the side) at a time
# patch sides in cells: a quarter and a half of the photo's side, 49 + 25 = 74 forward passes (~0.1 s for a
# 224 px int8 MobileNet 0.25 here). A confident int8 model is not moved by a quarter-side patch of a daisy.
OCCLUSION_PATCHES = (2, 4)
OCCLUSION_GREY = 128.0  # the patch's pixel value: mid-grey, what an "absent" region looks like on average
OCCLUSION_BATCH = 32
EAGER_MAX_LAYERS = 120  # Grad-CAM runs eagerly up to this many layers, traced above (see _traced)
TAP_TOLERANCE = 1e-3  # the tapped model must reproduce the real model's probabilities this closely


@dataclass
class Heatmap:
    """Where the evidence for one class lies, at the model's input size."""

    heat: np.ndarray  # (H, W) float32 in [0, 1]
    class_name: str
    class_index: int
    method: str  # "grad-cam" | "occlusion"
    sentence: str  # what it shows and what it does not
    probability: float = 0.0  # the model's probability of `class_name` for this photo
    grid: int = 0  # cells per side of the underlying map (7 for a 224 px MobileNet's last block)

    def as_dict(self) -> dict[str, Any]:
        return {
            "class_name": self.class_name,
            "class_index": self.class_index,
            "method": self.method,
            "sentence": self.sentence,
            "probability": self.probability,
            "grid": self.grid,
            "shape": list(self.heat.shape),
        }


def explain(
    classifier, item: Any, class_name: str | None = None, method: str = "auto", cancel: CancelFn | None = None
) -> Heatmap:
    """A heatmap of where the evidence for `class_name` (default: the top class) lies in `item`.

    Args:
        classifier: an `engine.export.predict.Classifier` (Keras model or any exported runtime).
        item: a path, bytes, or an uploaded file (anything with `getvalue()` and `name`).
        class_name: one of `classifier.class_names`; None for the model's top class.
        method: "auto" (Grad-CAM when the classifier has a Keras model, occlusion otherwise),
            "grad-cam" or "occlusion".
        cancel: checked between occlusion batches.

    Raises:
        InvalidArgument: an unknown method or class name, or Grad-CAM asked of a model without gradients.
        BadImage: the photo cannot be read.  Cancelled: between batches.
    """
    if method not in METHODS:
        raise InvalidArgument(f"Unknown heatmap method {method!r}; valid methods: {', '.join(METHODS)}")
    pixels = _pixels(item, classifier.input_size).astype(np.float32)
    probs = np.asarray(classifier.predict_arrays(pixels[None])[0], np.float64)
    index = _class_index(classifier, class_name, probs)
    keras_model = getattr(classifier, "model", None)
    if method == "grad-cam" and keras_model is None:
        raise InvalidArgument(
            f"Grad-CAM needs a Keras model with gradients; {classifier.name} runs as {classifier.fmt}: "
            "use method='occlusion'"
        )
    if method in ("auto", "grad-cam") and keras_model is not None:
        try:
            heat, grid = grad_cam(keras_model, pixels, index)
            return _heatmap(classifier, heat, index, probs, "grad-cam", grid)
        except _NoFeatureMap as exc:
            if method == "grad-cam":
                raise InvalidArgument(f"Grad-CAM is not possible for {classifier.name}: {exc}") from None
            log.info("Grad-CAM unavailable for %s (%s); using occlusion", classifier.name, exc)
    heat = occlusion(classifier, pixels, index, cancel=cancel)
    return _heatmap(classifier, heat, index, probs, "occlusion", OCCLUSION_STEPS)


def _pixels(item: Any, size: int) -> np.ndarray:
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3:
            raise InvalidArgument(f"pixels must have shape (H, W, 3), got {item.shape}")
        return _resize(np.clip(item, 0, 255).astype(np.uint8), size)
    if isinstance(item, str | Path):
        return images.load_image(item, size)
    data = item if isinstance(item, bytes) else item.getvalue()
    return images.decode_image_bytes(data, size, name=str(getattr(item, "name", "upload")))


def _class_index(classifier, class_name: str | None, probs: np.ndarray) -> int:
    if class_name is None:
        return int(np.argmax(probs))
    if class_name not in classifier.class_names:
        shown = ", ".join(classifier.class_names[:10]) + (", ..." if len(classifier.class_names) > 10 else "")
        raise InvalidArgument(f"Unknown class {class_name!r} for {classifier.name}; its classes: {shown}")
    return classifier.class_names.index(class_name)


def _heatmap(classifier, heat: np.ndarray, index: int, probs: np.ndarray, method: str, grid: int) -> Heatmap:
    name = classifier.class_names[index]
    if method == "grad-cam":
        how = f"Grad-CAM on the backbone's last convolutional block, a coarse {grid}x{grid} grid"
    else:
        how = f"occlusion: how much hiding each patch of a {grid}x{grid} grid lowers {name!r}"
    heat = _normalise(heat)
    if heat.max() <= 0:  # nothing to show: say so rather than draw an empty map as if it meant something
        why = "no hidden patch lowered it" if method == "occlusion" else "no part of the photo raised it"
        sentence = f"No region stands out as evidence for {name!r} ({how}): {why}."
    else:
        sentence = (
            f"Warm areas show where the evidence for {name!r} lies ({how}); "
            "it shows where the model looked, not why, and not whether it was right."
        )
    return Heatmap(heat, name, index, method, sentence, round(float(probs[index]), 6), grid)


def _normalise(heat: np.ndarray) -> np.ndarray:
    heat = np.nan_to_num(np.asarray(heat, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    heat = np.maximum(heat, 0.0)
    top = float(heat.max()) if heat.size else 0.0
    return (heat / top).astype(np.float32) if top > 0 else np.zeros_like(heat, np.float32)


# -- Grad-CAM ---------------------------------------------------------------------------------------------
class _NoFeatureMap(LabError):
    """The model has no convolutional feature map Grad-CAM could use, or it cannot be tapped reliably."""


def _is_feature_map(tensor) -> bool:
    """A spatial map of features: (batch, H > 1, W > 1, C > 3); an image (C = 3) or a pooled 1x1 is not."""
    shape = getattr(tensor, "shape", None)
    if shape is None or len(shape) != 4:
        return False
    _, h, w, c = shape
    return bool(h and w and c and h > 1 and w > 1 and c > 3)


def _outputs(layer) -> list:
    try:
        out = layer.output
    except (AttributeError, ValueError):  # a layer called more than once, or never
        return []
    return list(out) if isinstance(out, list | tuple) else [out]


def _find_tap(model) -> tuple[list, Any, Any]:
    """(layers before, tap, layers after): tap(x) -> [feature map, tap's own output].

    The last layer with a spatial feature map is looked for in `model`; when a nested model (the
    backbone) holds it, the tap is that nested model with a second output, and the layers around it
    are run one after the other (the lab's classifiers are a chain: preprocess -> backbone -> head).
    """
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    for position in range(len(layers) - 1, -1, -1):
        layer = layers[position]
        if isinstance(layer, keras.Model) and any(
            _is_feature_map(t) for inner in layer.layers for t in _outputs(inner)
        ):
            _, inner_tap, _ = _find_tap(layer)
            return layers[:position], inner_tap, layers[position + 1 :]
        if any(_is_feature_map(t) for t in _outputs(layer)):
            feature = _outputs(layer)[0]
            return [], keras.Model(model.inputs, [feature, model.outputs[0]]), []
    raise _NoFeatureMap(f"no layer of {model.name} outputs a spatial feature map")


_TAPS: dict[int, tuple[Any, Any]] = {}  # id(model) -> (model, forward): built once per model (~0.1 s)


def _softmax_dense(layer) -> bool:
    import keras

    activation = getattr(layer, "activation", None)
    return isinstance(layer, keras.layers.Dense) and getattr(activation, "__name__", "") == "softmax"


def _tapped_forward(model):
    """A function pixels -> (feature map, class scores, probabilities) that runs the real model's layers.

    The class scores are the head's logits when the model ends in a softmax Dense layer (the lab's runs), so
    a class the model finds unlikely still gets a map; otherwise the log-probabilities.
    """
    import keras

    cached = _TAPS.get(id(model))
    if cached is not None and cached[0] is model:
        return cached[1]
    before, tap, after = _find_tap(model)
    head = None
    if after and _softmax_dense(after[-1]):
        head, after = after[-1], after[:-1]
    elif not after and not before and _softmax_dense(model.layers[-1]):
        head = model.layers[-1]
        tap = keras.Model(tap.inputs, [tap.outputs[0], head.input])

    def forward(x):
        for layer in before:
            x = layer(x, training=False)
        feature, x = tap(x, training=False)
        for layer in after:
            x = layer(x, training=False)
        if head is None:
            return feature, keras.ops.log(x + 1e-12), x
        logits = keras.ops.matmul(x, head.kernel) + (head.bias if head.use_bias else 0.0)
        return feature, logits, keras.ops.softmax(logits, axis=-1)

    if len(_TAPS) >= 4:  # a few models at most: each entry keeps its model alive
        _TAPS.pop(next(iter(_TAPS)))
    _TAPS[id(model)] = (model, forward)
    return forward


_CHECKED: dict[int, Any] = {}  # id(model) -> (model, traced function), once the tap reproduced the model


def _leaf_layers(model) -> int:
    return sum(_leaf_layers(layer) if hasattr(layer, "layers") else 1 for layer in model.layers)


def _traced(model):
    """(function x, class index -> (feature map, probabilities, gradient), whether already checked).

    A small backbone (MobileNet v1: ~90 layers) runs eagerly: 0.2-0.5 s a photo here, no wait. A deeper one
    is traced once (eager Grad-CAM of EfficientNet-B0 or InceptionV3 took 3-5 s a photo on this CPU; traced,
    0.2-0.4 s after a one-off trace of several seconds). The first call is checked against the real model,
    so a tap that misreads the graph is never used.
    """
    import tensorflow as tf

    cached = _CHECKED.get(id(model))
    if cached is not None and cached[0] is model:
        return cached[1], True
    forward = _tapped_forward(model)

    def run(x, index):
        with tf.GradientTape() as tape:
            tape.watch(x)  # a frozen backbone has no trainable variables: watch the input so ops are recorded
            feature, scores, probs = forward(x)
            score = tf.gather(scores, index, axis=1)
        return feature, probs, tape.gradient(score, feature)

    if _leaf_layers(model) > EAGER_MAX_LAYERS:
        run = tf.function(run, reduce_retracing=True)
    return run, False


def grad_cam(model, pixels: np.ndarray, class_index: int) -> tuple[np.ndarray, int]:
    """Grad-CAM of one photo: ((H, W) heat at the photo's size, unnormalised; the feature map's grid).

    Raises:
        _NoFeatureMap: no spatial feature map, or the tapped model does not reproduce the real one.
    """
    import tensorflow as tf

    run, checked = _traced(model)
    x = tf.convert_to_tensor(np.asarray(pixels, np.float32)[None])
    feature, probs, grads = run(x, tf.constant(class_index, tf.int32))
    if not checked:
        expected = np.asarray(model(x, training=False))
        got = np.asarray(probs)
        if got.shape != expected.shape or np.max(np.abs(got - expected)) > TAP_TOLERANCE:
            raise _NoFeatureMap(f"the layers of {model.name} do not form a chain the heatmap can follow")
        if grads is None:
            raise _NoFeatureMap(f"no gradient flows from the output of {model.name} to its feature map")
        if len(_CHECKED) >= 4:
            _CHECKED.pop(next(iter(_CHECKED)))
        _CHECKED[id(model)] = (model, run)
    weights = tf.reduce_mean(grads, axis=(1, 2))  # (1, C): how much each channel raises the class score
    cam = tf.nn.relu(tf.reduce_sum(feature * weights[:, None, None, :], axis=-1))[0]  # (h, w)
    grid = int(cam.shape[0])
    heat = tf.image.resize(cam[..., None], pixels.shape[:2], method="bilinear")[..., 0]
    return np.asarray(heat, np.float32), grid


# -- occlusion --------------------------------------------------------------------------------------------
def _log_odds(p: np.ndarray) -> np.ndarray:
    # clipped at 1/512 from 0 and 1: an int8 model's outputs come in steps of 1/256, and a confident float
    # model's 0.9994 vs 0.9990 is a real change that a difference of probabilities would hide
    p = np.clip(np.asarray(p, np.float64), 1 / 512, 1 - 1 / 512)
    return np.log(p / (1 - p))


def _boxes(height: int, width: int, steps: int, patch: int) -> list[tuple[int, int, int, int]]:
    ys = np.linspace(0, height, steps + 1).round().astype(int)
    xs = np.linspace(0, width, steps + 1).round().astype(int)
    return [
        (ys[i], ys[i + patch], xs[j], xs[j + patch])
        for i in range(steps - patch + 1)
        for j in range(steps - patch + 1)
    ]


def occlusion(
    classifier,
    pixels: np.ndarray,
    class_index: int,
    steps: int = OCCLUSION_STEPS,
    patches: tuple[int, ...] = OCCLUSION_PATCHES,
    cancel: CancelFn | None = None,
) -> np.ndarray:
    """How much hiding each region lowers the class's log-odds: (H, W), unnormalised.

    The photo is cut into `steps` x `steps` cells; grey patches of each size in `patches` (in cells) slide
    over it one cell at a time. Per size, a pixel's heat is the mean drop of the patches that covered it;
    the sizes add up (a small patch finds a detail, a large one an object the model still recognises
    from half of it).
    """
    pixels = np.asarray(pixels, np.float32)
    height, width = pixels.shape[:2]
    if not 1 <= min(patches) <= max(patches) <= steps:
        raise InvalidArgument(f"patches must be between 1 and steps={steps} cells, got patches={patches!r}")
    boxes = [box for patch in patches for box in _boxes(height, width, steps, patch)]
    base = _log_odds(classifier.predict_arrays(pixels[None])[0][class_index])
    drops = np.zeros(len(boxes), np.float32)
    for start in range(0, len(boxes), OCCLUSION_BATCH):
        check_cancel(cancel)
        chunk = boxes[start : start + OCCLUSION_BATCH]
        batch = np.repeat(pixels[None], len(chunk), axis=0)
        for n, (y0, y1, x0, x1) in enumerate(chunk):
            batch[n, y0:y1, x0:x1] = OCCLUSION_GREY
        probs = np.asarray(classifier.predict_arrays(batch))[:, class_index]
        drops[start : start + len(chunk)] = base - _log_odds(probs)
    cells = np.zeros((steps, steps), np.float32)
    start = 0
    for patch in patches:
        total = np.zeros((steps, steps), np.float32)
        cover = np.zeros((steps, steps), np.float32)
        positions = steps - patch + 1
        for n, drop in enumerate(drops[start : start + positions**2]):
            i, j = divmod(n, positions)
            total[i : i + patch, j : j + patch] += drop
            cover[i : i + patch, j : j + patch] += 1
        cells += total / np.maximum(cover, 1)
        start += positions**2
    return _resize(cells, (height, width))  # bilinear between cell centres, like Grad-CAM's grid


# -- drawing ----------------------------------------------------------------------------------------------
# A perceptually ordered ramp (dark blue -> teal -> yellow -> red), like matplotlib's "turbo" in spirit,
# written out so the engine needs no plotting library.
_RAMP = np.array(
    [
        [48, 18, 59],
        [50, 101, 220],
        [27, 207, 212],
        [97, 252, 108],
        [210, 233, 53],
        [254, 155, 45],
        [180, 4, 38],
    ],
    np.float32,
)


def colorize(heat: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours of the ramp."""
    t = np.clip(np.asarray(heat, np.float32), 0, 1) * (len(_RAMP) - 1)
    low = np.floor(t).astype(int)
    high = np.minimum(low + 1, len(_RAMP) - 1)
    frac = (t - low)[..., None]
    return (_RAMP[low] * (1 - frac) + _RAMP[high] * frac).round().astype(np.uint8)


def _resize(arr: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else size
    if arr.shape[:2] == (h, w):
        return arr
    if arr.dtype == np.uint8:
        return np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR))
    img = Image.fromarray(np.asarray(arr, np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(img, np.float32)


def overlay(
    item_or_pixels: Any, heat: np.ndarray, size: int | None = None, alpha: float = 0.45
) -> np.ndarray:
    """The photo with the heatmap laid over it: (S, S, 3) uint8 RGB.

    Args:
        item_or_pixels: (H, W, 3) pixels, or a path, bytes or uploaded file (decoded at `size`).
        heat: (h, w) values in [0, 1], resized to the photo.
        size: the side of the result; default: the pixels' own size, or the heatmap's for a file.
        alpha: how much of the colour shows (0 = the photo only, 1 = the heatmap only).

    Hot areas take more of the colour than cold ones, so the photo stays readable where there is no evidence.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise InvalidArgument(f"alpha must be between 0 and 1, got alpha={alpha!r}")
    heat = np.asarray(heat, np.float32)
    if heat.ndim != 2:
        raise InvalidArgument(f"heat must be a 2-D map, got shape {heat.shape}")
    if isinstance(item_or_pixels, np.ndarray):
        photo = _pixels(item_or_pixels, size) if size else np.clip(item_or_pixels, 0, 255).astype(np.uint8)
        if photo.ndim != 3 or photo.shape[2] != 3:
            raise InvalidArgument(f"pixels must have shape (H, W, 3), got {photo.shape}")
    else:
        photo = _pixels(item_or_pixels, size or heat.shape[0])
    heat = np.clip(_resize(heat, photo.shape[:2]), 0, 1)
    weight = (alpha * (0.35 + 0.65 * heat))[..., None]  # cold areas keep most of the photo
    mixed = photo.astype(np.float32) * (1 - weight) + colorize(heat).astype(np.float32) * weight
    return mixed.round().clip(0, 255).astype(np.uint8)

"""Registry of backbone architectures: data first, thin Keras builders second.

Each entry is a frozen `Backbone`; builders import Keras lazily so that reading the registry is
instant. Papers: MobileNets (Howard et al. 2017), MobileNetV2 (Sandler et al. 2018), Searching for
MobileNetV3 (Howard et al. 2019), Rethinking the Inception Architecture (Szegedy et al. 2016),
EfficientNet (Tan & Le 2019).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine import config
from engine.errors import InvalidArgument, NotFound, WeightsMissing
from engine.machine import network_available

Preprocessing = Literal["tf", "raw"]
WeightsKind = Literal["imagenet", "random"]
WEIGHTS_CHOICES: tuple[str, ...] = ("imagenet", "random")

_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Backbone:
    """One architecture the lab can build. Fields are grouped by concern."""

    # identity
    name: str  # retrain.py / Keras style name, the key of the registry
    family: str  # "mobilenet_v1", "mobilenet_v2", "mobilenet_v3", "inception_v3", "efficientnet"
    keras_class: str  # attribute of keras.applications that builds it
    builder_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    # input size and preprocessing
    input_size: int = 224  # square input side in pixels
    # "tf": the model expects [-1, 1] (x / 127.5 - 1); "raw": [0, 255], rescaled inside the model
    preprocessing: Preprocessing = "tf"
    tf1_input_name: str = "input"  # input tensor name of the classic TF1 frozen graph (label_image)
    # feature (bottleneck) layer and dimension: the layer whose output is global-average-pooled
    feature_layer: str = ""
    feature_dim: int = 0
    # weights source (Keras application weights without top, cached in $KERAS_HOME/models)
    weights_file: str = ""
    weights_url: str = ""
    # the same with the 1,000-class ImageNet classifier on top (Classify page's pretrained mode)
    top_weights_file: str = ""
    # paper
    paper: str = ""
    paper_url: str = ""
    year: int = 0

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.input_size, self.input_size, 3)


def _mobilenet_v1(alpha: float, size: int) -> Backbone:
    # Keras' weight files and retrain.py's names spell the width multiplier differently
    keras_alpha = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
    retrain_alpha = {1.0: "1.0", 0.75: "0.75", 0.5: "0.50", 0.25: "0.25"}[alpha]
    file = f"mobilenet_{keras_alpha}_{size}_tf_no_top.h5"
    return Backbone(
        name=f"mobilenet_{retrain_alpha}_{size}",
        family="mobilenet_v1",
        keras_class="MobileNet",
        builder_kwargs={"alpha": alpha},
        input_size=size,
        preprocessing="tf",
        tf1_input_name="input",
        feature_layer="conv_pw_13_relu",
        feature_dim=int(1024 * alpha),
        weights_file=file,
        weights_url=_KERAS_APPS + "mobilenet/" + file,
        top_weights_file=f"mobilenet_{keras_alpha}_{size}_tf.h5",
        paper="MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
        paper_url="https://arxiv.org/abs/1704.04861",
        year=2017,
    )


def _registry() -> dict[str, Backbone]:
    entries = [
        _mobilenet_v1(alpha, size) for alpha in (1.0, 0.75, 0.5, 0.25) for size in (224, 192, 160, 128)
    ]
    v2_file = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    entries.append(
        Backbone(
            name="mobilenet_v2_1.0_224",
            family="mobilenet_v2",
            keras_class="MobileNetV2",
            builder_kwargs={"alpha": 1.0},
            input_size=224,
            preprocessing="tf",
            tf1_input_name="input",
            feature_layer="out_relu",
            feature_dim=1280,
            weights_file=v2_file,
            weights_url=_KERAS_APPS + "mobilenet_v2/" + v2_file,
            top_weights_file=v2_file.replace("_no_top", ""),
            paper="MobileNetV2: Inverted Residuals and Linear Bottlenecks",
            paper_url="https://arxiv.org/abs/1801.04381",
            year=2018,
        )
    )
    for size_name, cls, dim in (
        ("small", "MobileNetV3Small", 576),
        ("large", "MobileNetV3Large", 960),
    ):
        file = f"weights_mobilenet_v3_{size_name}_224_1.0_float_no_top_v2.h5"
        entries.append(
            Backbone(
                name=f"mobilenet_v3_{size_name}",
                family="mobilenet_v3",
                keras_class=cls,
                # Keras rescales inside the model (include_preprocessing=True), so inputs stay 0..255
                builder_kwargs={"include_preprocessing": True},
                input_size=224,
                preprocessing="raw",
                tf1_input_name="input",
                # the last 1x1 conv's batch norm; the hard-swish after it has an auto-numbered name
                feature_layer="conv_1_bn",
                feature_dim=dim,
                weights_file=file,
                weights_url=_KERAS_APPS + "mobilenet_v3/" + file,
                top_weights_file=file.replace("_no_top_v2", ""),
                paper="Searching for MobileNetV3",
                paper_url="https://arxiv.org/abs/1905.02244",
                year=2019,
            )
        )
    inc_file = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
    entries.append(
        Backbone(
            name="inception_v3",
            family="inception_v3",
            keras_class="InceptionV3",
            input_size=299,
            preprocessing="tf",
            tf1_input_name="Mul",
            feature_layer="mixed10",
            feature_dim=2048,
            weights_file=inc_file,
            weights_url=_KERAS_APPS + "inception_v3/" + inc_file,
            top_weights_file=inc_file.replace("_notop", ""),
            paper="Rethinking the Inception Architecture for Computer Vision",
            paper_url="https://arxiv.org/abs/1512.00567",
            year=2016,
        )
    )
    entries.append(
        Backbone(
            name="efficientnet_b0",
            family="efficientnet",
            keras_class="EfficientNetB0",
            input_size=224,
            preprocessing="raw",  # Rescaling + Normalization layers inside the Keras model
            tf1_input_name="input",
            feature_layer="top_activation",
            feature_dim=1280,
            weights_file="efficientnetb0_notop.h5",
            weights_url="https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
            top_weights_file="efficientnetb0.h5",
            paper="EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
            paper_url="https://arxiv.org/abs/1905.11946",
            year=2019,
        )
    )
    return {b.name: b for b in entries}


_REGISTRY: dict[str, Backbone] = _registry()
DEFAULT_BACKBONE = "mobilenet_0.25_224"


def list_backbones() -> list[str]:
    """Names of all registered backbones, in registry order."""
    return list(_REGISTRY)


def get_backbone(name: str) -> Backbone:
    """The registry entry for `name`.

    Raises:
        NotFound: unknown name; the message lists the valid names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise NotFound(f"Unknown backbone {name!r}; choose one of: {', '.join(_REGISTRY)}") from None


def check_weights(weights: str) -> str:
    """Validate a weights choice ("imagenet" or "random")."""
    if weights not in WEIGHTS_CHOICES:
        raise InvalidArgument(f"weights must be one of {WEIGHTS_CHOICES}, got weights={weights!r}")
    return weights


def weights_path(name: str, top: bool = False) -> Path:
    """Where Keras keeps (or would download) the ImageNet weights of `name` (with top: classifier)."""
    backbone = get_backbone(name)
    return config.keras_models_dir() / (backbone.top_weights_file if top else backbone.weights_file)


def weights_cached(name: str) -> bool:
    """Whether the ImageNet weights of `name` are already on disk."""
    return weights_path(name).is_file()


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_weights_file(path: Path) -> Path:
    """Check that a cached weights file is a whole HDF5 file before Keras reads it.

    Raises:
        WeightsMissing: the file is not a regular file, empty, not HDF5 or truncated; the message
            says which file to delete.
    """
    fix = f"delete {path} and try again to download it anew, or use weights='random'"
    if not path.is_file():
        raise WeightsMissing(f"Weights file {path} is not a regular file: {fix}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(len(_HDF5_SIGNATURE))
    except OSError as exc:
        raise WeightsMissing(f"Weights file {path} cannot be read ({exc.strerror or exc}): {fix}") from None
    if size == 0:
        raise WeightsMissing(f"Weights file {path} is empty (0 bytes, an interrupted download?): {fix}")
    if head != _HDF5_SIGNATURE:
        raise WeightsMissing(f"Weights file {path} is not an HDF5 weights file ({size:,} bytes): {fix}")
    try:
        import h5py
    except ImportError:  # Keras reads .h5 weights through h5py; without it Keras says so itself
        return path
    try:
        with h5py.File(path, "r"):  # HDF5 compares the recorded end of file with the real size
            pass
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsMissing(f"Weights file {path} is damaged or truncated ({reason}): {fix}") from None
    return path


def ensure_weights(name: str, top: bool = False) -> Path:
    """Return the local path of `name`'s ImageNet weights, downloading them with Keras if needed.

    Args:
        name: a registry name.
        top: the weights of the full 1,000-class classifier instead of the headless backbone.

    Raises:
        WeightsMissing: not cached and not downloadable; says which file and where it goes.
    """
    backbone = get_backbone(name)
    path = weights_path(name, top=top)
    if path.exists() or path.is_symlink():
        return check_weights_file(path)
    url = backbone.weights_url.rsplit("/", 1)[0] + "/" + path.name
    hint = (
        f"ImageNet weights for {name} are not cached: expected {path.name} in "
        f"{path.parent} (download it from {url}" + (")" if top else ", or use weights='random')")
    )
    if not network_available():
        raise WeightsMissing(hint + ". The network is unreachable, so it cannot be downloaded now.")
    import keras

    try:
        local = keras.utils.get_file(
            path.name,
            url,
            cache_dir=str(config.keras_home()),
            cache_subdir="models",
        )
    except Exception as exc:  # urllib raises many kinds; the user needs one message
        raise WeightsMissing(f"{hint}. Download failed: {exc}") from exc
    return check_weights_file(Path(local))


def build_backbone(name: str, weights: str = "imagenet", seed: int | None = 0):
    """Build `name` without its classifier top, global-average-pooled to `feature_dim`.

    Args:
        name: a registry name.
        weights: "imagenet" (Keras' weights, cached in $KERAS_HOME/models) or "random".
        seed: seed for random initialisation (ignored for ImageNet weights).

    Returns:
        A `keras.Model` mapping preprocessed images (see `preprocess`) to (batch, feature_dim).
    """
    backbone = get_backbone(name)
    check_weights(weights)
    path = ensure_weights(name) if weights == "imagenet" else None
    import keras

    if weights == "random" and seed is not None:
        keras.utils.set_random_seed(seed)
    cls = getattr(keras.applications, backbone.keras_class)
    try:
        return cls(
            include_top=False,
            weights=str(path) if path else None,
            input_shape=backbone.input_shape,
            pooling="avg",
            **backbone.builder_kwargs,
        )
    except (OSError, ValueError) as exc:
        if path is None:
            raise
        # h5py reports damage as OSError, a file of another model as ValueError (layer mismatch)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsMissing(
            f"Weights file {path} cannot be loaded into {name} ({reason}): delete it and try again "
            "to download it anew, or use weights='random'"
        ) from None


def preprocessing_layer(name: str):
    """The one place preprocessing is applied: a Keras layer mapping 0..255 pixels to model input."""
    import keras

    backbone = get_backbone(name)
    if backbone.preprocessing == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess_tf")
    return keras.layers.Identity(name="preprocess_raw")


def build_feature_extractor(name: str, weights: str = "imagenet", seed: int | None = 0):
    """A model from 0..255 float pixels (batch, size, size, 3) to bottleneck features."""
    import keras

    backbone = get_backbone(name)
    base = build_backbone(name, weights=weights, seed=seed)
    inputs = keras.Input(shape=backbone.input_shape, name="image")
    features = base(preprocessing_layer(name)(inputs))
    return keras.Model(inputs, features, name=f"{name}_features")

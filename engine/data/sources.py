"""Where images come from besides the user's own folders: flower_photos, beans, a generated demo set.

Every source converges to a folder of class subfolders under config.datasets_dir(), written to a
hidden temporary folder first and renamed into place, so a half-finished download never looks
like a dataset. Offline, downloads fail in about two seconds with NetworkUnavailable.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine import config
from engine.data.archives import extract_tar, find_class_root, install_dir
from engine.errors import DatasetError, InvalidArgument, NetworkUnavailable
from engine.machine import network_available
from engine.progress import CancelFn, ProgressFn, check_cancel, emit

# The TensorFlow for Poets download: 3,670 photos in 5 classes, 218 MB.
FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWERS_DIR = "flower_photos"
FLOWERS_HOST = "storage.googleapis.com"
# tensorflow-datasets' beans: 1,295 leaf photos in 3 classes, served from storage.googleapis.com.
BEANS_DIR = "beans"
BEANS_HOST = "storage.googleapis.com"
_BEANS_SPLITS = {"train": 1034, "validation": 133, "test": 128}
_TFDS_RETRIES = 2  # tfds retries each URL 10 times with backoff; online, 2 is plenty


@contextmanager
def _staging(parent: Path, label: str) -> Iterator[Path]:
    """A hidden temporary folder beside the final one (same file system, so renames are atomic)."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{label}-", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _require_network(what: str, host: str, hint: str) -> None:
    if not network_available(host):
        raise NetworkUnavailable(f"Cannot download {what}: {host} is unreachable (offline?). {hint}")


def download_flowers(progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> Path:
    """flower_photos (daisy, dandelion, roses, sunflowers, tulips), downloaded once and extracted.

    The archive is fetched with `keras.utils.get_file` into datasets_dir()/downloads and
    extracted to datasets_dir()/flower_photos; both are reused afterwards without the network.

    Raises:
        NetworkUnavailable: neither extracted nor cached, and the download host is unreachable.
        DatasetError: the archive is corrupt.
    """
    root = config.datasets_dir()
    final = root / FLOWERS_DIR
    if final.is_dir():
        return final
    archive = config.downloads_dir() / "flower_photos.tgz"
    check_cancel(cancel)
    if not archive.is_file():
        _require_network(
            "flower_photos",
            FLOWERS_HOST,
            f"Download {FLOWERS_URL} and put it at {archive}, or use a folder of your own images.",
        )
        emit(progress, "download", 0, 1, "Downloading flower_photos.tgz (218 MB)")
        import keras

        try:
            keras.utils.get_file(
                "flower_photos.tgz", FLOWERS_URL, cache_dir=str(archive.parent), cache_subdir="."
            )
        except Exception as exc:  # urllib raises many kinds; the user needs one message
            raise NetworkUnavailable(f"Downloading {FLOWERS_URL} failed: {exc}") from exc
    check_cancel(cancel)
    emit(progress, "download", 1, 1, "Extracting flower_photos.tgz")
    try:
        tmp = extract_tar(archive, root, cancel=cancel)
    except DatasetError as exc:
        archive.unlink(missing_ok=True)  # a partial download: fetch it afresh next time
        raise DatasetError(f"{exc}. The archive was removed; try again to download it anew.") from None
    try:
        return install_dir(find_class_root(tmp, archive.name), final, replace=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _image_suffix(data: bytes) -> str:
    return ".png" if data[:8] == b"\x89PNG\r\n\x1a\n" else ".jpg"


def download_beans(progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> Path:
    """The beans leaf-disease set through tensorflow-datasets, exported as class folders.

    All tfds splits are exported (file names keep the tfds split as a prefix); the lab makes its
    own stable split from the file names like for every other source.

    Raises:
        NetworkUnavailable: not exported yet and storage.googleapis.com is unreachable.
    """
    root = config.datasets_dir()
    final = root / BEANS_DIR
    if final.is_dir():
        return final
    tfds_dir = root / "tfds"
    check_cancel(cancel)
    # tfds renames a version folder into place only once it is complete: a half-done earlier try
    # (a folder with no dataset_info.json) still needs the network, so probe for it too
    if not any((tfds_dir / "beans").glob("*/dataset_info.json")):
        _require_network(
            "beans",
            BEANS_HOST,
            "Connect to the internet once (tensorflow-datasets caches it), or use another source.",
        )
    emit(progress, "download", 0, 0, "Preparing beans with tensorflow-datasets")
    try:
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core.download import downloader
    except ImportError as exc:
        raise DatasetError(
            f"The beans source needs the tensorflow-datasets package ({exc}); install it with "
            "`pip install tensorflow-datasets`, or use another source"
        ) from None

    retries = downloader.MAX_RETRIES
    downloader.MAX_RETRIES = _TFDS_RETRIES  # bounded so a flaky network fails in seconds
    try:
        builder = tfds.builder("beans", data_dir=str(tfds_dir))
        builder.download_and_prepare()
        names = builder.info.features["label"].names
    except Exception as exc:  # tfds wraps network failures in many types
        raise NetworkUnavailable(f"Downloading beans with tensorflow-datasets failed: {exc}") from exc
    finally:
        downloader.MAX_RETRIES = retries
    splits = {name: info.num_examples for name, info in builder.info.splits.items()} or _BEANS_SPLITS
    total = sum(splits.values())
    done = 0
    with _staging(root, BEANS_DIR) as tmp:
        for label in names:
            (tmp / label).mkdir()
        for split in sorted(splits):
            ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
            for i, example in enumerate(tfds.as_numpy(ds)):
                check_cancel(cancel)
                data = bytes(example["image"])  # the encoded file as tfds stored it: no re-encoding
                label = names[int(example["label"])]
                (tmp / label / f"{split}_{i:05d}{_image_suffix(data)}").write_bytes(data)
                done += 1
                if done % 100 == 0:
                    emit(progress, "download", done, total, f"Exporting beans: {done}/{total} images")
        if done == 0:
            raise DatasetError("tensorflow-datasets returned no beans images")
        emit(progress, "download", done, done, f"Exported {done} beans images")
        return install_dir(tmp, final, replace=False)


DEMO_MANIFEST = ".demo.json"  # written into every generated demo set: how it was made
# The demo set: classes differ in colour AND shape, so even random-weight features separate them.
_DEMO_CLASSES = (
    ("red_circle", (220, 40, 40)),
    ("green_square", (40, 180, 60)),
    ("blue_triangle", (40, 70, 220)),
    ("yellow_cross", (235, 210, 40)),
    ("magenta_ring", (200, 50, 200)),
    ("cyan_diamond", (40, 200, 210)),
    ("orange_bar", (245, 140, 30)),
    ("white_star", (245, 245, 245)),
)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "bar":
        draw.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=fill)
    else:  # star: two overlaid triangles
        draw.polygon([(cx, cy - r), (cx - r, cy + r / 2), (cx + r, cy + r / 2)], fill=fill)
        draw.polygon([(cx, cy + r), (cx - r, cy - r / 2), (cx + r, cy - r / 2)], fill=fill)


def _demo_image(rng: np.random.Generator, shape: str, colour, size: int) -> Image.Image:
    background = rng.integers(20, 110, size=3)
    pixels = background + rng.normal(0, 18, size=(size, size, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    r = size * rng.uniform(0.18, 0.34)
    cx, cy = rng.uniform(r, size - r, size=2)
    fill = tuple(int(np.clip(c + rng.normal(0, 15), 0, 255)) for c in colour)
    _draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, fill)
    noisy = np.asarray(img, dtype=np.float64) + rng.normal(0, 10, size=(size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
        raise InvalidArgument(f"{name} must be an integer from {low} to {high}, got {name}={value!r}")
    return int(value)


def make_demo_dataset(
    dest: str | Path | None = None, num_classes: int = 3, per_class: int = 24, size: int = 64, seed: int = 0
) -> Path:
    """Generate a folder of class subfolders of coloured shapes on noise; deterministic by seed.

    Each class is one colour and one shape, drawn at a random position and scale on a noisy
    background, saved as JPEG. Calling again with the same arguments reuses the folder.

    Args:
        dest: the folder to create; default datasets_dir()/demo-<classes>c-<per_class>x<size>px-s<seed>.
        num_classes: 2 to 8 classes. per_class: images per class. size: image side in pixels.
        seed: the random seed; the same seed gives the same files.

    Returns:
        The dataset folder.
    """
    num_classes = _check_int("num_classes", num_classes, 2, len(_DEMO_CLASSES))
    per_class = _check_int("per_class", per_class, 1, 100_000)
    size = _check_int("size", size, 16, 1024)
    seed = _check_int("seed", seed, 0, 2**32 - 1)
    params = {"num_classes": num_classes, "per_class": per_class, "size": size, "seed": seed}
    if dest is None:
        dest = config.datasets_dir() / f"demo-{num_classes}c-{per_class}x{size}px-s{seed}"
    final = Path(dest).expanduser()
    manifest = DEMO_MANIFEST
    if (final / manifest).is_file():
        if json.loads((final / manifest).read_text()) == params:
            return final
    elif final.exists():  # never replace a folder we did not generate
        raise InvalidArgument(f"dest already exists and is not a generated demo set, got dest={str(dest)!r}")
    with _staging(final.parent, final.name) as tmp:
        for index, (label, colour) in enumerate(_DEMO_CLASSES[:num_classes]):
            rng = np.random.default_rng([seed, index])  # per class, so classes don't shift each other
            (tmp / label).mkdir()
            shape = label.split("_", 1)[1]
            for i in range(per_class):
                img = _demo_image(rng, shape, colour, size)
                img.save(tmp / label / f"{label}_{i:04d}.jpg", quality=92)
        (tmp / manifest).write_text(json.dumps(params))
        return install_dir(tmp, final, replace=True)


def is_demo_dataset(folder: str | Path) -> bool:
    """Whether `folder` is a demo set this lab generated (it holds the generator's manifest)."""
    return (Path(folder) / DEMO_MANIFEST).is_file()


def by_preference(stored: dict[str, Path]) -> list[str]:
    """The labels of stored datasets (uploads.stored_datasets()), the best default for a page first.

    A newcomer's page should open on a real dataset, never on a demo set some earlier run generated:
    flower_photos, then beans, then other datasets (zips, folders), then the user's uploads, and
    generated demo sets last. The order within each group is kept.
    """

    def rank(label: str) -> int:
        folder = Path(stored[label])
        if is_demo_dataset(folder):
            return 4
        if label.startswith("uploads/"):
            return 3
        return {FLOWERS_DIR: 0, BEANS_DIR: 1}.get(folder.name, 2)

    return sorted(stored, key=rank)


def display_name(source: str | Path) -> str:
    """A dataset source as a run's name says it: 'flowers', 'beans', 'demo' or the folder's name."""
    text = str(source)
    if text in ("flowers", "beans", "demo"):
        return text
    folder = Path(text)
    if folder.name == FLOWERS_DIR:
        return "flowers"
    if folder.name == BEANS_DIR:
        return "beans"
    if is_demo_dataset(folder):
        return "demo"
    return folder.name or text

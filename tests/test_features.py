"""engine.features: batched extraction matches the model, the cache is keyed by content and weights."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data.datasets import ImageRecord
from engine.data.images import load_image, probe_image
from engine.errors import Cancelled, InvalidArgument, NotFound
from engine.features import decode, extract
from engine.features.cache import FeatureCache, file_hash, model_key
from engine.features.extract import extract_features
from engine.models import backbones

ROOT = Path(__file__).resolve().parents[1]
SMALL = "mobilenet_0.25_128"  # the cheapest backbone: 128 px input, 256-d bottleneck
DIM = backbones.get_backbone(SMALL).feature_dim
SIZE = backbones.get_backbone(SMALL).input_size


def picture(seed: int, size=(96, 72)) -> Image.Image:
    """A smooth random picture (gradients + blobs), distinct per seed."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    arr = (np.stack(channels, -1) * 110 + 128 + rng.normal(0, 8, (h, w, 3))).clip(0, 255)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def write_plain(folder: Path, count: int, start: int = 0) -> list[Path]:
    """RGB JPEGs and PNGs, gray JPEGs: the kinds TensorFlow decodes itself."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        img = picture(i, (64 + 8 * (i % 5), 48 + 8 * (i % 3)))
        kind = i % 3
        if kind == 0:
            path = folder / f"img{i}.jpg"
            img.save(path, quality=92)
        elif kind == 1:
            path = folder / f"img{i}.png"
            img.save(path)
        else:
            path = folder / f"gray{i}.jpg"
            img.convert("L").save(path, quality=92)
        paths.append(path)
    return paths


def write_odd(folder: Path) -> list[Path]:
    """Images only Pillow gets right: CMYK, EXIF-rotated, 16-bit, palette, alpha."""
    folder.mkdir(parents=True, exist_ok=True)
    cmyk = folder / "cmyk.jpg"
    picture(101).convert("CMYK").save(cmyk, quality=92)
    rotated = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    picture(102, (96, 48)).save(rotated, quality=92, exif=exif.tobytes())
    deep = folder / "deep16.png"
    gray16 = (np.asarray(picture(103).convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(deep)  # mode I;16
    palette = folder / "palette.png"
    picture(104).convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(palette)
    alpha = folder / "alpha.png"
    rgba = picture(105).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (72, 1))))
    rgba.save(alpha)
    return [cmyk, rotated, deep, palette, alpha]


def direct(paths: list[Path], pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Features from a separately built model called directly on `pixels`."""
    model = backbones.build_feature_extractor(SMALL, weights="random", seed=seed)
    return np.asarray(model(pixels, training=False))


def assert_close(actual, expected, **kwargs) -> None:
    """Equal to 1e-4 of the largest value: random-weight bottlenecks are tiny (~1e-16), so a
    fixed absolute tolerance would pass anything."""
    expected = np.asarray(expected)
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale, **kwargs)


def differ(a, b) -> bool:
    return not np.allclose(a, b, rtol=1e-3, atol=1e-3 * float(np.abs(b).max()))


def pipeline_pixels(paths: list[Path]) -> np.ndarray:
    flags = [probe_image(p).needs_pil for p in paths]
    return np.concatenate(list(decode.decode_dataset([str(p) for p in paths], flags, SIZE, 4)))


# --- extraction -------------------------------------------------------------------------------


def test_features_match_a_direct_model_call(tmp_path):
    paths = write_plain(tmp_path / "imgs", 7)
    result = extract_features(paths, SMALL, "random", batch_size=3)
    assert result.features.shape == (7, DIM) and result.features.dtype == np.float32
    assert result.hashes == [file_hash(p) for p in paths]
    pixels = pipeline_pixels(paths)
    assert pixels.shape == (7, SIZE, SIZE, 3) and pixels.min() >= 0 and pixels.max() <= 255
    assert_close(result.features, direct(paths, pixels))
    s = result.stats
    assert (s.hits, s.misses) == (0, 7) and s.images_per_second > 0 and s.cache_bytes > 0


def test_tensorflow_decode_matches_pillow_resize(tmp_path):
    # the classifier sees images.load_image pixels at inference: training features must see alike
    paths = write_plain(tmp_path / "imgs", 6)
    for side in (300, 700, 1400):  # JPEGs TensorFlow decodes at 1/2, 1/4, 1/8 scale, like Pillow's draft
        big = tmp_path / f"big{side}.jpg"
        picture(side, (side * 4 // 3, side)).resize((side * 4 // 3, side)).save(big, quality=90)
        paths.append(big)
    pixels = pipeline_pixels(paths)
    for row, path in zip(pixels, paths, strict=True):
        assert np.abs(row - load_image(path, SIZE).astype(np.float32)).mean() < 2.0, path.name


def test_second_run_is_all_hits_and_never_builds_the_model(tmp_path, monkeypatch):
    paths = write_plain(tmp_path / "imgs", 5)
    first = extract_features(paths, SMALL, "random", batch_size=2)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built although every image was cached")

    monkeypatch.setattr(extract, "feature_extractor", no_model)
    events = []
    second = extract_features(paths, SMALL, "random", batch_size=2, progress=events.append)
    assert (second.stats.hits, second.stats.misses) == (5, 0)
    assert second.stats.seconds_saved > 0 and second.stats.images_per_second == 0.0
    np.testing.assert_array_equal(second.features, first.features)
    assert events[-1]["done"] == events[-1]["total"] == 5 and events[-1]["hits"] == 5


def test_a_copy_under_another_name_and_dataset_is_a_hit(tmp_path):
    originals = write_plain(tmp_path / "one" / "daisy", 3)
    first = extract_features(originals, SMALL, "random")
    copy = tmp_path / "two" / "flowers" / "renamed.jpeg"
    copy.parent.mkdir(parents=True)
    shutil.copy(originals[0], copy)
    records = [ImageRecord(str(copy), "flowers", "train", needs_pil=False)]
    other = extract_features(records, SMALL, "random")
    assert (other.stats.hits, other.stats.misses) == (1, 0)
    np.testing.assert_array_equal(other.features[0], first.features[0])


def test_repeated_content_in_one_call_is_extracted_once(tmp_path):
    (path,) = write_plain(tmp_path / "imgs", 1)
    twin = tmp_path / "twin.jpg"
    shutil.copy(path, twin)
    result = extract_features([path, twin, path], SMALL, "random")
    assert (result.stats.misses, result.stats.hits) == (1, 2)
    np.testing.assert_array_equal(result.features[0], result.features[1])


def test_another_seed_or_weights_misses(tmp_path, seeded_keras_home):
    paths = write_plain(tmp_path / "imgs", 3)
    seed0 = extract_features(paths, SMALL, "random", seed=0)
    seed1 = extract_features(paths, SMALL, "random", seed=1)
    assert seed1.stats.misses == 3 and differ(seed0.features, seed1.features)
    keys = {model_key(SMALL, "random", 0), model_key(SMALL, "random", 1)}
    keys.add(model_key("mobilenet_0.25_224", "imagenet"))
    assert len(keys) == 3
    assert "mobilenet_2_5_224_tf_no_top.h5" in model_key("mobilenet_0.25_224", "imagenet")


def test_weights_file_content_is_part_of_the_key(seeded_keras_home):
    key = model_key("mobilenet_0.25_224", "imagenet")
    weights = backbones.weights_path("mobilenet_0.25_224")
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same name and size, other content
    assert model_key("mobilenet_0.25_224", "imagenet") != key


def test_cancel_between_batches_keeps_finished_batches(tmp_path):
    paths = write_plain(tmp_path / "imgs", 6)
    checks = []

    def cancel():
        checks.append(1)
        return len(checks) > 2  # two batches go through, the third is refused

    cache = FeatureCache()
    with pytest.raises(Cancelled):
        extract_features(paths, SMALL, "random", batch_size=2, cancel=cancel, cache=cache)
    assert cache.count(model_key(SMALL, "random", 0)) == 4
    resumed = extract_features(paths, SMALL, "random", batch_size=2, cache=cache)
    assert (resumed.stats.hits, resumed.stats.misses) == (4, 2)


def test_pillow_images_mixed_with_tensorflow_ones_keep_their_order(tmp_path):
    plain = write_plain(tmp_path / "plain", 4)
    odd = write_odd(tmp_path / "odd")
    assert all(probe_image(p).needs_pil for p in odd)
    assert not any(probe_image(p).needs_pil for p in plain)
    mixed = [odd[0], plain[0], odd[1], odd[2], plain[1], plain[2], odd[3], plain[3], odd[4]]
    result = extract_features(mixed, SMALL, "random", batch_size=4)
    assert result.features.shape == (len(mixed), DIM)
    expected = {}
    for path in odd:  # the Pillow path feeds the model exactly what load_image gives
        expected[path] = direct([path], load_image(path, SIZE)[None].astype(np.float32))[0]
    plain_pixels = pipeline_pixels(plain)
    for path, row in zip(plain, direct(plain, plain_pixels), strict=True):
        expected[path] = row
    for path, row in zip(mixed, result.features, strict=True):
        assert_close(row, expected[path], err_msg=path.name)


def test_exif_rotation_changes_the_features(tmp_path):
    upright = tmp_path / "upright.jpg"
    picture(102, (96, 48)).save(upright, quality=92)
    rotated = write_odd(tmp_path / "odd")[1]
    result = extract_features([upright, rotated], SMALL, "random")
    assert differ(result.features[0], result.features[1])


def test_a_record_tensorflow_cannot_decode_falls_back_to_pillow(tmp_path):
    plain = write_plain(tmp_path / "imgs", 3)
    tiff = tmp_path / "scan.tiff"
    picture(7).save(tiff)
    # a record that claims TensorFlow can decode it (e.g. an outdated scan): Pillow takes over
    records = [ImageRecord(str(p), "a", "train", needs_pil=False) for p in [*plain, tiff]]
    result = extract_features(records, SMALL, "random", batch_size=2)
    want = direct([tiff], load_image(tiff, SIZE)[None].astype(np.float32))[0]
    assert_close(result.features[3], want)


def test_a_corrupt_image_is_skipped_with_its_reason(tmp_path):
    plain = write_plain(tmp_path / "imgs", 3)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    records = [ImageRecord(str(p), "a", "train", needs_pil=False) for p in [plain[0], broken, *plain[1:]]]
    cache = FeatureCache()
    events = []
    result = extract_features(records, SMALL, "random", batch_size=1, cache=cache, progress=events.append)
    assert result.kept.tolist() == [0, 2, 3] and result.features.shape == (3, DIM)
    (skipped,) = result.stats.skipped
    assert skipped == {"path": str(broken), "reason": "unreadable image header (Truncated File Read)"}
    assert result.stats.misses == 3 and cache.count() == 3  # the good images are extracted and cached
    assert events[-1]["done"] == events[-1]["total"] == 4
    alone = extract_features(plain, SMALL, "random")
    np.testing.assert_array_equal(result.features, alone.features)
    probed = extract_features([broken], SMALL, "random")  # a plain path fails its probe: skipped too
    assert probed.features.shape == (0, DIM) and probed.stats.skipped[0]["path"] == str(broken)


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _png_with_corrupt_pixels(path: Path) -> Path:
    """A PNG whose IDAT holds garbage under a valid CRC: the header and every chunk check out."""
    import struct
    import zlib

    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[at : at + 4])[0]
    body = at + 8
    data[body + 2 : body + length] = bytes((i * 37 + 11) % 256 for i in range(length - 2))
    crc = zlib.crc32(bytes(data[at + 4 : body + length])) & 0xFFFFFFFF
    data[body + length : body + length + 4] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


BROKEN_KINDS = {
    "truncated.bmp": lambda p: _truncated(p),
    "truncated.gif": lambda p: _truncated(p),
    "truncated.tiff": lambda p: _truncated(p),
    "truncated.png": lambda p: _truncated(p),
    "truncated.jpg": lambda p: _truncated(p),
    "corrupt_pixels.png": _png_with_corrupt_pixels,
}


@pytest.mark.parametrize("name", sorted(BROKEN_KINDS))
def test_a_broken_image_among_records_is_skipped_not_raised(tmp_path, name):
    # The scan refuses what its cheap checks catch (truncation); a file that changed after the scan,
    # or pixel data only a full decode finds broken, reaches extraction: it must cost that image only.
    from dataclasses import replace as replaced

    from engine.data import datasets
    from engine.features.extract import drop_skipped

    folder = tmp_path / "data"
    good = write_plain(folder / "a", 3) + write_plain(folder / "b", 3, start=3)
    data = datasets.scan_image_dir(folder, 0, 0)
    bad = tmp_path / name
    picture(9, (160, 120)).save(bad)
    BROKEN_KINDS[name](bad)
    record = ImageRecord(str(bad), "b", "train", needs_pil=probe_image(bad).needs_pil)
    data = replaced(data, records=[*data.records[:2], record, *data.records[2:]])
    result = extract_features(data.records, SMALL, "random", batch_size=2)
    (skipped,) = result.stats.skipped
    assert skipped["path"] == str(bad) and "truncated or corrupt" in skipped["reason"]
    assert len(result.features) == len(good) == result.stats.misses
    kept = drop_skipped(data, result)
    assert [r.path for r in kept.records] == [r.path for r in data.records if r is not record]
    assert kept.summary()["skipped"][-1] == skipped and kept.summary()["num_images"] == len(good)
    again = extract_features(kept.records, SMALL, "random")  # each row belongs to its kept record
    np.testing.assert_array_equal(again.features, result.features)
    assert (again.stats.hits, again.stats.skipped) == (len(good), ())


def test_a_png_with_corrupt_pixel_data_passes_the_scan_and_is_skipped(tmp_path):
    from engine.data import datasets
    from engine.features.extract import drop_skipped

    folder = tmp_path / "data"
    write_plain(folder / "a", 2)
    write_plain(folder / "b", 2, start=2)
    bad = folder / "b" / "corrupt.png"
    picture(9, (160, 120)).save(bad)
    _png_with_corrupt_pixels(bad)
    data = datasets.scan_image_dir(folder, 0, 0)
    assert str(bad) in [r.path for r in data.records]
    result = extract_features(data.records, SMALL, "random")
    assert [s["path"] for s in result.stats.skipped] == [str(bad)]
    assert str(bad) not in [r.path for r in drop_skipped(data, result).records]


def test_an_unreadable_file_is_skipped(tmp_path):
    paths = write_plain(tmp_path / "imgs", 2)
    gone = tmp_path / "imgs" / "gone.jpg"
    result = extract_features([paths[0], gone, paths[1]], SMALL, "random")
    assert result.kept.tolist() == [0, 2]
    assert result.stats.skipped == ({"path": str(gone), "reason": "file not found"},)


def test_drop_skipped_refuses_features_of_other_records(tmp_path):
    from engine.data import datasets
    from engine.features.extract import drop_skipped

    folder = tmp_path / "data"
    write_plain(folder / "a", 2)
    write_plain(folder / "b", 2, start=2)
    data = datasets.scan_image_dir(folder, 0, 0)
    feats = extract_features(data.records[:3], SMALL, "random")
    with pytest.raises(InvalidArgument, match="cover 3 images"):
        drop_skipped(data, feats)
    assert drop_skipped(data, extract_features(data.records, SMALL, "random")) is data


def test_progress_events(tmp_path):
    paths = write_plain(tmp_path / "imgs", 5)
    events = []
    extract_features(paths, SMALL, "random", batch_size=2, progress=events.append)
    assert {e["phase"] for e in events} == {"extract"}
    assert [e["done"] for e in events] == [0, 2, 4, 5]
    assert all(e["total"] == 5 and e["misses"] == 5 and e["hits"] == 0 for e in events)


def test_empty_input_and_bad_arguments(tmp_path):
    empty = extract_features([], SMALL, "random")
    assert empty.features.shape == (0, DIM) and empty.hashes == []
    with pytest.raises(InvalidArgument, match="batch_size=0"):
        extract_features([], SMALL, "random", batch_size=0)
    with pytest.raises(InvalidArgument, match="weights='best'"):
        extract_features([], SMALL, "best")
    with pytest.raises(NotFound, match="mobilenet_0.25_224"):
        extract_features([], "resnet", "random")
    with pytest.raises(InvalidArgument, match="records or paths"):
        extract_features([42], SMALL, "random")


def test_pipeline_settings_keep_the_autotune_thread_off():
    # measured by bench/bench_extract.py --sweep: with autotuning on, deleting the iterator stalls
    # up to 0.6 s, half the time of a 200-image extraction on two cores
    options = decode._dataset_options(decode.SETTINGS)
    assert options.autotune.enabled is False
    assert options.threading.max_intra_op_parallelism == 1
    assert options.threading.private_threadpool_size == decode.SETTINGS.decode_threads >= 1
    assert decode._dataset_options(replace(decode.SETTINGS, decode_threads=-1)).autotune.enabled


# --- the cache ------------------------------------------------------------------------------------


def test_cache_round_trip_and_size(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    vectors = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    cache.put_many("k", ["a", "b", "c"], vectors)
    got = cache.get_many("k", ["c", "a", "zz"])
    assert set(got) == {"a", "c"}
    np.testing.assert_array_equal(got["c"], vectors[2])
    assert cache.get_many("other", ["a"]) == {}
    assert cache.count() == 3 and cache.size_bytes() > 0
    cache.clear("k")
    assert cache.count() == 0


def test_cache_is_safe_with_concurrent_processes(tmp_path):
    root = tmp_path / "shared_cache"
    FeatureCache(root)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        from engine.features.cache import FeatureCache
        cache = FeatureCache({str(root)!r})
        worker = int(sys.argv[1])
        for batch in range(20):
            hashes = [f"{{worker}}-{{batch}}-{{i}}" for i in range(10)]
            cache.put_many("k", hashes, np.full((10, 64), worker, np.float32))
            assert len(cache.get_many("k", hashes)) == 10
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)]) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert FeatureCache(root).count("k") == 4 * 20 * 10


# --- real data --------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_flowers_with_imagenet_weights(flowers_dir, seeded_keras_home):
    paths = sorted(flowers_dir.glob("*/*.jpg"))[::5]  # 40 photos, 8 per class
    result = extract_features(paths, "mobilenet_0.25_224", "imagenet")
    assert result.features.shape == (40, 256) and (result.features >= 0).all()
    assert result.stats.misses == 40 and np.isfinite(result.features).all()
    # ImageNet features separate the classes: each photo's nearest neighbour mostly shares its class
    labels = np.array([p.parent.name for p in paths])
    x = result.features / np.linalg.norm(result.features, axis=1, keepdims=True)
    sim = x @ x.T - 2 * np.eye(len(x))
    assert (labels[sim.argmax(1)] == labels).mean() >= 0.5
    again = extract_features(paths, "mobilenet_0.25_224", "imagenet")
    assert (again.stats.hits, again.stats.misses) == (40, 0) and again.stats.seconds_saved > 0


def test_a_run_with_a_corrupt_image_finishes_and_lists_it(tmp_path):
    from engine.runs.retrain import RunConfig, retrain
    from engine.runs.store import RunStore
    from engine.training.config import TrainConfig

    folder = tmp_path / "data"
    write_plain(folder / "a", 4)
    write_plain(folder / "b", 4, start=4)
    bad = folder / "b" / "corrupt.png"
    picture(9, (160, 120)).save(bad)
    _png_with_corrupt_pixels(bad)
    config = RunConfig(str(folder), SMALL, "random", 0, 25, train=TrainConfig(steps=10, batch_size=4))
    summary = retrain(config)
    assert summary.status == "finished" and summary.cache["skipped"][0]["path"] == str(bad)
    results = RunStore().get_run(summary.run_id).results
    assert str(bad) in [s["path"] for s in results["dataset"]["skipped"]]
    assert results["dataset"]["num_images"] == 8

"""engine.data.images: every odd colour mode, bit depth and broken file a user may drop in a folder."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import images
from engine.data.images import decode_image_bytes, load_image, probe_image
from engine.errors import BadImage, InvalidArgument

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def solid(mode: str, colour, size=(16, 12)) -> Image.Image:
    return Image.new(mode, size, colour)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None) -> bytes:
    """A PNG written byte by byte, for what Pillow will not write (48-bit RGB, absurd sizes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\x00")
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def close(actual, expected, tol=3) -> bool:
    return bool(np.all(np.abs(np.asarray(actual, int) - np.asarray(expected, int)) <= tol))


# --- ordinary images --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_plain_rgb_is_decodable_by_tensorflow(tmp_path, fmt, suffix):
    path = save(solid("RGB", RED), tmp_path / f"red{suffix}", format=fmt)
    info = probe_image(path)
    assert (info.format, info.mode, info.width, info.height) == (fmt, "RGB", 16, 12)
    assert info.needs_pil is False and info.complete
    arr = load_image(path)
    assert arr.dtype == np.uint8 and arr.shape == (12, 16, 3)
    assert close(arr[6, 8], RED, tol=2 if fmt == "PNG" else 8)


def test_resize_to_square(tmp_path):
    path = save(solid("RGB", BLUE, (50, 30)), tmp_path / "b.png")
    arr = load_image(path, size=24)
    assert arr.shape == (24, 24, 3) and close(arr[12, 12], BLUE)


def test_large_jpeg_resized_with_draft_keeps_content(tmp_path):
    img = Image.new("RGB", (1600, 1200), RED)
    img.paste(Image.new("RGB", (800, 1200), BLUE), (800, 0))
    path = save(img, tmp_path / "big.jpg", quality=95)
    arr = load_image(path, size=64)
    assert arr.shape == (64, 64, 3)
    assert close(arr[32, 5], RED, 12) and close(arr[32, 58], BLUE, 12)


@pytest.mark.parametrize("size", [0, -3, 2.5, "64", True])
def test_bad_size_argument(tmp_path, size):
    path = save(solid("RGB", RED), tmp_path / "r.png")
    with pytest.raises(InvalidArgument, match="size="):
        load_image(path, size=size)


@pytest.mark.parametrize("fmt,suffix", [("BMP", ".bmp"), ("WEBP", ".webp"), ("TIFF", ".tif")])
def test_other_formats_need_pil(tmp_path, fmt, suffix):
    extra = {"lossless": True} if fmt == "WEBP" else {}
    path = save(solid("RGB", BLUE), tmp_path / f"x{suffix}", format=fmt, **extra)
    info = probe_image(path)
    assert info.format == fmt and info.needs_pil
    assert close(load_image(path)[0, 0], BLUE)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [solid("RGB", RED).convert("P"), solid("RGB", BLUE).convert("P")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    arr = load_image(path)
    assert arr.shape == (12, 16, 3) and close(arr[0, 0], RED)


# --- EXIF orientation -------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    # stored 40 wide x 20 high: left half red, right half blue
    img = Image.new("RGB", (40, 20), RED)
    img.paste(Image.new("RGB", (20, 20), BLUE), (20, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(img, tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    info = probe_image(path)
    assert info.needs_pil and (info.width, info.height) == (40, 20)
    arr = load_image(path)
    assert arr.shape == (40, 20, 3)  # displayed upright: 20 wide, 40 high
    assert close(arr[5, 10], RED, 20) and close(arr[35, 10], BLUE, 20)


def test_exif_orientation_one_stays_fast_path(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 1
    path = save(solid("RGB", RED), tmp_path / "upright.jpg", exif=exif.tobytes())
    assert probe_image(path).needs_pil is False


# --- colour modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_grayscale(tmp_path, suffix):
    path = save(solid("L", 100), tmp_path / f"g{suffix}")
    info = probe_image(path)
    assert info.mode == "L" and info.needs_pil is False
    arr = load_image(path)
    assert arr.shape == (12, 16, 3) and close(arr[0, 0], (100, 100, 100), 2)


def test_bilevel(tmp_path):
    path = save(solid("1", 1), tmp_path / "b.png")
    assert close(load_image(path)[0, 0], WHITE, 0)


@pytest.mark.parametrize(
    "mode,colour,expected",
    [
        ("RGBA", (255, 0, 0, 0), WHITE),  # fully transparent: the white background
        ("RGBA", (255, 0, 0, 255), RED),
        ("RGBA", (0, 0, 0, 128), (127, 127, 127)),  # half black over white
        ("LA", (0, 0), WHITE),
        ("LA", (50, 255), (50, 50, 50)),
    ],
)
def test_alpha_is_composited_on_white(tmp_path, mode, colour, expected):
    path = save(solid(mode, colour), tmp_path / "a.png")
    assert probe_image(path).needs_pil
    assert close(load_image(path)[3, 3], expected, 2)


def test_palette_with_and_without_transparency(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (4, 0, 8, 8))  # right half: palette index 1 (blue)
    plain = save(img, tmp_path / "p.png")
    arr = load_image(plain)
    assert close(arr[0, 0], RED, 0) and close(arr[0, 7], BLUE, 0)
    assert probe_image(plain).needs_pil  # TF would need the palette expanded; we do it
    see_through = save(img, tmp_path / "pt.png", transparency=0)
    arr = load_image(see_through)
    assert close(arr[0, 0], WHITE, 0) and close(arr[0, 7], BLUE, 0)
    gif = save(img, tmp_path / "pt.gif", transparency=0)
    assert close(load_image(gif)[0, 0], WHITE, 0)


def test_rgb_png_with_transparent_colour_key(tmp_path):
    path = save(solid("RGB", RED), tmp_path / "key.png", transparency=RED)
    assert probe_image(path).needs_pil
    assert close(load_image(path)[0, 0], WHITE, 0)


def test_cmyk_jpeg(tmp_path):
    path = save(solid("RGB", RED).convert("CMYK"), tmp_path / "c.jpg", quality=95)
    info = probe_image(path)
    assert info.mode == "CMYK" and info.needs_pil
    assert close(load_image(path)[0, 0], RED, 10)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 1000]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    path = save(img, tmp_path / "deep.png")
    assert probe_image(path).needs_pil
    arr = load_image(path)
    assert arr.shape == (1, 4, 3)
    assert arr[0, :, 0].tolist() == [0, 100, 255, 4]  # clipping would give [0, 255, 255, 255]


def test_16_bit_big_endian_tiff(tmp_path):
    values = np.array([[0, 257 * 50, 65535]], dtype=">u2")
    img = Image.frombytes("I;16B", (3, 1), values.tobytes())
    path = save(img, tmp_path / "deep.tif")
    assert load_image(path)[0, :, 1].tolist() == [0, 50, 255]


def test_32_bit_integer_and_float_modes(tmp_path):
    wide = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32), mode="I")
    assert load_image(save(wide, tmp_path / "i.tif"))[0, :, 0].tolist() == [0, 128, 255]
    small = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), mode="I")
    assert load_image(save(small, tmp_path / "i8.tif"))[0, :, 0].tolist() == [0, 100, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    assert load_image(save(floats, tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 128, 255]


def test_48_bit_rgb_png(tmp_path):
    # one pixel per channel value: (65535, 0, 32896) -> (255, 0, 128)
    row = b"\x00" + struct.pack(">HHH", 65535, 0, 32896)
    path = tmp_path / "rgb48.png"
    path.write_bytes(handmade_png(1, 1, 16, 2, row))
    info = probe_image(path)
    assert info.mode == "RGB" and info.needs_pil  # Pillow says RGB, but TF must not take it
    assert close(load_image(path)[0, 0], (255, 0, 128), 1)


# --- broken and hostile files -----------------------------------------------------------------


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    info = probe_image(path)  # the header is intact...
    assert not info.complete and info.needs_pil  # ...but the end marker is missing
    with pytest.raises(BadImage, match=r"^cut\.jpg: truncated or corrupt"):
        load_image(path)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[:-200])
    assert not probe_image(path).complete
    with pytest.raises(BadImage, match=r"^cut\.png: "):
        load_image(path)


def test_jpeg_padded_after_end_marker_is_complete(tmp_path):
    buf = io.BytesIO()
    solid("RGB", RED).save(buf, "JPEG")
    path = tmp_path / "padded.jpg"
    path.write_bytes(buf.getvalue() + b"\x00" * 20)
    assert probe_image(path).complete


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"hello, I am a text file pretending to be a JPEG\n", "not an image"),
        (np.random.default_rng(2).bytes(4096), "not an image"),
        (b"\xff\xd8\xff\xe0garbage", "not an image|unreadable"),
        (b"%PDF-1.4\n%...", "not an image"),
    ],
)
def test_not_an_image(tmp_path, content, reason):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImage, match=rf"^fake\.jpg: ({reason})"):
        probe_image(path)
    with pytest.raises(BadImage, match=r"^fake\.jpg: "):
        load_image(path)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(BadImage, match="empty.png: empty file"):
        probe_image(empty)
    with pytest.raises(BadImage, match="empty.png"):
        load_image(empty)
    with pytest.raises(BadImage, match="gone.png: file not found"):
        probe_image(tmp_path / "gone.png")
    with pytest.raises(BadImage, match="gone.png: file not found"):
        load_image(tmp_path / "gone.png")


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(handmade_png(20_000, 20_000, 8, 2, None))  # 400 MP claimed in 60 bytes
    for fn in (probe_image, load_image):
        t = time.perf_counter()
        with pytest.raises(BadImage, match="bomb.png: refused as a decompression bomb"):
            fn(path)
        assert time.perf_counter() - t < 0.5


def test_pixel_cap_is_ours(tmp_path, monkeypatch):
    path = save(solid("RGB", RED, (100, 100)), tmp_path / "ok.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 9_999)
    with pytest.raises(BadImage, match="10,000 pixels exceeds the limit of 9,999"):
        load_image(path)


def test_pillow_bomb_warning_becomes_bad_image(tmp_path, monkeypatch):
    path = save(solid("RGB", RED, (100, 100)), tmp_path / "w.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)  # Pillow warns above this, errors above 2x
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(BadImage, match="decompression bomb"):
            load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000)
    with pytest.raises(BadImage, match="decompression bomb"):
        load_image(path)


def test_unsupported_format_is_refused(tmp_path):
    path = save(solid("RGB", RED), tmp_path / "x.ppm")  # Pillow reads it, we do not offer it
    with pytest.raises(BadImage, match="not an image"):
        load_image(path)


# --- bytes ------------------------------------------------------------------------------------


def test_decode_bytes_matches_load(tmp_path):
    path = save(solid("RGBA", (10, 200, 30, 255)), tmp_path / "x.png")
    data = path.read_bytes()
    assert np.array_equal(decode_image_bytes(data, 8), load_image(path, 8))
    with pytest.raises(BadImage, match="upload: empty file"):
        decode_image_bytes(b"")
    with pytest.raises(BadImage, match="photo.jpg: not an image"):
        decode_image_bytes(b"not an image", name="photo.jpg")


# --- real photos ------------------------------------------------------------------------------


def test_real_flowers_probe_fast_and_decode(flowers_dir):
    paths = sorted(flowers_dir.glob("*/*.jpg"))
    assert len(paths) == 200
    t = time.perf_counter()
    infos = [probe_image(p) for p in paths]
    elapsed = time.perf_counter() - t
    assert elapsed < 1.0, f"probing 200 photos took {elapsed:.2f}s"
    assert all(i.format == "JPEG" and i.complete for i in infos)
    assert sum(not i.needs_pil for i in infos) >= 190
    for p in paths[::40]:
        arr = load_image(p, size=224)
        assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8 and 20 < arr.mean() < 235


# --- hostile files: special files, truncation, corrupt data, late EXIF, odd names (issue 10) -----


@pytest.mark.timeout(10)
def test_fifo_named_like_an_image_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # nobody ever writes: a plain open() would block forever
    for fn in (probe_image, load_image, images.content_hash):
        with pytest.raises(BadImage, match=r"^pipe\.jpg: refused: a FIFO \(named pipe\), not a regular file"):
            fn(fifo)
    assert images.decode_or_reason(fifo) == (None, "refused: a FIFO (named pipe), not a regular file")


def test_folders_and_devices_are_refused(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(BadImage, match=r"^dir\.png: refused: a folder"):
        load_image(tmp_path / "dir.png")
    with pytest.raises(BadImage, match=r"^null: refused: a character device"):
        probe_image("/dev/null")


def image_bytes(fmt: str, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_files_are_caught_by_the_probe_and_reported_by_the_decode(tmp_path, fmt, keep):
    data = image_bytes(fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * keep)])
    assert not probe_image(path).complete  # the scan decodes such a file to decide
    pixels, reason = images.decode_or_reason(path)
    assert pixels is None and reason.startswith("truncated or corrupt image")


def test_whole_files_of_every_format_are_complete(tmp_path):
    for fmt in ("BMP", "GIF", "TIFF", "JPEG", "PNG", "WEBP"):
        path = tmp_path / f"whole.{fmt.lower()}"
        path.write_bytes(image_bytes(fmt))
        assert probe_image(path).complete, fmt
        pixels, reason = images.decode_or_reason(path, 8)
        assert reason == "" and pixels.shape == (8, 8, 3)


def test_png_with_corrupt_pixel_data_is_refused_by_the_probe(tmp_path):
    data = bytearray(image_bytes("PNG"))
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside IDAT: Pillow would decode garbage
    path = tmp_path / "flip.png"
    path.write_bytes(bytes(data))
    with pytest.raises(BadImage, match=r"^flip\.png: corrupt PNG data \(checksum mismatch in the IDAT chunk"):
        probe_image(path)


def png_with_late_exif(orientation: int) -> bytes:
    """A PNG whose eXIf chunk comes after IDAT: Pillow sees it only after load()."""
    buf = io.BytesIO()
    img = Image.new("RGB", (16, 12), WHITE)
    img.paste(RED, (0, 0, 4, 4))  # a red corner that the rotation moves
    img.save(buf, "PNG")
    exif = Image.Exif()
    exif[0x0112] = orientation
    raw = exif.tobytes()
    raw = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    data = buf.getvalue()
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + png_chunk(b"eXIf", raw) + data[iend:]


def test_png_exif_after_pixel_data_rotates_on_every_path(tmp_path):
    path = tmp_path / "late.png"
    path.write_bytes(png_with_late_exif(6))
    data = path.read_bytes()
    assert data.index(b"eXIf") > data.index(b"IDAT")
    with Image.open(path) as img:
        assert "exif" not in img.info  # the header alone does not know: that was the bug
    info = probe_image(path)
    assert info.needs_pil and info.complete  # so extraction takes load_image, not tf.io.decode_png
    arr = load_image(path)
    assert arr.shape == (16, 12, 3)  # rotated 90 degrees: width and height swapped
    assert np.array_equal(arr, decode_image_bytes(data))  # classify's bytes path agrees
    assert close(arr[0, -1], RED) and close(arr[0, 0], WHITE)  # top-left corner went top-right
    upright = tmp_path / "upright.png"
    upright.write_bytes(png_with_late_exif(1))
    assert probe_image(upright).needs_pil is False


def test_names_are_printable_and_problems_named():
    undecodable = os.fsdecode(b"caf\xe9")  # Latin-1 bytes: a surrogate escape in Python
    assert images.printable(undecodable) == "caf\\xe9"
    assert images.printable("a\nb\x1b") == "a\\nb\\x1b"
    assert images.printable("café dog") == "café dog"
    assert images.name_problem("roses") == ""
    assert "not valid UTF-8" in images.name_problem(undecodable)
    assert (
        images.name_problem("dai\nsies") == "name 'dai\\nsies' contains control characters (\\n); rename it"
    )
    assert "control characters" in images.name_problem("a\u2028b")  # splitlines() splits there too
    with pytest.raises(BadImage, match=r"^caf\\xe9\.png: file not found"):
        load_image(Path("/nonexistent") / f"{undecodable}.png")


def test_content_hash_is_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG some bytes")
    assert images.content_hash(path) == hashlib.sha256(b"\x89PNG some bytes").hexdigest()

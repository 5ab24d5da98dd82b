"""Generators of bad input for the trust-boundary tests (issue 10): images, folders, zips, timings.

Everything is built in memory or under a test's tmp_path; no binary file is committed. Every helper
is cheap (tiny 32x32 images) so a few hundred cases run in seconds without TensorFlow.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.errors import LabError

SIZE = 32
PER_CLASS = 8
CLASSES = (("red", (220, 30, 30)), ("blue", (30, 30, 220)))


# --- images -------------------------------------------------------------------------------------
def pixels(seed: int = 0, colour=(128, 128, 128), size: int = SIZE) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 25, (size, size, 3))
    return np.clip(noise + np.asarray(colour, float), 0, 255).astype(np.uint8)


def image_bytes(fmt: str = "JPEG", mode: str = "RGB", seed: int = 0, size: int = SIZE, **save) -> bytes:
    """A small valid image of `fmt` in Pillow `mode`."""
    img = Image.fromarray(pixels(seed, size=size))
    if mode in ("I;16", "I;16B"):
        img = Image.fromarray(pixels(seed, size=size)[..., 0].astype(np.uint16) * 257)  # mode I;16
    elif mode == "F":
        img = Image.fromarray(pixels(seed, size=size)[..., 0].astype(np.float32) / 255.0)  # mode F
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(
    width: int, height: int, bit_depth: int = 8, colour: int = 2, idat: bytes | None = None
) -> bytes:
    """A PNG whose IHDR claims any size (a decompression bomb header) with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    body = idat if idat is not None else zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")
    )


def png_16bit_rgb() -> bytes:
    """A real 16-bit RGB PNG (Pillow cannot write one, so it is assembled by hand)."""
    arr = pixels(3).astype(">u2") * 257
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(SIZE))
    return png_with_header(SIZE, SIZE, 16, 2, zlib.compress(raw))


def _png_chunks(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, type, data) of each chunk."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        out.append((pos, kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def png_corrupt_pixels(fix_crc: bool = True) -> bytes:
    """A PNG whose IDAT zlib stream is garbage in the middle; the header and IEND are intact."""
    data = image_bytes("PNG", seed=4)
    out = bytearray(data[:8])
    for _pos, kind, body in _png_chunks(data):
        if kind == b"IDAT":
            body = bytearray(body)
            mid = len(body) // 2
            body[mid : mid + 40] = bytes((b ^ 0xA5) for b in body[mid : mid + 40])
            body = bytes(body)
            chunk = png_chunk(kind, body)
            if not fix_crc:
                chunk = chunk[:-4] + b"\x00\x00\x00\x00"
            out += chunk
        else:
            out += png_chunk(kind, body)
    return bytes(out)


def jpeg_huge_header() -> bytes:
    """A JPEG whose SOF claims 65000 x 65000 pixels (4.2 gigapixels)."""
    data = bytearray(image_bytes("JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def gif_huge_header() -> bytes:
    data = bytearray(image_bytes("GIF", mode="P"))
    data[6:10] = struct.pack("<HH", 65000, 65000)  # logical screen
    desc = data.find(b"\x2c", 13)  # image descriptor
    if desc > 0:
        data[desc + 5 : desc + 9] = struct.pack("<HH", 65000, 65000)
    return bytes(data)


def bmp_huge_header() -> bytes:
    data = bytearray(image_bytes("BMP"))
    data[18:26] = struct.pack("<ii", 60000, 60000)
    return bytes(data)


def tiff_with_header(width: int, height: int) -> bytes:
    """A minimal uncompressed 8-bit grayscale TIFF claiming width x height with 64 bytes of pixels."""
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 0),  # StripOffsets (patched below)
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 64),  # StripByteCounts
    ]
    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    pixel_offset = ifd_offset + ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        value = pixel_offset if tag == 273 else value
        packed = struct.pack("<HHI", tag, typ, count)
        packed += struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        out += packed
    out += struct.pack("<I", 0) + b"\x80" * 64
    return bytes(out)


def webp_huge_header() -> bytes:
    """A VP8X WebP claiming a 16384 x 16384 canvas with no image data."""
    vp8x = b"\x00\x00\x00\x00" + (16383).to_bytes(3, "little") + (16383).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def jpeg_with_exif_rotation() -> bytes:
    img = Image.fromarray(pixels(5))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]


def garbled_middle(data: bytes) -> bytes:
    out = bytearray(data)
    mid = len(out) // 2
    out[mid : mid + 200] = os.urandom(min(200, len(out) - mid))
    return bytes(out)


# Image kinds: id -> (writer(path), expectation). "ok": must be used for training; "bad": must be
# skipped with a reason (or refused with a one-line error), never fail or hang the run.
def _bytes(make: Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(make())


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _symlink_loop(path: Path) -> None:
    path.symlink_to(path.name)  # points at itself


def _symlink_pair(path: Path) -> None:
    other = path.with_name("loop-b.jpg")
    path.symlink_to(other.name)
    other.symlink_to(path.name)


def _dangling(path: Path) -> None:
    path.symlink_to("/no/such/target.jpg")


def _dir_named_jpg(path: Path) -> None:
    path.mkdir()
    (path / "inner.jpg").write_bytes(image_bytes())


def _socket(path: Path) -> None:
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()


def _unreadable(path: Path) -> None:
    path.write_bytes(image_bytes())
    path.chmod(0)


IMAGE_KINDS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # id: (writer, suffix, expectation)
    "zero-byte-jpg": (_bytes(lambda: b""), ".jpg", "bad"),
    "zero-byte-png": (_bytes(lambda: b""), ".png", "bad"),
    "zero-byte-gif": (_bytes(lambda: b""), ".gif", "bad"),
    "zero-byte-bmp": (_bytes(lambda: b""), ".bmp", "bad"),
    "zero-byte-webp": (_bytes(lambda: b""), ".webp", "bad"),
    "zero-byte-tiff": (_bytes(lambda: b""), ".tiff", "bad"),
    "text-named-jpg": (_bytes(lambda: b"hello, I am not a photo\n" * 20), ".jpg", "bad"),
    "html-named-png": (_bytes(lambda: b"<!doctype html><html><body>404</body></html>"), ".png", "bad"),
    "random-bytes-jpg": (_bytes(lambda: np.random.default_rng(1).bytes(5000)), ".jpg", "bad"),
    "jpeg-magic-only": (_bytes(lambda: b"\xff\xd8\xff\xe0" + b"\x00" * 10), ".jpg", "bad"),
    "png-signature-only": (_bytes(lambda: b"\x89PNG\r\n\x1a\n"), ".png", "bad"),
    "truncated-jpeg-half": (_bytes(lambda: truncated(image_bytes("JPEG"))), ".jpg", "bad"),
    "truncated-jpeg-header": (_bytes(lambda: truncated(image_bytes("JPEG"), 0.1)), ".jpg", "bad"),
    "truncated-png": (_bytes(lambda: truncated(image_bytes("PNG"))), ".png", "bad"),
    "truncated-bmp": (_bytes(lambda: truncated(image_bytes("BMP"))), ".bmp", "bad"),
    "truncated-gif": (_bytes(lambda: truncated(image_bytes("GIF", mode="P"))), ".gif", "bad"),
    "truncated-tiff": (_bytes(lambda: truncated(image_bytes("TIFF"))), ".tif", "bad"),
    "truncated-webp": (_bytes(lambda: truncated(image_bytes("WEBP", lossless=True))), ".webp", "bad"),
    "png-corrupt-pixels": (_bytes(png_corrupt_pixels), ".png", "bad"),
    "png-bad-crc": (_bytes(lambda: png_corrupt_pixels(fix_crc=False)), ".png", "bad"),
    "jpeg-garbled-middle": (_bytes(lambda: garbled_middle(image_bytes("JPEG", size=64))), ".jpg", "any"),
    "png-zero-width": (_bytes(lambda: png_with_header(0, 32)), ".png", "bad"),
    "bomb-png-100k-square": (_bytes(lambda: png_with_header(100_000, 100_000)), ".png", "bad"),
    "bomb-png-1x2e9": (_bytes(lambda: png_with_header(1, 2_000_000_000)), ".png", "bad"),
    "bomb-jpeg-65k-square": (_bytes(jpeg_huge_header), ".jpg", "bad"),
    "bomb-gif-65k-square": (_bytes(gif_huge_header), ".gif", "bad"),
    "bomb-bmp-60k-square": (_bytes(bmp_huge_header), ".bmp", "bad"),
    "bomb-tiff-100k-square": (_bytes(lambda: tiff_with_header(100_000, 100_000)), ".tif", "bad"),
    "bomb-webp-16k-canvas": (_bytes(webp_huge_header), ".webp", "bad"),
    "fifo-named-jpg": (_fifo, ".jpg", "bad"),
    "unix-socket-named-jpg": (_socket, ".jpg", "bad"),
    "symlink-to-itself": (_symlink_loop, ".jpg", "bad"),
    "symlink-loop-pair": (_symlink_pair, ".jpg", "bad"),
    "dangling-symlink": (_dangling, ".jpg", "bad"),
    "folder-named-jpg": (_dir_named_jpg, ".jpg", "any"),
    "unreadable-file": (_unreadable, ".jpg", "any"),  # root reads it anyway
    # formats and modes that must WORK
    "png-16bit-gray": (_bytes(lambda: image_bytes("PNG", mode="I;16")), ".png", "ok"),
    "png-16bit-rgb": (_bytes(png_16bit_rgb), ".png", "ok"),
    "jpeg-cmyk": (_bytes(lambda: image_bytes("JPEG", mode="CMYK")), ".jpg", "ok"),
    "png-palette": (_bytes(lambda: image_bytes("PNG", mode="P")), ".png", "ok"),
    "png-palette-transparency": (_bytes(lambda: image_bytes("PNG", mode="P", transparency=0)), ".png", "ok"),
    "png-rgba": (_bytes(lambda: image_bytes("PNG", mode="RGBA")), ".png", "ok"),
    "png-gray-alpha": (_bytes(lambda: image_bytes("PNG", mode="LA")), ".png", "ok"),
    "png-1bit": (_bytes(lambda: image_bytes("PNG", mode="1")), ".png", "ok"),
    "jpeg-grayscale": (_bytes(lambda: image_bytes("JPEG", mode="L")), ".jpg", "ok"),
    "jpeg-progressive": (_bytes(lambda: image_bytes("JPEG", progressive=True)), ".jpg", "ok"),
    "jpeg-exif-rotated": (_bytes(jpeg_with_exif_rotation), ".jpg", "ok"),
    "jpeg-uppercase-ext": (_bytes(image_bytes), ".JPG", "ok"),
    "jpeg-trailing-zeros": (_bytes(lambda: image_bytes() + b"\x00" * 100), ".jpg", "ok"),
    "jpeg-named-png": (_bytes(image_bytes), ".png", "ok"),
    "bmp-1bit": (_bytes(lambda: image_bytes("BMP", mode="1")), ".bmp", "ok"),
    "gif-palette": (_bytes(lambda: image_bytes("GIF", mode="P")), ".gif", "ok"),
    "tiff-16bit": (_bytes(lambda: image_bytes("TIFF", mode="I;16")), ".tif", "ok"),
    "tiff-float": (_bytes(lambda: image_bytes("TIFF", mode="F")), ".tiff", "ok"),
    "webp-lossless": (_bytes(lambda: image_bytes("WEBP", lossless=True)), ".webp", "ok"),
    "tiny-1x1-png": (_bytes(lambda: image_bytes("PNG", size=1)), ".png", "ok"),
}


def make_class_dir(folder: Path, colour, n: int = PER_CLASS, prefix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        seed = hash((prefix or folder.name, i)) % 2**32
        Image.fromarray(pixels(seed, colour)).save(folder / f"{prefix or 'img'}_{i:03d}.jpg", quality=90)


def make_dataset(root: Path, n: int = PER_CLASS) -> Path:
    """Two good classes of n tiny JPEGs each."""
    for name, colour in CLASSES:
        make_class_dir(root / name, colour, n, prefix=name)
    return root


def snapshot(folder: Path) -> dict[str, Any]:
    """Name -> (size, mtime_ns) of every entry under `folder` (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[os.fsdecode(p.relative_to(folder))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


# --- zips ---------------------------------------------------------------------------------------
def zip_bytes(entries: list[tuple[Any, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of (name or ZipInfo, data) entries, written as given (duplicates and all)."""
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        with zipfile.ZipFile(buf, "w", method) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return buf.getvalue()


def info(name: str, mode: int | None = None, flag_bits: int = 0) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    zi.compress_type = zipfile.ZIP_DEFLATED
    if mode is not None:
        zi.external_attr = mode << 16
    zi.flag_bits |= flag_bits
    return zi


def good_entries(prefix: str = "") -> list[tuple[str, bytes]]:
    return [
        (f"{prefix}{label}/{label}_{i}.jpg", image_bytes(seed=100 * k + i))
        for k, (label, _) in enumerate(CLASSES)
        for i in range(3)
    ]


def zip_encrypted_flag(entries: list[tuple[str, bytes]], target: str) -> bytes:
    """A zip whose entry `target` has the "encrypted" flag set (zipfile clears it when writing)."""
    data = bytearray(zip_bytes(entries))
    name = target.encode()
    for sig, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        pos = data.find(sig)
        while pos >= 0:
            if data[pos + name_at : pos + name_at + len(name)] == name:
                data[pos + flag_at] |= 0x1
            pos = data.find(sig, pos + 4)
    return bytes(data)


def zip_with_method(method_id: int) -> bytes:
    """A good zip whose first entry claims an unknown compression method."""
    data = bytearray(zip_bytes(good_entries()))
    data[8:10] = struct.pack("<H", method_id)  # local header
    cd = data.find(b"PK\x01\x02")
    data[cd + 10 : cd + 12] = struct.pack("<H", method_id)
    return bytes(data)


def zip_corrupt_entry() -> bytes:
    """A zip whose first entry's compressed data is garbled (CRC or inflate error)."""
    data = bytearray(zip_bytes(good_entries()))
    (name_len, extra_len) = struct.unpack("<HH", data[26:30])
    start = 30 + name_len + extra_len
    data[start + 20 : start + 60] = bytes(b ^ 0xFF for b in data[start + 20 : start + 60])
    return bytes(data)


# --- timings ------------------------------------------------------------------------------------
def timings_report(**changes) -> dict[str, Any]:
    report = {
        "schema": "classifier-lab/timings",
        "version": 1,
        "label": "a classmate's laptop",
        "created": 1_700_000_000.0,
        "machine": {"cpu_model": "Test CPU", "tensorflow_version": "2.0", "gpus": []},
        "timings": [
            {
                "backbone": "mobilenet_0.25_224",
                "phase": "batch",
                "device": "cpu",
                "seconds": 1.0,
                "items": 10,
                "per_item_ms": 100.0,
            }
        ],
    }
    report.update(changes)
    return report


def timings_row(**changes) -> dict[str, Any]:
    row = dict(timings_report()["timings"][0])
    row.update(changes)
    return row


def deep_json(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


def deep_dict_json(depth: int) -> bytes:
    return ('{"a":' * depth + "1" + "}" * depth).encode()


def to_bytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# --- bounded calls ------------------------------------------------------------------------------
class Hang(AssertionError):
    pass


def bounded(fn: Callable[[], Any], seconds: float, unblock: list[Path] = ()) -> Any:
    """Run fn() in a thread; if it has not finished after `seconds`, unblock FIFOs and fail (a hang).

    Exceptions from fn propagate.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for _ in range(50):  # give a reader blocked on a FIFO its EOF so the thread can end
            for fifo in unblock:
                with contextlib.suppress(OSError):
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(0.2)
            if not thread.is_alive():
                break
        raise Hang(f"still running after {time.monotonic() - start:.0f} s (a hang)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --- driving the CLI in-process and checking outcomes -------------------------------------------
@dataclass
class Outcome:
    rc: int | None
    out: str
    err: str
    exc: BaseException | None = None  # an exception that escaped main(): a traceback for a user

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:") or ": error:" in line]

    def describe(self) -> str:
        escaped = f"{type(self.exc).__name__}: {self.exc}" if self.exc else None
        return f"rc={self.rc} exception={escaped!r} stderr={self.err[-600:]!r} stdout={self.out[-300:]!r}"

    def last_json(self) -> dict:
        return json.loads(self.out.strip().splitlines()[-1])


def cli(capsys, *args: str, seconds: float = 120, unblock: tuple[Path, ...] = ()) -> Outcome:
    """Run `python -m engine <args>` in this process, bounded in time."""
    from engine.cli.main import main

    capsys.readouterr()

    def call():
        try:
            return main([str(a) for a in args]), None
        except SystemExit as exc:  # argparse
            return (exc.code if isinstance(exc.code, int) else 2), None
        except Exception as exc:  # noqa: BLE001 - reported as the traceback a user would see
            return None, exc

    rc, exc = bounded(call, seconds, unblock=list(unblock))
    captured = capsys.readouterr()
    return Outcome(rc, captured.out, captured.err, exc)


def assert_cli_error(res: Outcome, *needles: str, codes=(2,)) -> str:
    """Exit code 2 (or `codes`), no traceback, one error line at the end naming every needle."""
    assert res.exc is None, "traceback: " + res.describe()
    assert "Traceback" not in res.err, res.describe()
    assert res.rc in codes, res.describe()
    lines = res.error_lines()
    assert len(lines) == 1, "expected one error line: " + res.describe()
    tail = res.err.rstrip("\n").split(lines[0], 1)[1]
    assert not tail.strip(), "the error message spans several lines: " + res.describe()
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not named: " + res.describe()
    return lines[0]


def assert_cli_ok(res: Outcome) -> None:
    assert res.exc is None, "traceback: " + res.describe()
    assert "Traceback" not in res.err, res.describe()
    assert res.rc == 0, res.describe()


def assert_lab_error(fn, *needles: str, seconds: float = 60, unblock=()) -> LabError:
    """fn() raises a LabError with a one-line message naming every needle."""
    try:
        value = bounded(fn, seconds, unblock=list(unblock))
    except LabError as exc:
        text = str(exc)
        assert text.strip(), f"{type(exc).__name__} with an empty message"
        assert "\n" not in text, f"multi-line message: {text!r}"
        for needle in needles:
            assert needle in text, f"{needle!r} not named in {type(exc).__name__}: {text!r}"
        return exc
    except Hang:
        raise
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"traceback: {type(exc).__name__}: {str(exc)[:400]}")
    pytest.fail(f"accepted instead of refused; returned {value!r:.300}")


def call_or_lab_error(fn, seconds: float = 60, unblock=()):
    """(value, None) or (None, LabError); any other exception fails the test as a traceback."""
    try:
        return bounded(fn, seconds, unblock=list(unblock)), None
    except LabError as exc:
        assert "\n" not in str(exc) and str(exc).strip(), f"bad message: {str(exc)!r}"
        return None, exc
    except Hang:
        raise
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"traceback: {type(exc).__name__}: {str(exc)[:400]}")

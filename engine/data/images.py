"""Reading one image safely: header probes for scans, full decodes to RGB uint8 for everything else.

Every odd kind of file a user may drop in a folder ends up either as an (H, W, 3) uint8 RGB array
or as a `BadImage` that names the file and the reason. Pillow does the decoding; the pixel cap
refuses decompression bombs before any pixel is decoded.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import BadImage, InvalidArgument

# 64 megapixels: far above any photo a classifier needs, far below what exhausts memory
# (an RGB 64 MP image is 192 MB decoded). Pillow's own cap (~89 MP) only warns, we refuse.
MAX_PIXELS = 64_000_000

# Extensions a scan looks at. Pillow may read more, but these are what users mean by "images".
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Restricting Pillow to these plugins keeps exotic parsers (EPS via ghostscript, ...) out of
# reach; JPEG includes MPO, what many cameras write.
_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

# What TensorFlow's own decoders handle identically to us (no EXIF rotation, no alpha, 8 bit).
_TF_FORMATS = ("JPEG", "PNG")
_TF_MODES = ("RGB", "L")

_EXIF_ORIENTATION = 0x0112
_PNG_END = b"IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"

# Corrupt files surface as any of these from Pillow's decoders.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


@dataclass(frozen=True)
class ImageInfo:
    """What a header says about an image, without decoding its pixels."""

    format: str  # Pillow's format name: "JPEG", "PNG", ...
    mode: str  # Pillow's mode: "RGB", "L", "P", "RGBA", "CMYK", "I;16", ...
    width: int
    height: int
    # False only when TensorFlow's decode_jpeg/decode_png give the same pixels as load_image
    needs_pil: bool
    # False when the file does not end where its format says it should (truncated download):
    # a scan then decodes it fully to decide whether it is usable
    complete: bool = True


def _open(source: str | Path | BinaryIO, name: str) -> Image.Image:
    """Open the header and refuse what we will not decode (unknown formats, bombs)."""
    try:
        img = Image.open(source, formats=_FORMATS)
    except FileNotFoundError:
        raise BadImage(f"{name}: file not found") from None
    except UnidentifiedImageError:
        raise BadImage(f"{name}: not an image (unrecognised or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own cap (the warning counts when a warnings filter turns it into an error)
        raise BadImage(f"{name}: refused as a decompression bomb ({exc})") from None
    except _DECODE_ERRORS as exc:
        raise BadImage(f"{name}: unreadable image header ({exc})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        img.close()
        raise BadImage(f"{name}: image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        img.close()
        raise BadImage(
            f"{name}: refused as a decompression bomb: {width}x{height} = {width * height:,} pixels "
            f"exceeds the limit of {MAX_PIXELS:,}"
        )
    return img


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag, read from header data only (1 = upright)."""
    raw = img.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    except _DECODE_ERRORS:
        return 1  # an unreadable EXIF block cannot rotate anything; load_image decides for real


def _ends_properly(path: Path, fmt: str) -> bool:
    """Cheap truncation check: JPEG files end with EOI, PNG files with an IEND chunk."""
    marker = {"JPEG": _JPEG_END, "PNG": _PNG_END}.get(fmt)
    if marker is None:
        return True
    with open(path, "rb") as f:
        f.seek(0, io.SEEK_END)
        f.seek(max(0, f.tell() - 64))
        # cameras and editors sometimes pad after the end marker with zeros
        tail = f.read().rstrip(b"\x00")
    return tail.endswith(marker)


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        header = f.read(25)
    return header[24] if len(header) == 25 else 8


def probe_image(path: str | Path) -> ImageInfo:
    """Read only the header of `path`: format, mode, size, and whether TensorFlow can decode it.

    Raises:
        BadImage: not an image, an unsupported format, an empty file or a decompression bomb.
    """
    path = Path(path)
    name = path.name
    try:
        if path.stat().st_size == 0:
            raise BadImage(f"{name}: empty file")
    except FileNotFoundError:
        raise BadImage(f"{name}: file not found") from None
    img = _open(path, name)
    with img:
        fmt, mode, (width, height) = img.format or "", img.mode, img.size
        simple = (
            fmt in _TF_FORMATS
            and mode in _TF_MODES
            and "transparency" not in img.info
            and _orientation(img) == 1
        )
    complete = _ends_properly(path, fmt)
    if simple and fmt == "PNG" and _png_bit_depth(path) != 8:
        simple = False  # 16-bit PNGs open as "RGB" in Pillow but decode differently in TF
    return ImageInfo(fmt, mode, width, height, needs_pil=not (simple and complete), complete=complete)


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map high bit-depth pixels to 0..255 by scaling (never clipping) the whole range."""
    is_float = arr.dtype.kind == "f"
    arr = arr.astype(np.float64)
    low, high = float(arr.min()), float(arr.max())
    if is_float and low >= 0 and high <= 1.0:
        return np.round(arr * 255.0).astype(np.uint8)  # float images in [0, 1]
    if low >= 0 and high <= 255 and np.all(arr == np.round(arr)):
        return arr.astype(np.uint8)  # 8-bit data stored in a wide mode
    if low >= 0 and high <= 65535:
        return np.round(arr / 257.0).astype(np.uint8)  # 16-bit: 65535 -> 255 exactly
    span = high - low or 1.0
    return np.round((arr - low) * (255.0 / span)).astype(np.uint8)


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        if mode.startswith("I;16"):
            arr = np.asarray(img).astype(np.uint16)  # byte order is Pillow's business
            gray = np.round(arr / 257.0).astype(np.uint8)
        else:
            gray = _scale_to_uint8(np.asarray(img))
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, RGBX, ...
    except ValueError as exc:
        raise BadImage(f"{name}: unsupported colour mode {mode!r} ({exc})") from None


def _decode(source: str | Path | BinaryIO, name: str, size: int | None) -> np.ndarray:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise InvalidArgument(f"size must be a positive integer or None, got size={size!r}")
    img = _open(source, name)
    try:
        with img:
            if size and img.format == "JPEG":
                # let libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is that much smaller
                img.draft(None, (size, size))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            img = _to_rgb(img, name)
            if size:
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"{name}: refused as a decompression bomb ({exc})") from None
    except MemoryError:
        raise BadImage(f"{name}: too large to decode in memory") from None
    except _DECODE_ERRORS as exc:
        raise BadImage(f"{name}: truncated or corrupt image ({exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:  # belt and braces: the contract is (H, W, 3)
        raise BadImage(f"{name}: decoded to an unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr)


def load_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """Decode `path` to an RGB uint8 array (H, W, 3), upright per EXIF, optionally resized.

    Args:
        path: an image file (JPEG, PNG, BMP, GIF, WebP or TIFF; any colour mode or bit depth).
        size: when given, the image is resized (bilinear) to size x size.

    Returns:
        np.ndarray of dtype uint8 and shape (H, W, 3), or (size, size, 3).

    Raises:
        BadImage: unreadable, corrupt, truncated, not an image, or a decompression bomb
            (more than MAX_PIXELS pixels); the message starts with the file name.
    """
    path = Path(path)
    return _decode(path, path.name, size)


def decode_image_bytes(data: bytes, size: int | None = None, name: str = "upload") -> np.ndarray:
    """`load_image` for bytes already in memory (an upload); `name` is used in error messages."""
    if not data:
        raise BadImage(f"{name}: empty file")
    return _decode(io.BytesIO(data), name, size)

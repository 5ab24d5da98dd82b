"""Reading one image safely: header probes for scans, full decodes to RGB uint8 for everything else.

Every odd kind of file a user may drop in a folder ends up either as an (H, W, 3) uint8 RGB array
or as a `BadImage` that names the file and the reason. Only regular files are opened (a FIFO or a
device would block or misbehave); Pillow does the decoding; the pixel cap refuses decompression
bombs before any pixel is decoded; cheap structural checks (end markers, declared sizes, PNG
CRCs) catch truncated and corrupt files at scan time.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import unicodedata
import zlib
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
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_END = b"\xff\xd9"
_GIF_END = b";"
_TIFF_STRIPS = ((273, 279), (324, 325))  # (StripOffsets, StripByteCounts), (TileOffsets, TileByteCounts)

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


def printable(text: str) -> str:
    """`text` safe to print, log and show: undecodable bytes as \\xNN, control characters escaped.

    File names on Linux are bytes; Python hands undecodable ones over as lone surrogates, which
    crash `print` and every UTF-8 writer. Names in messages always go through this function.
    """
    try:
        text = os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeError:  # a lone surrogate that did not come from the file system
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def name_problem(name: str) -> str:
    """Why a file or folder name cannot be used as is ("" when it can).

    Undecodable (non-UTF-8) names cannot be written to labels, JSON or the store; control and line
    separator characters would split a label over two lines of `labels.txt` and shift every label.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"name '{printable(name)}' is not valid UTF-8; rename it"
    bad = sorted({ch for ch in name if unicodedata.category(ch) in ("Cc", "Zl", "Zp")})
    if bad:
        shown = ", ".join(ch.encode("unicode_escape").decode("ascii") for ch in bad)
        return f"name '{printable(name)}' contains control characters ({shown}); rename it"
    return ""


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def open_regular(path: str | Path, name: str | None = None) -> BinaryIO:
    """Open `path` for binary reading if, and only if, it is a regular file (symlinks followed).

    A FIFO would block `open()` until a writer comes, a device may never end: both are refused
    before opening (stat), and again after (fstat), in case the path was swapped in between.

    Raises:
        BadImage: missing, unreadable, or not a regular file; the message starts with the name.
    """
    path = Path(path)
    name = printable(name or path.name)
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise BadImage(f"{name}: refused: {_file_kind(mode)}, not a regular file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise BadImage(f"{name}: file not found") from None
    except OSError as exc:
        raise BadImage(f"{name}: cannot read file ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BadImage(f"{name}: refused: {_file_kind(mode)}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def content_hash(path: str | Path) -> str:
    """SHA-256 (hex) of a regular file's bytes: an image's identity whatever its name or folder.

    Raises:
        BadImage: not a regular file or unreadable.
    """
    with open_regular(path) as f:
        try:
            return hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as exc:
            raise BadImage(
                f"{printable(Path(path).name)}: cannot read file ({exc.strerror or exc})"
            ) from None


def _open(source: BinaryIO, name: str) -> Image.Image:
    """Open the header and refuse what we will not decode (unknown formats, bombs)."""
    try:
        img = Image.open(source, formats=_FORMATS)
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


def _exif_orientation(raw: bytes | None) -> int:
    """The orientation tag of an EXIF block (1 = upright, also for a missing or unreadable block)."""
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    except _DECODE_ERRORS:
        return 1  # an unreadable EXIF block cannot rotate anything; load_image decides for real


@dataclass
class _Structure:
    """What the cheap structural checks found: whether the file is whole, and PNG facts."""

    complete: bool = True
    bit_depth: int = 8
    orientation: int = 1  # from an eXIf chunk, wherever it is (Pillow sees a late one only on load)


def _read_chunk(f: BinaryIO, length: int, crc: int) -> tuple[int, bytes]:
    """Read `length` bytes in pieces, folding them into `crc`; returns (crc, the first 64 KiB)."""
    head, left = b"", length
    while left:
        piece = f.read(min(left, 1 << 20))
        if not piece:
            break
        crc = zlib.crc32(piece, crc)
        head = head or piece[: 1 << 16]
        left -= len(piece)
    return crc, head


def _png_structure(f: BinaryIO, size: int, name: str) -> _Structure:
    """Walk the chunks: CRC of each critical chunk, IEND present, bit depth, a late eXIf chunk.

    Raises:
        BadImage: a critical chunk (IHDR, PLTE, IDAT) whose CRC does not match: corrupt pixel data
            that Pillow would decode to garbage and TensorFlow refuses.
    """
    found = _Structure(complete=False)
    f.seek(len(_PNG_SIGNATURE))
    while f.tell() + 12 <= size:
        start = f.tell()
        length, kind = struct.unpack(">I4s", f.read(8))
        if start + 12 + length > size:
            return found  # the chunk runs past the end of the file: truncated
        crc, data = _read_chunk(f, length, zlib.crc32(kind))
        (stored,) = struct.unpack(">I", f.read(4))
        if kind in (b"IHDR", b"PLTE", b"IDAT") and crc != stored:
            raise BadImage(
                f"{name}: corrupt PNG data (checksum mismatch in the {kind.decode()} chunk at byte {start})"
            )
        if kind == b"IHDR" and len(data) >= 9:
            found.bit_depth = data[8]
        elif kind == b"eXIf":
            found.orientation = _exif_orientation(data)
        elif kind == b"IEND":
            found.complete = True
            return found
    return found


def _tail(f: BinaryIO, size: int) -> bytes:
    f.seek(max(0, size - 64))
    return f.read().rstrip(b"\x00")  # cameras and editors sometimes pad after the end marker with zeros


def _structure(f: BinaryIO, img: Image.Image, size: int, name: str) -> _Structure:
    """Cheap checks that a file is whole, by format: end markers, declared sizes, strip extents."""
    fmt = img.format
    if fmt == "PNG":
        return _png_structure(f, size, name)
    if fmt == "JPEG":
        return _Structure(complete=_tail(f, size).endswith(_JPEG_END))
    if fmt == "GIF":
        return _Structure(complete=_tail(f, size).endswith(_GIF_END))
    f.seek(0)
    head = f.read(14)
    if fmt == "BMP" and len(head) == 14:
        declared, offset = struct.unpack("<I", head[2:6])[0], struct.unpack("<I", head[10:14])[0]
        return _Structure(complete=declared <= size and offset <= size and _tiles_fit(img, size))
    if fmt == "WEBP" and len(head) >= 8:
        return _Structure(complete=8 + struct.unpack("<I", head[4:8])[0] <= size)
    if fmt == "TIFF":
        tags = getattr(img, "tag_v2", {})
        for offsets_tag, counts_tag in _TIFF_STRIPS:
            offsets, counts = tags.get(offsets_tag), tags.get(counts_tag)
            if offsets is not None and counts is not None:
                offsets = offsets if isinstance(offsets, tuple | list) else (offsets,)
                counts = counts if isinstance(counts, tuple | list) else (counts,)
                if any(int(o) + int(c) > size for o, c in zip(offsets, counts, strict=False)):
                    return _Structure(complete=False)
    return _Structure()


def _tiles_fit(img: Image.Image, size: int) -> bool:
    """Uncompressed ("raw") pixel data must fit in the file: offset + stride x rows."""
    for tile in getattr(img, "tile", None) or []:
        codec, box, offset, args = tile[0], tile[1], tile[2], tile[3]
        stride = args[1] if codec == "raw" and isinstance(args, tuple) and len(args) >= 2 else 0
        if isinstance(stride, int) and stride > 0 and offset + stride * (box[3] - box[1]) > size:
            return False
    return True


def probe_image(path: str | Path) -> ImageInfo:
    """Read the header of `path` (plus cheap structural checks): format, mode, size, and whether
    TensorFlow can decode it.

    The structural checks read end markers and declared sizes (JPEG, GIF, BMP, WebP, TIFF) and,
    for PNG, walk the chunks checking their CRCs; a file that fails them is `complete=False`
    (decode it to decide) or, for a corrupt PNG chunk, a `BadImage`.

    Raises:
        BadImage: not a regular file, not an image, an unsupported format, an empty file, corrupt
            PNG data or a decompression bomb.
    """
    path = Path(path)
    name = printable(path.name)
    with open_regular(path, name) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise BadImage(f"{name}: empty file")
        with _open(f, name) as img:
            fmt, mode, (width, height) = img.format or "", img.mode, img.size
            orientation = _exif_orientation(img.info.get("exif"))
            transparent = "transparency" in img.info
            try:
                found = _structure(f, img, size, name)
            except (OSError, struct.error, ValueError) as exc:
                raise BadImage(f"{name}: unreadable image ({exc})") from None
    simple = (
        fmt in _TF_FORMATS
        and mode in _TF_MODES
        and not transparent
        and orientation == 1
        and found.orientation == 1
        and (fmt != "PNG" or found.bit_depth == 8)  # 16-bit PNGs open as "RGB" but decode differently in TF
    )
    return ImageInfo(
        fmt, mode, width, height, needs_pil=not (simple and found.complete), complete=found.complete
    )


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


def _check_size(size: int | None) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise InvalidArgument(f"size must be a positive integer or None, got size={size!r}")


def _decode(source: BinaryIO, name: str, size: int | None) -> np.ndarray:
    """The one decode every path uses (scan, extraction, classify): load, then EXIF-rotate, then RGB.

    The orientation is applied after `load()` because Pillow reads a PNG eXIf chunk that follows
    the pixel data only then.
    """
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
        BadImage: not a regular file, unreadable, corrupt, truncated, not an image, or a
            decompression bomb (more than MAX_PIXELS pixels); the message starts with the file name.
    """
    path = Path(path)
    name = printable(path.name)
    _check_size(size)
    with open_regular(path, name) as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise BadImage(f"{name}: empty file")
        return _decode(f, name, size)


def decode_or_reason(path: str | Path, size: int | None = None) -> tuple[np.ndarray | None, str]:
    """`load_image` for loops that must not stop at one bad file: (pixels, "") or (None, reason).

    The reason is one line without the file name (the caller has the path), e.g. "truncated or
    corrupt image (...)" or "refused: a FIFO (named pipe), not a regular file".
    """
    path = Path(path)
    try:
        return load_image(path, size), ""
    except BadImage as exc:
        return None, strip_name(str(exc), path)


def strip_name(message: str, path: str | Path) -> str:
    """A BadImage message without its leading "<file name>: " (for tables that show the path)."""
    prefix = f"{printable(Path(path).name)}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def decode_image_bytes(data: bytes, size: int | None = None, name: str = "upload") -> np.ndarray:
    """`load_image` for bytes already in memory (an upload); `name` is used in error messages."""
    name = printable(name)
    _check_size(size)
    if not data:
        raise BadImage(f"{name}: empty file")
    return _decode(io.BytesIO(data), name, size)

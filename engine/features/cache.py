"""The bottleneck cache: float32 vectors in their own SQLite file, keyed by (model key, content hash).

The only module in engine/features that speaks SQL. `model_key` and `file_hash` are the two halves
of a vector's identity: which extractor (architecture, exact weights, decode pipeline) and which
image bytes, whatever the file's name or folder, so another dataset holding the same images hits.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
import time
from collections.abc import Iterable, Sequence
from contextlib import closing
from importlib import metadata
from pathlib import Path

import numpy as np

from engine import config
from engine.data import images
from engine.errors import InvalidArgument
from engine.features.decode import PIPELINE_VERSION
from engine.models import backbones

CACHE_FILE = "features.sqlite"

# SQLite caps the number of "?" in one statement; lookups go in chunks below that.
_SQL_CHUNK = 500
_BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS features (
    model_key  TEXT NOT NULL,
    image_hash TEXT NOT NULL,
    dim        INTEGER NOT NULL,
    vector     BLOB NOT NULL,
    created    REAL NOT NULL,
    PRIMARY KEY (model_key, image_hash)
);
CREATE TABLE IF NOT EXISTS timings (
    model_key          TEXT PRIMARY KEY,
    seconds_per_image  REAL NOT NULL,
    images             INTEGER NOT NULL
);
"""


def file_hash(path: str | Path) -> str:
    """SHA-256 (hex) of the file's bytes: the identity of an image whatever its name or folder.

    The same hash a dataset scan records (`images.content_hash`); special files are refused.

    Raises:
        BadImage: not a regular file, or it cannot be read.
    """
    return images.content_hash(path)


@functools.lru_cache(maxsize=32)
def _weights_digest(path: str, size: int, mtime_ns: int) -> str:
    # keyed by size and mtime so a replaced file is hashed again; large files hash in ~0.1 s
    del size, mtime_ns
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def model_key(backbone: str, weights: str = "imagenet", seed: int | None = 0) -> str:
    """The cache key of a feature extractor: architecture, exact weights, and pipeline version.

    ImageNet weights are identified by file name, size and content hash (a re-downloaded or
    different file gives new keys); random weights by seed and the Keras version, since the
    initialisers may draw differently across releases.

    Raises:
        NotFound: unknown backbone.  InvalidArgument: bad weights.  WeightsMissing: not cached, offline.
    """
    entry = backbones.get_backbone(backbone)
    backbones.check_weights(weights)
    if weights == "imagenet":
        path = backbones.ensure_weights(backbone)
        st = path.stat()
        digest = _weights_digest(str(path), st.st_size, st.st_mtime_ns)
        ident = f"imagenet:{path.name}:{st.st_size}:{digest}"
    else:
        ident = f"random:seed={seed}:keras={metadata.version('keras')}"
    return f"{entry.name}|{entry.input_size}|{ident}|{PIPELINE_VERSION}"


class FeatureCache:
    """Float32 vectors in one SQLite file, keyed (model_key, image_hash).

    WAL mode plus a busy timeout makes it safe for several processes (jobs, the app) at once;
    each call opens its own short-lived connection, so instances may be shared between threads.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else config.cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / CACHE_FILE
        with closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable enough for a cache, far fewer fsyncs
        return conn

    def get_many(self, model_key: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `hashes` (missing ones are simply absent from the result)."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        with closing(self._connect()) as conn:
            for start in range(0, len(wanted), _SQL_CHUNK):
                chunk = wanted[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT image_hash, dim, vector FROM features "
                    f"WHERE model_key = ? AND image_hash IN ({marks})",
                    [model_key, *chunk],
                )
                for image_hash, dim, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.size == dim:  # a torn or foreign row is treated as a miss
                        found[image_hash] = vector
        return found

    def put_many(self, model_key: str, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Store one vector per hash (rows of `vectors`), replacing what was there, in one transaction."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(hashes) != len(vectors):
            raise InvalidArgument(
                f"put_many needs one row per hash, got {len(hashes)} hashes and shape {vectors.shape}"
            )
        now = time.time()
        rows = [
            (model_key, h, int(v.size), np.ascontiguousarray(v).tobytes(), now)
            for h, v in zip(hashes, vectors, strict=True)
        ]
        with closing(self._connect()) as conn, conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?)", rows)

    def count(self, model_key: str | None = None) -> int:
        """Number of cached vectors, for one model key or in total."""
        with closing(self._connect()) as conn:
            if model_key is None:
                return conn.execute("SELECT COUNT(*) FROM features").fetchone()[0]
            sql = "SELECT COUNT(*) FROM features WHERE model_key = ?"
            return conn.execute(sql, (model_key,)).fetchone()[0]

    def clear(self, model_key: str | None = None) -> None:
        """Forget the vectors of one model key, or everything."""
        with closing(self._connect()) as conn, conn:
            if model_key is None:
                conn.execute("DELETE FROM features")
                conn.execute("DELETE FROM timings")
            else:
                conn.execute("DELETE FROM features WHERE model_key = ?", (model_key,))
                conn.execute("DELETE FROM timings WHERE model_key = ?", (model_key,))
        if model_key is None:
            with closing(self._connect()) as conn:
                conn.execute("VACUUM")

    def size_bytes(self) -> int:
        """Bytes on disk: the database plus its write-ahead log."""
        return sum(
            p.stat().st_size
            for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
            if p.exists()
        )

    def timing(self, model_key: str) -> tuple[float, int] | None:
        """(seconds per image, images measured) of the last sizeable extraction for `model_key`."""
        with closing(self._connect()) as conn:
            row = conn.execute(
                "SELECT seconds_per_image, images FROM timings WHERE model_key = ?", (model_key,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def set_timing(self, model_key: str, seconds_per_image: float, sample: int) -> None:
        """Remember the cost per image measured on `sample` images, to estimate what hits save."""
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "INSERT OR REPLACE INTO timings VALUES (?, ?, ?)", (model_key, seconds_per_image, sample)
            )

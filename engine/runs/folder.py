"""A run's folder: the only module that knows its layout, writes it atomically and vouches for its artifacts.

Layout of `runs/<id>/` (kept stable so run folders stay portable; README documents it):

    model.keras        the classifier: 0..255 pixels in, class probabilities out
    labels.txt         one class name per line, in output order
    config.json        the RunConfig the run was trained with
    metrics.json       {"history": [...], "results": {...}}, written once results are complete
    environment.json   where it ran (machine, versions)
    exports/<format>/  converted models, each with a manifest.json written last
    calibration/       (imported runs) NNNN.jpg: training images of the author at the backbone's input
                       size, for int8 calibration where the author's dataset is not on disk
    familiarity.json   the "none of these" threshold (engine/export/familiar.py), keyed by the bottleneck
                       cache key; recomputed when missing, changed or made for another cache key

Every file is written to a temporary name in the same folder, flushed to disk and renamed over the
old one, so a process killed mid-write leaves the previous file (or none), never half of one. The
lab records a sha256 of each model it writes (`RunStore.record_artifact`); an export is used only
while its bytes still match that record, so a model someone else placed in the folder is never run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import LabError, NotFound

MODEL = "model.keras"
LABELS = "labels.txt"
CONFIG = "config.json"
METRICS = "metrics.json"
ENVIRONMENT = "environment.json"
EXPORTS = "exports"
CALIBRATION = "calibration"
FAMILIARITY = "familiarity.json"
_CHUNK = 1 << 20
_RACY_SECONDS = 2.0
_MAX_REMEMBERED = 256
_HASHES: dict[str, tuple[tuple, str]] = {}  # path -> (stat signature, sha256)


class RunFolder:
    """The files of one run, read and written only through this class.

    Args:
        run_id: the run's id.
        store: the `RunStore` that owns the run (its folder is `store.run_dir(run_id)`); it also
            keeps the artifact hashes.
    """

    def __init__(self, run_id: str, store) -> None:
        self.run_id, self.store = run_id, store
        self.path = store.run_dir(run_id)

    @classmethod
    def of(cls, run_id: str, store=None) -> RunFolder:
        """The folder of a run the store knows; raises NotFound for an unknown id."""
        if store is None:
            from engine.runs.store import RunStore

            store = RunStore()
        return cls(store.get_run(run_id).id, store)

    def __repr__(self) -> str:
        return f"RunFolder({self.path})"

    # -- paths ------------------------------------------------------------------------------------
    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def labels_path(self) -> Path:
        return self.path / LABELS

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def environment_path(self) -> Path:
        return self.path / ENVIRONMENT

    @property
    def exports(self) -> Path:
        return self.path / EXPORTS

    @property
    def calibration_path(self) -> Path:
        return self.path / CALIBRATION

    @property
    def familiarity_path(self) -> Path:
        return self.path / FAMILIARITY

    def relpath(self, path: Path) -> str:
        """`path` relative to the run folder, with forward slashes (the key of an artifact hash)."""
        return Path(path).relative_to(self.path).as_posix()

    def has_model(self) -> bool:
        """Whether model.keras is there as a regular file (not a link, folder or FIFO)."""
        return _is_regular(self.model_path)

    # -- writing ----------------------------------------------------------------------------------
    def save_model(self, model) -> str:
        """Save a Keras model as model.keras atomically and record its hash; returns the sha256."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.model_path, lambda tmp: model.save(tmp))
        return self.record(self.model_path)

    def write_labels(self, class_names: list[str]) -> None:
        bad = [n for n in class_names if not n or "\n" in n or "\r" in n]
        if bad:  # one name per line: a line break would shift every later label
            raise LabError(f"class names cannot be empty or hold line breaks, got {bad[0]!r}")
        atomic_write_text(self.labels_path, "\n".join(class_names) + "\n")

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config_path, json.dumps(config, indent=2, default=float))

    def write_metrics(self, history: list[dict], results: dict[str, Any]) -> None:
        atomic_write_text(
            self.metrics_path, json.dumps({"history": history, "results": results}, indent=2, default=float)
        )

    def write_environment(self, environment: dict[str, Any]) -> None:
        atomic_write_text(self.environment_path, json.dumps(environment, indent=2, default=float))

    def write_calibration(self, jpegs: list[bytes]) -> str:
        """Write calibration images as calibration/0000.jpg, ... in one rename and record the folder's hash.

        The caller has checked the bytes (`engine.runs.bundle` does for imports); returns the sha256.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".tmp-{secrets.token_hex(4)}-{CALIBRATION}"
        try:
            tmp.mkdir()
            for i, data in enumerate(jpegs):
                with open(tmp / f"{i:04d}.jpg", "xb") as f:
                    f.write(data)
                    os.fsync(f.fileno())
            if self.calibration_path.exists():
                shutil.rmtree(self.calibration_path)
            os.replace(tmp, self.calibration_path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.path)
        return self.record(self.calibration_path)

    def write_familiarity(self, data: dict[str, Any]) -> None:
        """Write familiarity.json (engine/export/familiar.py's calibration) atomically and record its hash."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.familiarity_path, json.dumps(data, default=float))
        self.record(self.familiarity_path)

    # -- reading ----------------------------------------------------------------------------------
    def familiarity(self) -> dict[str, Any] | None:
        """familiarity.json as the lab wrote it, or None (absent, changed since written, unreadable)."""
        if not _is_regular(self.familiarity_path) or not self.is_trusted(self.familiarity_path):
            return None
        try:
            data = read_json(self.familiarity_path)
        except LabError:
            return None
        return data if isinstance(data, dict) else None

    def calibration_files(self) -> list[Path]:
        """The calibration JPEGs the lab wrote (sorted), [] when the run has none.

        Raises:
            LabError: the folder differs from what the lab recorded when it wrote it (never used then).
        """
        if not self.calibration_path.exists():
            return []
        if not self.is_trusted(self.calibration_path):
            raise LabError(
                f"{self.calibration_path} is not the calibration set the lab wrote (its sha256 differs from "
                "the one recorded, or none was recorded); refusing to use it"
            )
        return sorted(self.calibration_path.glob("[0-9][0-9][0-9][0-9].jpg"))

    def class_names(self) -> list[str]:
        """The class names of labels.txt, in output order; raises NotFound or LabError."""
        if not _is_regular(self.labels_path):
            raise NotFound(f"Run {self.run_id} has no {LABELS} in {self.path}")
        try:
            text = self.labels_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LabError(f"{self.labels_path} cannot be read: {_one_line(exc)}") from exc
        names = [n for n in text.split("\n") if n]
        if not names:
            raise LabError(f"{self.labels_path} names no classes")
        return names

    def config(self) -> dict[str, Any]:
        """config.json, or the config the store recorded when the folder has none."""
        if not self.config_path.exists():
            return dict(self.store.get_run(self.run_id).config or {})
        data = read_json(self.config_path)
        if not isinstance(data, dict):
            raise LabError(f"{self.config_path} must hold a JSON object, got {type(data).__name__}")
        return data

    def input_size(self, config: dict[str, Any] | None = None) -> int:
        """The square input side of the run's classifier, from its backbone's registry entry."""
        from engine.models import backbones

        config = self.config() if config is None else config
        return backbones.get_backbone(config.get("architecture", backbones.DEFAULT_BACKBONE)).input_size

    def metrics(self) -> dict[str, Any] | None:
        """metrics.json ({"history", "results"}), or None while the run has not written it."""
        return read_json(self.metrics_path) if self.metrics_path.exists() else None

    def require_model(self) -> Path:
        """The model.keras path; raises NotFound when the run has none."""
        if not self.has_model():
            status = self.store.get_run(self.run_id).status
            raise NotFound(f"Run {self.run_id} has no {MODEL} (status: {status}) in {self.path}")
        return self.model_path

    def check_model(self) -> Path:
        """model.keras, refused if it differs from what the lab recorded when it saved it.

        A run folder without a record (made by hand, or by a lab older than the records) is still
        loaded: Keras' safe mode refuses code in it, and `load_model` checks it against its labels.
        """
        path = self.require_model()
        recorded = self.store.artifact_hash(self.run_id, MODEL)
        if recorded is not None and self.hash(path) != recorded:
            raise LabError(
                f"{path} is not the model the lab saved (its sha256 differs from the one recorded); "
                "refusing to load it"
            )
        return path

    def load_model(self):
        """The run's Keras classifier, loaded in safe mode and checked against labels.txt.

        Raises:
            NotFound: no model.keras. LabError: changed since saved, unreadable or truncated, or its
                output count differs from the number of class names.
        """
        import keras

        path = self.check_model()
        try:
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:  # truncated zip, foreign file, unsafe layer: one line, not a traceback
            reason = _one_line(exc)
            raise LabError(f"{path} cannot be loaded ({reason}); it is damaged or not a lab model") from exc
        shape = model.output_shape
        if not isinstance(shape, tuple) or not shape or not isinstance(shape[-1], int):
            raise LabError(f"{path} must have one output of class probabilities, got output shape {shape}")
        self.check_outputs(shape[-1])
        return model

    def check_outputs(self, count: int) -> list[str]:
        """The class names, if there is one per model output; else LabError (never silently wrong labels)."""
        names = self.class_names()
        if count != len(names):
            raise LabError(
                f"{self.model_path} has {count} outputs but {self.labels_path} names {len(names)} classes; "
                "refusing a model whose labels do not match"
            )
        return names

    # -- artifact hashes --------------------------------------------------------------------------
    def hash(self, path: Path) -> str:
        """sha256 of a file, or of a folder's sorted relative paths and file bytes (remembered while
        no file's inode, size, mtime or ctime changes: pages list exports on every rerun)."""
        key, before = str(path), _signature(path)
        hit = _HASHES.get(key)
        if hit is not None and hit[0] == before:
            return hit[1]
        digest = tree_hash(path)
        # like git's racy-clean rule: a file changed within the clock's granularity may change again
        # without its times moving, so only signatures older than that are trusted to stand for bytes
        if _signature(path) == before and time.time() - max(e[-1] for e in before) / 1e9 > _RACY_SECONDS:
            if len(_HASHES) >= _MAX_REMEMBERED:
                _HASHES.pop(next(iter(_HASHES)))
            _HASHES[key] = (before, digest)
        return digest

    def record(self, path: Path) -> str:
        """Record the hash of an artifact the lab has just written; returns it."""
        digest = self.hash(path)
        self.store.record_artifact(self.run_id, self.relpath(path), digest)
        return digest

    def is_trusted(self, path: Path) -> bool:
        """Whether `path` is exactly what the lab recorded when it wrote it (False without a record)."""
        recorded = self.store.artifact_hash(self.run_id, self.relpath(path))
        if recorded is None:
            return False
        try:
            return self.hash(path) == recorded
        except (OSError, LabError):  # gone, unreadable, or holds a link or special file
            return False


# -- helpers ----------------------------------------------------------------------------------------
def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Let `write(tmp)` create a temporary file beside `path`, flush it to disk and rename it over `path`.

    The temporary name keeps `path`'s suffix (Keras insists on `.keras`). If `write` raises, the
    temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{secrets.token_hex(4)}-{path.name}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json(path: Path) -> Any:
    """A JSON file, or a LabError naming it when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise LabError(f"{path} is not readable JSON: {_one_line(exc)}") from exc


def tree_hash(path: Path) -> str:
    """sha256 hex of a regular file's bytes; for a folder, of its sorted relative paths and file bytes.

    Raises:
        LabError: the path, or anything inside the folder, is a link or a special file (a FIFO
            would block the read forever; a link could point anywhere).
    """
    path = Path(path)
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode):
        digest = hashlib.sha256()
        _hash_file(path, digest)
        return digest.hexdigest()
    if not stat.S_ISDIR(mode):
        raise LabError(f"{path} is a link or special file, not an artifact the lab wrote")
    digest = hashlib.sha256()
    for rel, full in _walk(path):
        entry = os.lstat(full).st_mode
        name = rel.encode("utf-8", "surrogateescape")
        if stat.S_ISDIR(entry):
            digest.update(b"d\0" + name + b"\0")
        elif stat.S_ISREG(entry):
            digest.update(b"f\0" + name + b"\0" + os.lstat(full).st_size.to_bytes(8, "big"))
            _hash_file(full, digest)
        else:
            raise LabError(f"{full} is a link or special file, not an artifact the lab wrote")
    return digest.hexdigest()


def _walk(root: Path) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            out.append((full.relative_to(root).as_posix(), full))
    return sorted(out)


def _signature(path: Path) -> tuple:
    """(name, mode, device, inode, size, mtime, ctime) of the path and everything under it, unfollowed.

    The ctime cannot be set from user space, so new bytes written in place always move it.
    """
    path = Path(path)
    entries = [("", path)] + (_walk(path) if stat.S_ISDIR(os.lstat(path).st_mode) else [])
    out = []
    for rel, full in entries:
        st = os.lstat(full)
        out.append((rel, st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def _hash_file(path: Path, digest) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _fsync_dir(folder: Path) -> None:
    # the rename itself reaches the disk only when the folder's entry does
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""Where the lab keeps its data: one setting, `LAB_HOME`; Keras weights stay in `KERAS_HOME`.

Every folder and file of the data directory is named here and nowhere else:

    $LAB_HOME/
        lab.sqlite          runs, experiments, metrics, jobs (engine.runs.store)
        runs/<run_id>/      one portable folder per run
        jobs/<job_id>/      a job's log
        workers/            the warm job workers' own logs (engine.jobs.pool)
        datasets/           downloaded and demo datasets; uploads/ extracted uploads; downloads/ archives
        cache/              the bottleneck cache; architecture/ analysed models
        timings/            timing lab reports, measured here or imported
        uploads/models/     .tflite classifiers uploaded on Classify, one folder per upload

Functions that take `home` answer for another data directory (a store opened on a given file);
by default they use `lab_home()`. Every folder is created on first use; a data directory that is a
file or is not writable raises a `LabError` that names the path and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import LabError

STORE_FILE = "lab.sqlite"


def _ensure_dir(path: Path) -> Path:
    """Create `path` (and parents) and check it is a writable folder, or raise a LabError saying why."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LabError(
            f"Data directory {path} is a file, not a folder: move it away or set LAB_HOME to a folder"
        ) from None
    except NotADirectoryError:
        raise LabError(
            f"Cannot create {path}: a part of that path is a file, not a folder; set LAB_HOME to a folder"
        ) from None
    except PermissionError:
        raise LabError(
            f"Cannot create {path}: permission denied; set LAB_HOME to a folder you can write to"
        ) from None
    except OSError as exc:
        raise LabError(
            f"Cannot create {path}: {exc.strerror or exc}; set LAB_HOME to a usable folder"
        ) from None
    if not path.is_dir():
        raise LabError(f"{path} is not a folder: move it away or set LAB_HOME to a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise LabError(
            f"{path} is not writable: fix its permissions or set LAB_HOME to a folder you can write to"
        )
    return path


def lab_home() -> Path:
    """The data directory: `$LAB_HOME`, default `~/.classifier_lab`. Created on first use.

    Raises:
        LabError: it is a file, cannot be created, or is not writable.
    """
    return _ensure_dir(Path(os.environ.get("LAB_HOME") or Path.home() / ".classifier_lab").expanduser())


def _sub(home: str | Path | None, *parts: str) -> Path:
    root = Path(home) if home is not None else lab_home()
    return _ensure_dir(root.joinpath(*parts))


def keras_home() -> Path:
    """Keras' own cache root (`$KERAS_HOME`, default `~/.keras`); weights live in its `models/`."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def keras_models_dir() -> Path:
    """The folder where Keras looks for (and downloads) application weights."""
    return keras_home() / "models"


def store_file(home: str | Path | None = None) -> Path:
    """The SQLite file of runs, experiments, metrics and jobs."""
    root = _ensure_dir(Path(home)) if home is not None else lab_home()
    return root / STORE_FILE


def runs_dir(home: str | Path | None = None) -> Path:
    """One folder per run holding its portable artifacts."""
    return _sub(home, "runs")


def jobs_dir(home: str | Path | None = None) -> Path:
    """One folder per job holding its log."""
    return _sub(home, "jobs")


def worker_logs_dir(home: str | Path | None = None) -> Path:
    """The logs of warm job workers (each job's own lines also go to its job folder)."""
    return _sub(home, "workers")


def datasets_dir() -> Path:
    """Downloaded, extracted and uploaded datasets."""
    return _sub(None, "datasets")


def uploads_dir() -> Path:
    """Extracted uploads, one folder per dataset name (inside `datasets_dir()`)."""
    return _sub(None, "datasets", "uploads")


def model_uploads_dir() -> Path:
    """Uploaded .tflite classifiers with their labels, one folder per upload (engine.export.uploaded)."""
    return _sub(None, "uploads", "models")


def downloads_dir() -> Path:
    """Downloaded dataset archives, kept so a dataset can be extracted again offline."""
    return _sub(None, "datasets", "downloads")


def cache_dir() -> Path:
    """The bottleneck (feature) cache."""
    return _sub(None, "cache")


def architecture_cache_dir() -> Path:
    """Analysed architectures (JSON per backbone and Keras version)."""
    return _sub(None, "cache", "architecture")


def timings_dir() -> Path:
    """Timing lab reports, measured here or imported."""
    return _sub(None, "timings")


SERVE_MODES = ("local", "class")


def serve_mode() -> str:
    """`$LAB_SERVE_MODE`: "local" (default: one user on this machine) or "class" (served to others).

    In class mode the pages offer no server folders (only uploads and stored datasets) and show
    no error details; see the README on serving a class.

    Raises:
        LabError: any other value (a misspelt mode must not silently serve the local one).
    """
    mode = (os.environ.get("LAB_SERVE_MODE") or "local").strip().lower()
    if mode not in SERVE_MODES:
        raise LabError(f"LAB_SERVE_MODE must be one of {', '.join(SERVE_MODES)}, got LAB_SERVE_MODE={mode!r}")
    return mode


def _whole_number_setting(name: str, default: int, minimum: int) -> int:
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise LabError(f"{name} must be a whole number >= {minimum}, got {name}={raw!r}")
    return value


def max_jobs() -> int:
    """`$LAB_MAX_JOBS`: how many jobs run at once on this machine; the rest wait in line.

    Default: half the usable cores, at least 1 (a training job keeps about two cores busy).

    Raises:
        LabError: a value that is not a whole number >= 1.
    """
    from engine.machine import usable_cores  # the ground's other module; imported late, it reads /proc

    return _whole_number_setting("LAB_MAX_JOBS", max(1, usable_cores() // 2), 1)


def warm_workers() -> int:
    """`$LAB_WARM_WORKERS`: how many idle job workers stay warm (TensorFlow imported, backbone built)
    waiting for the next job; 0 starts a fresh one-shot worker per job (the old way).

    Default 1: a warm worker holds ~0.75 GB, and one is enough to make the next Train press fast.
    Never more workers than `max_jobs()` exist at once, idle or busy.

    Raises:
        LabError: a value that is not a whole number >= 0.
    """
    return _whole_number_setting("LAB_WARM_WORKERS", 1, 0)


def worker_idle_seconds() -> int:
    """`$LAB_WORKER_IDLE_SECONDS`: an idle warm worker exits after this long without a job (default 600).

    Raises:
        LabError: a value that is not a whole number >= 1.
    """
    return _whole_number_setting("LAB_WORKER_IDLE_SECONDS", 600, 1)


def worker_max_jobs() -> int:
    """`$LAB_WORKER_MAX_JOBS`: a warm worker is replaced after this many jobs (default 50), which bounds
    what a leak in one job kind can pile up.

    Raises:
        LabError: a value that is not a whole number >= 1.
    """
    return _whole_number_setting("LAB_WORKER_MAX_JOBS", 50, 1)


def worker_max_rss_mb() -> int:
    """`$LAB_WORKER_MAX_RSS_MB`: a warm worker whose resident memory is above this after a job exits
    instead of waiting for the next one (default 3000 MB; a worker that trained MobileNet holds ~0.8 GB).

    Raises:
        LabError: a value that is not a whole number >= 100.
    """
    return _whole_number_setting("LAB_WORKER_MAX_RSS_MB", 3000, 100)


def prewarm_enabled() -> bool:
    """`$LAB_PREWARM`: "0" keeps the dashboard from starting a warm worker when it opens (default "1")."""
    return (os.environ.get("LAB_PREWARM") or "1").strip() != "0"


DEFAULT_USER_QUOTA_MB = 500  # a class of 30 uploading flower-sized sets stays under the uploads quota


def user_quota_bytes() -> int | None:
    """`$LAB_USER_QUOTA_MB` in bytes: what one display name may upload in class mode; None in local mode.

    Raises:
        LabError: a value that is not a whole number >= 0, or a bad `LAB_SERVE_MODE`.
    """
    if serve_mode() != "class":
        return None
    return _whole_number_setting("LAB_USER_QUOTA_MB", DEFAULT_USER_QUOTA_MB, 0) * 1024**2


def litert_dir() -> Path:
    """Backbones converted to LiteRT for extraction, one .tflite per (backbone, weights, versions)."""
    return _sub(None, "cache", "litert")


def onnx_dir() -> Path:
    """Backbones converted to ONNX for extraction, one .onnx per (backbone, weights, versions)."""
    return _sub(None, "cache", "onnx")

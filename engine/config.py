"""Where the lab keeps its data: one setting, `LAB_HOME`; Keras weights stay in `KERAS_HOME`."""

from __future__ import annotations

import os
from pathlib import Path


def lab_home() -> Path:
    """The data directory: `$LAB_HOME`, default `~/.classifier_lab`. Created on first use."""
    root = Path(os.environ.get("LAB_HOME") or Path.home() / ".classifier_lab").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def keras_home() -> Path:
    """Keras' own cache root (`$KERAS_HOME`, default `~/.keras`); weights live in its `models/`."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def keras_models_dir() -> Path:
    """The folder where Keras looks for (and downloads) application weights."""
    return keras_home() / "models"


def datasets_dir() -> Path:
    """Downloaded, extracted and uploaded datasets."""
    path = lab_home() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """The bottleneck (feature) cache."""
    path = lab_home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """One folder per run holding its portable artifacts."""
    path = lab_home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path

"""Shared fixtures: an isolated LAB_HOME per test, and the real offline assets from ../shared."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_ASSETS = ROOT.parent / "shared" / "assets"
FLOWERS = SHARED_ASSETS / "flower_photos_small_set"
MOBILENET_025_WEIGHTS = SHARED_ASSETS / "keras_weights" / "mobilenet_2_5_224_tf_no_top.h5"
SAMPLE_IMAGES = SHARED_ASSETS / "sample_images"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs the shared offline asset {path} (../shared/assets is absent here)")
    return path


@pytest.fixture(autouse=True)
def lab_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own data directory and an empty Keras cache."""
    home = tmp_path / "lab_home"
    monkeypatch.setenv("LAB_HOME", str(home))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    # warm job workers (engine.jobs.pool) of a test exit soon after its jobs, and page tests start none;
    # the browser suite's server (a session fixture, started before this) keeps the dashboard's defaults
    monkeypatch.setenv("LAB_WORKER_IDLE_SECONDS", "5")
    monkeypatch.setenv("LAB_PREWARM", "0")
    return home


@pytest.fixture
def flowers_dir() -> Path:
    """The 200 real flower photos (5 classes) from ../shared/assets."""
    return _need(FLOWERS)


@pytest.fixture
def sample_images_dir() -> Path:
    return _need(SAMPLE_IMAGES)


@pytest.fixture
def seeded_keras_home(tmp_path, monkeypatch) -> Path:
    """A $KERAS_HOME whose models/ holds the real MobileNet 0.25_224 ImageNet weights."""
    weights = _need(MOBILENET_025_WEIGHTS)
    home = tmp_path / "keras_home"
    (home / "models").mkdir(parents=True, exist_ok=True)
    shutil.copy(weights, home / "models" / weights.name)
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture
def forget_converted_extractors():
    """Drop the LiteRT / ONNX Runtime extractors kept in memory: each test has its own LAB_HOME, so
    nothing converted for one test may carry over to the next."""
    from engine.features import extract

    for kept in extract._FAST.values():
        kept.clear()
    yield
    for kept in extract._FAST.values():
        kept.clear()

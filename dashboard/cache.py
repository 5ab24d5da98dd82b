"""Every `st.cache_resource` / `st.cache_data` wrapper of the dashboard, in one place.

Resources (the run store, loaded classifiers, TensorFlow facts) are shared by all sessions of the
server; data caches hold plain values. TensorFlow is imported only inside the loaders that need it,
so pages without a model never pay for it. Caches are keyed by the data directory as well, because
tests (and users) may point `LAB_HOME` somewhere else within one server process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from engine import config
from engine.data import images
from engine.models import backbones
from engine.timing import machine as sysinfo

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _home() -> str:
    return str(config.lab_home())


# -- store -------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def _store(home: str):
    from engine.runs.store import RunStore

    return RunStore()  # reads LAB_HOME, which `home` keys


def store():
    """The run store of the current data directory (one object per directory, thread-safe)."""
    return _store(_home())


# -- environment -------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, ttl=600)
def _basic_facts(home: str, keras_home: str) -> dict[str, Any]:
    return sysinfo.basic_facts()


def basic_facts() -> dict[str, Any]:
    """Versions, CPU, packages and the data folders; instant, no TensorFlow import."""
    return _basic_facts(_home(), str(config.keras_home()))


@st.cache_resource(show_spinner="Asking TensorFlow which devices it sees…")
def tensorflow_facts() -> dict[str, Any]:
    """What TensorFlow reports (imports TensorFlow once per server process)."""
    return sysinfo.tensorflow_facts()


# -- registry and assets -----------------------------------------------------------------------
def backbone_table() -> list[dict[str, Any]]:
    """One row per registered backbone (name, family, input size, feature dim, paper, year)."""
    return _backbone_table(str(config.keras_home()))


@st.cache_data(show_spinner=False, ttl=60)  # "weights cached" changes when a run downloads weights
def _backbone_table(keras_home: str) -> list[dict[str, Any]]:
    rows = []
    for name in backbones.list_backbones():
        b = backbones.get_backbone(name)
        rows.append(
            {
                "name": b.name,
                "family": b.family,
                "input": f"{b.input_size}×{b.input_size}",
                "feature dim": b.feature_dim,
                "preprocessing": "[-1, 1]" if b.preprocessing == "tf" else "0..255 (in model)",
                "weights cached": backbones.weights_cached(name),
                "paper": b.paper,
                "year": b.year,
            }
        )
    return rows


@st.cache_data(show_spinner=False)
def concepts() -> list[dict[str, str]]:
    """The Overview's concept cards from assets/concepts.md: title, body, source."""
    text = (ASSETS / "concepts.md").read_text(encoding="utf-8")
    cards = []
    for block in text.split("\n## ")[1:]:
        title, _, rest = block.partition("\n")
        body, source = [], ""
        for line in rest.strip().splitlines():
            if line.startswith("Source:"):
                source = line.removeprefix("Source:").strip()
            else:
                body.append(line)
        cards.append({"title": title.strip(), "body": " ".join(body).strip(), "source": source})
    return cards


# -- datasets and images -----------------------------------------------------------------------
def _folder_signature(path: str) -> tuple:
    """Changes when files are added to or removed from a dataset folder (cheap: folder mtimes)."""
    root = Path(path)
    try:
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in root.iterdir() if p.is_dir()))
    except OSError:
        return ()


@st.cache_data(show_spinner="Scanning images…", max_entries=16)
def _scan(path: str, validation: int, testing: int, signature: tuple):
    from engine.data import datasets

    return datasets.scan_image_dir(path, validation, testing)


def scan_dataset(path: str | Path, validation: int = 10, testing: int = 10):
    """`engine.data.datasets.scan_image_dir`, cached until the folder's contents change."""
    return _scan(str(path), validation, testing, _folder_signature(str(path)))


@st.cache_data(show_spinner=False, max_entries=4000)
def thumbnail(path: str, size: int = 128) -> np.ndarray:
    """A square RGB thumbnail of an image file (raises BadImage for unreadable files)."""
    return images.load_image(path, size)


# -- models --------------------------------------------------------------------------------------
@st.cache_resource(show_spinner="Loading the run's classifier…", max_entries=4)
def _run_classifier(home: str, run_id: str):
    from engine.export.predict import Classifier

    return Classifier.from_run(run_id, store=store())


def run_classifier(run_id: str):
    """A run's trained classifier (imports TensorFlow and loads model.keras once per run)."""
    return _run_classifier(_home(), run_id)


@st.cache_resource(show_spinner="Loading the ImageNet classifier…", max_entries=2)
def _pretrained(keras_home: str, name: str):
    from engine.export.predict import pretrained_classifier

    return pretrained_classifier(name)


def pretrained(name: str):
    """A backbone's ImageNet 1,000-class classifier (raises WeightsMissing offline)."""
    return _pretrained(str(config.keras_home()), name)


def forget_run(run_id: str) -> None:
    """Drop cached resources of a deleted run."""
    _run_classifier.clear(_home(), run_id)
    _choice_classifier.clear()  # keyed by choice, which may name the run in any format


# -- Classify: models side by side ---------------------------------------------------------------
@st.cache_data(show_spinner=False, ttl=10)
def _model_choices(home: str, keras_home: str) -> tuple[list, list]:
    from engine.export import lineup, runtimes
    from engine.export.uploaded import uploaded_choices

    present = [*lineup.available_choices(store()), *uploaded_choices()]
    keys = {c.key for c in present}
    formats = [f for f in runtimes.FORMATS if f not in runtimes.TENSORRT_FORMATS] + (
        list(runtimes.TENSORRT_FORMATS) if tensorrt_status()["available"] else []
    )
    runs = [c.ref for c in present if c.kind == "run" and c.fmt == "keras"]
    later = [
        lineup.run_choice(run_id, fmt, store())
        for run_id in runs
        for fmt in formats
        if f"run:{run_id}:{fmt}" not in keys
    ]
    return present, later


def model_choices() -> tuple[list, list]:
    """(models Classify can run now, run formats it can convert on first use): lineup.ModelChoice lists.

    Now: finished runs in every format present, ImageNet models with cached top weights, uploaded
    .tflite files. Later: each finished run's other formats (TensorRT only where it can run here).
    """
    return _model_choices(_home(), str(config.keras_home()))


def refresh_model_choices() -> None:
    """Forget the list after a conversion or an upload, so the next look sees the new model."""
    _model_choices.clear()


@st.cache_resource(show_spinner=False, max_entries=8)
def _choice_classifier(home: str, keras_home: str, key: str, _choice):
    from engine.export.lineup import load_choice

    return load_choice(_choice, store=store())


def choice_classifier(choice):
    """The loaded classifier of a ModelChoice (engine.export.lineup.load_choice), once per server."""
    return _choice_classifier(_home(), str(config.keras_home()), choice.key, choice)


@st.cache_data(show_spinner=False, max_entries=64)
def _explanation(home: str, key: str, digest: str, class_name: str | None, _choice, _data: bytes):
    from engine.export.heatmap import explain, overlay

    heatmap = explain(choice_classifier(_choice), _data, class_name=class_name)
    return heatmap, overlay(_data, heatmap.heat)


def explanation(choice, data: bytes, class_name: str | None = None):
    """(engine.export.heatmap.Heatmap, overlay RGB) of one photo for one model's class, computed once."""
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    return _explanation(_home(), choice.key, digest, class_name, choice, data)


def model_file(run_id: str) -> Path | None:
    """The run's portable classifier file (`model.keras` in its run folder), None while it has none."""
    from engine.runs.folder import RunFolder

    folder = RunFolder(run_id, store())
    return folder.model_path if folder.has_model() else None  # a regular file: never a link or FIFO


# --- architecture explorer ----------------------------------------------------------------------
@st.cache_resource(show_spinner="Counting layers: building the Keras model once (cached afterwards)…")
def architecture(name: str):
    """`engine.models.architecture.analyze(name)`: frozen, shared by all sessions (JSON-cached on disk)."""
    from engine.models.architecture import analyze

    return analyze(name)


@st.cache_data(show_spinner="Reading cached bottleneck features…", ttl=30, max_entries=16)
def _feature_projection(home: str, folder: str, name: str, weights: str):
    from engine.features.projection import cached_projection

    return cached_projection(folder, name, weights)


def feature_projection(folder: str, name: str, weights: str = "imagenet"):
    """2-D PCA of a dataset's cached bottleneck features, or None (refreshed every 30 s)."""
    return _feature_projection(_home(), str(folder), name, weights)


# --- conversion & timing ---
@st.cache_data(show_spinner=False, ttl=300)
def tensorrt_status() -> dict[str, Any]:
    """Whether ONNX Runtime's TensorRT provider can run here, and what is missing (no TensorFlow import)."""
    from engine.export import runtimes

    return runtimes.tensorrt_status()

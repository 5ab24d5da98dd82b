"""What the converted backbones share: one on-disk file per weights, checked against TensorFlow.

engine/features/litert.py (LiteRT, XNNPACK) and engine/features/onnx_forward.py (ONNX Runtime's CPU
provider) each describe their runtime as a `Runtime`: the folder and file suffix of its converted
files, the packages it needs, the forward class that runs a file, and (per call) the conversion
step that turns a Keras SavedModel into that file. Everything else lives here once:

- the file is named by the extractor's model key, the converter/runtime versions and the format
  version, so new weights or new packages mean a new file;
- `convert` exports the graph, converts, checks the result against TensorFlow on a fixed probe batch
  (`probe`) within a tolerance, times the forward pass on it (`cpu_ms_per_image`), and writes the
  file atomically with its details JSON beside it; each step is a progress event with a cancel
  check before it. A refusal (failure or disagreement) is remembered in a `.failed.json` file so
  the next extraction does not convert again;
- `load` removes a damaged file instead of using it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.progress import CancelFn, ProgressFn, check_cancel, emit

STEPS = 3
_PROBE_IMAGES = 4
_TIMING_RUNS = 3
_TIMING_BATCH = 16  # images per timed call: nearer the batches extraction runs


def probe(size: int) -> np.ndarray:
    """The fixed pixels the agreement check and the timing use (every runtime the same)."""
    return np.random.default_rng(0).integers(0, 256, (_PROBE_IMAGES, size, size, 3)).astype(np.float32)


def cpu_ms_per_image(forward, pixels: np.ndarray, runs: int = _TIMING_RUNS) -> float:
    """Process CPU milliseconds per image of `forward` on `pixels` repeated to a batch of
    `_TIMING_BATCH` (the probe's 4 images favour a runtime that is quick on tiny batches), best of
    `runs` after one warm-up.

    CPU time, not wall time: other processes on a shared machine barely move it, so two runtimes
    timed at different moments still compare.
    """
    pixels = np.concatenate([pixels] * -(-_TIMING_BATCH // len(pixels)))[:_TIMING_BATCH]
    forward(pixels)
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        forward(pixels)
        best = min(best, time.process_time() - start)
    return best / len(pixels) * 1000


@dataclass(frozen=True)
class Runtime:
    """One converted-backbone runtime.

    short: its name in conversion messages ("LiteRT", "ONNX"); runtime: its name in the
    disagreement reason ("LiteRT", "ONNX Runtime"); fmt: the progress events' `format`;
    folder: where its files live (called each time: LAB_HOME may change); suffix: the file suffix;
    format_version: bumped when the conversion changes; dists: (label, distribution) pairs whose
    versions name the file; needs: (module, package) pairs it imports; forward: the class that runs
    a file (path -> callable on float32 pixels); load_errors: what `forward` raises on a damaged
    file; extra: more fields for the details JSON.
    """

    short: str
    runtime: str
    fmt: str
    folder: Callable[[], Path]
    suffix: str
    format_version: str
    dists: tuple[tuple[str, str], ...]
    needs: tuple[tuple[str, str], ...]
    forward: Callable[[Path], Any]
    load_errors: tuple[type[BaseException], ...] = (Exception,)
    extra: tuple[tuple[str, Any], ...] = ()

    def versions(self) -> str:
        """The converter and runtime versions a converted file depends on."""
        from importlib import metadata

        def v(dist: str) -> str:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                return "none"

        return ":".join(f"{label}={v(dist)}" for label, dist in self.dists)

    def model_path(self, key: str) -> Path:
        """Where the converted backbone of model key `key` lives (it may not exist yet)."""
        digest = hashlib.sha256(f"{key}|{self.versions()}|{self.format_version}".encode()).hexdigest()[:24]
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key.split("|")[0])[:40]
        return self.folder() / f"{safe}-{digest}{self.suffix}"

    def available(self) -> str | None:
        """None when the runtime (and its converter) can run here, else why not (one line)."""
        for module, package in self.needs:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                return f"{package} is not installed ({exc})"
        return None

    def cached(self, key: str) -> bool:
        """Whether a checked conversion of `key` is on disk."""
        return self.model_path(key).is_file()

    def known_failure(self, key: str) -> str | None:
        """The reason an earlier conversion of `key` was refused, if one was."""
        try:
            return json.loads(_failure_path(self.model_path(key)).read_text())["reason"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def details(self, key: str) -> dict[str, Any]:
        """What the conversion of `key` recorded (max_abs_diff, cpu_ms_per_image, ...); {} if nothing."""
        try:
            data = json.loads(self.model_path(key).with_suffix(".json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def load(self, key: str):
        """The converted backbone of `key` if it is on disk and loads; a damaged file is removed."""
        path = self.model_path(key)
        if not path.is_file():
            return None
        try:
            return self.forward(path)
        except self.load_errors:
            path.unlink(missing_ok=True)  # damaged: the next conversion writes it anew
            return None

    def convert(
        self,
        key: str,
        model,
        input_size: int,
        to_file: Callable[[Path, Path], None],
        tolerance: float,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
    ) -> tuple[Any, str | None, dict[str, Any]]:
        """Convert the Keras feature extractor `model` (0..255 pixels in) with `to_file(saved_model,
        dest)` and keep the file if its features agree with TensorFlow's within `tolerance`.

        Returns (forward, None, details) on success, details holding `max_abs_diff` and
        `cpu_ms_per_image` on the probe batch; (None, reason, details) when the conversion fails or
        its features differ by more than `tolerance` (the reason is remembered).

        Raises:
            Cancelled: between steps; nothing is written.
        """
        path = self.model_path(key)
        name = key.split("|")[0]
        what = f"Converting {name} to {self.short}"

        def step(done: int, message: str) -> None:
            check_cancel(cancel)
            emit(progress, "convert", done, STEPS, message, format=self.fmt, backbone=name)

        info: dict[str, Any] = {
            "key": key,
            "versions": self.versions(),
            "tolerance": tolerance,
            **dict(self.extra),
        }
        work = Path(tempfile.mkdtemp(prefix=".convert-", dir=path.parent))
        try:
            step(0, f"{what}: exporting the graph (step 1 of {STEPS})")
            try:
                model.export(str(work / "saved_model"), format="tf_saved_model", verbose=False)
            except Exception as exc:  # exporters and converters raise many kinds: TensorFlow stays
                return None, self._remember(path, self._failed("export", exc), info), info
            step(1, f"{what}: converting (step 2 of {STEPS})")
            candidate = work / f"model{self.suffix}"
            try:
                to_file(work / "saved_model", candidate)
            except Exception as exc:
                return None, self._remember(path, self._failed("conversion", exc), info), info
            step(2, f"{what}: checking against TensorFlow and timing (step 3 of {STEPS})")
            pixels = probe(input_size)
            try:
                forward = self.forward(candidate)
                ours = forward(pixels)
            except Exception as exc:
                return None, self._remember(path, self._failed("session", exc), info), info
            reference = model(pixels, training=False).numpy()
            diff = float(np.max(np.abs(ours - reference))) if ours.shape == reference.shape else float("inf")
            info["max_abs_diff"] = diff
            if not np.isfinite(diff) or diff > tolerance:
                reason = f"{self.runtime} features differ from TensorFlow's by {diff:.2e} (max abs)"
                reason += f" > {tolerance:g}"
                return None, self._remember(path, reason, info), info
            info["cpu_ms_per_image"] = round(cpu_ms_per_image(forward, pixels), 3)
            check_cancel(cancel)
            os.replace(candidate, path)  # atomic: readers see the whole checked file or none
            _failure_path(path).unlink(missing_ok=True)
            _write_json(path.with_suffix(".json"), info)
            emit(progress, "convert", STEPS, STEPS, f"Converted {name} to {self.short}", format=self.fmt)
            return self.forward(path), None, info
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _failed(self, what: str, exc: Exception) -> str:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{self.short} {what} failed: {first}"

    def _remember(self, path: Path, reason: str, info: dict[str, Any]) -> str:
        info["reason"] = reason
        _write_json(_failure_path(path), info)
        return reason


def _failure_path(path: Path) -> Path:
    return path.with_suffix(".failed.json")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)

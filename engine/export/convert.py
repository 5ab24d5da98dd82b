"""Convert a run's classifier to deployable formats, stored in the run folder with a manifest each.

Formats: SavedModel (`model.export`), `.keras` (the run's own file), TFLite float32 / float16 /
dynamic-range / full-integer int8 (calibrated on the run's own training images, or on the
calibration images an imported run's bundle brought), ONNX (tf2onnx)
and TensorRT FP32/FP16 (ONNX Runtime's TensorRT provider on an NVIDIA GPU; TF-TRT left
TensorFlow in 2.18). Layout: `runs/<id>/exports/<format>/{model file, manifest.json}`; a manifest
is written last, so a format without one is not there. Conversion stops between formats when
cancelled, and every format is built in a scratch folder and moved into place only when done.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InvalidArgument, LabError, NotFound
from engine.export import runtimes
from engine.export.runtimes import FORMATS, TENSORRT_FORMATS, RuntimeUnavailable
from engine.progress import CancelFn, ProgressFn, check_cancel, emit
from engine.runs.folder import RunFolder, atomic_write_text, read_json

DEFAULT_FORMATS = ("savedmodel", "tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "onnx")
MODEL_FILES = {"savedmodel": "saved_model", "onnx": "model.onnx", "keras": "model.keras"}
ONNX_OPSET = 17  # supported by ONNX Runtime 1.x and TensorRT 8.6+
CALIBRATION_IMAGES = 100  # training images the int8 converter calibrates its ranges on
VERSIONED = ("tensorflow", "keras", "ai-edge-litert", "tf2onnx", "onnx", "onnxruntime", "tensorrt")


@dataclass
class RunModel:
    """What conversion needs to know about a run."""

    run_id: str
    folder: Path
    config: dict[str, Any]
    class_names: list[str]
    input_size: int
    files: RunFolder  # the run folder's layout, loading and artifact hashes

    @property
    def exports(self) -> Path:
        return self.files.exports


def open_run(run_id: str, store=None) -> RunModel:
    """The run's folder, config, labels and input size; raises NotFound without a model.keras."""
    files = RunFolder.of(run_id, store)
    files.require_model()
    config = files.config()
    return RunModel(files.run_id, files.path, config, files.class_names(), files.input_size(config), files)


def parse_formats(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """'tflite-int8,onnx' or a list -> checked list of formats ('all' = every format)."""
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if items == ["all"]:
        return list(FORMATS)
    if not items:
        raise InvalidArgument(f"Name at least one format ({', '.join(FORMATS)}), got {text!r}")
    return [runtimes.check_format(f) for f in dict.fromkeys(items)]


def model_path(run: RunModel, fmt: str) -> Path:
    """Where the runtime loads `fmt` from (TensorRT formats load the ONNX file)."""
    if fmt == "keras":
        return run.files.model_path
    if fmt in TENSORRT_FORMATS:
        return run.exports / "onnx" / MODEL_FILES["onnx"]
    return run.exports / fmt / MODEL_FILES.get(fmt, "model.tflite")


def read_manifest(run: RunModel, fmt: str) -> dict[str, Any] | None:
    """The manifest of a finished export the lab wrote, or None (then it is built again).

    An export whose model no longer matches the hash the lab recorded when it wrote it, or was never
    recorded (placed there by someone else), counts as missing: it is never loaded.

    Raises:
        LabError: fmt "keras" and model.keras differs from the model the lab saved.
    """
    if fmt == "keras":
        path = run.files.check_model()
        return {"format": "keras", "file": path.name, "size_bytes": path.stat().st_size, "seconds": 0.0}
    path = run.exports / fmt / "manifest.json"
    if not path.is_file() or not run.files.is_trusted(model_path(run, fmt)):
        return None
    try:
        manifest = read_json(path)
    except LabError:
        return None
    return manifest if isinstance(manifest, dict) else None


def list_exports(run_id: str, store=None) -> list[dict[str, Any]]:
    """Manifests of every format this run has, in FORMATS order (keras is always there)."""
    run = open_run(run_id, store)
    return [m for fmt in FORMATS if (m := read_manifest(run, fmt)) is not None]


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _versions() -> dict[str, str | None]:
    return {name: runtimes.version(name) for name in VERSIONED}


class _Converter:
    """Builds formats for one run, loading the Keras model and its SavedModel once."""

    def __init__(self, run: RunModel, calibration_images: int, progress, cancel) -> None:
        self.run, self.calibration_images = run, calibration_images
        self.progress, self.cancel = progress, cancel
        self.work = run.exports / ".work"
        self._model = None
        self.step = (0, 1)  # (formats done, formats asked): progress events stay on one scale

    def model(self):
        if self._model is None:
            self._model = self.run.files.load_model()  # safe mode, hash and labels checked
        return self._model

    def saved_model(self) -> Path:
        path = self.work / "saved_model"
        if not (path / "saved_model.pb").is_file():
            shutil.rmtree(path, ignore_errors=True)
            self.model().export(str(path), format="tf_saved_model", verbose=False)
        return path

    def build(self, fmt: str, out: Path) -> dict[str, Any]:
        """Write `fmt` into the empty folder `out`; returns manifest details."""
        if fmt == "savedmodel":
            shutil.copytree(self.saved_model(), out / MODEL_FILES[fmt])
            return {"signature": "serving_default"}
        if fmt.startswith("tflite"):
            return self._tflite(fmt, out / "model.tflite")
        if fmt == "onnx":
            return self._onnx(out / MODEL_FILES[fmt])
        return self._tensorrt(fmt, out)

    def _tflite(self, fmt: str, dest: Path) -> dict[str, Any]:
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_saved_model(str(self.saved_model()))
        details: dict[str, Any] = {"quantization": fmt.removeprefix("tflite-")}
        if fmt != "tflite-fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if fmt == "tflite-fp16":
            converter.target_spec.supported_types = [tf.float16]
        if fmt == "tflite-int8":
            calibration, calibrated_on = self.calibration()
            converter.representative_dataset = lambda: (
                [calibration[i : i + 1]] for i in range(len(calibration))
            )
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            # uint8 in: raw camera pixels feed it as they are; uint8 out: probabilities in 1/256 steps
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
            details.update(
                calibration_images=len(calibration),
                calibration=calibrated_on,
                input_type="uint8",
                output_type="uint8",
            )
        dest.write_bytes(converter.convert())
        return details

    def calibration(self) -> tuple[np.ndarray, str]:
        """Up to `calibration_images` of the run's own training images, decoded to 0..255 floats, and
        what they were ("calibrated on 100 training images"). Where the run's dataset cannot be read
        here (an imported run on another laptop), the run folder's calibration images, which came
        with its bundle ("calibrated on 32 bundled images"); with neither, a LabError saying so."""
        from engine.data import datasets, images

        cfg = self.run.config
        source = cfg.get("source")
        try:
            root = datasets.resolve_source(source, cancel=self.cancel)
            data = datasets.scan_image_dir(
                root, cfg.get("validation_percentage", 10), cfg.get("testing_percentage", 10)
            )
            records, problem = data.split("train"), f"source {source!r} has no training images"
        except LabError as exc:
            records, problem = [], f"source {source!r} cannot be read here: {exc}"
        if records:
            rng = np.random.default_rng(0)
            count = min(self.calibration_images, len(records))
            paths = [records[i].path for i in sorted(rng.choice(len(records), count, replace=False))]
            kind = "training images"
        else:
            paths = self.run.files.calibration_files()[: self.calibration_images]  # LabError if changed
            kind = "bundled images"
            if not paths:
                raise LabError(
                    f"int8 calibration needs the run's training images, but {problem}; and run "
                    f"{self.run.run_id} has no bundled calibration images"
                )
        pixels = []
        for i, path in enumerate(paths):
            if i % 10 == 0:
                check_cancel(self.cancel)
                msg = f"tflite-int8: reading calibration image {i + 1} of {len(paths)}"
                emit(self.progress, "convert", *self.step, msg, format="tflite-int8")
            pixels.append(images.load_image(path, self.run.input_size))
        return np.stack(pixels).astype(np.float32), f"calibrated on {len(paths)} {kind}"

    def _onnx(self, dest: Path) -> dict[str, Any]:
        import tf2onnx
        from tf2onnx import tf_loader

        # From the SavedModel, not tf2onnx.convert.from_function: the SavedModel loader freezes every
        # variable, while from_function leaves non-trainable ones (EfficientNet's Normalization
        # mean/variance) as extra graph inputs that ONNX Runtime then asks for.
        graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
            str(self.saved_model()),
            None,
            None,
            tag="serve",
            signatures=["serving_default"],
            return_tensors_to_rename=True,
        )
        tf2onnx.convert.from_graph_def(
            graph_def,
            input_names=inputs,
            output_names=outputs,
            opset=ONNX_OPSET,
            tensors_to_rename=renames,
            output_path=str(dest),
        )
        return {
            "opset": ONNX_OPSET,
            "inputs": sorted(renames.get(n, n) for n in inputs),
            "converter": f"tf2onnx {tf2onnx.__version__}",
        }

    def _tensorrt(self, fmt: str, out: Path) -> dict[str, Any]:
        onnx_path = model_path(self.run, fmt)
        if not onnx_path.is_file():
            raise LabError(f"{fmt} is built from the ONNX export; convert to onnx first")
        start = time.perf_counter()
        runtime = runtimes.load_tensorrt(onnx_path, fmt, out / "engines", self.run.input_size)
        runtime.predict(np.zeros((1, self.run.input_size, self.run.input_size, 3), np.float32))
        return {"engine_build_seconds": round(time.perf_counter() - start, 3), "backend": runtime.backend}


def _write_export(conv: _Converter, fmt: str) -> dict[str, Any]:
    run = conv.run
    scratch = conv.work / f"build-{fmt}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    start = time.perf_counter()
    details = conv.build(fmt, scratch)
    seconds = time.perf_counter() - start
    final = run.exports / fmt
    shutil.rmtree(final, ignore_errors=True)
    scratch.rename(final)
    artefact = model_path(run, fmt)
    manifest = {
        "format": fmt,
        "file": str(artefact.relative_to(run.folder)),
        "size_bytes": _size(artefact),
        "seconds": round(seconds, 3),
        "created": time.time(),
        "run_id": run.run_id,
        "input_size": run.input_size,
        "versions": _versions(),
        **details,
    }
    if fmt in TENSORRT_FORMATS:
        manifest["engine_cache"] = str((final / "engines").relative_to(run.folder))
    run.files.record(artefact)  # before the manifest: an export counts only once both are there
    atomic_write_text(final / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def convert_run(
    run_id: str,
    formats: list[str] | str = DEFAULT_FORMATS,
    store=None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    force: bool = False,
    calibration_images: int = CALIBRATION_IMAGES,
) -> dict[str, Any]:
    """Convert a run's classifier to each format; formats already there are kept unless `force`.

    Returns:
        {"run_id", "exports": [manifest, ...], "skipped": {format: reason}}. TensorRT formats are
        skipped (with what is missing) where they cannot run; other failures raise.

    Raises:
        InvalidArgument: unknown format. NotFound: no such run. Cancelled: between formats.
    """
    formats = parse_formats(formats)
    run = open_run(run_id, store)
    if any(f in TENSORRT_FORMATS for f in formats) and "onnx" not in formats:
        formats.insert(0, "onnx")  # TensorRT engines are built from the ONNX export
    conv = _Converter(run, calibration_images, progress, cancel)
    exports, skipped = [], {}
    try:
        for i, fmt in enumerate(formats):
            check_cancel(cancel)
            emit(progress, "convert", i, len(formats), f"Converting to {fmt}", format=fmt)
            conv.step = (i, len(formats))
            existing = read_manifest(run, fmt)
            if existing and not force:
                exports.append(existing)
                continue
            if fmt in TENSORRT_FORMATS and (missing := runtimes.tensorrt_missing()):
                skipped[fmt] = "; ".join(missing)
                continue
            exports.append(_write_export(conv, fmt))
        emit(progress, "convert", len(formats), len(formats), f"Converted {len(exports)} formats")
    finally:
        shutil.rmtree(conv.work, ignore_errors=True)
    return {"run_id": run.run_id, "exports": exports, "skipped": skipped}


def ensure_export(run_id: str, fmt: str, store=None, progress=None, cancel=None) -> Path:
    """The model path of `fmt`, converting first if the export is missing."""
    run = open_run(run_id, store)
    runtimes.check_format(fmt)
    needs = ["onnx", fmt] if fmt in TENSORRT_FORMATS else [fmt]
    if any(read_manifest(run, f) is None for f in needs):
        if fmt in TENSORRT_FORMATS and (missing := runtimes.tensorrt_missing()):
            raise RuntimeUnavailable(f"{fmt} is unavailable here: " + "; ".join(missing))
        convert_run(run_id, needs, store=store, progress=progress, cancel=cancel)
    return model_path(run, fmt)


def load_run_runtime(run_id: str, fmt: str = "keras", store=None) -> tuple[runtimes.Runtime, RunModel]:
    """A loaded runtime for the run in `fmt` (converted on demand) and the run's facts."""
    path = ensure_export(run_id, fmt, store)
    run = open_run(run_id, store)
    cache = run.exports / fmt / "engines" if fmt in TENSORRT_FORMATS else None
    return runtimes.load_runtime(fmt, path, run.input_size, cache_dir=cache), run


def download_file(run_id: str, fmt: str, store=None) -> Path:
    """One file to download for `fmt`: the model file, or a zip for folder formats."""
    run = open_run(run_id, store)
    if read_manifest(run, fmt) is None:
        raise NotFound(f"Run {run_id} has no {fmt} export yet: convert it first")
    path = model_path(run, fmt)
    if fmt in TENSORRT_FORMATS:
        path = run.exports / fmt / "engines"
    if path.is_file():
        return path
    archive = run.exports / fmt / f"{fmt}.zip"
    if not archive.is_file():
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                zf.write(file, Path(path.name) / file.relative_to(path))
    return archive

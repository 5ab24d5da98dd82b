"""Downloads that name their classes: one zip per run and format, with the model, labels.txt and a README.

A bare `model.tflite` answers with unnamed numbers; every download here carries the class names and a
file name that says run and format (`classifier-lab-<run>-<format>.zip`):

    classifier-lab-<run>-tflite-int8.tflite   the model (TFLite: labels are beside it, see below)
    labels.txt                                 one class name per line, in output order
    README.txt                                 what goes in and out, and the few lines that load it

TFLite metadata would carry the labels inside the model, but its writer (tflite-support 0.4.4, 2023)
needs protobuf < 4 and cannot run beside this TensorFlow, so TFLite labels travel in the zip. ONNX models
also get them inside: `metadata_props["labels"]` holds the JSON list (ONNX Runtime:
`session.get_modelmeta().custom_metadata_map["labels"]`).

Packages are built only from artifacts the lab wrote: the bytes put in the zip are hashed and must match
the sha256 the lab recorded when it wrote them; a model that differs is refused, never shipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

from engine.errors import InvalidArgument, LabError, NotFound
from engine.export import convert
from engine.export.runtimes import FORMATS, TENSORRT_FORMATS
from engine.runs.folder import LABELS

PREFIX = "classifier-lab"
# formats a package can hold; TensorRT engines are built for one GPU (ship the ONNX file instead)
PACKAGE_FORMATS = tuple(f for f in FORMATS if f not in TENSORRT_FORMATS)
EXTENSIONS = {"keras": ".keras", "onnx": ".onnx", "savedmodel": ""}  # others: .tflite


def package_name(run_id: str, fmt: str) -> str:
    """The download's file name, e.g. 'classifier-lab-20240101-120000-ab12-tflite-int8.zip'."""
    return f"{_stem(run_id, fmt)}.zip"


def model_name(run_id: str, fmt: str) -> str:
    """The model's name inside the package, e.g. 'classifier-lab-<run>-tflite-int8.tflite'."""
    return _stem(run_id, fmt) + EXTENSIONS.get(fmt, ".tflite")


def _stem(run_id: str, fmt: str) -> str:
    return f"{PREFIX}-{run_id}-{fmt}"


def download_package(run_id: str, fmt: str, store=None) -> tuple[str, bytes]:
    """The zip a user downloads for one run and format: (file name, zip bytes).

    Raises:
        InvalidArgument: unknown format, or a TensorRT one. NotFound: no such run, or the format is not
            exported yet. LabError: the model differs from the one the lab wrote, or labels do not match.
    """
    if fmt not in PACKAGE_FORMATS:
        raise InvalidArgument(
            f"Format {fmt!r} cannot be downloaded; choose one of {', '.join(PACKAGE_FORMATS)}"
            + (" (TensorRT engines are built per GPU: download onnx)" if fmt in TENSORRT_FORMATS else "")
        )
    run = convert.open_run(run_id, store)
    if convert.read_manifest(run, fmt) is None:  # missing, or no longer what the lab wrote
        raise NotFound(f"Run {run.run_id} has no {fmt} export yet: convert it first")
    names = run.class_names
    name = model_name(run.run_id, fmt)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        if fmt == "savedmodel":
            _add_folder(zf, run, convert.model_path(run, fmt), name)
        else:
            data = _trusted_bytes(run, convert.model_path(run, fmt), required=fmt != "keras")
            if fmt == "keras" and _recorded(run, run.files.model_path) is None:
                run.files.load_model()  # an unrecorded (older) run: safe mode and labels, as when loading it
            if fmt == "onnx":
                data = with_onnx_labels(data, names, run.run_id)
            zf.writestr(name, data)
        zf.writestr(LABELS, "\n".join(names) + "\n")
        zf.writestr("README.txt", readme(run, fmt, name, names))
    return package_name(run.run_id, fmt), buf.getvalue()


def _recorded(run: convert.RunModel, path: Path) -> str | None:
    return run.files.store.artifact_hash(run.run_id, run.files.relpath(path))


def _trusted_bytes(run: convert.RunModel, path: Path, required: bool = True) -> bytes:
    """The file's bytes, checked against the sha256 the lab recorded (the same bytes go in the zip)."""
    recorded = _recorded(run, path)
    if recorded is None and required:
        raise LabError(f"{path} was not written by the lab (no recorded sha256); refusing to package it")
    data = path.read_bytes()
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
        raise LabError(f"{path} is not the model the lab wrote (its sha256 differs); refusing to package it")
    return data


def _add_folder(zf: zipfile.ZipFile, run: convert.RunModel, folder: Path, arcname: str) -> None:
    """A SavedModel folder, re-checked against its recorded tree hash after it is read."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    for file in files:
        zf.writestr(f"{arcname}/saved_model/{file.relative_to(folder).as_posix()}", file.read_bytes())
    if not run.files.is_trusted(folder):  # changed while it was read
        raise LabError(f"{folder} changed while it was packaged; try again")


def with_onnx_labels(data: bytes, class_names: list[str], run_id: str) -> bytes:
    """The ONNX model with `metadata_props` labels (JSON list), run id and source."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(data)
    props = {p.key: p.value for p in model.metadata_props}
    props.update(labels=json.dumps(class_names), run_id=run_id, source="Classifier Lab")
    helper.set_model_props(model, props)
    return model.SerializeToString()


def readme(run: convert.RunModel, fmt: str, name: str, class_names: list[str]) -> str:
    """What the package holds, the input the model expects, and the lines that load it."""
    size = run.input_size
    int8 = fmt == "tflite-int8"
    pixels = "uint8 RGB pixels 0..255" if int8 else "float32 RGB pixels 0..255 (the model scales them)"
    out = "uint8 class scores (divide by 255 for probabilities)" if int8 else "float32 class probabilities"
    lines = [
        f"Classifier Lab run {run.run_id}, format {fmt}",
        "",
        f"{name}    the model",
        f"{LABELS}    {len(class_names)} class names, one per line, in the order of the model's outputs",
        "",
        f"Input:  a batch of {size}x{size} {pixels}, shape (1, {size}, {size}, 3)",
        f"Output: {out}, shape (1, {len(class_names)}); output i is the class on line i+1 of {LABELS}",
        "",
        "Load it and print the label of one (blank) image:",
        "",
        *_snippet(fmt, name),
        "",
    ]
    return "\n".join(lines)


def _snippet(fmt: str, name: str) -> list[str]:
    if fmt.startswith("tflite"):
        return [
            "    # pip install ai-edge-litert numpy",
            "    import numpy as np; from ai_edge_litert.interpreter import Interpreter",
            f"    labels = open('{LABELS}').read().splitlines()",
            f"    it = Interpreter(model_path='{name}'); it.allocate_tensors()",
            "    inp, out = it.get_input_details()[0], it.get_output_details()[0]",
            "    it.set_tensor(inp['index'], np.zeros(inp['shape'], inp['dtype'])); it.invoke()",
            "    print(labels[int(it.get_tensor(out['index'])[0].argmax())])",
        ]
    if fmt == "onnx":
        return [
            "    # pip install onnxruntime numpy   (labels are also inside the model's metadata)",
            "    import json, numpy as np, onnxruntime as ort",
            f"    session = ort.InferenceSession('{name}')",
            "    labels = json.loads(session.get_modelmeta().custom_metadata_map['labels'])",
            "    inp = session.get_inputs()[0]",
            "    x = np.zeros([1] + list(inp.shape[1:]), np.float32)",
            "    print(labels[int(session.run(None, {inp.name: x})[0][0].argmax())])",
        ]
    if fmt == "keras":
        return [
            "    # pip install keras tensorflow numpy",
            "    import keras, numpy as np",
            f"    labels = open('{LABELS}').read().splitlines()",
            f"    model = keras.saving.load_model('{name}', compile=False, safe_mode=True)",
            "    x = np.zeros((1, *model.input_shape[1:]), np.float32)",
            "    print(labels[int(model.predict(x, verbose=0)[0].argmax())])",
        ]
    return [  # savedmodel
        "    # pip install tensorflow numpy",
        "    import numpy as np, tensorflow as tf",
        f"    labels = open('{LABELS}').read().splitlines()",
        f"    serve = tf.saved_model.load('{name}/saved_model').signatures['serving_default']",
        "    ((arg, spec),) = serve.structured_input_signature[1].items()",
        "    probs = next(iter(serve(**{arg: tf.zeros([1, *spec.shape[1:]], tf.float32)}).values()))",
        "    print(labels[int(probs[0].numpy().argmax())])",
    ]

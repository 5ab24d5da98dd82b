"""The run bundle format and its checks: what a bundle may hold, and reading one as untrusted input.

A bundle (written by `engine.runs.share.export_bundle`) is one .zip of exactly these members and
nothing it could execute: no exports, no code, no SavedModel or TFLite file.

    manifest.json      schema, version, the run's id, name, kind and author, sha256 and size per member
    model.keras        the whole classifier (backbone included), as the lab saved it
    labels.txt         one class name per output, in order
    config.json        the RunConfig it was trained with
    metrics.json       {"history": [...], "results": {...}}; misclassified images carry a small JPEG
                       thumbnail as a data: URI (the photos themselves stay on the author's machine)
    environment.json   where it ran
    dataset.json       the dataset fingerprint (`datasets.dataset_fingerprint`): counts, content, split hash
    model_card.md      the generated model card
    report.html        the self-contained HTML report (optional)
    calibration/NNNN.jpg  up to 32 of the run's training images at the backbone's input size, JPEG
                       (optional): int8 conversion calibrates on them where the author's images are not

`read_bundle` trusts nothing in the file: the archive checks and limits of `engine.data.archives`
(names, traversal, links, encryption, compression ratios), this schema and version, the exact member
list, a size cap per member, at most 32 calibration images (JPEG only, each decoded by the lab's own
decoder to exactly the backbone's input size, as many as the manifest counts), every sha256 against
the manifest, the model's own archive (Keras layers only: no Lambda, no TFSMLayer, no foreign
module, no extra file) loaded with `safe_mode=True`, its input size against the backbone registry,
one class name per output without control characters, and the config, metrics and thumbnails by
type. Every refusal is a `BundleError` of one line naming
the file and the reason.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import tempfile
import zipfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from engine.data import archives
from engine.errors import LabError
from engine.models import backbones
from engine.runs.results import RunResults

SCHEMA = "classifier-lab/run-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
REPORT = "report.html"
# member -> the most bytes it may hold. Why: an upload is untrusted; the biggest backbone's model
# (inception_v3, fine-tuned) is ~100 MB, a 4,000-step history with thumbnails under 2 MB, a report
# with plotly inlined ~5 MB.
MEMBER_LIMITS = {
    "model.keras": 400 * 1024**2,
    "labels.txt": 64 * 1024,
    "config.json": 64 * 1024,
    "metrics.json": 16 * 1024**2,
    "environment.json": 256 * 1024,
    "dataset.json": 256 * 1024,
    "model_card.md": 256 * 1024,
    REPORT: 32 * 1024**2,
}
CALIBRATION_DIR = "calibration"
MAX_CALIBRATION = 32  # training images that travel for int8 calibration
CALIBRATION_LIMIT = 1024**2  # bytes of one calibration JPEG (a 299x299 photo at quality 90: ~40 KB)
CALIBRATION_QUALITY = 90
OPTIONAL_MEMBERS = frozenset({REPORT})  # a lab without the report module still writes valid bundles
MANIFEST_LIMIT = 64 * 1024
MAX_CLASSES = 1000
MAX_HISTORY_ROWS = 100_000
THUMBNAILS = 48  # misclassified images that travel as thumbnails (the Runs page shows 48)
THUMBNAIL_SIDE = 96
THUMBNAIL_LIMIT = 64 * 1024  # bytes of one thumbnail's data: URI
_KERAS_MEMBERS = frozenset({"config.json", "metadata.json", "model.weights.h5"})
_KERAS_CONFIG_LIMIT = 8 * 1024**2
# Keras layers that run code or load files from outside the model: refused even where safe_mode lets them
_UNSAFE_CLASSES = frozenset({"Lambda", "__lambda__", "TFSMLayer", "function", "__function__"})
DATA_URI = ("data:image/jpeg;base64,", "data:image/png;base64,")
_PLANTED = (".py", ".pyc", ".pb", ".tflite", ".onnx", ".so", ".sh", ".exe", ".engine", ".plan", ".h5", ".pkl")


class BundleError(LabError):
    """A run bundle was refused; the message names the file and the reason."""


def _refused(label: str, reason: str) -> BundleError:
    return BundleError(f"Refused bundle {label}: {reason}")


def calibration_member(index: int) -> str:
    """The bundle member of the index-th calibration image: calibration/0000.jpg, ..."""
    return f"{CALIBRATION_DIR}/{index:04d}.jpg"


def _calibration_index(parts: list[str]) -> int | None:
    """The index of a calibration member's path parts (["calibration", "0007.jpg"] -> 7), else None."""
    if len(parts) != 2 or parts[0] != CALIBRATION_DIR:
        return None
    stem, dot, ext = parts[1].partition(".")
    if ext != "jpg" or not dot or len(stem) != 4 or not (stem.isascii() and stem.isdigit()):
        return None
    return int(stem)


def thumbnail_bytes(item: dict[str, Any]) -> bytes | None:
    """The JPEG/PNG bytes of a misclassified item's travelling thumbnail (imported runs), or None."""
    uri = item.get("thumbnail") if isinstance(item, dict) else None
    if not isinstance(uri, str) or not uri.startswith(DATA_URI):
        return None
    try:
        return base64.b64decode(uri.split(",", 1)[1], validate=True)
    except ValueError:
        return None


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed every check: what a run is made of, ready to store."""

    manifest: dict[str, Any]
    bundle_sha256: str  # over the member hashes: the same run shared twice has the same one
    author: str | None
    model: Any  # the Keras model, loaded in safe mode
    names: list[str]
    config: dict[str, Any]
    history: list[dict[str, Any]]
    results: dict[str, Any]
    environment: dict[str, Any]
    calibration: tuple[bytes, ...] = ()  # JPEGs, checked: the backbone's input size each


def read_bundle(
    source: str | os.PathLike | bytes | BinaryIO, scratch: Path, name: str | None = None
) -> VerifiedBundle:
    """Read and check a bundle; its model passes through a temporary folder under `scratch`.

    Args:
        source: The bundle: a path, its bytes, or a file object (e.g. a Streamlit upload).
        scratch: A folder for the temporary copy of model.keras (removed before returning).
        name: The file name shown in messages (default: the path's or the upload's name).

    Raises:
        BundleError, UnsafeArchive, DatasetError, NotFound: refused, with one line naming the reason.
    """
    label = archives.printable(name) if name else archives._archive_label(source, "bundle")
    with ExitStack() as stack:
        zf, size = archives._open_zip(source, label, stack)
        infos = _check_archive(zf, label, size)
        manifest = _read_manifest(zf, infos, label)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".import-", dir=scratch)))
        data = _read_members(zf, infos, manifest, label, tmp)
        author = _author(manifest, label)
        return VerifiedBundle(
            manifest, _bundle_hash(manifest), author, **_validate(data, label, tmp / "model.keras")
        )


# -- checks ----------------------------------------------------------------------------------------
def _check_archive(zf: zipfile.ZipFile, label: str, size: int) -> dict[str, zipfile.ZipInfo]:
    """The archive checks of engine.data.archives, then this format's exact member list."""
    infos = zf.infolist()
    allowed = set(MEMBER_LIMITS) | {MANIFEST}
    most = len(allowed) + MAX_CALIBRATION
    if len(infos) > 2 * most:  # before reading names: a huge directory is refused unread
        raise _refused(label, f"{len(infos):,} entries, a bundle has at most {most}")
    by_name, total = {}, 0
    for info in infos:
        parts = archives._entry_parts(info.filename, label)  # traversal, absolute paths, control characters
        archives._check_entry(info, label)  # links, special files, encryption, per-entry zip bomb
        key = "/".join(parts)
        index = _calibration_index(parts)
        if info.is_dir() or (index is None and (key not in allowed or len(parts) != 1)):
            raise _refused(label, f"{_extra_reason(info.filename)}")
        if index is not None and index >= MAX_CALIBRATION:
            raise _refused(
                label,
                f"it holds {key}: too many calibration images (a bundle carries at most {MAX_CALIBRATION})",
            )
        if key in by_name:
            raise _refused(label, f"member {key} appears twice")
        limit = CALIBRATION_LIMIT if index is not None else MEMBER_LIMITS.get(key, MANIFEST_LIMIT)
        if info.file_size > limit:
            raise _refused(label, f"{key} holds {info.file_size:,} bytes, more than its limit of {limit:,}")
        by_name[key] = info
        total += info.file_size
    if total > archives._ARCHIVE_RATIO_FLOOR and total > archives.MAX_RATIO * max(size, 1):
        raise _refused(
            label,
            f"{size:,} bytes expand to {total:,} (more than {archives.MAX_RATIO}:1 "
            "overall), which looks like a zip bomb",
        )
    missing = sorted((set(MEMBER_LIMITS) - OPTIONAL_MEMBERS | {MANIFEST}) - set(by_name))
    if missing:
        raise _refused(label, f"{missing[0]} is missing (not a complete run bundle)")
    return by_name


def _extra_reason(name: str) -> str:
    shown = archives.printable(name)
    lowered = name.lower()
    if "saved_model" in lowered or lowered.endswith(_PLANTED) or "/variables/" in lowered:
        return (
            f"it holds {shown}, an export or code file; a bundle carries no exports, no code and nothing "
            "executable"
        )
    return (
        f"unexpected member {shown} (a bundle holds only {', '.join(sorted(MEMBER_LIMITS))}, {MANIFEST} "
        f"and {CALIBRATION_DIR}/NNNN.jpg)"
    )


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, sink: BinaryIO, digest=None) -> int:
    """Stream one member into `sink`, stopping at its declared size (a lying header cannot pass)."""
    written = 0
    try:
        with zf.open(info) as src:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > info.file_size:
                    raise _refused(label, f"{info.filename} is larger than declared")
                sink.write(chunk)
                if digest is not None:
                    digest.update(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
        raise _refused(label, f"{info.filename} is corrupt ({_line(exc)})") from None
    return written


def _read_manifest(zf, infos, label: str) -> dict[str, Any]:
    buf = io.BytesIO()
    _read(zf, infos[MANIFEST], label, buf)
    manifest = _parse_json(buf.getvalue(), MANIFEST, label)
    if not isinstance(manifest, dict):
        raise _refused(label, f"{MANIFEST} must hold a JSON object")
    if manifest.get("schema") != SCHEMA:
        raise _refused(
            label,
            f"schema {archives.printable(str(manifest.get('schema')))} is not a "
            f"Classifier Lab run bundle ({SCHEMA})",
        )
    version = manifest.get("version")
    if version != BUNDLE_VERSION or isinstance(version, bool):
        raise _refused(
            label,
            f"schema version {repr(version)[:40]} is not supported "
            f"(this lab reads version {BUNDLE_VERSION}); export it again from a matching lab",
        )
    members = manifest.get("members")
    listed = set(members) if isinstance(members, dict) else set()
    present = set(infos) - {MANIFEST}
    if listed != present:
        odd = sorted(listed ^ present)
        raise _refused(
            label,
            f"the manifest and the archive disagree on "
            f"{archives.printable(str(odd[0]) if odd else 'the member list')}",
        )
    for key, entry in members.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not _is_sha256(entry["sha256"])
            or entry.get("bytes") != infos[key].file_size
        ):
            raise _refused(label, f"the manifest's entry for {key} is malformed or wrong")
    calibration = manifest.get("calibration", {"count": 0})
    carried = sorted(k for k in present if k.startswith(CALIBRATION_DIR + "/"))
    count = calibration.get("count") if isinstance(calibration, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_CALIBRATION:
        raise _refused(label, f"the manifest's calibration count is not 0 to {MAX_CALIBRATION}")
    if carried != [calibration_member(i) for i in range(count)]:
        raise _refused(
            label,
            f"the manifest counts {count} calibration images, the archive holds {len(carried)} (or others)",
        )
    for key in ("run_id", "name", "kind"):
        value = manifest.get(key)
        if not isinstance(value, str) or not value or len(value) > 200 or archives.name_problem(value):
            raise _refused(label, f"the manifest's {key} is not a plain line of text")
    return manifest


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _read_members(zf, infos, manifest, label: str, tmp: Path) -> dict[str, bytes]:
    """Every member's bytes (the model goes to a file), each checked against its manifest sha256."""
    data = {}
    for key, info in infos.items():
        if key == MANIFEST:
            continue
        digest = hashlib.sha256()
        if key == "model.keras":
            with open(tmp / key, "xb") as sink:
                _read(zf, info, label, sink, digest)
            data[key] = b""
        else:
            buf = io.BytesIO()
            _read(zf, info, label, buf, digest)
            data[key] = buf.getvalue()
        if digest.hexdigest() != manifest["members"][key]["sha256"]:
            raise _refused(label, f"{key} does not match the sha256 in the manifest (changed or damaged)")
    return data


def _bundle_hash(manifest: dict[str, Any]) -> str:
    """The bundle's content hash: its member hashes (all verified), independent of zip timestamps."""
    lines = sorted(  # the report and calibration images are derived: the same run has the same hash
        f"{k}\t{v['sha256']}"
        for k, v in manifest["members"].items()
        if k != REPORT and not k.startswith(CALIBRATION_DIR + "/")
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _author(manifest: dict[str, Any], label: str) -> str | None:
    author = manifest.get("author")
    if author is None:
        return None
    if not isinstance(author, str) or len(author) > 80 or archives.name_problem(author):
        raise _refused(label, "the author's name is not a plain line of up to 80 characters")
    return author.strip() or None


def _parse_json(raw: bytes, key: str, label: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _refused(label, f"{key} is not valid JSON ({_line(exc)})") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _validate(data: dict[str, bytes], label: str, model_path: Path) -> dict[str, Any]:
    """Everything the run will be made of, each part checked; raises BundleError naming the part."""
    from engine.runs.retrain import RunConfig

    names = _labels(data["labels.txt"], label)
    config = _parse_json(data["config.json"], "config.json", label)
    if not isinstance(config, dict):
        raise _refused(label, "config.json must hold a JSON object")
    try:
        run_config = RunConfig.from_dict({k: v for k, v in config.items() if k != "experiment_id"})
    except (LabError, TypeError, ValueError) as exc:
        raise _refused(label, f"config.json is not a run config ({_line(exc)})") from None
    model = _load_model(model_path, label)
    side = backbones.get_backbone(run_config.architecture).input_size  # one source of truth: the registry
    if tuple(model.input_shape[1:]) != (side, side, 3):
        raise _refused(
            label,
            f"model.keras takes inputs of shape {model.input_shape[1:]}, but its "
            f"backbone {run_config.architecture} takes ({side}, {side}, 3)",
        )
    outputs = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    if outputs != len(names):
        raise _refused(
            label,
            f"model.keras has {outputs} outputs but labels.txt names {len(names)} "
            "classes; refusing a model whose labels do not match",
        )
    metrics = _parse_json(data["metrics.json"], "metrics.json", label)
    history, results = _metrics(metrics, names, label)
    environment = _parse_json(data["environment.json"], "environment.json", label)
    fingerprint = _parse_json(data["dataset.json"], "dataset.json", label)
    for key, value in (("environment.json", environment), ("dataset.json", fingerprint)):
        if not isinstance(value, dict):
            raise _refused(label, f"{key} must hold a JSON object")
    results.setdefault("dataset", {})["fingerprint"] = fingerprint
    config["experiment_id"] = None  # the author's experiment does not exist in this lab
    calibration = tuple(
        _check_calibration(data[key], key, side, label)
        for key in sorted(k for k in data if k.startswith(CALIBRATION_DIR + "/"))
    )
    return {
        "calibration": calibration,
        "model": model,
        "names": names,
        "config": config,
        "history": history,
        "results": results,
        "environment": environment,
    }


def _labels(raw: bytes, label: str) -> list[str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _refused(label, "labels.txt is not UTF-8 text") from None
    names = text.split("\n")
    if names and names[-1] == "":
        names.pop()
    if not names or len(names) > MAX_CLASSES:
        raise _refused(label, f"labels.txt must name 1 to {MAX_CLASSES} classes, got {len(names)}")
    for i, name in enumerate(names, 1):
        problem = "is empty" if not name.strip() else archives.name_problem(name)
        if problem:
            raise _refused(label, f"class name on line {i} of labels.txt {problem}")
    if len(set(names)) != len(names):
        raise _refused(label, "labels.txt names a class twice")
    return names


def _metrics(metrics: Any, names: list[str], label: str) -> tuple[list[dict], dict[str, Any]]:
    from engine.runs.store import METRIC_COLUMNS

    def bad(what: str) -> BundleError:
        return _refused(label, f"metrics.json {what}")

    if not isinstance(metrics, dict) or not isinstance(metrics.get("history"), list):
        raise bad("must hold {'history': [...], 'results': {...}}")
    history = metrics["history"]
    if len(history) > MAX_HISTORY_ROWS:
        raise bad(f"has {len(history):,} history rows, more than {MAX_HISTORY_ROWS:,}")
    rows = []
    for row in history:
        if not isinstance(row, dict) or not all(_number_or_none(row.get(c)) for c in METRIC_COLUMNS):
            raise bad("has a history row that is not numbers")
        phase = row.get("phase", "train")
        if not isinstance(phase, str) or not phase.isidentifier() or len(phase) > 40:
            raise bad("has a history row of an unknown phase")
        rows.append({"phase": phase, **{c: row.get(c) for c in METRIC_COLUMNS}})
    results = metrics.get("results")
    if not isinstance(results, dict):
        raise bad("has no results object")
    res = RunResults.from_dict(results)
    n = len(names)
    checks = [
        (res.test_accuracy is None or _fraction(res.test_accuracy), "test_accuracy"),
        (isinstance(res.test_count, int) and res.test_count >= 0, "test_count"),
        (isinstance(res.per_class_accuracy, dict)
         and all(k in names and _fraction(v) for k, v in res.per_class_accuracy.items()),
         "per_class_accuracy"),
        (not res.confusion_matrix or (len(res.confusion_matrix) == n and all(
            isinstance(r, list) and len(r) == n and all(isinstance(c, int) and c >= 0 for c in r)
            for r in res.confusion_matrix)), "confusion_matrix"),
        (not res.class_names or res.class_names == names, "class_names (they differ from labels.txt)"),
        (isinstance(res.phases, dict) and all(_number_or_none(v) for v in res.phases.values()), "phases"),
        (isinstance(res.misclassified, list) and len(res.misclassified) <= 10_000, "misclassified"),
    ]  # fmt: skip
    for ok, what in checks:
        if not ok:
            raise bad(f"has a malformed {what}")
    for item in res.misclassified:
        if not isinstance(item, dict) or item.get("true") not in names or item.get("predicted") not in names:
            raise bad("has a misclassified image of a class labels.txt does not name")
        if not _fraction(item.get("probability")) or not isinstance(item.get("path"), str):
            raise bad("has a misclassified image without a probability or file name")
        _check_thumbnail(item.get("thumbnail"), label)
    return rows, results


def _check_thumbnail(uri: Any, label: str) -> None:
    if uri is None:
        return
    raw = thumbnail_bytes({"thumbnail": uri})
    if raw is None or len(uri) > THUMBNAIL_LIMIT:
        raise _refused(label, "metrics.json has a thumbnail that is not a small JPEG/PNG")
    from engine.data.images import decode_image_bytes

    try:
        pixels = decode_image_bytes(raw, name="a thumbnail")
    except LabError as exc:
        raise _refused(label, f"metrics.json has a thumbnail that cannot be decoded ({exc})") from None
    if max(pixels.shape[:2]) > 4 * THUMBNAIL_SIDE:
        raise _refused(label, "metrics.json has a thumbnail larger than a thumbnail")


def _check_calibration(raw: bytes, key: str, side: int, label: str) -> bytes:
    """A calibration image: a JPEG that the lab's own decoder reads as side x side RGB; its bytes."""
    from engine.data.images import decode_image_bytes

    if not raw.startswith(b"\xff\xd8\xff"):
        raise _refused(label, f"{key} is not a JPEG (calibration images are JPEG only)")
    try:
        pixels = decode_image_bytes(raw, name=key)
    except LabError as exc:
        raise _refused(label, f"{key} cannot be decoded ({_line(exc)})") from None
    if pixels.shape != (side, side, 3):
        raise _refused(
            label,
            f"{key} is {pixels.shape[1]}x{pixels.shape[0]}, not the backbone's input size {side}x{side}",
        )
    return raw


def _number_or_none(value: Any) -> bool:
    return value is None or (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    )


def _fraction(value: Any) -> bool:
    return _number_or_none(value) and value is not None and 0.0 <= value <= 1.0


def _load_model(path: Path, label: str):
    """The bundle's model: its own archive checked (Keras layers only), then loaded in safe mode."""
    _check_keras_archive(path, label)
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # safe mode's refusal (a Lambda layer), a damaged file: one line
        raise _refused(label, f"model.keras cannot be loaded safely ({_line(exc)})") from None


def _check_keras_archive(path: Path, label: str) -> None:
    inner = f"{label}: model.keras"
    with ExitStack() as stack:
        zf, _ = archives._open_zip(path, inner, stack)
        names = set()
        for info in zf.infolist():
            archives._entry_parts(info.filename, inner)
            archives._check_entry(info, inner)
            names.add(info.filename)
        if names != _KERAS_MEMBERS:
            odd = sorted(names ^ _KERAS_MEMBERS)
            raise _refused(
                label,
                f"model.keras is not a plain Keras model file "
                f"(it {'holds' if odd[0] in names else 'lacks'} {archives.printable(odd[0])})",
            )
        info = zf.getinfo("config.json")
        if info.file_size > _KERAS_CONFIG_LIMIT:
            raise _refused(label, f"model.keras has a config of {info.file_size:,} bytes")
        buf = io.BytesIO()
        _read(zf, info, inner, buf)
    problem = _unsafe_object(_parse_json(buf.getvalue(), "model.keras's config.json", label))
    if problem:
        raise _refused(label, f"model.keras {problem}; the lab loads only Keras' own layers")


def _unsafe_object(node: Any) -> str | None:
    """Why a Keras model config could run code or load files (a Lambda layer, a foreign module), or None."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            module, cls = item.get("module"), item.get("class_name")
            if cls in _UNSAFE_CLASSES:
                return f"has a {archives.printable(str(cls))} layer, which runs code"
            if isinstance(module, str) and module != "keras" and not module.startswith("keras."):
                return f"names the module {archives.printable(module)}"
            registered = item.get("registered_name")
            if isinstance(registered, str) and ">" in registered:
                return f"names the custom object {archives.printable(registered)}"
            stack.extend(item.values())
    return None


def _line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"

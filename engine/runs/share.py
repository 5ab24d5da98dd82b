"""Run bundles: one .zip that carries a finished run to another lab, and its import as untrusted input.

A bundle holds what another lab needs to reload, classify, convert and compare a run, and nothing it
could execute: no exports, no code, no SavedModel or TFLite file.

    manifest.json      schema, version, the run's id, name, kind and author, sha256 and size per member
    model.keras        the whole classifier (backbone included), as the lab saved it
    labels.txt         one class name per output, in order
    config.json        the RunConfig it was trained with
    metrics.json       {"history": [...], "results": {...}}; misclassified images carry a small JPEG
                       thumbnail as a data: URI (the photos themselves stay on the author's machine)
    environment.json   where it ran
    dataset.json       the dataset fingerprint (`datasets.dataset_fingerprint`): counts, content, split hash
    model_card.md      the generated model card
    report.html        the self-contained HTML report

`import_bundle` trusts nothing in the file: the archive checks and limits of `engine.data.archives`
(names, links, encryption, ratios), this schema and version, an exact member list, a size cap per
member, every sha256 against the manifest, the model's own archive (Keras layers only: no Lambda,
no TFSMLayer, no foreign modules) loaded with `safe_mode=True`, one class name per output without
control characters, and the config, metrics and thumbnails by type. Only then is a run written,
through `RunFolder` (atomic files, artifact hashes recorded), marked imported in `Run.origin`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
import time
import zipfile
import zlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

from engine import config as lab_config
from engine.data import archives
from engine.errors import LabError
from engine.models import backbones
from engine.runs.folder import RunFolder, atomic_write
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
_DATA_URI = ("data:image/jpeg;base64,", "data:image/png;base64,")
_PLANTED = (".py", ".pyc", ".pb", ".tflite", ".onnx", ".so", ".sh", ".exe", ".engine", ".plan", ".h5", ".pkl")


class BundleError(LabError):
    """A run bundle was refused; the message names the file and the reason."""


def _refused(label: str, reason: str) -> BundleError:
    return BundleError(f"Refused bundle {label}: {reason}")


def bundle_file_name(run_id: str) -> str:
    """The file name a bundle of this run is saved under (`classifier-lab-run-<id>.zip`)."""
    return f"classifier-lab-run-{run_id}.zip"


# -- export ---------------------------------------------------------------------------------------
def export_bundle(run_id: str, out: str | os.PathLike | None = None, store=None) -> Path:
    """Write a finished run as one .zip bundle.

    Args:
        run_id: The run to share.
        out: The .zip to write, or a folder to write `bundle_file_name(run_id)` into; default
            `<LAB_HOME>/shares/`.
        store: The `RunStore` (default: the one of LAB_HOME).

    Returns:
        The bundle's path.

    Raises:
        NotFound: no such run, or it has no model. LabError: the run is not finished, or its model
            is not the one the lab saved.
    """
    store = _open_store(store)
    run = store.get_run(run_id)
    if run.status != "finished":
        raise LabError(f"Run {run_id} is {run.status}: only a finished run can be shared")
    folder = RunFolder(run.id, store)
    model_bytes = folder.check_model().read_bytes()
    members = {
        "model.keras": model_bytes,
        "labels.txt": ("\n".join(folder.class_names()) + "\n").encode("utf-8"),
        "config.json": _json_bytes(folder.config()),
        "metrics.json": _json_bytes({"history": store.get_history(run.id), "results": _shared_results(run)}),
        "environment.json": _json_bytes(run.environment or {}),
        "dataset.json": _json_bytes(run_fingerprint(run)),
    }
    from engine.runs import report

    members["model_card.md"] = report.model_card_markdown(run.id, store).encode("utf-8")
    members[REPORT] = report.run_report_html(run.id, store).encode("utf-8")
    origin = run.origin or {}
    manifest = {
        "schema": SCHEMA,
        "version": BUNDLE_VERSION,
        "run_id": origin.get("original_run_id") or run.id,  # a re-shared import keeps its first id
        "name": run.name,
        "kind": run.kind,
        "author": run.author,
        "created": run.created,
        "exported_at": time.time(),
        "members": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in members.items()
        },
    }
    path = _out_path(out, run.id)
    stamp = time.localtime(run.finished or run.created)[:6]

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in [(MANIFEST, _json_bytes(manifest)), *members.items()]:
                info = zipfile.ZipInfo(name, date_time=max(stamp, (1980, 1, 1, 0, 0, 0)))
                info.external_attr = 0o100644 << 16  # a regular file, read-only for others
                kind = zipfile.ZIP_STORED if name == "model.keras" else zipfile.ZIP_DEFLATED  # already a zip
                zf.writestr(info, data, compress_type=kind)

    atomic_write(path, write)
    return path


def run_fingerprint(run) -> dict[str, Any]:
    """The dataset fingerprint of a run: the one recorded at training time (`dataset_fingerprint`), or
    for runs older than fingerprints, the class counts it recorded without hashes."""
    dataset = RunResults.of(run).dataset or {}
    if isinstance(dataset.get("fingerprint"), dict):
        return dataset["fingerprint"]
    return {
        "classes": dataset.get("classes") or RunResults.of(run).class_names,
        "counts": dataset.get("counts") or {},
        "num_images": dataset.get("num_images"),
        "validation_percentage": (run.config or {}).get("validation_percentage"),
        "testing_percentage": (run.config or {}).get("testing_percentage"),
        "content_hash": None,
        "split_hash": None,
    }


def _shared_results(run) -> dict[str, Any]:
    """The run's results as they travel: no paths of the author's disk, misclassified with thumbnails."""
    results = dict(run.results or {})
    dataset = results.get("dataset") or {}
    results["dataset"] = {
        k: dataset[k]
        for k in ("name", "classes", "num_classes", "num_images", "splits", "counts", "validation_percentage",
                  "testing_percentage", "fingerprint")
        if k in dataset
    }  # fmt: skip
    wrong = []
    for i, item in enumerate(results.get("misclassified") or []):
        item = {
            k: item.get(k) for k in ("path", "true", "predicted", "probability", "thumbnail") if k in item
        }
        if i < THUMBNAILS and not item.get("thumbnail"):
            item["thumbnail"] = _thumbnail_uri(item.get("path"))
        item["path"] = Path(str(item.get("path") or "")).name
        wrong.append(item)
    results["misclassified"] = wrong
    return results


def _thumbnail_uri(path: Any) -> str | None:
    if not path:
        return None
    from PIL import Image

    from engine.data.images import decode_or_reason

    pixels, _ = decode_or_reason(path)  # the lab's safe decoder: no bombs, links or FIFOs
    if pixels is None:
        return None  # the photo has moved since the run: it travels without a picture
    img = Image.fromarray(pixels)
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return _DATA_URI[0] + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail_bytes(item: dict[str, Any]) -> bytes | None:
    """The JPEG/PNG bytes of a misclassified item's travelling thumbnail (imported runs), or None."""
    uri = item.get("thumbnail") if isinstance(item, dict) else None
    if not isinstance(uri, str) or not uri.startswith(_DATA_URI):
        return None
    try:
        return base64.b64decode(uri.split(",", 1)[1], validate=True)
    except ValueError:
        return None


def _out_path(out, run_id: str) -> Path:
    if out is None:
        path = lab_config.lab_home() / "shares" / bundle_file_name(run_id)
    else:
        path = Path(out).expanduser()
        if path.is_dir() or not path.suffix:  # a folder (made if missing) gets the bundle's own name
            path = path / bundle_file_name(run_id)
    if path.suffix.lower() != ".zip":
        raise LabError(f"A bundle is a .zip file, got --out {str(path)!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LabError(f"Cannot write the bundle into {path.parent}: {exc.strerror or exc}") from None
    return path


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, default=float, allow_nan=False).encode("utf-8")


# -- import ---------------------------------------------------------------------------------------
def import_bundle(path: str | os.PathLike | bytes | BinaryIO, store=None, name: str | None = None) -> str:
    """Validate a bundle as untrusted input and store it as a finished, imported run.

    Importing a bundle already imported (same bytes, or the same original run of the same author)
    returns that run instead of a copy; so does a bundle of a run of this very lab.

    Args:
        path: The bundle: a path, its bytes, or a file object (e.g. a Streamlit upload).
        store: The `RunStore` (default: the one of LAB_HOME).
        name: The file name shown in messages (default: the path's or the upload's name).

    Returns:
        The run id.

    Raises:
        BundleError, UnsafeArchive, DatasetError, NotFound: the bundle is refused (one line naming the
            file and the reason); nothing is stored.
    """
    store = _open_store(store)
    label = archives.printable(name) if name else archives._archive_label(path, "bundle")
    with ExitStack() as stack:
        zf, size = archives._open_zip(path, label, stack)
        infos = _check_archive(zf, label, size)
        manifest = _read_manifest(zf, infos, label)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".import-", dir=_scratch_dir())))
        data = _read_members(zf, infos, manifest, label, tmp)
        bundle_sha256 = _bundle_hash(manifest)
        author = _author(manifest, label)
        content = _validate(data, manifest, label, tmp / "model.keras")  # even for a bundle seen before
        existing = _already_here(store, manifest, bundle_sha256, author)
        if existing is not None:
            return existing
        return _store_run(store, manifest, content, author, bundle_sha256)


def _open_store(store):
    if store is None:
        from engine.runs.store import RunStore

        store = RunStore()
    return store


def _scratch_dir() -> Path:
    path = lab_config.lab_home() / "shares"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_archive(zf: zipfile.ZipFile, label: str, size: int) -> dict[str, zipfile.ZipInfo]:
    """The archive checks of engine.data.archives, then this format's exact member list."""
    infos = zf.infolist()
    allowed = set(MEMBER_LIMITS) | {MANIFEST}
    if len(infos) > 4 * len(allowed):  # before reading names: a huge directory is refused unread
        raise _refused(label, f"{len(infos):,} entries, a bundle has {len(allowed)}")
    by_name, total = {}, 0
    for info in infos:
        parts = archives._entry_parts(info.filename, label)  # traversal, absolute paths, control characters
        archives._check_entry(info, label)  # links, special files, encryption, per-entry zip bomb
        key = "/".join(parts)
        if key not in allowed or len(parts) != 1 or info.is_dir():
            raise _refused(label, f"{_extra_reason(info.filename)}")
        if key in by_name:
            raise _refused(label, f"member {key} appears twice")
        limit = MANIFEST_LIMIT if key == MANIFEST else MEMBER_LIMITS[key]
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
        f"unexpected member {shown} (a bundle holds only {', '.join(sorted(MEMBER_LIMITS))} and {MANIFEST})"
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
            or len(entry["sha256"]) != 64
            or entry.get("bytes") != infos[key].file_size
        ):
            raise _refused(label, f"the manifest's entry for {key} is malformed or wrong")
    for key in ("run_id", "name", "kind"):
        value = manifest.get(key)
        if not isinstance(value, str) or not value or len(value) > 200 or archives.name_problem(value):
            raise _refused(label, f"the manifest's {key} is not a plain line of text")
    return manifest


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
        if digest.hexdigest() != manifest["members"][key]["sha256"].lower():
            raise _refused(label, f"{key} does not match the sha256 in the manifest (changed or damaged)")
    return data


def _bundle_hash(manifest: dict[str, Any]) -> str:
    """The bundle's content hash: its member hashes (all verified), independent of zip timestamps."""
    lines = sorted(f"{k}\t{v['sha256'].lower()}" for k, v in manifest["members"].items() if k != REPORT)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _author(manifest: dict[str, Any], label: str) -> str | None:
    author = manifest.get("author")
    if author is None:
        return None
    if not isinstance(author, str) or len(author) > 80 or archives.name_problem(author):
        raise _refused(label, "the author's name is not a plain line of up to 80 characters")
    return author.strip() or None


def _already_here(store, manifest, bundle_sha256: str, author: str | None) -> str | None:
    found = store.find_imported_run(bundle_sha256, manifest["run_id"], author)
    if found is not None:
        return found.id
    with contextlib.suppress(LabError):  # a bundle of one of this lab's own runs: that run
        local = store.get_run(manifest["run_id"])
        if (
            store.artifact_hash(local.id, "model.keras")
            == manifest["members"]["model.keras"]["sha256"].lower()
        ):
            return local.id
    return None


def _parse_json(raw: bytes, key: str, label: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _refused(label, f"{key} is not valid JSON ({_line(exc)})") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _validate(data: dict[str, bytes], manifest, label: str, model_path: Path) -> dict[str, Any]:
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
    return {
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


def _store_run(store, manifest, content: dict[str, Any], author: str | None, bundle_sha256: str) -> str:
    """Write the validated run through RunFolder; on any failure nothing stays behind."""
    origin = {
        "from": author,
        "original_run_id": manifest["run_id"],
        "bundle_sha256": bundle_sha256,
        "imported_at": time.time(),
    }
    run = store.create_run(
        content["config"], kind=manifest["kind"], name=manifest["name"], author=author, origin=origin
    )
    try:
        folder = RunFolder(run.id, store)
        folder.write_labels(content["names"])
        folder.write_config(content["config"])
        folder.save_model(content["model"])  # saved by this lab: what it loads is what it wrote
        history = content["history"]
        for phase in dict.fromkeys(row["phase"] for row in history):
            store.log_metrics(run.id, [r for r in history if r["phase"] == phase], phase=phase)
        for phase, seconds in (content["results"].get("phases") or {}).items():
            if seconds is not None and isinstance(phase, str):
                store.log_phase(run.id, phase, seconds)
        store.set_environment(run.id, content["environment"])
        folder.write_environment(content["environment"])
        folder.write_metrics(history, content["results"])
        store.finish_run(run.id, content["results"], status="finished")
    except BaseException:
        with contextlib.suppress(Exception):
            store.finish_run(run.id, {}, status="failed", error="import failed")
            store.delete_run(run.id)
        raise
    return run.id


def _line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""Run bundles: share a finished run as one .zip, and import a bundle as a run of this lab.

`export_bundle` writes the members of the bundle format (`engine.runs.bundle`): the run's model,
class names, config, metrics (misclassified images as small thumbnails, no paths of the author's
disk), environment, dataset fingerprint, model card and HTML report, up to 32 training images at
the backbone's input size (JPEG, for int8 calibration on a lab without the author's dataset), and
a manifest with each member's sha256. `import_bundle` reads one with `bundle.read_bundle` (every
check of an untrusted input), then writes the run through `RunFolder` (atomic files, artifact
hashes recorded, calibration images in its `calibration/` folder), finished and marked imported
(`Run.origin`: from whom, their run id, the bundle hash, when). Importing the same bundle twice,
or the same run of the same author shared again, gives the same run, not a copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from engine import config as lab_config
from engine.data import archives
from engine.errors import LabError
from engine.runs.bundle import (  # noqa: F401 (BundleError, MEMBER_LIMITS, thumbnail_bytes: this module's API too)
    BUNDLE_VERSION,
    CALIBRATION_QUALITY,
    DATA_URI,
    MANIFEST,
    MAX_CALIBRATION,
    MEMBER_LIMITS,
    REPORT,
    SCHEMA,
    THUMBNAIL_SIDE,
    THUMBNAILS,
    BundleError,
    VerifiedBundle,
    calibration_member,
    read_bundle,
    thumbnail_bytes,
)
from engine.runs.folder import RunFolder, atomic_write
from engine.runs.results import RunResults


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
    calibration, calibration_source = calibration_jpegs(folder)
    for i, data in enumerate(calibration):
        members[calibration_member(i)] = data
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
        "calibration": {"count": len(calibration), "side": folder.input_size(), "from": calibration_source},
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


def calibration_jpegs(folder: RunFolder, count: int = MAX_CALIBRATION) -> tuple[list[bytes], str | None]:
    """Up to `count` training images of the run as JPEGs at its backbone's input size, and where they
    came from: the run's own dataset ("training images") when it is on disk here, else the
    calibration set of an imported run ("bundled images"), else none ([], None)."""
    from PIL import Image

    from engine.data import datasets, images

    config, side = folder.config(), folder.input_size()
    source = config.get("source")
    try:
        data = datasets.scan_image_dir(
            datasets.resolve_source(source),
            config.get("validation_percentage", 10),
            config.get("testing_percentage", 10),
        )
        records = data.split("train")
    except LabError:
        records = []
    if records:  # a seeded choice over the train split: the same run, the same images
        rng = np.random.default_rng(0)
        chosen = [
            records[i] for i in sorted(rng.choice(len(records), min(count, len(records)), replace=False))
        ]
        out = []
        for rec in chosen:
            pixels, _ = images.decode_or_reason(rec.path, side)  # the lab's safe decoder; bad ones skipped
            if pixels is not None:
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG", quality=CALIBRATION_QUALITY)
                out.append(buf.getvalue())
        if out:
            return out, "training images"
    try:  # a re-shared import: the images it came with, if the lab still vouches for them
        files = folder.calibration_files()[:count]
        return [f.read_bytes() for f in files], "bundled images" if files else None
    except (LabError, OSError):
        return [], None


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
    """The thumbnail a misclassified photo travels with (None when the photo has moved since the run)."""
    from engine.runs import report

    return report.thumbnail_uri(path, side=THUMBNAIL_SIDE, quality=80)


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
    bundle = read_bundle(path, _scratch_dir(), name)  # every check, even for a bundle seen before
    with archives._install_lock(_scratch_dir()):  # two imports of one bundle at once: one run
        existing = _already_here(store, bundle)
        return existing if existing is not None else _store_run(store, bundle)


def _open_store(store):
    if store is None:
        from engine.runs.store import RunStore

        store = RunStore()
    return store


def _scratch_dir() -> Path:
    path = lab_config.lab_home() / "shares"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _already_here(store, bundle: VerifiedBundle) -> str | None:
    manifest = bundle.manifest
    found = store.find_imported_run(bundle.bundle_sha256, manifest["run_id"], bundle.author)
    if found is not None:
        return found.id
    with contextlib.suppress(LabError):  # a bundle of one of this lab's own runs: that run
        local = store.get_run(manifest["run_id"])
        if store.artifact_hash(local.id, "model.keras") == manifest["members"]["model.keras"]["sha256"]:
            return local.id
    return None


def _store_run(store, bundle: VerifiedBundle) -> str:
    """Write the checked run through RunFolder; on any failure nothing stays behind."""
    manifest, results = bundle.manifest, bundle.results
    origin = {
        "from": bundle.author,
        "original_run_id": manifest["run_id"],
        "bundle_sha256": bundle.bundle_sha256,
        "imported_at": time.time(),
    }
    run = store.create_run(
        bundle.config, kind=manifest["kind"], name=manifest["name"], author=bundle.author, origin=origin
    )
    try:
        folder = RunFolder(run.id, store)
        folder.write_labels(bundle.names)
        folder.write_config(bundle.config)
        folder.save_model(bundle.model)  # saved by this lab: what it loads is what it wrote
        for phase in dict.fromkeys(row["phase"] for row in bundle.history):
            store.log_metrics(run.id, [r for r in bundle.history if r["phase"] == phase], phase=phase)
        for phase, seconds in (results.get("phases") or {}).items():
            if seconds is not None:
                store.log_phase(run.id, phase, seconds)
        store.set_environment(run.id, bundle.environment)
        folder.write_environment(bundle.environment)
        folder.write_metrics(bundle.history, results)
        if bundle.calibration:
            folder.write_calibration(list(bundle.calibration))
        store.finish_run(run.id, results, status="finished")
    except BaseException:
        with contextlib.suppress(Exception):
            store.finish_run(run.id, {}, status="failed", error="import failed")
            store.delete_run(run.id)
        raise
    return run.id

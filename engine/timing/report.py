"""Timing reports: the schema check for imported files and the plain-language explanations.

Kept apart from engine/bench.py so that validating or explaining a report never imports
TensorFlow (the dashboard does both on every render).
"""

from __future__ import annotations

import math
from typing import Any

# below this, a GPU "speed-up" is within the noise of a shared machine: not worth the GPU
HELPS = 1.5


def _fail(error_cls, where: str, why: str, value: Any = None) -> None:
    shown = "" if value is None else f" (got {value!r:.80})"
    raise error_cls(f"Timings file: {where} {why}{shown}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_schema(report: Any, phases, devices, schema: str, version: int, error_cls) -> None:
    """Raise `error_cls` with the first problem found in `report`, naming the field."""
    if not isinstance(report, dict):
        _fail(error_cls, "the top level", "must be a JSON object", type(report).__name__)
    if report.get("schema") != schema:
        _fail(error_cls, "'schema'", f"must be {schema!r}", report.get("schema"))
    if report.get("version") != version:
        _fail(
            error_cls,
            "'version'",
            f"must be {version} (this lab reads version {version})",
            report.get("version"),
        )
    if not isinstance(report.get("label"), str) or not report["label"].strip():
        _fail(error_cls, "'label'", "must be a non-empty string", report.get("label"))
    machine = report.get("machine")
    if not isinstance(machine, dict):
        _fail(error_cls, "'machine'", "must be an object describing the hardware and software", machine)
    for key in ("cpu_model", "tensorflow_version"):
        if not isinstance(machine.get(key), str):
            _fail(error_cls, f"'machine.{key}'", "must be a string", machine.get(key))
    if not isinstance(machine.get("gpus"), list) or not all(isinstance(g, str) for g in machine["gpus"]):
        _fail(
            error_cls, "'machine.gpus'", "must be a list of GPU names (empty for none)", machine.get("gpus")
        )
    rows = report.get("timings")
    if not isinstance(rows, list) or not rows:
        _fail(error_cls, "'timings'", "must be a non-empty list of timing rows", rows)
    for i, row in enumerate(rows):
        where = f"'timings[{i}]"
        if not isinstance(row, dict):
            _fail(error_cls, where + "'", "must be an object", row)
        if not isinstance(row.get("backbone"), str) or not row["backbone"]:
            _fail(error_cls, where + ".backbone'", "must be a backbone name", row.get("backbone"))
        if row.get("phase") not in phases:
            _fail(error_cls, where + ".phase'", f"must be one of {', '.join(phases)}", row.get("phase"))
        if row.get("device") not in devices:
            _fail(error_cls, where + ".device'", f"must be one of {', '.join(devices)}", row.get("device"))
        if not _number(row.get("seconds")) or row["seconds"] < 0:
            _fail(error_cls, where + ".seconds'", "must be a finite number >= 0", row.get("seconds"))
        items = row.get("items")
        if not isinstance(items, int) or isinstance(items, bool) or items < 1:
            _fail(error_cls, where + ".items'", "must be an integer >= 1", items)
        if not _number(row.get("per_item_ms")) or row["per_item_ms"] < 0:
            _fail(error_cls, where + ".per_item_ms'", "must be a finite number >= 0", row.get("per_item_ms"))


def _family(backbone: str) -> str:
    return "Inception v3" if backbone.startswith("inception") else backbone


def explain_rows(rows: list[dict[str, Any]], machine: dict[str, Any]) -> list[str]:
    """Notes for a speed-up table (`engine.timing.lab.speedups`): why the GPU helps or does not."""
    notes: list[str] = []
    if not any(r["gpu_ms"] for r in rows):
        notes.append(
            "No GPU was visible to TensorFlow on this machine, so only CPU times were measured. "
            "Import timings from a machine with a GPU (a classmate's) to see them side by side."
        )
        heavy = _heaviest(rows)
        if heavy:
            notes.append(heavy)
        return notes
    for r in rows:
        name, phase, speedup = _family(r["backbone"]), r["phase"], r["speedup"]
        if phase == "decode":
            continue
        if speedup is None:
            continue
        if speedup >= HELPS:
            notes.append(
                f"{name}, {phase}: the GPU is {speedup:.1f}× faster: enough arithmetic per call to fill it."
            )
            continue
        why = {
            "single": "one image per call leaves the GPU mostly idle; every call pays fixed costs "
            "(launching kernels, copying the image to the GPU and the answer back) that outweigh "
            "the arithmetic for one small image",
            "train": "the head is one small matrix on short feature vectors in batches of 100; each step "
            "is too little work to keep a GPU busy, so per-step launch overhead dominates",
            "extract": "the batch is small or the network light, so copying pixels to the GPU and "
            "per-layer launch costs take as long as the convolutions themselves",
            "batch": "the batch is small or the network light: the GPU finishes the arithmetic "
            "quickly and waits on transfers and kernel launches",
        }.get(phase, "the work per call is too small to hide the GPU's fixed costs")
        verdict = "slower" if speedup < 1 else f"only {speedup:.1f}× faster"
        notes.append(f"{name}, {phase}: the GPU is {verdict} here because {why}.")
    notes.append(
        "Decoding JPEGs runs on the CPU in both cases (PIL), so it is timed once; when the GPU is "
        "fast, decoding becomes the bottleneck of a whole pipeline."
    )
    heavy = _heaviest(rows)
    if heavy:
        notes.append(heavy)
    return notes


def _heaviest(rows: list[dict[str, Any]]) -> str | None:
    """Why Inception shows a bigger GPU difference than MobileNet, from the measured CPU times."""
    batch = {r["backbone"]: r["cpu_ms"] for r in rows if r["phase"] == "batch" and r["cpu_ms"]}
    if len(batch) < 2:
        return None
    light, heavy = min(batch, key=batch.get), max(batch, key=batch.get)
    ratio = batch[heavy] / batch[light]
    return (
        f"On this CPU {_family(heavy)} needs {batch[heavy]:.1f} ms per image in a batch against "
        f"{batch[light]:.1f} ms for {_family(light)} ({ratio:.0f}× the work). A GPU wins most on heavy "
        "networks: the more arithmetic per image, the smaller the share of fixed per-call costs."
    )

"""Timing reports: the schema check for imported files and the plain-language explanations.

Kept apart from engine/timing/lab.py so that validating or explaining a report never imports
TensorFlow (the dashboard does both on every render).
"""

from __future__ import annotations

import json
import math
from typing import Any

# below this, a GPU "speed-up" is within the noise of a shared machine: not worth the GPU
HELPS = 1.5

MAX_DEPTH = 16  # a report nests 4 levels; deeper is not a report (and json's recursion has limits)
MAX_NUMBER = 1e12  # no timing, count or core number comes near; bigger ones overflow the arithmetic
MAX_TEXT = 500  # characters of a label, CPU name or version


def _fail(error_cls, where: str, why: str, value: Any = None) -> None:
    shown = "" if value is None else f" (got {value!r:.80})"
    raise error_cls(f"Timings file: {where} {why}{shown}")


def _number(value: Any) -> bool:
    """A finite JSON number of sane size (checked before any float conversion, so huge ints pass safely)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and -MAX_NUMBER <= value <= MAX_NUMBER
        and (isinstance(value, int) or math.isfinite(value))
    )


def _not_a_number(token: str) -> float:
    raise ValueError(f"{token} is not a JSON number")


def _finite(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"{token[:40]} is too big for a number")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_report(data: bytes | str, error_cls, max_bytes: int) -> Any:
    """Parse a timings file's text with every limit applied; raises `error_cls` saying what is wrong.

    Refused: more than `max_bytes`, not UTF-8, not JSON, NaN or Infinity, numbers too big to be
    numbers here, nesting deeper than MAX_DEPTH (json itself would raise RecursionError).
    """
    if len(data) > max_bytes:
        raise error_cls(f"Timings file is {len(data):,} bytes; the limit is {max_bytes:,}")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return_value = json.loads(text, parse_constant=_not_a_number, parse_float=_finite)
    except RecursionError:
        raise error_cls(f"Timings file nests too deeply to be a timings report (limit {MAX_DEPTH})") from None
    except UnicodeDecodeError as exc:
        raise error_cls(f"Timings file is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, an integer of thousands of digits
        raise error_cls(f"Timings file is not valid JSON: {str(exc).splitlines()[0][:200]}") from None
    if _depth(return_value) > MAX_DEPTH:
        raise error_cls(f"Timings file nests too deeply to be a timings report (limit {MAX_DEPTH})")
    return return_value


def _text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TEXT


def _check_machine(machine: dict, error_cls) -> None:
    for key in ("cpu_model", "tensorflow_version"):
        if not _text(machine.get(key)):
            _fail(
                error_cls,
                f"'machine.{key}'",
                f"must be a string of at most {MAX_TEXT} characters",
                machine.get(key),
            )
    gpus = machine.get("gpus")
    if not isinstance(gpus, list) or not all(_text(g) for g in gpus) or len(gpus) > 64:
        _fail(error_cls, "'machine.gpus'", "must be a list of GPU names (empty for none)", gpus)
    for key in ("hostname", "python", "platform", "keras_version", "cuda_version", "cudnn_version"):
        if machine.get(key) is not None and not _text(machine[key]):
            _fail(error_cls, f"'machine.{key}'", "must be a string or null", machine[key])
    for key in ("cpu_cores", "usable_cores", "physical_cores"):
        value = machine.get(key)
        if value is not None and not (isinstance(value, int) and _number(value) and value >= 1):
            _fail(error_cls, f"'machine.{key}'", "must be an integer >= 1 or null", value)
    for key in ("memory_gb", "memory_bytes"):
        value = machine.get(key)
        if value is not None and not (_number(value) and value >= 0):
            _fail(error_cls, f"'machine.{key}'", "must be a number >= 0 or null", value)


def check_schema(report: Any, phases, devices, schema: str, version: int, error_cls) -> None:
    """Raise `error_cls` with the first problem found in `report`, naming the field.

    Every field the lab reads is checked for its type and range, so a report that passes can be
    saved, listed, charted and explained without a surprise.
    """
    if not isinstance(report, dict):
        _fail(error_cls, "the top level", "must be a JSON object", type(report).__name__)
    if _depth(report) > MAX_DEPTH:
        _fail(error_cls, "the report", f"nests deeper than {MAX_DEPTH} levels")
    if report.get("schema") != schema:
        _fail(error_cls, "'schema'", f"must be {schema!r}", report.get("schema"))
    if report.get("version") != version:
        _fail(
            error_cls,
            "'version'",
            f"must be {version} (this lab reads version {version})",
            report.get("version"),
        )
    if not _text(report.get("label")) or not report["label"].strip():
        _fail(
            error_cls,
            "'label'",
            f"must be a non-empty string of at most {MAX_TEXT} characters",
            report.get("label"),
        )
    created = report.get("created")
    if created is not None and not (_number(created) and 0 <= created <= 1e11):
        _fail(error_cls, "'created'", "must be a time in seconds since 1970", created)
    for key in ("origin", "id"):
        if report.get(key) is not None and not _text(report[key]):
            _fail(error_cls, f"'{key}'", "must be a string", report[key])
    if report.get("settings") is not None and not isinstance(report["settings"], dict):
        _fail(error_cls, "'settings'", "must be an object", report["settings"])
    machine = report.get("machine")
    if not isinstance(machine, dict):
        _fail(error_cls, "'machine'", "must be an object describing the hardware and software", machine)
    _check_machine(machine, error_cls)
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
        if not isinstance(items, int) or not _number(items) or items < 1:
            _fail(error_cls, where + ".items'", "must be an integer >= 1", items)
        if not _number(row.get("per_item_ms")) or row["per_item_ms"] < 0:
            _fail(error_cls, where + ".per_item_ms'", "must be a finite number >= 0", row.get("per_item_ms"))
        for key in ("items_per_second", "image_size"):
            if row.get(key) is not None and not (_number(row[key]) and row[key] >= 0):
                _fail(error_cls, f"{where}.{key}'", "must be a number >= 0 or null", row[key])


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

"""Convert a run, then compare the formats: the one sequence the CLI and the "convert" job both run.

It sits above `convert` and `compare` (compare measures what convert wrote), so neither imports the other
back.
"""

from __future__ import annotations

from typing import Any

from engine.errors import InvalidArgument
from engine.export import compare, convert
from engine.progress import CancelFn, ProgressFn


def convert_and_compare(
    run_id: str,
    formats: list[str] | str = convert.DEFAULT_FORMATS,
    *,
    force: bool = False,
    measure: bool = True,
    store=None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """Convert a run's classifier to `formats`, then (with `measure`) compare them with the Keras model.

    Returns:
        `convert.convert_run`'s result, plus "comparison": `compare.compare_formats`' report when
        measured. Skipped formats are compared too, so their reasons appear as rows.
    """
    result = convert.convert_run(run_id, formats, store=store, progress=progress, cancel=cancel, force=force)
    if measure:
        done = [m["format"] for m in result["exports"]] + list(result["skipped"])
        result["comparison"] = compare.compare_formats(
            run_id, ["keras", *done], store=store, progress=progress, cancel=cancel
        )
    return result


def run_job(params: dict[str, Any], progress=None, cancel=None, store=None) -> dict[str, Any]:
    """Job entry point (kind "convert"): params run_id, formats, force, compare (bool, default True)."""
    run_id = params.get("run_id")
    if not run_id:
        raise InvalidArgument(f"convert needs a run_id, got params={params!r}")
    result = convert_and_compare(
        run_id,
        params.get("formats") or list(convert.DEFAULT_FORMATS),
        force=bool(params.get("force")),
        measure=bool(params.get("compare", True)),
        store=store,
        progress=progress,
        cancel=cancel,
    )
    if "comparison" in result:  # the job's result is a summary; the report is saved in the run folder
        report = result["comparison"]
        result["comparison"] = {"rows": len(report["rows"]), "flips": len(report["flips"])}
    result["run_id"] = run_id
    return result

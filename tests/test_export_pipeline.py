"""The convert-then-compare sequence (one function for the CLI and the "convert" job) and its saved report."""

from __future__ import annotations

import json

import pytest

from engine.errors import InvalidArgument, LabError
from engine.export import compare, convert, pipeline
from engine.jobs import queue


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def convert_run(run_id, formats, **kwargs):
        seen.append(("convert", run_id, formats, kwargs["force"]))
        return {"run_id": run_id, "exports": [{"format": "onnx"}], "skipped": {"tensorrt-fp16": "no GPU"}}

    def compare_formats(run_id, formats, **kwargs):
        seen.append(("compare", run_id, formats))
        return {"rows": [{}, {}, {}], "flips": [{}]}

    monkeypatch.setattr(convert, "convert_run", convert_run)
    monkeypatch.setattr(compare, "compare_formats", compare_formats)
    return seen


def test_compare_measures_keras_what_was_converted_and_what_was_skipped(calls):
    result = pipeline.convert_and_compare("r1", ["onnx", "tensorrt-fp16"], force=True)
    assert calls == [
        ("convert", "r1", ["onnx", "tensorrt-fp16"], True),
        ("compare", "r1", ["keras", "onnx", "tensorrt-fp16"]),
    ]
    assert result["comparison"]["flips"] == [{}]


def test_the_job_summarises_the_comparison(calls):
    result = pipeline.run_job({"run_id": "r1", "formats": ["onnx"]})
    assert result["comparison"] == {"rows": 3, "flips": 1} and result["run_id"] == "r1"
    assert pipeline.run_job({"run_id": "r1", "compare": False}).get("comparison") is None
    assert calls[-1] == ("convert", "r1", list(convert.DEFAULT_FORMATS), False)
    with pytest.raises(InvalidArgument, match="run_id"):
        pipeline.run_job({})


def test_the_job_registry_points_at_the_pipeline():
    assert queue.JOB_KINDS["convert"] == "engine.export.pipeline:run_job"


@pytest.mark.parametrize(
    "text, why",
    [
        (b"", "Expecting value"),
        (b"[" * 100_000 + b"]" * 100_000, "recursion"),
        (b"[]", "top level"),
        (b'{"test_count": "9", "machine": {}, "rows": [], "flips": []}', "'test_count'"),
        (b'{"test_count": 9, "machine": {}, "rows": [{"format": "onnx"}], "flips": []}', "'rows'"),
        (b'{"test_count": 9, "machine": {}, "rows": [], "flips": "none"}', "'flips'"),
        (b"\xff\xfe", "utf-8"),
    ],
    ids=["empty", "deep", "list", "count-text", "row-without-status", "flips-text", "not-utf8"],
)
def test_a_damaged_saved_comparison_is_a_clear_error(tmp_path, monkeypatch, text, why):
    exports = tmp_path / "exports"
    exports.mkdir()
    monkeypatch.setattr(convert, "open_run", lambda run_id, store=None: type("Run", (), {"exports": exports}))
    assert compare.load_comparison("r1") is None  # none saved yet
    good = {"test_count": 9, "machine": {}, "rows": [{"format": "keras", "status": "ok"}], "flips": []}
    (exports / "comparison.json").write_text(json.dumps(good))
    assert compare.load_comparison("r1") == good
    (exports / "comparison.json").write_bytes(text)
    with pytest.raises(
        LabError, match=f"comparison {exports / 'comparison.json'} is damaged.*measure"
    ) as err:
        compare.load_comparison("r1")
    assert why in str(err.value)

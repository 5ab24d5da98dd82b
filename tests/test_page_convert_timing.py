"""AppTest of the Convert & compare and CPU vs GPU pages: empty states, a converted run, imported timings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.export import compare, convert
from engine.runs.store import RunStore
from engine.timing import lab as bench

PAGES = Path(__file__).resolve().parents[1] / "dashboard"
TIMEOUT = 60


def _texts(at: AppTest) -> str:
    return " ".join(
        [m.value for m in at.markdown] + [i.value for i in at.info] + [c.value for c in at.caption]
    )


def _ok(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_convert_page_without_runs_says_what_to_do():
    at = AppTest.from_file(str(PAGES / "convert.py"), default_timeout=TIMEOUT).run()
    _ok(at)
    assert "No finished run yet" in _texts(at)


@pytest.mark.slow
def test_convert_page_shows_exports_comparison_and_tensorrt_status():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((128, 128, 3))
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(
        inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    )
    store = RunStore()
    config = {"source": "demo", "architecture": "mobilenet_0.25_128", "testing_percentage": 20}
    run = store.create_run(config, name="page run")
    folder = store.run_dir(run.id)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "labels.txt").write_text("blue_triangle\ngreen_square\nred_circle\n")
    (folder / "config.json").write_text(json.dumps(config))
    store.finish_run(run.id, {})
    convert.convert_run(run.id, ["tflite-fp32"])
    compare.compare_formats(run.id, ["keras", "tflite-fp32", "tensorrt-fp16"], single_runs=2)

    at = AppTest.from_file(str(PAGES / "convert.py"), default_timeout=TIMEOUT).run()
    _ok(at)
    text = _texts(at)
    assert "Comparison on the run's" in text and "Prediction flips" in text
    table = next(df.value for df in at.dataframe if "Format" in df.value.columns)
    assert list(table["Format"]) == ["keras", "tflite-fp32"]
    assert any("tensorrt-fp16" in w.value for w in at.warning)  # unavailable here, with the reason


def test_timing_page_empty_then_with_imported_timings():
    at = AppTest.from_file(str(PAGES / "timing.py"), default_timeout=TIMEOUT).run()
    _ok(at)
    assert "No timings yet" in _texts(at)
    rows = [
        {"backbone": b, "phase": p, "device": d, "seconds": s, "items": 1, "per_item_ms": s * 1000}
        for b in ("mobilenet_0.25_224", "inception_v3")
        for p, d, s in (("decode", "cpu", 0.002), ("single", "cpu", 0.01), ("single", "gpu", 0.012))
    ]
    report = {
        "schema": bench.SCHEMA,
        "version": bench.SCHEMA_VERSION,
        "label": "Sam's GPU",
        "machine": {"cpu_model": "Ryzen", "tensorflow_version": "2.21.0", "gpus": ["RTX 3060"]},
        "timings": rows,
    }
    bench.import_timings(json.dumps(report).encode())
    at = AppTest.from_file(str(PAGES / "timing.py"), default_timeout=TIMEOUT).run()
    _ok(at)
    text = _texts(at)
    assert "Sam's GPU" in text and "fixed costs" in text
    assert any("RTX 3060" in str(df.value) for df in at.dataframe)


def test_status_text_follows_a_running_job():
    """While a job measures or times, the page says so instead of "No comparison/timings yet"."""
    store = RunStore()
    run = store.create_run({"source": "demo", "architecture": "mobilenet_0.25_128"}, name="page run")
    store.finish_run(run.id, {})
    job = store.create_job("convert", {"run_id": run.id, "formats": ["tflite-fp32"], "compare": True})
    store.set_job_worker(job.id, os.getpid())  # "its worker" is alive: the job stays active
    at = AppTest.from_file(str(PAGES / "convert.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception  # (its exports panel says the run has no model.keras)
    text = _texts(at)
    assert "Measuring the formats now" in text and "No comparison yet" not in text

    at = AppTest.from_file(str(PAGES / "timing.py"), default_timeout=TIMEOUT).run()
    _ok(at)
    assert "No timings yet" in _texts(at)  # no timing job: the empty state
    job = store.create_job("timing", {"backbone_names": ["mobilenet_0.25_128"]})
    store.set_job_worker(job.id, os.getpid())
    at = AppTest.from_file(str(PAGES / "timing.py"), default_timeout=TIMEOUT).run()
    _ok(at)
    text = _texts(at)
    assert "Timing now" in text and "No timings yet" not in text

"""The timing lab: a tiny real run on the CPU, the GPU path where one exists, and imported timings' schema."""

from __future__ import annotations

import copy
import json

import pytest

from engine.errors import InvalidArgument
from engine.timing import lab
from engine.timing import report as timing_report
from engine.timing.lab import TimingsError


def _report(label: str = "Alex's laptop", gpu: bool = True) -> dict:
    """A small but complete timings report as another machine would export it."""
    rows = []
    for backbone, scale in (("mobilenet_0.25_224", 1.0), ("inception_v3", 20.0)):
        rows.append({"backbone": backbone, "phase": "decode", "device": "cpu", "seconds": 0.1, "items": 32})
        for phase, cpu_ms, gpu_ms in (
            ("extract", 5, 1),
            ("train", 1, 2),
            ("single", 10, 12),
            ("batch", 4, 0.5),
        ):
            for device, ms in (
                (("cpu", cpu_ms * scale), ("gpu", gpu_ms * scale)) if gpu else (("cpu", cpu_ms * scale),)
            ):
                rows.append(
                    {"backbone": backbone, "phase": phase, "device": device, "seconds": ms / 1000, "items": 1}
                )
    for row in rows:
        row["per_item_ms"] = row["seconds"] / row["items"] * 1000
    return {
        "schema": lab.SCHEMA,
        "version": lab.SCHEMA_VERSION,
        "label": label,
        "created": 1_700_000_000.0,
        "machine": {
            "cpu_model": "Ryzen 5",
            "tensorflow_version": "2.21.0",
            "gpus": ["RTX 3060"] if gpu else [],
        },
        "timings": rows,
    }


def test_import_a_classmates_timings_and_list_them_labelled():
    report = lab.import_timings(json.dumps(_report()).encode(), label="Sam's RTX 3060")
    assert report["origin"] == "imported" and report["label"] == "Sam's RTX 3060"
    listed = lab.list_timings()
    assert [r["label"] for r in listed] == ["Sam's RTX 3060"]
    assert lab.load_timings(listed[0]["id"])["machine"]["gpus"] == ["RTX 3060"]
    assert (lab.timings_dir() / f"{report['id']}.json").is_file()


def test_import_from_a_file_path(tmp_path):
    path = tmp_path / "timings.json"
    path.write_text(json.dumps(_report(label="from a file")))
    assert lab.import_timings(path)["label"] == "from a file"


def _broken(change) -> bytes:
    report = copy.deepcopy(_report())
    change(report)
    return json.dumps(report).encode()


BAD_FILES = [
    (b"not json at all", "not valid JSON"),
    (b"[1, 2, 3]", "top level"),
    (_broken(lambda r: r.update(schema="something-else")), "'schema'"),
    (_broken(lambda r: r.update(version=2)), "'version'"),
    (_broken(lambda r: r.pop("machine")), "'machine'"),
    (_broken(lambda r: r["machine"].update(gpus="RTX")), "'machine.gpus'"),
    (_broken(lambda r: r.update(timings=[])), "'timings'"),
    (_broken(lambda r: r["timings"][1].update(phase="compile")), "'timings[1].phase'"),
    (_broken(lambda r: r["timings"][2].update(device="tpu")), "'timings[2].device'"),
    (_broken(lambda r: r["timings"][0].update(seconds=-1)), "'timings[0].seconds'"),
    (_broken(lambda r: r["timings"][0].update(items=0)), "'timings[0].items'"),
    (b'{"schema": "classifier-lab/timings", "version": 1, "label": "x", "timings": NaN}', "NaN"),
    (b'{"schema": "classifier-lab/timings", "seconds": -Infinity}', "-Infinity"),
    (b"[" * 200_000 + b"]" * 200_000, "nests too deeply"),
    (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nests too deeply"),
    (_broken(lambda r: r.update(settings={"x": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]})), "nests"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"42", "top level"),
    (b'"a string"', "top level"),
    (b"null", "top level"),
    (_broken(lambda r: r.update(label=["x"])), "'label'"),
    (_broken(lambda r: r.update(label="x" * 501)), "'label'"),
    (_broken(lambda r: r.update(created="yesterday")), "'created'"),
    (_broken(lambda r: r.update(created=1e300)), "'created'"),
    (_broken(lambda r: r.update(settings=[1])), "'settings'"),
    (_broken(lambda r: r.update(origin=7)), "'origin'"),
    (_broken(lambda r: r["machine"].update(cpu_model=None)), "'machine.cpu_model'"),
    (_broken(lambda r: r["machine"].update(cpu_cores="eight")), "'machine.cpu_cores'"),
    (_broken(lambda r: r["machine"].update(cpu_cores=True)), "'machine.cpu_cores'"),
    (_broken(lambda r: r["machine"].update(memory_gb={"gb": 8})), "'machine.memory_gb'"),
    (_broken(lambda r: r["machine"].update(cuda_version=12)), "'machine.cuda_version'"),
    (_broken(lambda r: r["machine"].update(gpus=[1, 2])), "'machine.gpus'"),
    (_broken(lambda r: r.update(timings={"0": {}})), "'timings'"),
    (_broken(lambda r: r["timings"].append("row")), "'timings[18]' must be an object"),
    (_broken(lambda r: r["timings"][0].update(backbone=None)), "'timings[0].backbone'"),
    (_broken(lambda r: r["timings"][0].update(seconds="0.1")), "'timings[0].seconds'"),
    (_broken(lambda r: r["timings"][0].update(items=1.5)), "'timings[0].items'"),
    (_broken(lambda r: r["timings"][0].update(items=10**400)), "'timings[0].items'"),
    (_broken(lambda r: r["timings"][3].update(per_item_ms=10**400)), "'timings[3].per_item_ms'"),
    (_broken(lambda r: r["timings"][3].update(per_item_ms=[1])), "'timings[3].per_item_ms'"),
    (_broken(lambda r: r["timings"][3].update(items_per_second="fast")), "'timings[3].items_per_second'"),
    (
        _broken(lambda r: r["timings"][0].update(seconds=1e300)).replace(b"1e+300", b"1e999"),
        "1e999 is too big",
    ),
    (b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON"),
]


@pytest.mark.parametrize("data, where", BAD_FILES, ids=[where for _, where in BAD_FILES])
def test_bad_timings_files_are_refused_with_the_field(data, where):
    with pytest.raises(TimingsError, match=None) as err:
        lab.import_timings(data)
    assert where in str(err.value)
    assert lab.list_timings() == []  # nothing half-imported


def test_oversized_file_is_refused(tmp_path):
    with pytest.raises(TimingsError, match="limit"):
        lab.import_timings(b"{" + b" " * (lab.MAX_IMPORT_BYTES + 1) + b"}")
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:  # 11 MB, sparse: refused by its size, never read
        fh.truncate(11_000_000)
    with pytest.raises(TimingsError, match=f"{big} is 11,000,000 bytes; the limit"):
        lab.import_timings(big)


def test_unreadable_paths_are_refused_without_blocking(tmp_path):
    import os

    with pytest.raises(TimingsError, match="not a regular file"):
        lab.import_timings(str(tmp_path / "missing.json"))
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(TimingsError, match=f"{fifo} is not a regular file"):
        lab.import_timings(fifo)
    with pytest.raises(TimingsError, match="not a regular file"):
        lab.import_timings(tmp_path)


def test_a_damaged_saved_file_is_skipped_and_load_says_why():
    lab.import_timings(json.dumps(_report(label="good")).encode())
    (lab.timings_dir() / "zz-deep.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    assert [r["label"] for r in lab.list_timings()] == ["good"]
    with pytest.raises(TimingsError, match="nests too deeply"):
        lab.load_timings("zz-deep")


def test_label_given_on_import_is_bounded():
    with pytest.raises(TimingsError, match="at most 500"):
        lab.import_timings(json.dumps(_report()).encode(), label="x" * 501)


def test_speedups_and_explanations():
    report = _report()
    table = {(r["backbone"], r["phase"]): r for r in lab.speedups(report)}
    assert table[("inception_v3", "batch")]["speedup"] == pytest.approx(8.0)
    assert table[("mobilenet_0.25_224", "single")]["speedup"] < 1
    assert table[("mobilenet_0.25_224", "decode")]["speedup"] is None  # CPU only, by design
    notes = " ".join(lab.explain(report))
    assert "fixed costs" in notes and "launch" in notes  # single image and head training: no GPU win
    assert "8.0× faster" in notes and "Inception v3" in notes
    cpu_only = " ".join(lab.explain(_report(gpu=False)))
    assert "No GPU was visible" in cpu_only and "20× the work" in cpu_only


def test_explanations_never_import_tensorflow():
    import sys

    assert "tensorflow" not in timing_report.__dict__ and "tensorflow" not in lab.__dict__
    assert timing_report.explain_rows([], {}) and "keras" not in dir(timing_report)
    assert sys.modules.get("engine.timing.report") is timing_report


@pytest.mark.slow
def test_a_tiny_lab_run_on_this_cpu():
    events = []
    report = lab.run_lab(
        ["mobilenet_0.25_128"], images=4, batch_size=4, single_runs=3, train_steps=10, progress=events.append
    )
    phases = {(r["phase"], r["device"]) for r in report["timings"]}
    devices = ["cpu", "gpu"] if report["machine"]["gpus"] else ["cpu"]
    assert phases == {("decode", "cpu")} | {(p, d) for p in lab.PHASES[1:] for d in devices}
    assert all(r["seconds"] > 0 and r["per_item_ms"] > 0 for r in report["timings"])
    assert report["machine"]["cpu_model"] and report["machine"]["tensorflow_version"]
    assert lab.load_timings(report["id"])["origin"] == "measured"
    assert events[-1]["phase"] == "bench" and events[-1]["done"] == events[-1]["total"]
    # the bar moves inside a backbone's timing, not once per backbone and device
    work = [e for e in events if e["total"]]
    assert all(e["units"] == "work" for e in work)
    dones = [e["done"] for e in work]
    assert dones == sorted(dones) and len(set(dones)) >= 10
    said = " ".join(e["message"] for e in events)
    for step in ("building", "tracing", "extracting", "training a head", "single-image", "batches of"):
        assert step in said
    if not report["machine"]["gpus"]:
        with pytest.raises(InvalidArgument, match="no GPU"):
            lab.run_lab(["mobilenet_0.25_128"], devices=["gpu"])


@pytest.mark.slow
def test_gpu_timings_where_a_gpu_exists():
    if not lab.gpu_names():
        pytest.skip("GPU timing UNVERIFIED here: TensorFlow sees no GPU on this machine")
    report = lab.run_lab(["mobilenet_0.25_128"], images=8, batch_size=8, single_runs=5, train_steps=20)
    assert any(r["device"] == "gpu" for r in report["timings"])
    assert all(r["speedup"] for r in lab.speedups(report) if r["phase"] != "decode")


def test_lab_progress_weights_follow_the_measured_costs():
    """The work estimate reproduces the 2-core CPU measurement: InceptionV3 (5.7 GMACs) took ~10x the
    seconds of MobileNet 0.25 (0.04 GMACs) with the lab's defaults (128 s against 12 s)."""
    small = sum(lab._device_units(0.041, 32, 32, 20, 200).values())
    large = sum(lab._device_units(5.71, 32, 32, 20, 200).values())
    assert 8 < small < 16 and 100 < large < 160

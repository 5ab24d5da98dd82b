"""Batch classification: a folder or zip -> rows, CSV, accuracy and confusion; hostile zips refused."""

from __future__ import annotations

import csv
import io
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine import config
from engine.errors import Cancelled, InvalidArgument, NotFound, UnsafeArchive
from engine.export import batch
from engine.export.predict import Classifier
from tests.conftest import FLOWERS, MOBILENET_025_WEIGHTS

CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


class RednessRuntime:
    """A stand-in model: 'roses' when the photo is more red than green, else 'daisy'."""

    fmt = "stand-in"

    def predict(self, pixels):
        red = pixels[..., 0].mean(axis=(1, 2)) > pixels[..., 1].mean(axis=(1, 2))
        probs = np.full((len(pixels), len(CLASSES)), 0.05, np.float32)
        probs[np.arange(len(pixels)), np.where(red, 2, 0)] = 0.8
        return probs


@pytest.fixture
def stand_in():
    return Classifier(None, CLASSES, 32, "stand-in", runtime=RednessRuntime())


def _jpeg(colour) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(out, "JPEG")
    return out.getvalue()


RED, GREEN = _jpeg((220, 20, 20)), _jpeg((20, 220, 20))


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _batches_left() -> list[Path]:
    folder = config.cache_dir() / "batches"
    return list(folder.iterdir()) if folder.exists() else []


def test_a_zip_is_scored_by_its_class_folders_and_unknown_folders_are_reported(stand_in, tmp_path):
    archive = _zip(
        tmp_path / "photos.zip",
        {
            "set/Roses/a.jpg": RED,  # folder names match case-insensitively
            "set/roses/b.jpg": GREEN,  # a wrong answer
            "set/daisy/c.jpg": GREEN,
            "set/cats/d.jpg": RED,  # not one of the model's classes: classified, never scored
            "set/daisy/broken.jpg": RED[:100],
            "set/.hidden/e.jpg": RED,
        },
    )
    events = []
    result = batch.classify_folder(stand_in, archive, progress=events.append, thumbs_dir=tmp_path / "thumbs")
    by_path = {r["path"]: r for r in result.rows}
    assert set(by_path) == {"Roses/a.jpg", "roses/b.jpg", "daisy/c.jpg", "cats/d.jpg", "daisy/broken.jpg"}
    assert result.labelled and result.unknown_folders == {"cats": 1}
    assert by_path["cats/d.jpg"]["true_label"] is None and by_path["cats/d.jpg"]["correct"] is None
    assert by_path["Roses/a.jpg"]["true_label"] == "roses" and by_path["Roses/a.jpg"]["correct"] is True
    assert by_path["daisy/broken.jpg"]["error"] and by_path["daisy/broken.jpg"]["correct"] is None
    assert result.scored == 3 and result.accuracy == pytest.approx(2 / 3)
    assert sum(map(sum, result.confusion)) == result.scored
    assert result.confusion[CLASSES.index("roses")][CLASSES.index("daisy")] == 1
    assert result.photos_in_cell("roses", "daisy") == ["roses/b.jpg"]
    assert all(Path(by_path[p]["thumbnail"]).is_file() for p in ("Roses/a.jpg", "cats/d.jpg"))
    assert any(e["message"] == "Classified 5 of 5 photos" for e in events)
    assert _batches_left() == []  # the unpacked photos are gone


def test_loose_photos_are_classified_without_a_score(stand_in, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jpg").write_bytes(RED)
    result = batch.classify_folder(stand_in, tmp_path / "in")
    assert not result.labelled and result.accuracy is None and result.rows[0]["predicted"] == "roses"
    assert sum(map(sum, result.confusion)) == 0


def test_hostile_and_wrong_inputs_are_refused_with_a_clear_message(stand_in, tmp_path):
    escape = _zip(tmp_path / "escape.zip", {"daisy/a.jpg": RED, "../../evil.jpg": RED})
    with pytest.raises(UnsafeArchive, match="escape.zip"):
        batch.classify_folder(stand_in, escape)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("daisy/zeros.jpg", b"\0" * (40 * 1024**2))
    with pytest.raises(UnsafeArchive, match="bomb"):
        batch.classify_folder(stand_in, bomb)
    assert _batches_left() == [] and not (tmp_path.parent / "evil.jpg").exists()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidArgument, match="neither a folder nor a .zip"):
        batch.classify_folder(stand_in, tmp_path / "notes.txt")
    with pytest.raises(NotFound, match="No such folder or zip"):
        batch.classify_folder(stand_in, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match="holds no photos"):
        batch.classify_folder(stand_in, tmp_path / "empty")


def test_cancel_stops_and_cleans_up(stand_in, tmp_path):
    archive = _zip(tmp_path / "p.zip", {f"daisy/{i}.jpg": GREEN for i in range(3)})
    with pytest.raises(Cancelled):
        batch.classify_folder(stand_in, archive, cancel=lambda: True)
    assert _batches_left() == []


def test_csv_is_one_line_per_photo_and_defuses_formulas(stand_in, tmp_path):
    (tmp_path / "in" / "daisy").mkdir(parents=True)
    (tmp_path / "in" / "daisy" / "=cmd.jpg").write_bytes(GREEN)
    result = batch.classify_folder(stand_in, tmp_path / "in", top_k=2)
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert len(rows) == 1 and rows[0]["correct"] == "True" and rows[0]["top_k"].startswith("daisy 0.8")
    again = batch.BatchResult.from_dict(result.as_dict())
    assert again.accuracy == 1.0 and again.confusion == result.confusion and again.rows == result.rows
    zipped = _zip(tmp_path / "f.zip", {"=HYPERLINK.jpg": RED})
    line = batch.classify_folder(stand_in, zipped).to_csv().splitlines()[1]
    assert line.startswith("'=HYPERLINK.jpg")


# -- the real flowers --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flowers_run(tmp_path_factory):
    """A mobilenet_0.25_224 run on the shared flowers: (LAB_HOME, KERAS_HOME, run id)."""
    for path in (FLOWERS, MOBILENET_025_WEIGHTS):
        if not path.exists():
            pytest.skip(f"needs the shared offline asset {path}")
    from engine.runs.retrain import RunConfig, retrain
    from engine.training.config import TrainConfig

    home = tmp_path_factory.mktemp("batch_lab")
    (home / "keras" / "models").mkdir(parents=True)
    shutil.copy(MOBILENET_025_WEIGHTS, home / "keras" / "models" / MOBILENET_025_WEIGHTS.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_HOME", str(home / "lab"))
        mp.setenv("KERAS_HOME", str(home / "keras"))
        config_ = RunConfig(source=str(FLOWERS), architecture="mobilenet_0.25_224", train=TrainConfig())
        return home / "lab", home / "keras", retrain(config_).run_id


@pytest.mark.slow
def test_flowers_as_a_job(flowers_run, monkeypatch):
    """The job kind end to end: a worker classifies the 200 flowers; accuracy is the share of correct rows."""
    from engine.export.lineup import run_choice
    from engine.jobs import queue as jobs

    lab, keras_home, run_id = flowers_run
    monkeypatch.setenv("LAB_HOME", str(lab))
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    params = {"choice": run_choice(run_id).as_dict(), "path": str(FLOWERS)}
    job_id = jobs.start_job("classify_batch", params)
    deadline = time.time() + 300
    while jobs.get_job(job_id).active and time.time() < deadline:
        time.sleep(0.5)
    job = jobs.get_job(job_id)
    assert job.status == "finished", (job.error, jobs.job_log(job_id)[-2000:])
    result = batch.BatchResult.from_dict(job.result)
    photos = sorted(FLOWERS.glob("*/*.jpg"))
    assert len(result.rows) == len(photos) == 200 and result.classified == 200
    assert result.labelled and result.unknown_folders == {} and result.classes == CLASSES
    correct = sum(1 for r in result.rows if r["correct"])
    assert result.accuracy == pytest.approx(correct / 200)
    assert result.accuracy > 0.8  # the run's own training photos, mostly
    assert sum(map(sum, result.confusion)) == 200
    assert sum(result.confusion[i][i] for i in range(5)) == correct
    assert job.message == "Classified 200 of 200 photos"
    written = Path(job.result["csv"])
    assert written.parent == jobs.job_dir(job_id) and written.read_text() == result.to_csv()
    print(f"batch job: 200 flowers, accuracy {result.accuracy:.3f}, {job.finished - job.started:.1f} s")


# -- the Batch tab ------------------------------------------------------------------------------------
def _batch_tab_script():
    import streamlit as st

    from dashboard import batch_view
    from engine.export.lineup import ModelChoice

    batch_view.render([ModelChoice("imagenet", "mobilenet_0.25_224", title="stand-in model")])
    st.session_state["rendered"] = True


def test_batch_tab_shows_a_finished_job_and_the_photos_of_a_cell(stand_in, tmp_path):
    from streamlit.testing.v1 import AppTest

    from dashboard import batch_view
    from engine.runs.store import RunStore

    archive = _zip(
        tmp_path / "p.zip",
        {"roses/a.jpg": RED, "roses/b.jpg": GREEN, "daisy/c.jpg": GREEN, "cats/d.jpg": RED},
    )
    result = batch.classify_folder(stand_in, archive, thumbs_dir=tmp_path / "thumbs")
    store = RunStore()
    job = store.create_job("classify_batch", {"path": str(archive)})
    store.finish_job(job.id, "finished", result.as_dict())

    at = AppTest.from_function(_batch_tab_script, default_timeout=60)
    at.session_state[batch_view.JOB_KEY] = job.id
    at.run()
    assert not at.exception and at.session_state["rendered"]
    assert [m.value for m in at.metric] == ["4", "4", "66.7%"]
    assert any("`cats` (1)" in w.value for w in at.warning)
    assert len(at.dataframe[0].value) == 4
    picker = at.selectbox(key="batch_cell_pick_None")
    assert ("roses", "daisy") in picker.options or any("roses → predicted daisy" in o for o in picker.options)
    picker.set_value(("roses", "daisy")).run()
    assert not at.exception
    assert any("1 photo of roses predicted daisy" in m.value for m in at.markdown)
    assert len(at.get("imgs")) == 1 or len(at.get("image")) == 1, [e.type for e in at.main]
    assert not at.error and len(at.get("plotly_chart")) == 1
    assert at.get("download_button")[0].proto.label == "Download CSV"


def test_a_staged_upload_is_a_zip_and_only_staged_files_are_removed(tmp_path):
    with pytest.raises(InvalidArgument, match="notes.txt.? is not a .zip file"):
        batch.stage_upload(b"PK\x03\x04", "notes.txt")
    with pytest.raises(InvalidArgument, match="not a zip archive"):
        batch.stage_upload(b"hello", "fake.zip")
    staged = Path(batch.stage_upload(_zip(tmp_path / "a.zip", {"daisy/a.jpg": RED}).read_bytes(), "a.zip"))
    assert staged.parent == batch.staging_dir() and zipfile.is_zipfile(staged)
    outside = tmp_path / "keep.zip"
    outside.write_bytes(b"PK")
    batch._remove_staged(str(outside))
    batch._remove_staged(str(staged))
    assert outside.exists() and not staged.exists()

"""AppTest of every dashboard page: each renders without an exception, and its main interactions work.

Pages run alone (`AppTest.from_file("dashboard/<page>.py")`), in this process, against the
temporary LAB_HOME of the autouse `lab_home` fixture. Runs are made through the real engine.
"""

from __future__ import annotations

import io
import os
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import streamlit_app
from engine.data import datasets
from engine.jobs import queue as jobs
from engine.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
PAGES = [Path(file).stem for file, _, _ in streamlit_app.PAGES]  # every page the router serves
TIMEOUT = 120  # seconds per script run; the first TensorFlow import is slow on a busy machine


def app(page: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "dashboard" / f"{page}.py"), default_timeout=TIMEOUT)


def ok(at: AppTest) -> AppTest:
    """Assert the last run raised nothing and showed no error box."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def jpeg(color=(200, 40, 40), size=48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), color, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def finished_run(source: Path, steps: int = 20) -> str:
    """Train a tiny run (random weights, demo images) through a job and wait for it to finish."""
    from dataclasses import asdict

    from engine.runs.retrain import RunConfig
    from engine.training.config import TrainConfig

    config = RunConfig(source=str(source), weights="random", train=TrainConfig(steps=steps, batch_size=16))
    job_id = jobs.start_job("retrain", asdict(config))
    deadline = time.time() + 240
    while time.time() < deadline:
        job = jobs.get_job(job_id)
        if not job.active:
            assert job.status == "finished", (job.status, job.error, jobs.job_log(job_id)[-2000:])
            return job.run_id
        time.sleep(0.5)
    jobs.cancel_job(job_id, wait=True)
    raise AssertionError("the retrain job did not finish in time")


@pytest.fixture
def demo_dir() -> Path:
    return datasets.make_demo_dataset(num_classes=3, per_class=12, size=32)


# -- smoke: every page renders ---------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
def test_page_renders(page):
    at = ok(app(page).run())
    assert at.title, "every page starts with a title"


def test_router_serves_every_page_file_and_leaves_out_missing_ones(tmp_path):
    # every page file of the dashboard is in the router, and every router entry is a file here
    page_files = {
        f"dashboard/{p.name}" for p in (ROOT / "dashboard").glob("*.py") if "st.title(" in p.read_text()
    }
    assert page_files == {file for file, _, _ in streamlit_app.PAGES}
    assert streamlit_app.available_pages() == streamlit_app.PAGES
    # a checkout without some pages (yet) serves the others, in the router's order
    for file, _, _ in streamlit_app.PAGES[::2]:
        (tmp_path / file).parent.mkdir(exist_ok=True)
        (tmp_path / file).write_text("")
    assert streamlit_app.available_pages(tmp_path) == streamlit_app.PAGES[::2]


def test_router_applies_the_streamlit_workarounds_and_opens_the_overview(monkeypatch):
    """The router (not a page import) turns off Streamlit's per-run keras clear_session, then routes."""
    from streamlit.runtime.scriptrunner import script_runner

    def stock() -> None:
        pass

    monkeypatch.setattr(script_runner, "_clean_problem_modules", stock)
    import dashboard.cache  # noqa: F401  (importing a page's modules changes nothing)

    assert script_runner._clean_problem_modules is stock
    at = ok(AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run())
    assert [t.value for t in at.title] == [":material/neurology: Classifier Lab"]
    assert getattr(script_runner._clean_problem_modules, "keeps_keras", False)


def test_overview_shows_stack_and_concepts():
    at = ok(app("overview").run())
    labels = {m.label: m.value for m in at.metric}
    assert labels["TensorFlow"][0].isdigit()
    assert "Runs in this lab" in labels
    text = " ".join(m.value for m in at.markdown)
    assert "GPUs visible to TensorFlow" in text
    assert "14,197,122" in text and "21,841" in text and "1.28 million" in text
    assert any("TensorRT" in w.value for w in at.warning) or any("TensorRT" in s.value for s in at.success)


# -- Data ----------------------------------------------------------------------------------------------
def test_data_demo_set_counts():
    at = ok(app("data").run())
    at.button[0].click().run()  # "Generate the demo set" (the default source)
    ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "3"
    assert int(metrics["Images"]) == 120
    assert int(metrics["Train"]) + int(metrics["Validation"]) + int(metrics["Test"]) == 120
    assert len(at.dataframe) >= 1  # per-class counts
    assert at.session_state["dataset_path"].endswith("demo-3c-40x96px-s0")


def test_data_zip_without_class_folders_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("loose.jpg", jpeg())
    at = app("data").run()
    at.segmented_control[0].set_value("zip").run()
    at.file_uploader[0].set_value(("loose.zip", buf.getvalue(), "application/zip")).run()
    at.button[0].click().run()
    assert not at.exception
    assert at.error and "class" in at.error[0].value.lower()
    assert "dataset_path" not in at.session_state


def test_data_zip_of_class_folders_is_used():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for label, color in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
            for i in range(6):
                zf.writestr(f"{label}/{i}.jpg", jpeg(color))
        zf.writestr("red/broken.jpg", b"\xff\xd8 not really a jpeg")
    at = app("data").run()
    at.segmented_control[0].set_value("zip").run()
    at.file_uploader[0].set_value(("colours.zip", buf.getvalue(), "application/zip")).run()
    at.button[0].click().run()
    ok(at)
    assert {m.label: m.value for m in at.metric}["Images"] == "12"
    assert any("Skipped 1 file" in w.value for w in at.warning)


def test_data_per_class_upload_refuses_bad_files():
    at = app("data").run()
    at.segmented_control[0].set_value("per_class").run()
    at.text_input(key="pc_label_0").set_value("cats")
    at.text_input(key="pc_label_1").set_value("dogs")
    at.file_uploader(key="pc_files_0").set_value(
        [("a.jpg", jpeg((10, 10, 10)), "image/jpeg"), ("notes.txt", b"hello", "text/plain")]
    )
    at.file_uploader(key="pc_files_1").set_value([("b.jpg", jpeg((250, 250, 250)), "image/jpeg")])
    at.run()
    at.button[0].click().run()
    assert not at.exception
    assert any("notes.txt" in w.value for w in at.warning)
    assert any("cats: 1" in s.value and "dogs: 1" in s.value for s in at.success)
    assert Path(at.session_state["dataset_path"]).name == "my-photos"


# -- Train -------------------------------------------------------------------------------------------
def test_train_starts_a_job_that_reaches_the_store(demo_dir):
    at = app("train").run()
    at.session_state["dataset_path"] = str(demo_dir)
    at.run()
    ok(at)
    assert at.selectbox[0].value == str(demo_dir)
    at.radio[0].set_value("random")
    steps = next(n for n in at.number_input if n.label == "Training steps")
    steps.set_value(20)
    next(b for b in at.button if b.label == "Start training").click().run()
    ok(at)
    job_id = at.session_state["train_job"]
    assert jobs.get_job(job_id).kind == "retrain"
    deadline = time.time() + 240
    while jobs.get_job(job_id).active and time.time() < deadline:
        at.run()  # what the fragment's polling does in a browser
        assert not at.exception
        time.sleep(1)
    job = jobs.get_job(job_id)
    assert job.status == "finished", (job.error, jobs.job_log(job_id)[-2000:])
    at.run()
    ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Test accuracy"].endswith("%")
    run = RunStore().get_run(job.run_id)
    assert run.status == "finished" and run.config["train"]["steps"] == 20
    assert RunStore().get_history(run.id)


def test_train_form_defaults_are_a_runs_defaults(demo_dir, monkeypatch):
    """Start pressed on an untouched form asks for exactly RunConfig's and TrainConfig()'s defaults."""
    from dataclasses import asdict

    from engine.runs.retrain import RunConfig

    started = []
    monkeypatch.setattr(jobs, "start_job", lambda kind, params, store=None: started.append(params) or "job-x")
    at = app("train").run()
    at.session_state["dataset_path"] = str(demo_dir)
    at.run()
    assert any("the run is named **MobileNet 0.25 · demo · " in c.value for c in at.caption)
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception
    (params,) = started
    # an empty name field: named by backbone, dataset and time (never just "lr=...")
    assert re.fullmatch(r"MobileNet 0\.25 · demo · \d\d-\d\d \d\d:\d\d", params["name"]), params["name"]
    assert params == asdict(RunConfig(source=str(demo_dir), name=params["name"]))


def test_train_refresh_finds_the_running_job(demo_dir):
    from dataclasses import asdict

    from engine.runs.retrain import RunConfig
    from engine.training.config import TrainConfig

    config = RunConfig(source=str(demo_dir), weights="random", train=TrainConfig(steps=100_000))
    job_id = jobs.start_job("retrain", asdict(config))
    try:
        at = ok(app("train").run())  # a new session: nothing in its session_state
        assert at.session_state["train_job"] == job_id
        assert any(b.label == "Cancel" for b in at.button)
    finally:
        jobs.cancel_job(job_id, wait=True)


def test_train_shows_bad_settings_as_an_error(demo_dir):
    at = app("train").run()
    at.session_state["dataset_path"] = str(demo_dir)
    at.run()
    next(n for n in at.number_input if n.label == "Test %").set_value(60)
    next(n for n in at.number_input if n.label == "Validation %").set_value(50)
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception
    assert at.error and "validation_percentage + testing_percentage" in at.error[0].value


def test_train_takes_the_architectures_page_handoff():
    """Architectures' "Use on Train" leaves a backbone and freezing depth in session_state."""
    at = app("train")
    at.session_state["train_architecture"] = "inception_v3"
    at.session_state["train_fine_tune_layers"] = 3
    ok(at.run())
    assert next(s for s in at.selectbox if s.label == "Backbone").value == "inception_v3"
    assert next(n for n in at.number_input if n.label.startswith("Fine-tune: unfreeze")).value == 3


def _class_folders(root: Path, classes=("cats", "dogs"), per_class: int = 2) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / name / f"{i}.jpg").write_bytes(jpeg((40 * i, 90, 160)))
    return root


def _dataset_box(at: AppTest):
    return next(s for s in at.selectbox if s.label == "Dataset")


def test_new_tabs_default_to_real_data_never_a_stray_demo_set():
    """A demo set an earlier (failed) run generated is offered last; uploads, then flowers, come first."""
    from engine import config
    from engine.data import sources

    stray = sources.make_demo_dataset(num_classes=2, per_class=2, size=16, seed=7)
    mine = _class_folders(config.uploads_dir() / "my-photos")
    at = ok(app("train").run())
    assert _dataset_box(at).value == str(mine)
    assert _dataset_box(at).options[-1].startswith(stray.name)  # still there, at the end
    flowers = _class_folders(config.datasets_dir() / sources.FLOWERS_DIR, ("daisy", "roses"))
    for page in ("train", "experiments"):
        at = ok(app(page).run())
        assert _dataset_box(at).value == str(flowers), page
    assert sources.by_preference({"z": stray, "uploads/my-photos": mine, "flower_photos": flowers}) == [
        "flower_photos",
        "uploads/my-photos",
        "z",
    ]
    assert [sources.display_name(p) for p in (flowers, stray, mine, "beans")] == [
        "flowers",
        "demo",
        "my-photos",
        "beans",
    ]


def test_train_says_before_the_click_that_weights_are_missing(monkeypatch, tmp_path):
    from engine.models import backbones

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    at = app("train")
    at.session_state["train_architecture"] = "inception_v3"  # the Architectures page's hand-off
    ok(at.run())
    path = backbones.weights_path("inception_v3")
    warning = " ".join(w.value for w in at.warning)
    assert path.name in warning and str(path.parent) in warning and "Random" in warning
    at.radio[0].set_value("random").run()
    assert not any(path.name in w.value for w in at.warning)  # random weights need no file


def test_a_failed_run_shows_its_error_and_what_to_do_not_empty_charts():
    store = RunStore()
    run = store.create_run({"source": "demo", "architecture": "inception_v3"}, name="broken")
    error = "ImageNet weights for inception_v3 are not cached: expected x.h5 in /k/models"
    store.finish_run(run.id, {}, status="failed", error=error)
    job = store.create_job("retrain", {"name": "broken"})
    store.finish_job(job.id, "failed", result={"run_id": run.id}, error=error)
    at = app("train").run()
    assert not at.exception
    assert [e.value for e in at.error] == [error]
    text = " ".join(m.value for m in at.markdown)
    assert "Fix what the message names" in text and "**Random** weights" in text  # what to do instead
    assert "Compare it with other runs" not in text
    assert not at.get("plotly_chart")  # no "Waiting for the first evaluation…" charts
    at = app("runs").run()
    assert not at.exception
    assert any("before its first evaluation" in c.value for c in at.caption)


def test_train_draws_the_fine_tuning_curves_beside_the_heads():
    store = RunStore()
    run = store.create_run({"source": "demo", "architecture": "mobilenet_0.25_224"}, name="tuned")
    row = {"train_accuracy": 0.5, "validation_accuracy": 0.5, "train_cross_entropy": 0.7}
    store.log_metrics(run.id, [{**row, "step": s} for s in (10, 20)])
    store.log_metrics(run.id, [{**row, "step": 1}], phase="fine_tune")
    store.finish_run(run.id, {"test_accuracy": 0.5, "test_count": 4}, status="cancelled")
    job = store.create_job("retrain", {"name": "tuned"})
    store.finish_job(job.id, "cancelled", result={"run_id": run.id}, error="Cancelled by the user")
    at = app("train").run()
    assert not at.exception
    assert any("Fine-tuning" in m.value for m in at.markdown)
    assert len(at.get("plotly_chart")) == 4  # head and fine-tuning: accuracy and cross-entropy each


def test_sidebar_links_each_job_to_the_page_that_follows_it():
    def sidebar_jobs():
        from dashboard.components import _active_jobs

        _active_jobs()

    store = RunStore()
    for kind in ("timing", "convert"):
        job = store.create_job(kind, {"name": kind})
        store.set_job_worker(job.id, os.getpid())  # "its worker" is alive: active, and none is started
    at = AppTest.from_function(sidebar_jobs, default_timeout=TIMEOUT).run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "Follow on CPU vs GPU" in text and "Follow on Convert & compare" in text
    assert "Follow on Train" not in text


# -- Runs and Classify with a real run -------------------------------------------------------------------
@pytest.fixture
def run_id(demo_dir) -> str:
    return finished_run(demo_dir)


def test_runs_table_compare_and_delete(run_id):
    at = ok(app("runs").run())
    assert at.dataframe[0].value["id"].tolist() == [run_id]
    assert at.multiselect(key="runs_compare").value  # the finished run is pre-selected
    at.slider(key="runs_smoothing").set_value(0.9).run()
    ok(at)
    at.text_input(key="runs_search").set_value("no such run").run()
    assert len(at.dataframe[0].value) == 0
    at.button(key="confirm_delete").click().run()
    assert not at.exception
    assert RunStore().list_runs() == []
    assert at.info and "No runs yet" in at.info[0].value


def test_runs_page_without_runs():
    at = ok(app("runs").run())
    assert "No runs yet" in at.info[0].value


def test_classify_with_a_run(run_id):
    at = ok(app("classify").run())
    assert at.multiselect(key="classify_models").value == [f"run:{run_id}:keras"]  # the best run
    at.file_uploader(key="classify_files").set_value(
        [("red.jpg", jpeg((220, 20, 20)), "image/jpeg"), ("notes.txt", b"plain text", "text/plain")]
    ).run()
    assert not at.exception
    assert any("notes.txt" in e.value and "not an image" in e.value for e in at.error)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Top-1"] in RunStore().get_run(run_id).results["class_names"]
    assert metrics["Latency"].endswith("ms")


def test_classify_imagenet_offline_is_a_readable_error():
    at = app("classify").run()
    at.button(key="classify_add_imagenet").click().run()  # offline: nothing cached, nothing downloadable
    assert not at.exception
    assert at.error and "weights" in at.error[0].value.lower()


# -- engine helpers the pages rely on (engine/uploads.py, engine/sysinfo.py) ---------------------------------
def test_uploads_save_validate_and_never_overwrite():
    from engine.data import uploads
    from engine.errors import DatasetError, InvalidArgument

    first = uploads.save_class_images(
        "pets", {"cats": [("../../evil name?.jpg", jpeg())], "dogs": [("d.png", jpeg())]}
    )
    assert first.saved == {"cats": 1, "dogs": 1} and not first.refused
    assert sorted(p.name for p in (first.folder / "cats").iterdir()) == ["evil_name.jpg"]
    assert (first.folder / "dogs" / "d.png").is_file()  # the content decides the format, the name is kept
    again = uploads.save_class_images(
        "pets", {"cats": [("evil name?.jpg", jpeg((1, 2, 3))), ("x.txt", b"text")]}
    )
    assert sorted(p.name for p in (first.folder / "cats").iterdir()) == ["evil_name-2.jpg", "evil_name.jpg"]
    assert again.refused and again.refused[0][0] == "x.txt" and "not an image" in again.refused[0][1]
    with pytest.raises(DatasetError, match="No image was saved"):
        uploads.save_class_images("pets", {"cats": [("bad.jpg", b"\xff\xd8broken")]})
    with pytest.raises(InvalidArgument, match="class name"):
        uploads.save_class_images("pets", {"../up": [("a.jpg", jpeg())]})
    with pytest.raises(InvalidArgument, match="dataset name"):
        uploads.save_class_images("../pets", {"cats": [("a.jpg", jpeg())]})
    assert "uploads/pets" in uploads.stored_datasets()


def test_sysinfo_basic_facts_do_not_import_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys, engine.timing.machine as s; f = s.basic_facts(); "
        "print(f['cpu_cores'] > 0, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_sysinfo_tensorrt_status_gives_reasons():
    from engine.timing import machine as sysinfo

    basic = sysinfo.basic_facts()
    tf_facts = {"gpus": [], "is_tensorrt_build": False, "tensorflow_version": "2.x"}
    status = sysinfo.tensorrt_status(basic, tf_facts)
    assert set(status) == {"available", "reasons", "route"}
    assert any("TF-TRT" in reason for reason in status["reasons"])
    if not status["available"]:
        assert len(status["reasons"]) >= 2  # the route's own reasons plus TensorFlow's


def test_pages_without_models_do_not_import_tensorflow(demo_dir):
    """Data, Train and Runs render in a fresh process without TensorFlow being imported."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        "for page in ('data', 'train', 'runs'):\n"
        "    at = AppTest.from_file(f'dashboard/{page}.py', default_timeout=60)\n"
        f"    at.session_state['dataset_path'] = {str(demo_dir)!r}\n"
        "    at.run()\n"
        "    assert not at.exception, (page, at.exception)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_data_download_offline_is_a_readable_error(monkeypatch):
    from engine.data import sources

    # offline whatever the host, so this never starts a 218 MB download
    monkeypatch.setattr(sources, "network_available", lambda *a, **k: False)
    at = app("data").run()
    at.segmented_control[0].set_value("flowers").run()
    next(b for b in at.button if "flowers" in b.label).click().run()
    assert not at.exception
    assert at.error and "cannot download flower_photos" in at.error[0].value.lower()


def test_classify_camera_photo(run_id):
    at = ok(app("classify").run())
    at.toggle[0].set_value(True).run()
    at.camera_input(key="classify_camera").set_value(("camera.jpg", jpeg((20, 200, 20)), "image/jpeg")).run()
    ok(at)
    assert {m.label for m in at.metric} >= {"Top-1", "Latency"}


def test_compat_keeps_matplotlib_cleanup_and_is_idempotent(monkeypatch):
    """The patched cleanup still closes matplotlib figures; applying twice keeps one patch."""
    import sys
    import types

    from streamlit.runtime.scriptrunner import script_runner

    from dashboard import compat

    monkeypatch.setattr(script_runner, "_clean_problem_modules", lambda: None)
    compat.apply()
    patched = script_runner._clean_problem_modules
    compat.apply()
    assert script_runner._clean_problem_modules is patched
    closed = []
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", types.SimpleNamespace(close=closed.append))
    keras = types.SimpleNamespace(backend=types.SimpleNamespace(clear_session=lambda: closed.append("keras")))
    monkeypatch.setitem(sys.modules, "keras", keras)
    patched()
    assert closed == ["all"]  # matplotlib closed, the Keras session left alone


def test_runs_page_groups_experiment_runs():
    store = RunStore()
    exp = store.create_experiment("lr_race", "flowers race")
    for rate in (0.01, 1.0):
        run = store.create_run(
            {"architecture": "mobilenet_0.25_224", "train": {"learning_rate": rate}},
            name=f"lr={rate}",
            experiment_id=exp,
        )
        store.finish_run(run.id, {"test_accuracy": 0.5})
    store.finish_run(store.create_run({"architecture": "inception_v3"}, name="alone").id, {})
    at = ok(app("runs").run())
    choice = next(m for m in at.multiselect if m.label == "Experiment")
    assert choice.options == ["flowers race (lr_race)"]
    ok(choice.select("flowers race (lr_race)").run())
    shown = at.dataframe[0].value
    assert sorted(shown["name"]) == ["lr=0.01", "lr=1.0"]


def test_runs_page_warns_beside_the_accuracy_of_a_run_scored_on_duplicates():
    store = RunStore()
    note = "1 validation/test image is byte-identical to training images (e.g. red/a.jpg (train) = ...)"
    clean = store.create_run({"architecture": "mobilenet_0.25_224"}, name="clean")
    store.finish_run(clean.id, {"test_accuracy": 0.75})
    leaky = store.create_run({"architecture": "mobilenet_0.25_224"}, name="leaky")
    store.finish_run(leaky.id, {"test_accuracy": 1.0, "accuracy_warnings": [note]})
    at = ok(app("runs").run())  # the newest run (leaky) is the one shown
    assert [w.value for w in at.warning if "byte-identical" in w.value] == [f"Test accuracy 100.0%: {note}"]
    labels = at.selectbox(key="runs_detail").options
    ok(at.selectbox(key="runs_detail").select(next(o for o in labels if "clean" in o)).run())
    assert not [w for w in at.warning if "byte-identical" in w.value]


def colour_zip(per_class: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for label, color in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
            for i in range(per_class):
                zf.writestr(f"{label}/{i}.jpg", jpeg(color))
    return buf.getvalue()


def unpack(at: AppTest, data: bytes, replace: bool) -> AppTest:
    at.segmented_control[0].set_value("zip").run()
    at.file_uploader[0].set_value(("colours.zip", data, "application/zip"))
    at.text_input(key="zip_name").set_value("colours")
    at.checkbox(key="zip_replace").set_value(replace)
    at.run()
    return at.button[0].click().run()


def test_data_zip_under_a_taken_name_needs_the_replace_box():
    at = ok(unpack(app("data").run(), colour_zip(3), replace=False))
    assert {m.label: m.value for m in at.metric}["Images"] == "6"
    first = Path(at.session_state["dataset_path"])
    at = unpack(app("data").run(), colour_zip(5), replace=False)
    assert not at.exception
    assert at.error and "already exists" in at.error[0].value
    assert sorted(p.name for p in (first / "red").iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]  # untouched
    at = ok(unpack(app("data").run(), colour_zip(5), replace=True))
    assert {m.label: m.value for m in at.metric}["Images"] == "10"
    assert len(list((first / "red").iterdir())) == 5


def test_data_zip_replace_in_class_mode_is_only_for_the_uploader(monkeypatch):
    from engine.data import quota

    monkeypatch.setenv("LAB_SERVE_MODE", "class")
    ok(unpack(app("data").run(), colour_zip(3), replace=False))
    assert quota.owner_of("colours") == quota.UNNAMED
    quota._owner_file("colours").write_text("Ada", encoding="utf-8")  # a classmate's dataset
    at = unpack(app("data").run(), colour_zip(5), replace=True)
    assert not at.exception
    assert at.error and "only they can replace it" in at.error[0].value


def _guarded_page():
    import streamlit as st

    from dashboard.components import guard
    from engine.errors import DatasetError

    with guard("Reading the secret"):
        raise RuntimeError("cannot open /srv/lab/secret-token-42")
    with guard("Scanning"):
        raise DatasetError("No class folders in /tmp/x: add one folder per class")
    st.write("after")


@pytest.mark.parametrize("mode", ["local", "class", "clas"])
def test_guard_hides_unexpected_error_details_in_class_mode(mode, monkeypatch, caplog):
    monkeypatch.setenv("LAB_SERVE_MODE", mode)
    at = AppTest.from_function(_guarded_page, default_timeout=TIMEOUT).run()
    assert not at.exception
    unexpected, expected = (e.value for e in at.error)
    assert expected == "No class folders in /tmp/x: add one folder per class"  # LabErrors verbatim
    if mode == "local":
        assert unexpected == "Reading the secret failed: RuntimeError: cannot open /srv/lab/secret-token-42"
        return
    # class mode, or a misspelt mode (fails closed): a reference, no details; the log has them
    assert "secret-token" not in unexpected and "RuntimeError" not in unexpected, unexpected
    shape = r"Reading the secret failed: an unexpected error \(reference ([0-9a-f]{8})\); .*"
    ref = re.fullmatch(shape, unexpected)
    assert ref, unexpected
    logged = [r for r in caplog.records if ref.group(1) in r.getMessage()]
    assert logged and "secret-token-42" in (logged[0].exc_text or str(logged[0].exc_info[1]))

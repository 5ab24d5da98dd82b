"""AppTest of the Classify page on real data: a flowers run beside Coral's ImageNet .tflite, side by side.

One flowers run (MobileNet 0.25 with its real ImageNet weights, 200 photos) is trained once for the
module in its own LAB_HOME; every test opens the page against that data directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "assets"
CORAL = SHARED / "coral_tflite"
CORAL_LABELS = CORAL / "imagenet_labels.txt"
SAMPLES = SHARED / "sample_images"
FLOWERS = SHARED / "flower_photos_small_set"
WEIGHTS = SHARED / "keras_weights" / "mobilenet_2_5_224_tf_no_top.h5"
TIMEOUT = 180  # seconds per script run: TensorFlow, a LiteRT interpreter and a Keras model load in it


@pytest.fixture(scope="module")
def homes(tmp_path_factory) -> dict[str, Path]:
    for path in (CORAL, SAMPLES, FLOWERS, WEIGHTS):
        if not path.exists():
            pytest.skip(f"needs the shared offline asset {path} (../shared/assets is absent here)")
    base = tmp_path_factory.mktemp("classify")
    keras_home = base / "keras_home"
    (keras_home / "models").mkdir(parents=True)
    shutil.copy(WEIGHTS, keras_home / "models" / WEIGHTS.name)
    return {"lab": base / "lab_home", "keras": keras_home}


@pytest.fixture(autouse=True)
def lab_home(homes, monkeypatch) -> Path:
    """Overrides conftest's: every test here shares the module's data directory and its run."""
    monkeypatch.setenv("LAB_HOME", str(homes["lab"]))
    monkeypatch.setenv("KERAS_HOME", str(homes["keras"]))
    return homes["lab"]


@pytest.fixture(scope="module")
def flowers_run(homes) -> str:
    from engine.runs.retrain import RunConfig, retrain
    from engine.training.config import TrainConfig

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_HOME", str(homes["lab"]))
        mp.setenv("KERAS_HOME", str(homes["keras"]))
        summary = retrain(RunConfig(source=str(FLOWERS), train=TrainConfig(steps=100, batch_size=32)))
    return summary.run_id


def page() -> AppTest:
    return AppTest.from_file(str(ROOT / "dashboard" / "classify.py"), default_timeout=TIMEOUT)


def upload(*names: str) -> list[tuple[str, bytes, str]]:
    return [(name, (SAMPLES / name).read_bytes(), "image/jpeg") for name in names]


@pytest.mark.slow
def test_a_run_and_an_uploaded_tflite_side_by_side(flowers_run):
    at = page().run()
    assert not at.exception and not at.error
    run_key = f"run:{flowers_run}:keras"
    assert at.multiselect(key="classify_models").value == [run_key]  # the best (only) finished run
    at.file_uploader(key="classify_tflite").set_value(
        ("mobilenet_v2_1.0_224_quant.tflite", (CORAL / "mobilenet_v2_1.0_224_quant.tflite").read_bytes(), "")
    )
    at.file_uploader(key="classify_labels").set_value(
        ("imagenet_labels.txt", (CORAL / "imagenet_labels.txt").read_bytes(), "text/plain")
    )
    at.button(key="classify_add_tflite").click().run()
    assert not at.exception and not at.error
    chosen = at.multiselect(key="classify_models").value
    assert chosen[0] == run_key and len(chosen) == 2 and chosen[1].startswith("tflite:")

    at.file_uploader(key="classify_files").set_value(upload("classic-daisy.jpg", "grace_hopper.bmp")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    tops = [m.value for m in at.metric if m.label == "Top-1"]
    latencies = [m.value for m in at.metric if m.label == "Latency"]
    assert tops[:2] == ["daisy", "daisy"]  # the flowers run and Coral's ImageNet model agree
    assert tops[3] == "military uniform" and tops[2] in RunStore().get_run(flowers_run).results["class_names"]
    assert len(latencies) == 4 and all(v.endswith(" ms") and float(v.split()[0]) > 0 for v in latencies)
    text = " ".join(m.value for m in at.markdown)
    assert "2 of 2 models agree" in text and "1 of 2 models agree" in text  # Hopper: roses vs uniform
    # the familiarity check: Hopper is unlike the flowers it was trained on, the daisy is not
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and "Unlike the training photos" in warnings[0], warnings
    assert any("Like the run's training photos" in c.value for c in at.caption)
    table = at.dataframe[0].value
    assert len(table) == 4 and table["model"].nunique() == 2 and table["photo"].nunique() == 2
    assert any(c.value.startswith("Side by side: 2 photo(s) × 2 model(s) in ") for c in at.caption)

    # why it decided: Grad-CAM of the run's top class on the daisy, then the same for another class
    at.toggle(key="why_0_0").set_value(True).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("evidence for 'daisy'" in c.value and "Grad-CAM" in c.value for c in at.caption)
    at.selectbox(key="why_class_0_0").set_value("roses").run()
    assert any("evidence for 'roses'" in c.value for c in at.caption)


def test_imagenet_offline_points_at_a_tflite_with_labels(monkeypatch):
    import engine.machine

    monkeypatch.setattr(engine.machine, "network_available", lambda *a, **k: False)
    at = page().run()
    at.selectbox(key="classify_imagenet").set_value("mobilenet_v2_1.0_224").run()
    at.button(key="classify_add_imagenet").click().run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert "mobilenet_v2_1.0_224" in error and "not cached" in error and "network is unreachable" in error
    assert ".tflite file with its labels" in error and "imagenet_labels.txt" in error
    assert not any(k.startswith("imagenet:") for k in at.multiselect(key="classify_models").value)


def test_a_bad_tflite_upload_is_one_line_naming_it():
    at = page().run()
    at.file_uploader(key="classify_tflite").set_value(("fake.tflite", b"not a model at all", ""))
    at.file_uploader(key="classify_labels").set_value(("labels.txt", b"a\nb\n", "text/plain"))
    at.button(key="classify_add_tflite").click().run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert error.startswith("Model file 'fake.tflite' is not a TFLite model") and "\n" not in error


@pytest.mark.slow
def test_default_is_the_best_run_not_the_newest(flowers_run):
    from engine.runs.retrain import RunConfig, retrain
    from engine.training.config import TrainConfig

    worse = retrain(  # on the same cached bottlenecks: a one-step head is far below the first run
        RunConfig(source=str(FLOWERS), train=TrainConfig(steps=1, batch_size=8, learning_rate=1e-5))
    )
    store = RunStore()
    accuracy = {r.id: r.results["test_accuracy"] for r in store.list_runs()}
    assert accuracy[worse.run_id] < accuracy[flowers_run]
    at = page().run()
    assert at.multiselect(key="classify_models").value == [f"run:{flowers_run}:keras"]


@pytest.mark.slow
def test_a_format_not_exported_yet_is_converted_on_first_use(flowers_run):
    from engine.export import convert

    def fp32_option(at: AppTest) -> str:
        return next(o for o in at.multiselect(key="classify_models").options if "(tflite-fp32)" in o)

    assert "tflite-fp32" not in [m["format"] for m in convert.list_exports(flowers_run)]
    at = page().run()
    assert fp32_option(at).endswith("converted on first use")
    at.multiselect(key="classify_models").select(f"run:{flowers_run}:tflite-fp32")
    at.file_uploader(key="classify_files").set_value(upload("classic-daisy.jpg")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "tflite-fp32" in [m["format"] for m in convert.list_exports(flowers_run)]  # converted, kept
    tops = [m.value for m in at.metric if m.label == "Top-1"]
    assert tops == ["daisy", "daisy"], tops  # the run in Keras and in its fresh tflite-fp32 export
    assert not fp32_option(page().run()).endswith("converted on first use")


def test_uploaded_models_are_validated_capped_and_stored_once(monkeypatch):
    from engine import config
    from engine.errors import InvalidArgument
    from engine.export import uploaded

    model, labels = (CORAL / "mobilenet_v1_0.25_128_quant.tflite").read_bytes(), CORAL_LABELS.read_bytes()
    first = uploaded.save_model_upload("coral\nv1.tflite", model, labels)
    again = uploaded.save_model_upload("coral v1.tflite", model, labels)
    assert first.key == again.key and first.title == "coral v1.tflite (uploaded)"  # one folder, reused
    assert again.key in {c.key for c in uploaded.uploaded_choices()}
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        uploaded.save_model_upload("m.tflite", model, b"\xff\xfe daisy")
    with pytest.raises(InvalidArgument, match="unprintable"):
        uploaded.save_model_upload("m\x00.tflite", model, labels)
    with pytest.raises(InvalidArgument, match="2 labels but 'm.tflite' outputs 1001 scores"):
        uploaded.save_model_upload("m.tflite", model, "daisy\nrose\n")
    monkeypatch.setattr(uploaded, "MAX_MODEL_BYTES", 1000)
    with pytest.raises(InvalidArgument, match="at most 0 MB"):
        uploaded.save_model_upload("big.tflite", model, labels)
    area = config.model_uploads_dir()
    assert Path(first.ref).parent.parent == area
    assert not [p.name for p in area.iterdir() if p.name.startswith(".")]  # no staging folder left behind

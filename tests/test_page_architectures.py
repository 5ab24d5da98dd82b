"""AppTest of the Architectures page: it renders, and picking backbones updates the comparison."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.models import architecture

PAGE = str(Path(__file__).resolve().parents[1] / "dashboard" / "architectures.py")
TIMEOUT = 120  # the first visit of a backbone builds its Keras model once


@pytest.fixture(scope="module", autouse=True)
def warm_models():
    # built once per test process; the page then reads them from memory
    for name in ("mobilenet_1.0_224", "inception_v3", "mobilenet_v2_1.0_224", "mobilenet_0.25_224"):
        architecture.analyze(name)


def _table_backbones(at: AppTest) -> list[str]:
    frame = next(df.value for df in at.dataframe if "backbone" in df.value.columns and "MACs (M)" in df.value)
    return list(frame["backbone"])


def test_page_renders_default_mobilenet_and_inception():
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert _table_backbones(at) == ["mobilenet_1.0_224", "inception_v3"]
    text = " ".join(m.value for m in at.markdown)
    assert "depthwise" in text and "concatenate" in text  # both signature blocks explained
    assert any(s.label == "inception_v3: module" for s in at.selectbox)


def test_selecting_two_backbones_updates_the_table():
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    at.multiselect(key="arch_backbones").set_value(["mobilenet_0.25_224", "mobilenet_v2_1.0_224"]).run()
    assert not at.exception, at.exception
    assert _table_backbones(at) == ["mobilenet_0.25_224", "mobilenet_v2_1.0_224"]
    text = " ".join(m.value for m in at.markdown)
    assert "inverted residual" in text


def test_freezing_slider_and_train_handoff():
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    at.slider(key="arch_unfrozen_mobilenet_1.0_224").set_value(2).run()
    assert not at.exception, at.exception
    trainable = next(m for m in at.metric if m.label == "Trainable parameters")
    assert int(trainable.value.replace(",", "")) > 1024 * 5 + 5
    at.button(key="arch_use_on_train").click().run()
    assert at.session_state["train_fine_tune_layers"] == 2  # conv_dw_13 + conv_pw_13
    assert at.session_state["train_architecture"] == "mobilenet_1.0_224"
    # the head's classes and the batch come from freeze_plan's defaults, not copies of them
    from engine.models import explain

    plan = explain.freeze_plan("mobilenet_1.0_224")
    assert at.number_input(key="arch_freeze_batch").value == plan.batch_size
    assert at.number_input(key="arch_freeze_classes").value == plan.trainable_params // 1025  # 1024·C + C


def test_handoff_says_when_the_weights_are_not_cached(tmp_path, monkeypatch):
    from engine.models import backbones

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    name = backbones.weights_path("mobilenet_1.0_224").name
    assert any(name in c.value and "not cached" in c.value for c in at.caption)


def test_layer_search_and_empty_selection():
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    at.text_input(key="arch_layers_search").input("conv_pw_13").run()
    assert not at.exception, at.exception
    assert any("match" in c.value for c in at.caption)
    at.multiselect(key="arch_backbones").set_value([]).run()
    assert not at.exception
    assert any("Pick at least one" in i.value for i in at.info)


def test_no_cached_features_state(tmp_path, monkeypatch):
    from engine.data.sources import make_demo_dataset

    folder = make_demo_dataset(tmp_path / "demo", num_classes=2, per_class=4, size=32)
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.session_state["dataset_path"] = str(folder)
    at.run()
    assert not at.exception, at.exception
    assert any("No cached features" in i.value for i in at.info)

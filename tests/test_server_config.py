"""Serving safely: loopback by default, and a class mode without server folders or error details."""

from __future__ import annotations

import io
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine.data.datasets import assign_split

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


def data_page() -> AppTest:
    return AppTest.from_file(str(ROOT / "dashboard" / "data.py"), default_timeout=TIMEOUT)


def jpeg(seed: int, colour) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


# --- .streamlit/config.toml -------------------------------------------------------------------------


def test_config_toml_binds_loopback_and_hides_error_details():
    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert settings["server"]["address"] == "127.0.0.1"  # not every interface
    assert settings["client"]["showErrorDetails"] == "none"  # the router turns them on for local use


@pytest.fixture
def restore_error_details():
    before = st.get_option("client.showErrorDetails")
    yield
    st.set_option("client.showErrorDetails", before)


@pytest.mark.parametrize("mode,details", [("local", "full"), ("class", "none")])
def test_router_sets_error_details_by_serve_mode(monkeypatch, restore_error_details, mode, details):
    monkeypatch.setenv("LAB_SERVE_MODE", mode)
    st.set_option("client.showErrorDetails", "stacktrace")
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert st.get_option("client.showErrorDetails") == details


# --- the Data page's server-folder source -------------------------------------------------------------


def test_local_mode_offers_any_folder(monkeypatch):
    monkeypatch.delenv("LAB_SERVE_MODE", raising=False)
    at = data_page().run()
    at.segmented_control[0].set_value("folder").run()
    assert not at.exception and not at.error
    assert at.text_input(key="folder_path")


@pytest.mark.parametrize("mode", ["class", "CLASS", "public"])
def test_class_mode_hides_the_folder_source(monkeypatch, mode):
    monkeypatch.setenv("LAB_SERVE_MODE", mode)
    at = data_page().run()
    at.segmented_control[0].set_value("folder").run()
    assert not at.exception
    assert "folder_path" not in [t.key for t in at.text_input]
    assert any("off while the lab is served to a class" in c.value for c in at.caption)
    if mode == "public":  # a misspelt mode says so and still offers no server folder
        assert any("LAB_SERVE_MODE must be one of local, class" in e.value for e in at.error)
    else:
        assert not at.error


def test_class_mode_refuses_a_server_folder_set_behind_the_page(monkeypatch, tmp_path):
    """Even if a folder path reaches the engine (an old session, a crafted job), class mode refuses it."""
    from engine.data.datasets import resolve_source
    from engine.errors import InvalidArgument

    monkeypatch.setenv("LAB_SERVE_MODE", "class")
    with pytest.raises(InvalidArgument, match="Server folders are off"):
        resolve_source(str(tmp_path))


# --- duplicates and odd names on the Data page ----------------------------------------------------------


def test_data_page_lists_duplicates_and_undecodable_names(tmp_path):
    root = tmp_path / "pets"
    for c, label in enumerate(("cats", "dogs")):
        (root / label).mkdir(parents=True)
        for i in range(24):
            (root / label / f"{label}{i}.jpg").write_bytes(jpeg(i, (90 * c, 80, 160)))
    original = next(f"dogs{i}.jpg" for i in range(24) if assign_split(f"dogs{i}.jpg") == "train")
    copy = next(f"x{i}.jpg" for i in range(1000) if assign_split(f"x{i}.jpg") == "test")
    (root / "dogs" / copy).write_bytes((root / "dogs" / original).read_bytes())
    with open(os.path.join(os.fsencode(root / "cats"), b"caf\xe9.jpg"), "wb") as f:
        f.write(jpeg(77, (1, 1, 1)))
    at = data_page()
    at.session_state["dataset_path"] = str(root)
    at.run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    warnings = " ".join(w.value for w in at.warning)
    assert "byte-identical to training images" in warnings and "overstate" in warnings
    (table,) = [d.value for d in at.dataframe if "group" in d.value.columns]
    assert sorted(table["file"]) == sorted([original, copy]) and set(table["class"]) == {"dogs"}
    skipped = at.dataframe[-1].value
    assert skipped["reason"].tolist() == ["'cats/caf\\xe9.jpg' is not valid UTF-8; rename it"]

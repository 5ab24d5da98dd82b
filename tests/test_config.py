"""The data directory: every path comes from engine.config, and a bad LAB_HOME is a clear LabError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine import config
from engine.errors import LabError

DIR_FUNCTIONS = [
    config.lab_home,
    config.runs_dir,
    config.jobs_dir,
    config.datasets_dir,
    config.uploads_dir,
    config.downloads_dir,
    config.cache_dir,
    config.architecture_cache_dir,
    config.timings_dir,
]


def test_every_folder_lives_under_lab_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_HOME", str(tmp_path / "home"))
    for fn in DIR_FUNCTIONS:
        path = fn()
        assert path.is_dir(), fn.__name__
        assert path == tmp_path / "home" or (tmp_path / "home") in path.parents, fn.__name__
    assert config.store_file() == tmp_path / "home" / "lab.sqlite"
    assert config.runs_dir(tmp_path / "other") == tmp_path / "other" / "runs"


@pytest.mark.parametrize("fn", DIR_FUNCTIONS, ids=lambda f: f.__name__)
def test_lab_home_that_is_a_file_is_a_lab_error(tmp_path, monkeypatch, fn):
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("LAB_HOME", str(home))
    with pytest.raises(LabError, match=f"{home}.*LAB_HOME"):
        fn()


def test_lab_home_below_a_file_is_a_lab_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("LAB_HOME", str(tmp_path / "file" / "lab"))
    with pytest.raises(LabError, match="is a file, not a folder.*LAB_HOME"):
        config.runs_dir()


def test_unwritable_lab_home_is_a_lab_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_HOME", str(tmp_path / "home"))

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(LabError, match=f"Cannot create {tmp_path / 'home'}: permission denied.*LAB_HOME"):
        config.lab_home()


def test_existing_read_only_lab_home_is_a_lab_error(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LAB_HOME", str(home))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == home else real_access(p, mode))
    with pytest.raises(LabError, match=f"{home} is not writable.*LAB_HOME"):
        config.datasets_dir()


def test_store_on_a_bad_lab_home_is_a_lab_error(tmp_path, monkeypatch):
    from engine.runs.store import RunStore

    (tmp_path / "home").write_text("x")
    monkeypatch.setenv("LAB_HOME", str(tmp_path / "home"))
    with pytest.raises(LabError, match="LAB_HOME"):
        RunStore()

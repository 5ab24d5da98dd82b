"""A retrain reports what the dataset scan found: duplicates (with what they do to the accuracy),
warnings and skipped files, on stderr, in --json and in the stored results."""

from __future__ import annotations

import shutil

import pytest

from engine.data.datasets import assign_split
from tests import corpus
from tests.corpus import assert_cli_ok, cli

TRAIN = ["--weights", "random", "--architecture", "mobilenet_0.25_128", "--how_many_training_steps", "5"]


@pytest.fixture
def leaky_dataset(tmp_path):
    """Two classes; one training image of `red` copied under a name that lands in the test split,
    and a text file posing as an image."""
    root = corpus.make_dataset(tmp_path / "leaky")
    source = next(p for p in sorted((root / "red").iterdir()) if assign_split(p.name) == "train")
    copy = next(f"copy_{i}.jpg" for i in range(1000) if assign_split(f"copy_{i}.jpg") == "test")
    shutil.copyfile(source, root / "red" / copy)
    (root / "blue" / "notes.jpg").write_text("not an image")
    return root, source.name, copy


def test_retrain_names_duplicates_across_splits_and_skipped_files(leaky_dataset, lab_home, capsys):
    root, original, copy = leaky_dataset
    res = cli(capsys, "retrain", "--image_dir", root, *TRAIN, "--json", seconds=300)
    assert_cli_ok(res)
    warnings = [line for line in res.err.splitlines() if line.startswith("warning: ")]
    leak = [line for line in warnings if "byte-identical" in line]
    assert len(leak) == 1, res.err
    assert original in leak[0] and copy in leak[0] and "accuracy overstate" in leak[0], leak[0]
    skipped = [line for line in res.err.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 1 and "notes.jpg" in skipped[0], res.err
    out = res.last_json()
    assert any(original in w and copy in w for w in out["accuracy_warnings"]), out
    assert out["accuracy_warnings"][0] in out["warnings"]
    assert [s["path"].endswith("notes.jpg") for s in out["skipped"]] == [True]

    from engine.runs.results import RunResults
    from engine.runs.store import RunStore

    stored = RunResults.of(RunStore().get_run(out["run_id"]))
    assert stored.accuracy_warnings == out["accuracy_warnings"]
    assert stored.warnings == out["warnings"] and len(stored.skipped) == 1
    groups = stored.dataset["duplicates"]
    assert len(groups) == 1 and {f["split"] for f in groups[0]["files"]} == {"train", "test"}


def test_a_clean_dataset_has_no_accuracy_warnings(tmp_path, lab_home, capsys):
    root = corpus.make_dataset(tmp_path / "clean")
    res = cli(capsys, "retrain", "--image_dir", root, *TRAIN, "--json", seconds=300)
    assert_cli_ok(res)
    out = res.last_json()
    assert out["accuracy_warnings"] == [] and out["skipped"] == []
    assert "byte-identical" not in res.err

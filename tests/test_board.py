"""Class board: runs ranked only against runs on the same data and split; two runs side by side; the page."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.errors import InvalidArgument
from engine.runs import board
from engine.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
COUNTS = {
    "daisy": {"train": 16, "validation": 2, "test": 2},
    "rose": {"train": 16, "validation": 2, "test": 2},
}


@pytest.fixture
def store(lab_home) -> RunStore:
    return RunStore()


def fingerprint(split_hash: str | None, validation: int = 10, counts: dict | None = None) -> dict:
    return {
        "classes": ["daisy", "rose"],
        "counts": counts or COUNTS,
        "num_images": 40,
        "validation_percentage": validation,
        "testing_percentage": 10,
        "content_hash": None if split_hash is None else "c" * 64,
        "split_hash": split_hash,
    }


def add_run(
    store: RunStore,
    name: str,
    test: float | None,
    *,
    author: str | None = "ana",
    arch: str = "mobilenet_v2_1.0_224",
    lr: float = 0.01,
    steps: int = 100,
    val: float = 0.5,
    split_hash: str | None = "a" * 64,
    validation: int = 10,
    status: str = "finished",
    legacy: bool = False,
) -> str:
    """A retrain run as the store records it (no training: only what the board reads)."""
    config = {
        "source": "/data/flowers",
        "architecture": arch,
        "weights": "imagenet",
        "validation_percentage": validation,
        "testing_percentage": 10,
        "train": {"learning_rate": lr, "steps": steps},
    }
    run = store.create_run(config, name=name, author=author)
    fp = fingerprint(split_hash, validation)
    dataset = {"name": "flowers", "classes": fp["classes"], "counts": COUNTS, "num_images": 40}
    if not legacy:
        dataset["fingerprint"] = fp
    results = {
        "test_accuracy": test,
        "final": {"step": steps, "validation_accuracy": val, "train_accuracy": 0.9},
        "dataset": dataset,
        "class_names": fp["classes"],
    }
    store.log_metrics(run.id, [{"step": s, "validation_accuracy": val * s / steps} for s in (0, steps)])
    store.finish_run(run.id, results, status=status)
    return run.id


def test_only_runs_on_the_same_data_and_split_are_ranked_together(store):
    best = add_run(store, "best", 0.9, author="ben")
    tie_better_val = add_run(store, "tie-hi", 0.8, val=0.7, author="cleo")
    tie_worse_val = add_run(store, "tie-lo", 0.8, val=0.6)
    other_split = add_run(store, "other", 0.99, split_hash="b" * 64)
    add_run(store, "failed", None, status="failed")
    add_run(store, "no test split", None)

    groups = board.class_board(store)
    assert [len(g.entries) for g in groups] == [3, 1]  # the bigger group first
    ranked = [e.run_id for e in groups[0].entries]
    assert ranked == [best, tie_better_val, tie_worse_val]
    assert groups[0].key == "split:" + "a" * 64 and groups[0].exact
    assert [e.run_id for e in groups[1].entries] == [other_split]
    entry = groups[0].entries[0]
    assert (entry.author, entry.backbone, entry.learning_rate, entry.steps, entry.test_accuracy) == (
        "ben",
        "mobilenet_v2_1.0_224",
        0.01,
        100,
        0.9,
    )
    rows = [e.as_row(i) for i, e in enumerate(groups[0].entries, start=1)]
    assert [(r["rank"], r["author"], r["run"]) for r in rows] == [
        (1, "ben", "best"),
        (2, "cleo", "tie-hi"),
        (3, "ana", "tie-lo"),
    ]
    assert "2 classes (daisy, rose)" in groups[0].label and "10% validation / 10% test" in groups[0].label


def test_runs_without_a_fingerprint_are_grouped_by_what_they_recorded(store):
    a = add_run(store, "old a", 0.7, legacy=True)
    b = add_run(store, "old b", 0.8, legacy=True)
    other_percentages = add_run(store, "old c", 0.9, legacy=True, validation=20)
    groups = {tuple(e.run_id for e in g.entries): g for g in board.class_board(store)}
    assert set(groups) == {(b, a), (other_percentages,)}
    assert not groups[(b, a)].exact and groups[(b, a)].key.startswith("recorded:")


def test_best_per_author_and_per_backbone(store):
    add_run(store, "ana 1", 0.6, author="ana", arch="mobilenet_v2_1.0_224")
    ana_best = add_run(store, "ana 2", 0.7, author="ana", arch="inception_v3")
    ben_best = add_run(store, "ben 1", 0.8, author="ben", arch="mobilenet_v2_1.0_224")
    unnamed = add_run(store, "nobody", 0.5, author=None, arch="inception_v3")
    (group,) = board.class_board(store, best_per="author")
    assert [e.run_id for e in group.entries] == [ben_best, ana_best, unnamed]
    assert group.entries[-1].author == board.UNKNOWN_AUTHOR
    (group,) = board.class_board(store, best_per="backbone")
    assert [e.run_id for e in group.entries] == [ben_best, ana_best]
    with pytest.raises(InvalidArgument, match="best_per must be one of"):
        board.class_board(store, best_per="lr")


def test_side_by_side(store):
    a = store.get_run(add_run(store, "mine", 0.75, author="ana", lr=0.01, val=0.5))
    b = store.get_run(add_run(store, "theirs", 0.85, author="ben", lr=0.05, steps=200, val=0.6))
    rows = {r["what"]: (r["a"], r["b"]) for r in board.side_by_side(a, b)}
    assert rows["author"] == ("ana", "ben") and rows["run"] == ("mine", "theirs")
    assert rows["test accuracy"] == (0.75, 0.85) and rows["validation accuracy"] == (0.5, 0.6)
    assert rows["learning rate"] == (0.01, 0.05) and rows["steps"] == (100, 200)


def page() -> AppTest:
    return AppTest.from_file(str(ROOT / "dashboard" / "board.py"), default_timeout=120)


def test_page_without_runs(store):
    at = page().run()
    assert not at.exception and not at.error
    assert "No finished run yet" in at.info[0].value


def test_page_ranks_and_puts_two_runs_side_by_side(store):
    mine = add_run(store, "mine", 0.75, author="ana")
    add_run(store, "theirs", 0.85, author="ben")
    add_run(store, "elsewhere", 0.95, author="cleo", split_hash="b" * 64)
    at = page().run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert list(table["run"]) == ["theirs", "mine"] and list(table["rank"]) == [1, 2]  # not "elsewhere"
    assert at.selectbox(key="board_mine").value == table["run id"][0]
    at.selectbox(key="board_mine").set_value(mine).run()
    assert not at.exception and not at.error
    facts = at.dataframe[1].value
    assert list(facts.columns) == ["what", "ana", "ben"]  # two authors: named by author alone
    assert facts.set_index("what").loc["test accuracy"].tolist() == ["75.0%", "85.0%"]
    assert len(at.get("plotly_chart")) == 1  # the curves
    at.radio(key="board_best_per").set_value("backbone").run()
    assert list(at.dataframe[0].value["run"]) == ["theirs"]  # both on one backbone: the best remains
    assert "Only one run" in at.info[0].value

"""Data health on the real flowers: planted duplicates, resized/re-encoded copies and swapped labels are all
found, the clean photos raise (almost) no alarm, and a run scored on copies of its training photos says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli.main import main
from engine.data import datasets
from engine.errors import LabError
from engine.runs import health
from tests.conftest import FLOWERS, MOBILENET_025_WEIGHTS

CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")


# -- units on made-up vectors (no TensorFlow, no assets) ------------------------------------------
def _records(labels: list[str]) -> list[datasets.ImageRecord]:
    return [
        datasets.ImageRecord(f"/x/{lab}/{i}.jpg", lab, "train", False, f"h{i}")
        for i, lab in enumerate(labels)
    ]


def test_neighbours_skip_self_and_mislabels_need_a_majority_of_one_other_class():
    rng = np.random.default_rng(0)
    centres = {"a": rng.normal(size=16), "b": rng.normal(size=16)}
    labels = ["a"] * 10 + ["b"] * 10
    feats = np.stack([centres[lab] + 0.05 * rng.normal(size=16) for lab in labels])
    feats[3] = centres["b"] + 0.05 * rng.normal(size=16)  # an "a" photo that looks like a "b"
    idx, sims = health.nearest_neighbours(feats, feats, 9, same=True)
    assert all(i not in row for i, row in enumerate(idx))
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # nearest first
    found = health.likely_mislabels(_records(labels), idx)
    assert [(m["path"], m["looks_like"]) for m in found["items"]] == [("/x/a/3.jpg", "b")]
    assert found["count"] == 1 and "look" in found["advice"]


def test_class_balance_names_small_classes_and_the_ratio():
    records = _records(["big"] * 60 + ["mid"] * 25 + ["tiny"] * 6)
    data = datasets.Dataset("d", "/x", ["big", "mid", "tiny"], records)
    balance = health.class_balance(data)
    assert balance["small_classes"] == ["tiny"] and balance["ratio"] == 10.0 and balance["imbalanced"]
    assert "tiny" in balance["advice"] and "10.0x" in balance["advice"]


def test_a_cancelled_check_stops_with_cancelled(tmp_path):
    from engine.errors import Cancelled

    for label, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (32, 32), colour).save(tmp_path / label / f"{i}.jpg")
    with pytest.raises(Cancelled):
        health.health_report(tmp_path, cancel=lambda: True)
    with pytest.raises(LabError, match="image_dir"):
        health.run_job({"image_dir": ""})


def test_health_figures_draw_the_counts_and_the_thresholds():
    from dashboard import charts_health

    records = _records(["big"] * 60 + ["tiny"] * 6)
    balance = health.class_balance(datasets.Dataset("d", "/x", ["big", "tiny"], records))
    fig = charts_health.class_balance(balance)
    assert list(fig.data[0].y) == [60, 6] and fig.data[0].marker.color[1] != fig.data[0].marker.color[0]
    assert [s.y0 for s in fig.layout.shapes] == [
        balance["small_threshold"],
        6 * balance["imbalance_threshold"],
    ]
    report = {
        "exact_duplicates": {"extra_copies": 2, "across_splits": 1, "across_classes": 0},
        "near_duplicates": {"pairs": 3, "across_splits": 2, "across_classes": 0},
        "mislabels": {"count": 4},
        "classes": balance,
    }
    bars = charts_health.findings(report).data[0]
    assert dict(zip(bars.y, bars.x, strict=True)) == {
        "Small classes": 1,
        "Likely mislabels": 4,
        "Test/validation copies of training photos": 3,
        "Near-duplicate pairs": 3,
        "Exact copies": 2,
    }


# -- the real flowers, with planted problems --------------------------------------------------------
def _name_in(split: str, stem: str, suffix: str) -> str:
    """A file name whose stable split is `split` (the split hashes the base name)."""
    for n in range(1000):
        name = f"{stem}_{n}{suffix}"
        if datasets.assign_split(name) == split:
            return name
    raise AssertionError("no name found")


def _typical(records, features) -> dict[str, str]:
    """Per class, the file name of a photo whose 7 nearest photos all share its label (a clear example)."""
    idx, _ = health.nearest_neighbours(features, features, 7, same=True)
    picks = {}
    for i, r in enumerate(records):
        if r.label not in picks and all(records[j].label == r.label for j in idx[i]):
            picks[r.label] = Path(r.path).name
    return picks


def _plant(root: Path, typical: dict[str, str]) -> dict:
    """Copies (exact, resized, re-encoded) of training photos into the test split, and one typical photo
    per class moved into the next class. Returns what was planted."""
    planted = {"exact": [], "near_groups": [], "swapped": {}}
    train = {
        c: sorted(p for p in (root / c).glob("*.jpg") if datasets.assign_split(p.name) == "train")
        for c in CLASSES
    }
    used = set(typical.values())
    sources = {c: [p for p in train[c] if p.name not in used] for c in CLASSES}
    for c in CLASSES:  # a resized (half size, JPEG q90) and a re-encoded (JPEG q30) copy of one photo
        src = sources[c][0]
        im = Image.open(src).convert("RGB")
        half = root / c / _name_in("test", f"half_{c}", ".jpg")
        im.resize((im.width // 2, im.height // 2)).save(half, quality=90)
        q30 = root / c / _name_in("test", f"q30_{c}", ".jpg")
        im.save(q30, quality=30)
        planted["near_groups"].append({str(src), str(half), str(q30)})
    for c in ("roses", "tulips"):  # a third-size PNG
        src = sources[c][1]
        im = Image.open(src).convert("RGB")
        third = root / c / _name_in("test", f"third_{c}", ".png")
        im.resize((im.width // 3, im.height // 3)).save(third)
        planted["near_groups"].append({str(src), str(third)})
    leak = root / "daisy" / _name_in("test", "same_daisy", ".jpg")  # byte-identical, train -> test
    shutil.copy(sources["daisy"][2], leak)
    other = root / "tulips" / "same_rose.jpg"  # byte-identical, roses -> tulips
    shutil.copy(sources["roses"][2], other)
    planted["exact"] = [{str(sources["daisy"][2]), str(leak)}, {str(sources["roses"][2]), str(other)}]
    for i, c in enumerate(CLASSES):
        src, target = root / c / typical[c], CLASSES[(i + 1) % len(CLASSES)]
        moved = root / target / f"moved_{src.name}"
        src.rename(moved)  # inside the planted copy only: the shared photos are never touched
        planted["swapped"][str(moved)] = c
    planted["test_copies"] = {str(leak)} | {
        p for g in planted["near_groups"] for p in g if datasets.assign_split(Path(p).name) == "test"
    }
    return planted


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One data directory for the module: the clean and the planted reports, and a run on the planted set."""
    for path in (FLOWERS, MOBILENET_025_WEIGHTS):
        if not path.exists():
            pytest.skip(f"needs the shared offline asset {path} (../shared/assets is absent here)")
    base = tmp_path_factory.mktemp("health")
    home, keras = base / "lab_home", base / "keras_home"
    (keras / "models").mkdir(parents=True)
    shutil.copy(MOBILENET_025_WEIGHTS, keras / "models" / MOBILENET_025_WEIGHTS.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_HOME", str(home))
        mp.setenv("KERAS_HOME", str(keras))
        from engine.features.extract import extract_features
        from engine.runs.retrain import RunConfig, retrain
        from engine.training.config import TrainConfig

        clean = health.health_report(FLOWERS)
        data = datasets.scan_image_dir(FLOWERS)
        typical = _typical(data.records, extract_features(data.records, health.HEALTH_BACKBONE).features)
        root = base / "planted"
        shutil.copytree(FLOWERS, root, ignore=shutil.ignore_patterns("LICENSE*"))
        planted = _plant(root, typical)
        events = []
        report = health.health_report(root, progress=events.append)
        config = RunConfig(source=str(root), train=TrainConfig(steps=30, eval_interval=10))
        run_id = retrain(config).run_id
        clean_run = retrain(
            RunConfig(source=str(FLOWERS), train=TrainConfig(steps=30, eval_interval=10))
        ).run_id
        yield {
            "home": home,
            "keras": keras,
            "clean": clean,
            "root": root,
            "planted": planted,
            "report": report,
            "events": events,
            "run_id": run_id,
            "clean_run": clean_run,
        }


@pytest.fixture
def in_lab(lab, monkeypatch):
    monkeypatch.setenv("LAB_HOME", str(lab["home"]))
    monkeypatch.setenv("KERAS_HOME", str(lab["keras"]))
    return lab


def _pairs(report) -> set[frozenset]:
    return {frozenset((p["a"]["path"], p["b"]["path"])) for p in report["near_duplicates"]["items"]}


@pytest.mark.slow
def test_every_planted_problem_is_found(lab):
    report, planted = lab["report"], lab["planted"]
    exact = {frozenset(f["path"] for f in g["files"]) for g in report["exact_duplicates"]["items"]}
    assert exact == {frozenset(g) for g in planted["exact"]}
    assert (
        report["exact_duplicates"]["across_splits"] == 1 and report["exact_duplicates"]["across_classes"] == 1
    )
    wanted = {frozenset((a, b)) for g in planted["near_groups"] for a in g for b in g if a < b}
    found = _pairs(report)
    assert wanted <= found, wanted - found  # every resized or re-encoded copy
    assert found <= wanted, found - wanted  # and nothing else
    assert report["near_duplicates"]["across_splits"] >= len(planted["near_groups"])
    flagged = {m["path"]: m["looks_like"] for m in report["mislabels"]["items"]}
    assert {p: flagged.get(p) for p in planted["swapped"]} == planted["swapped"]
    assert all(line for line in report["summary"]) and "training photo" in report["near_duplicates"]["advice"]
    phases = {e["phase"] for e in lab["events"]}
    assert {"scan", "extract", "health"} <= phases


@pytest.mark.slow
def test_clean_flowers_raise_few_false_alarms(lab):
    clean = lab["clean"]
    assert clean["dataset"]["num_images"] == 200
    assert clean["exact_duplicates"]["groups"] == 0
    assert clean["near_duplicates"]["pairs"] == 0, clean["near_duplicates"]["items"]
    # the rate every report quotes beside its own (0 near-duplicate pairs, 3 mislabel flags per 100)
    assert clean["per_100"] == health.CLEAN_FLOWERS_PER_100, clean["mislabels"]["items"]
    assert clean["classes"]["small_classes"] == [] and not clean["classes"]["imbalanced"]


@pytest.mark.slow
def test_a_run_scored_on_copies_of_training_photos_says_so(in_lab):
    leak = health.run_leakage(in_lab["run_id"])
    assert leak["checked"], leak
    examples = {e["test"] for e in leak["examples"]}
    assert in_lab["planted"]["test_copies"] <= examples, in_lab["planted"]["test_copies"] - examples
    assert leak["with_near_duplicate_in_train"] == len(examples) and leak["exact"] == 1
    note = health.leakage_note(leak, 0.9)
    assert note.startswith("Test accuracy 90.0%") and f"{len(examples)} of its {leak['test_photos']}" in note
    clean = health.run_leakage(in_lab["clean_run"])
    assert clean["checked"] and clean["test_photos"] > 0 and clean["with_near_duplicate_in_train"] == 0
    assert health.leakage_note(clean, 0.9) is None


@pytest.mark.slow
def test_cli_health_json(in_lab, capsys):
    assert main(["health", "--image_dir", str(in_lab["root"]), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert report["near_duplicates"]["pairs"] == in_lab["report"]["near_duplicates"]["pairs"]
    assert report["mislabels"]["count"] == in_lab["report"]["mislabels"]["count"]
    assert report["extraction"]["misses"] == 0  # every bottleneck came from the cache
    assert any(line.startswith("- Near-duplicates:") for line in out)


def test_cli_health_refuses_a_missing_folder_in_one_line(tmp_path, capsys):
    assert main(["health", "--image_dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


@pytest.mark.slow
def test_runs_page_says_so_beside_the_accuracy(in_lab):
    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "dashboard" / "runs.py"), default_timeout=120)
    at.run()
    labels = at.selectbox(key="runs_detail").options
    for run_id, expected in ((in_lab["run_id"], True), (in_lab["clean_run"], False)):
        label = next(o for o in labels if run_id in o)
        at.selectbox(key="runs_detail").select(label).run()
        assert not at.exception and not at.error, [e.value for e in at.exception or at.error]
        notes = [c.value for c in at.caption if "partly memory" in c.value]
        assert bool(notes) == expected, (run_id, notes)

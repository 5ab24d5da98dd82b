"""Run bundles (engine.runs.share): the store's author/origin columns, export, import of untrusted bundles."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from engine.cli.main import main
from engine.errors import LabError
from engine.runs import share
from engine.runs import store as store_module
from engine.runs.folder import RunFolder
from engine.runs.store import SCHEMA_VERSION, RunStore


def test_a_store_of_schema_2_gains_author_and_origin(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    for script in store_module._MIGRATIONS[:2]:
        conn.executescript(script)
    conn.execute(
        "INSERT INTO runs (id, name, kind, status, created, config)"
        " VALUES ('r1', 'old', 'retrain', 'finished', 1.0, '{}')"
    )
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    store = RunStore(path)
    assert store.connection().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 3
    old = store.get_run("r1")
    assert (old.author, old.origin, old.imported) == (None, None, False)
    mine = store.create_run({}, author="Ada")
    origin = {"from": "Bob", "original_run_id": "x1", "bundle_sha256": "f" * 64, "imported_at": 5.0}
    theirs = store.create_run({}, author="Bob", origin=origin)
    assert (mine.author, mine.imported) == ("Ada", False)
    assert (theirs.author, theirs.origin, theirs.imported) == ("Bob", origin, True)
    assert store.find_imported_run("f" * 64, "other", None).id == theirs.id
    assert store.find_imported_run("0" * 64, "x1", "Bob").id == theirs.id
    assert store.find_imported_run("0" * 64, "x1", "Eve") is None
    assert {r.id: r.author for r in store.list_runs()} == {"r1": None, mine.id: "Ada", theirs.id: "Bob"}


def test_the_dataset_fingerprint_names_the_images_and_split_not_where_they_live(tmp_path, flowers_dir):
    import shutil

    from engine.data.datasets import dataset_fingerprint, scan_image_dir

    here = dataset_fingerprint(scan_image_dir(flowers_dir))
    copy = tmp_path / "elsewhere" / "my flowers"
    shutil.copytree(flowers_dir, copy)
    assert dataset_fingerprint(scan_image_dir(copy)) == here  # another folder, another laptop: same data
    assert scan_image_dir(copy).summary()["fingerprint"] == here
    assert here["num_images"] == 200 and sum(c["test"] for c in here["counts"].values()) == 19
    resplit = dataset_fingerprint(scan_image_dir(copy, validation_percentage=20))
    assert resplit["content_hash"] == here["content_hash"] and resplit["split_hash"] != here["split_hash"]
    next(copy.glob("roses/*.jpg")).rename(copy / "tulips" / "moved.jpg")  # one photo relabelled
    moved = dataset_fingerprint(scan_image_dir(copy))
    assert moved["content_hash"] != here["content_hash"] and moved["split_hash"] != here["split_hash"]


# -- bundles of a tiny run (random weights, built once per module) --------------------------------


NAMES = ["cat", "dog", "owl"]


def _tiny_model(lambda_layer: bool = False):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((224, 224, 3))
    x = (
        keras.layers.Lambda(lambda t: t / 255.0)(inputs)
        if lambda_layer
        else keras.layers.Rescaling(1 / 255)(inputs)
    )
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(len(NAMES), activation="softmax")(x))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A finished run of a tiny random-weights model, shared once: (store, run id, bundle path)."""
    from PIL import Image

    from engine.runs.retrain import RunConfig

    root = tmp_path_factory.mktemp("author")
    photo = root / "owl_01.jpg"
    Image.fromarray(np.full((300, 200, 3), 120, np.uint8)).save(photo)
    rng = np.random.default_rng(0)
    for i, name in enumerate(NAMES):  # the training images: 16 per class, ~38 in the train split
        (root / "photos" / name).mkdir(parents=True)
        for j in range(16):
            noise = rng.integers(0, 80, (48, 64, 3)) + 80 * i
            Image.fromarray(noise.astype(np.uint8)).save(root / "photos" / name / f"{name}_{j:02d}.jpg")
    store = RunStore(root / "lab" / "lab.sqlite")
    source = str(root / "photos")
    config = asdict(RunConfig(source=source, architecture="mobilenet_0.25_224", weights="random"))
    run = store.create_run(config, name="tiny owls", author="Ada")
    folder = RunFolder(run.id, store)
    folder.write_labels(NAMES)
    folder.write_config(config)
    folder.save_model(_tiny_model())
    history = [{"step": s, "train_accuracy": 0.5, "train_cross_entropy": 1.0, "validation_accuracy": 0.4,
                "validation_cross_entropy": 1.1, "elapsed": s / 10} for s in (0, 10)]  # fmt: skip
    store.log_metrics(run.id, history)
    results = {
        "test_accuracy": 0.5, "test_count": 2, "per_class_accuracy": {"cat": 1.0, "dog": 0.0, "owl": 0.5},
        "confusion_matrix": [[1, 0, 0], [0, 0, 1], [0, 0, 0]], "class_names": NAMES, "num_classes": 3,
        "misclassified": [{"path": str(photo), "true": "dog", "predicted": "owl", "probability": 0.6}],
        "dataset": {"name": "owls", "root": str(root), "fingerprint": {"split_hash": "ab" * 32}},
        "phases": {"train": 1.5},
    }  # fmt: skip
    folder.write_metrics(history, results)
    store.finish_run(run.id, results)
    bundle = share.export_bundle(run.id, out=root / "out", store=store)
    return store, run.id, bundle


def _members(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write(path: Path, members: dict[str, bytes], manifest_from: dict[str, bytes] | None = None) -> Path:
    """A bundle of `members` whose manifest lists (and hashes) `manifest_from` (default: the members)."""
    import hashlib

    manifest = json.loads(members["manifest.json"])
    listed = {k: v for k, v in (manifest_from or members).items() if k != "manifest.json"}
    manifest["members"] = {
        k: {"sha256": hashlib.sha256(v).hexdigest(), "bytes": len(v)} for k, v in listed.items()
    }
    members = {**members, "manifest.json": json.dumps(manifest).encode()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_a_bundle_holds_the_run_and_nothing_executable(tiny):
    store, run_id, bundle = tiny
    assert bundle.name == f"classifier-lab-run-{run_id}.zip"
    members = _members(bundle)
    calibration = [f"calibration/{i:04d}.jpg" for i in range(32)]
    assert set(members) == {"manifest.json", *share.MEMBER_LIMITS, *calibration}
    manifest = json.loads(members["manifest.json"])
    assert manifest["calibration"] == {"count": 32, "side": 224, "from": "training images"}
    from engine.data.images import decode_image_bytes

    for name in calibration:  # JPEGs at the backbone's input size, of the author's training photos
        assert members[name][:3] == b"\xff\xd8\xff" and 4_000 < len(members[name]) < 200_000
        assert decode_image_bytes(members[name]).shape == (224, 224, 3)
    assert (manifest["schema"], manifest["version"], manifest["run_id"]) == (share.SCHEMA, 1, run_id)
    assert manifest["author"] == "Ada" and manifest["name"] == "tiny owls"
    assert members["labels.txt"].decode() == "cat\ndog\nowl\n"
    assert members["model.keras"] == RunFolder(run_id, store).model_path.read_bytes()
    metrics = json.loads(members["metrics.json"])
    wrong = metrics["results"]["misclassified"][0]
    assert wrong["path"] == "owl_01.jpg" and wrong["thumbnail"].startswith("data:image/jpeg;base64,")
    assert "root" not in metrics["results"]["dataset"]  # no paths of the author's disk
    assert [r["step"] for r in metrics["history"]] == [0, 10]
    assert json.loads(members["dataset.json"]) == {"split_hash": "ab" * 32}
    assert b"tiny owls" in members["model_card.md"] and b"<html" in members["report.html"].lower()


def test_import_stores_a_finished_imported_run_once(tiny, lab_home):
    _, run_id, bundle = tiny
    local = RunStore()
    imported_id = share.import_bundle(bundle, store=local)
    run = local.get_run(imported_id)
    assert (run.status, run.author, run.imported, run.name) == ("finished", "Ada", True, "tiny owls")
    assert run.origin["from"] == "Ada" and run.origin["original_run_id"] == run_id
    assert len(run.origin["bundle_sha256"]) == 64 and run.origin["imported_at"] > 0
    assert run.results["test_accuracy"] == 0.5 and run.phases == {"train": 1.5}
    assert [r["step"] for r in local.get_history(imported_id)] == [0, 10]
    folder = RunFolder(imported_id, local)
    assert folder.class_names() == NAMES and folder.is_trusted(folder.model_path)
    files = folder.calibration_files()
    assert [f.name for f in files] == [f"{i:04d}.jpg" for i in range(32)]
    assert folder.is_trusted(folder.calibration_path)
    assert files[5].read_bytes() == _members(bundle)["calibration/0005.jpg"]
    assert share.thumbnail_bytes(run.results["misclassified"][0])[:2] == b"\xff\xd8"  # a JPEG
    # the same bundle again, or the same run shared again (other zip bytes): the same run, not a copy
    assert share.import_bundle(bundle, store=local) == imported_id
    again = _write(bundle.parent / "again.zip", _members(bundle))
    assert share.import_bundle(again, store=local) == imported_id
    assert [r.id for r in local.list_runs()] == [imported_id]
    # shared on by the classmate: still Ada's run, and known as such here
    onward = share.export_bundle(imported_id, out=lab_home / "onward.zip", store=local)
    manifest = json.loads(_members(onward)["manifest.json"])
    assert (manifest["run_id"], manifest["author"]) == (run_id, "Ada")
    assert manifest["calibration"]["count"] == 32  # its photos are not here: the bundled ones travel on
    assert share.import_bundle(onward, store=local) == imported_id
    # what the imported run answers is what the author's answers
    from engine.export.predict import Classifier

    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3)).astype(np.float32)
    mine = Classifier.from_run(imported_id, store=local).predict_arrays(pixels)
    theirs = Classifier.from_run(run_id, store=tiny[0]).predict_arrays(pixels)
    np.testing.assert_allclose(mine, theirs, atol=1e-6)


def test_concurrent_imports_of_one_bundle_make_one_run(tiny, monkeypatch):
    import time
    from concurrent.futures import ThreadPoolExecutor

    lookup = RunStore.find_imported_run

    def slow_lookup(self, *args):  # widen the window between "not here yet" and storing the run
        found = lookup(self, *args)
        time.sleep(0.5)
        return found

    monkeypatch.setattr(RunStore, "find_imported_run", slow_lookup)
    local = RunStore()
    with ThreadPoolExecutor(3) as pool:
        ids = set(pool.map(lambda _: share.import_bundle(tiny[2], store=RunStore()), range(3)))
    assert len(ids) == 1 and [r.id for r in local.list_runs()] == list(ids)


def test_a_bundle_of_one_of_this_labs_own_runs_is_that_run(tiny):
    store, run_id, bundle = tiny
    assert share.import_bundle(bundle, store=store) == run_id


def test_cli_share_and_import_end_with_a_json_line(tiny, tmp_path, capsys):
    store, run_id, _ = tiny
    src_home = store.root
    import os

    os.environ["LAB_HOME"], before = str(src_home), os.environ["LAB_HOME"]
    try:
        assert main(["share", run_id, "--out", str(tmp_path), "--json"]) == 0
    finally:
        os.environ["LAB_HOME"] = before
    shared = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(shared["bundle"]) == tmp_path / share.bundle_file_name(run_id)
    assert main(["import", shared["bundle"], "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert RunStore().get_run(out["run_id"]).origin["original_run_id"] == run_id


def test_cli_share_refuses_unknown_and_unfinished_runs_in_one_line(capsys):
    store = RunStore()
    running = store.create_run({}, name="still training")
    for run_id, reason in (("ghost", "No run with id 'ghost'"), (running.id, "only a finished run")):
        assert main(["share", run_id]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and reason in err


def _hostile(kind: str, bundle: Path, tmp: Path) -> Path:
    members = _members(bundle)
    path = tmp / f"{kind}.zip"
    if kind == "not a zip":
        path.write_bytes(b"PK\x03\x04 but not really a zip")
        return path
    if kind == "path traversal":
        return _write(path, {**members, "../evil.txt": b"x"})
    if kind == "lambda layer":
        model = tmp / "lambda.keras"
        _tiny_model(lambda_layer=True).save(model)
        return _write(path, {**members, "model.keras": model.read_bytes()})
    if kind in ("planted savedmodel", "planted tflite", "planted python"):
        name = {"planted savedmodel": "saved_model/saved_model.pb", "planted tflite": "model.tflite",
                "planted python": "run_me.py"}[kind]  # fmt: skip
        return _write(path, {**members, name: b"\x00payload"})
    if kind == "labels do not match outputs":
        return _write(path, {**members, "labels.txt": b"cat\ndog\nowl\nemu\n"})
    if kind == "zip bomb":
        return _write(path, {**members, "model.keras": bytes(64 * 1024**2)})
    if kind == "missing file":
        return _write(path, {k: v for k, v in members.items() if k != "labels.txt"})
    if kind == "extra file":
        return _write(path, {**members, "notes.txt": b"hello"})
    if kind == "wrong schema version":
        manifest = json.loads(members["manifest.json"])
        manifest["version"] = 99
        return _write(path, {**members, "manifest.json": json.dumps(manifest).encode()})
    if kind == "hash mismatch":
        changed = {**members, "labels.txt": b"cot\ndog\nowl\n"}  # same size, other bytes
        return _write(path, changed, manifest_from=members)
    if kind in ("model with a planted file", "model naming a foreign module"):
        inner = {}
        with zipfile.ZipFile(io.BytesIO(members["model.keras"])) as zf:
            inner = {n: zf.read(n) for n in zf.namelist()}
        if kind == "model with a planted file":
            inner["saved_model.pb"] = b"\x08\x01"
        else:
            inner["config.json"] = inner["config.json"].replace(
                b'"module": "keras.layers"', b'"module": "os"', 1
            )
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in inner.items():
                zf.writestr(name, data)
        return _write(path, {**members, "model.keras": buf.getvalue()})
    if kind == "control character in a class name":
        return _write(path, {**members, "labels.txt": b"cat\ndo\x1bg\nowl\n"})
    if kind in ("calibration image not a JPEG", "calibration image of the wrong size"):
        from PIL import Image

        buf = io.BytesIO()
        if kind == "calibration image not a JPEG":  # a PNG under a .jpg name
            Image.fromarray(np.zeros((224, 224, 3), np.uint8)).save(buf, format="PNG")
        else:
            Image.fromarray(np.zeros((100, 224, 3), np.uint8)).save(buf, format="JPEG")
        return _write(path, {**members, "calibration/0007.jpg": buf.getvalue()})
    if kind == "too many calibration images":
        return _write(path, {**members, "calibration/0032.jpg": members["calibration/0000.jpg"]})
    if kind == "calibration count disagrees":
        return _write(path, {k: v for k, v in members.items() if k != "calibration/0031.jpg"})
    raise AssertionError(kind)


HOSTILE = {
    "path traversal": "escapes the target folder",
    "lambda layer": "Lambda",
    "planted savedmodel": "'saved_model/saved_model.pb', an export or code file",
    "planted tflite": "'model.tflite', an export or code file",
    "planted python": "'run_me.py', an export or code file",
    "labels do not match outputs": "3 outputs but labels.txt names 4 classes",
    "zip bomb": "zip bomb",
    "missing file": "labels.txt is missing",
    "extra file": "unexpected member 'notes.txt'",
    "wrong schema version": "schema version 99 is not supported",
    "hash mismatch": "labels.txt does not match the sha256 in the manifest",
    "not a zip": "not a valid zip archive",
    "control character in a class name": "line 2 of labels.txt has a control character",
    "model with a planted file": "not a plain Keras model file .it holds 'saved_model.pb'",
    "model naming a foreign module": "model.keras names the module 'os'",
    "calibration image not a JPEG": "calibration/0007.jpg is not a JPEG",
    "calibration image of the wrong size": "0007.jpg is 224x100, not the backbone's input size 224x224",
    "too many calibration images": "0032.jpg: too many calibration images .a bundle carries at most 32",
    "calibration count disagrees": "the manifest counts 32 calibration images, the archive holds 31",
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_bundle_is_refused_with_one_line_and_nothing_stored(kind, tiny, tmp_path, capsys):
    path = _hostile(kind, tiny[2], tmp_path)
    local = RunStore()
    with pytest.raises(LabError, match=HOSTILE[kind]) as caught:
        share.import_bundle(path, store=local)
    assert "\n" not in str(caught.value) and path.name in str(caught.value)
    assert main(["import", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(HOSTILE[kind], err) and "Traceback" not in err
    assert local.list_runs() == []
    assert not any(local.run_dir("x").parent.iterdir())  # no run folder left behind
    assert not [p for p in (local.root / "shares").glob(".import-*")]  # nor a scratch folder


def test_an_imported_run_converts_to_int8_on_its_bundled_images(tiny, tmp_path, monkeypatch):
    """Another laptop: the author's photos are not there, the bundle's calibration images are."""
    import shutil

    from engine.export import convert
    from engine.export.predict import Classifier

    store, run_id, bundle = tiny
    photos = Path(store.get_run(run_id).config["source"])
    moved = tmp_path / "photos-elsewhere"
    shutil.move(photos, moved)  # DELETED here (restored for the other tests of this module)
    try:
        monkeypatch.setenv("LAB_HOME", str(tmp_path / "classmate"))
        classmate = RunStore()
        imported = share.import_bundle(bundle, store=classmate)
        (manifest,) = convert.convert_run(imported, ["tflite-int8"], store=classmate)["exports"]
        assert manifest["calibration"] == "calibrated on 32 bundled images"
        assert manifest["calibration_images"] == 32
        int8 = Classifier.from_run(imported, store=classmate, fmt="tflite-int8")
        (result,) = int8.classify([next(moved.glob("owl/*.jpg"))], top_k=3)
        assert result.error is None and sorted(result.labels) == sorted(NAMES)
        # a calibration folder changed after import is never used: refused in one line
        folder = RunFolder(imported, classmate)
        (folder.calibration_path / "0003.jpg").write_bytes(b"\xff\xd8\xff changed")
        with pytest.raises(LabError, match="is not the calibration set the lab wrote"):
            convert.convert_run(imported, ["tflite-int8"], store=classmate, force=True)
        # an import without calibration images (an older bundle): a clear error, not a crash
        members = _members(bundle)
        manifest = json.loads(members["manifest.json"])
        manifest["calibration"] = {"count": 0}
        members = {k: v for k, v in members.items() if not k.startswith("calibration/")}
        monkeypatch.setenv("LAB_HOME", str(tmp_path / "third"))
        bare = share.import_bundle(
            _write(tmp_path / "bare.zip", {**members, "manifest.json": json.dumps(manifest).encode()}),
            store=RunStore(),
        )
        assert not RunFolder(bare, RunStore()).calibration_path.exists()
        with pytest.raises(LabError, match="needs the run's training images, but source") as e:
            convert.convert_run(bare, ["tflite-int8"], store=RunStore())
        assert "has no bundled calibration images" in str(e.value) and "\n" not in str(e.value)
    finally:
        shutil.move(moved, photos)


# -- proof on real data: retrain, share, import into another lab, same answers, convert ----------
@pytest.mark.slow
def test_round_trip_on_real_flowers_gives_identical_predictions(
    flowers_dir, seeded_keras_home, sample_images_dir, lab_home, tmp_path, monkeypatch
):
    from engine.export import convert
    from engine.export.predict import Classifier, expand_paths
    from engine.runs.retrain import RunConfig, retrain
    from engine.training.config import TrainConfig

    config = RunConfig(
        source=str(flowers_dir), architecture="mobilenet_0.25_224", weights="imagenet",
        train=TrainConfig(steps=200, eval_interval=50, batch_size=32), name="flowers for a classmate",
    )  # fmt: skip
    author_store = RunStore()
    run_id = retrain(config, store=author_store).run_id
    bundle = share.export_bundle(run_id, out=tmp_path / "handed over", store=author_store)
    assert bundle.stat().st_size < 20 * 1024**2

    monkeypatch.setenv("LAB_HOME", str(tmp_path / "classmate"))  # another laptop: a fresh lab
    classmate = RunStore()
    assert classmate.list_runs() == []
    imported = share.import_bundle(bundle, store=classmate)
    assert [r.id for r in classmate.list_runs()] == [imported] and classmate.get_run(imported).imported

    photos = sorted(expand_paths([sample_images_dir]))[:6] + sorted(flowers_dir.glob("roses/*.jpg"))[:4]
    theirs = Classifier.from_run(run_id, store=author_store).classify(photos, top_k=5)
    mine = Classifier.from_run(imported, store=classmate).classify(photos, top_k=5)
    for a, b in zip(theirs, mine, strict=True):
        assert a.error is None and b.error is None and a.top1 == b.top1
        assert a.labels == b.labels
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    assert (
        classmate.get_run(imported).results["test_accuracy"]
        == author_store.get_run(run_id).results["test_accuracy"]
    )
    converted = convert.convert_run(imported, ["tflite-int8"], store=classmate)
    assert [m["format"] for m in converted["exports"]] == ["tflite-int8"]
    int8 = Classifier.from_run(imported, store=classmate, fmt="tflite-int8").classify(photos, top_k=1)
    agree = np.mean([a.top1 == b.top1 for a, b in zip(theirs, int8, strict=True)])
    assert agree >= 0.8, agree


# -- the Runs page --------------------------------------------------------------------------------
def test_runs_page_imports_a_bundle_and_offers_to_share_it(tiny, lab_home):
    from streamlit.testing.v1 import AppTest

    _, run_id, bundle = tiny
    at = AppTest.from_file(
        str(Path(__file__).parents[1] / "dashboard" / "runs.py"), default_timeout=120
    ).run()
    assert not at.exception and "No runs yet" in at.info[0].value
    at.file_uploader(key="runs_import_file").set_value((bundle.name, bundle.read_bytes(), "application/zip"))
    at.run()  # the browser reruns the page when a file is chosen
    at.button(key="runs_import").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (imported,) = RunStore().list_runs()
    assert imported.origin["original_run_id"] == run_id
    assert at.success and imported.id in at.success[0].value
    row = at.dataframe[0].value.iloc[0]
    assert (row["author"], row["id"]) == ("Ada", imported.id)
    assert row["origin"] == f"imported from Ada (run {run_id})"
    assert imported.id in at.selectbox(key="runs_detail").value  # the imported run is the one shown
    buttons = {b.proto.label: b.proto for b in at.get("download_button")}
    assert buttons["Share bundle"].disabled is False
    assert "Download report (HTML)" in buttons
    # a hostile upload: the reason on the page, nothing stored
    at.file_uploader(key="runs_import_file").set_value(("evil.zip", b"not a zip at all", "application/zip"))
    at.run()
    at.button(key="runs_import").click().run()
    assert not at.exception and at.error and "not a valid zip archive" in at.error[0].value
    assert [r.id for r in RunStore().list_runs()] == [imported.id]

"""The run folder: atomic writes, artifact hashes, and what a run refuses to load (issue 10)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from engine.errors import LabError, NotFound
from engine.runs.folder import RunFolder, atomic_write_text, tree_hash
from engine.runs.results import RunResults
from engine.runs.store import RunStore

CONFIG = {"source": "demo", "architecture": "mobilenet_0.25_128", "weights": "random"}
LABELS = ["blue_triangle", "green_square", "red_circle"]


class _CrashingModel:
    """Stands in for a Keras model whose save dies halfway (a kill -9 mid-write, as far as the file goes)."""

    def save(self, path) -> None:
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise RuntimeError("killed while saving")


class _BytesModel:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def save(self, path) -> None:
        with open(path, "wb") as f:
            f.write(self.data)


def _folder(labels=LABELS) -> RunFolder:
    store = RunStore()
    run = store.create_run(CONFIG, name="folder test")
    folder = RunFolder(run.id, store)
    folder.write_labels(labels)
    folder.write_config(CONFIG)
    return folder


def _tiny_model(outputs: int = 3, size: int = 128):
    """A small Keras classifier on 0..255 pixels whose predictions vary from image to image."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(outputs, activation="softmax", name="head")(x))


def _leftovers(folder: RunFolder) -> list[str]:
    return [p.name for p in folder.path.iterdir() if p.name.startswith(".tmp-")]


# -- atomic writes -------------------------------------------------------------------------------
def test_a_crash_while_saving_the_model_keeps_the_old_file_and_no_temp():
    folder = _folder()
    folder.save_model(_BytesModel(b"the good model"))
    recorded = folder.store.artifact_hash(folder.run_id, "model.keras")
    with pytest.raises(RuntimeError, match="killed while saving"):
        folder.save_model(_CrashingModel())
    assert folder.model_path.read_bytes() == b"the good model"
    assert _leftovers(folder) == []
    assert folder.store.artifact_hash(folder.run_id, "model.keras") == recorded  # the record is unchanged


def test_a_crash_before_the_first_save_leaves_no_model():
    folder = _folder()
    with pytest.raises(RuntimeError):
        folder.save_model(_CrashingModel())
    assert not folder.model_path.exists() and _leftovers(folder) == []
    with pytest.raises(NotFound, match="has no model.keras"):
        folder.require_model()


def test_text_writes_replace_whole_files(monkeypatch):
    folder = _folder()
    before = folder.labels_path.read_text()

    def dies(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", dies)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(folder.labels_path, "other\nnames\n")
    assert folder.labels_path.read_text() == before and _leftovers(folder) == []


def test_saved_model_hash_is_the_files_sha256():
    folder = _folder()
    digest = folder.save_model(_BytesModel(b"model bytes"))
    assert digest == hashlib.sha256(b"model bytes").hexdigest()
    assert folder.store.artifact_hash(folder.run_id, "model.keras") == digest
    assert folder.is_trusted(folder.model_path)


def test_labels_with_a_line_break_are_refused():
    folder = _folder()
    with pytest.raises(LabError, match="line breaks"):
        folder.write_labels(["daisy", "rose\ntulip"])
    assert folder.class_names() == LABELS


# -- hashes --------------------------------------------------------------------------------------
def test_tree_hash_covers_names_and_bytes(tmp_path):
    tree = tmp_path / "saved_model"
    (tree / "variables").mkdir(parents=True)
    (tree / "saved_model.pb").write_bytes(b"graph")
    (tree / "variables" / "variables.data").write_bytes(b"weights")
    first = tree_hash(tree)
    assert tree_hash(tree) == first
    (tree / "variables" / "variables.data").write_bytes(b"weightz")
    assert tree_hash(tree) != first
    (tree / "variables" / "variables.data").write_bytes(b"weights")
    (tree / "variables" / "variables.data").rename(tree / "variables" / "renamed.data")
    assert tree_hash(tree) != first


def test_tree_hash_refuses_links_and_fifos_without_blocking(tmp_path):
    tree = tmp_path / "export"
    tree.mkdir()
    (tree / "model.tflite").write_bytes(b"x")
    (tree / "link").symlink_to("/etc/hostname")
    with pytest.raises(LabError, match="link or special file"):
        tree_hash(tree)
    fifo = tmp_path / "fifo.tflite"
    os.mkfifo(fifo)
    with pytest.raises(LabError, match="special file"):
        tree_hash(fifo)


def test_hashes_are_remembered_only_while_the_files_stay_put(monkeypatch):
    from engine.runs import folder as folder_module

    folder = _folder()
    folder.save_model(_BytesModel(b"first"))
    monkeypatch.setattr(folder_module, "_RACY_SECONDS", -1.0)  # as if the file were written long ago
    first = folder.hash(folder.model_path)
    monkeypatch.setattr(folder_module, "tree_hash", lambda path: pytest.fail("hashed again"))
    assert folder.hash(folder.model_path) == first  # unchanged: remembered
    monkeypatch.undo()
    folder.save_model(_BytesModel(b"other"))  # a new file (new inode): hashed again
    assert folder.hash(folder.model_path) == hashlib.sha256(b"other").hexdigest()


# -- planted and changed exports are not used -----------------------------------------------------
def _plant_export(folder: RunFolder, fmt: str = "tflite-fp32") -> None:
    export = folder.exports / fmt
    export.mkdir(parents=True)
    (export / "model.tflite").write_bytes(b"not written by the lab")
    (export / "manifest.json").write_text(json.dumps({"format": fmt, "file": f"exports/{fmt}/model.tflite"}))


def test_an_export_counts_only_while_it_matches_its_record():
    from engine.export import convert

    folder = _folder()
    folder.save_model(_BytesModel(b"stand-in model"))
    _plant_export(folder)
    run = convert.open_run(folder.run_id)
    assert convert.read_manifest(run, "tflite-fp32") is None  # never recorded: as if missing
    folder.record(folder.exports / "tflite-fp32" / "model.tflite")
    assert convert.read_manifest(run, "tflite-fp32")["format"] == "tflite-fp32"
    (folder.exports / "tflite-fp32" / "model.tflite").write_bytes(b"swapped afterwards")
    assert convert.read_manifest(run, "tflite-fp32") is None
    assert [m["format"] for m in convert.list_exports(folder.run_id)] == ["keras"]
    with pytest.raises(NotFound, match="convert it first"):
        convert.download_file(folder.run_id, "tflite-fp32")


def test_a_changed_model_keras_is_refused_before_loading():
    from engine.export import convert

    folder = _folder()
    folder.save_model(_BytesModel(b"what the lab saved"))
    folder.model_path.write_bytes(b"what someone put there")
    with pytest.raises(LabError, match="not the model the lab saved"):
        folder.load_model()
    with pytest.raises(LabError, match="not the model the lab saved"):
        convert.list_exports(folder.run_id)


# -- loading: clear errors, never wrong labels -----------------------------------------------------
def test_truncated_model_keras_is_a_clear_error_naming_the_file():
    from engine.export.predict import Classifier

    folder = _folder()
    folder.save_model(_tiny_model())
    data = folder.model_path.read_bytes()
    folder.model_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LabError, match="model.keras"):  # recorded: refused by its hash
        Classifier.from_run(folder.run_id)
    hand_made = _folder()  # no record (a folder made by hand): Keras' own check fails, said in one line
    hand_made.model_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LabError, match=r"model\.keras cannot be loaded .*damaged") as info:
        Classifier.from_run(hand_made.run_id)
    assert "\n" not in str(info.value) and str(hand_made.model_path) in str(info.value)


def test_model_with_more_outputs_than_labels_is_refused():
    from engine.export.predict import Classifier

    folder = _folder(labels=LABELS[:2])
    folder.save_model(_tiny_model(outputs=3))
    with pytest.raises(LabError, match="has 3 outputs but .*labels.txt names 2 classes"):
        Classifier.from_run(folder.run_id)


def test_classify_cli_says_why_and_exits_2(capsys):
    from engine.cli.main import main

    folder = _folder(labels=LABELS[:2])
    folder.save_model(_tiny_model(outputs=3))
    image = folder.path / "photo.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    assert main(["classify", "--run", folder.run_id, str(image)]) == 2
    err = capsys.readouterr().err
    assert "labels.txt names 2 classes" in err and "Traceback" not in err


def test_a_planted_savedmodel_is_never_executed(tmp_path):
    """`classify --format savedmodel` on a SavedModel someone put in the run folder: rebuilt, not run."""
    import tensorflow as tf

    from engine.export.predict import Classifier

    folder = _folder()
    model = _tiny_model()
    folder.save_model(model)
    marker = tmp_path / "executed"

    class Planted(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 128, 128, 3], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(marker), "the planted graph ran")
            return {"output_0": tf.one_hot(tf.zeros(tf.shape(x)[:1], tf.int32), 3)}

    planted = Planted()
    target = folder.exports / "savedmodel"
    tf.saved_model.save(planted, str(target / "saved_model"), signatures={"serving_default": planted.serve})
    (target / "manifest.json").write_text(json.dumps({"format": "savedmodel", "file": "x"}))

    classifier = Classifier.from_run(folder.run_id, fmt="savedmodel")
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 128, 128, 3)).astype(np.float32)
    probs = classifier.predict_arrays(pixels)
    assert not marker.exists()
    np.testing.assert_allclose(probs, model.predict(pixels, verbose=0), atol=1e-5)
    assert folder.is_trusted(target / "saved_model")  # the rebuilt one is recorded


# -- results ---------------------------------------------------------------------------------------
def test_run_results_tolerate_old_and_partial_dicts():
    empty = RunResults.from_dict(None)
    assert empty.test_accuracy is None and empty.final == {} and empty.misclassified == []
    old = RunResults.from_dict({"test_accuracy": 0.9, "final": None, "retired_key": 1})
    assert old.test_accuracy == 0.9 and old.validation_accuracy is None
    full = {
        "test_accuracy": 0.75,
        "test_count": 4,
        "final": {"validation_accuracy": 0.5, "validation_cross_entropy": 1.25},
        "fine_tune": {"head_test_accuracy": 0.5},
        "class_names": ["a", "b"],
    }
    res = RunResults.from_dict(full)
    assert (res.validation_accuracy, res.validation_cross_entropy, res.head_test_accuracy) == (0.5, 1.25, 0.5)
    assert RunResults.from_dict(res.as_dict()) == res
    assert {k: res.as_dict()[k] for k in full} == full
    with pytest.raises(AttributeError):
        res.test_accuracy = 1.0  # frozen

"""Downloads that name their classes: a plain LiteRT, ONNX Runtime or Keras user gets the labels back.

One small random CNN run (saved through RunFolder, so its hash is recorded) is converted once per module;
each test unpacks the download as a stranger would and runs the README's own lines.
"""

from __future__ import annotations

import io
import json
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InvalidArgument, LabError, NotFound
from engine.export import convert, package
from engine.runs.folder import RunFolder
from engine.runs.store import RunStore

LABELS = ["daisy", "rose petals", "tulip"]  # a space: labels are lines, not words
SIZE = 128


@pytest.fixture(scope="module")
def run_id(tmp_path_factory):
    home = tmp_path_factory.mktemp("labels_lab")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_HOME", str(home))
        import keras

        keras.utils.set_random_seed(1)
        inputs = keras.Input((SIZE, SIZE, 3), name="image")
        x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
        x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(len(LABELS), activation="softmax")(x * 8.0))
        store = RunStore()
        config = {"source": "demo", "architecture": f"mobilenet_0.25_{SIZE}", "weights": "random"}
        run = store.create_run(config, name="labels run", author="Ada L.")
        folder = RunFolder(run.id, store)
        folder.save_model(model)
        folder.write_labels(LABELS)
        folder.write_config(config)
        store.finish_run(run.id, {"test_accuracy": None})
        convert.convert_run(run.id, ["tflite-fp32", "onnx"])
        yield run.id, home


@pytest.fixture
def run(run_id, monkeypatch):
    rid, home = run_id
    monkeypatch.setenv("LAB_HOME", str(home))
    return rid


def unpack(data: bytes, dest: Path) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(dest)
        return sorted(zf.namelist())


def readme_code(folder: Path) -> str:
    """The indented lines of README.txt after 'Load it': the snippet a stranger would paste."""
    text = (folder / "README.txt").read_text()
    block = text.split("Load it", 1)[1].split("\n", 1)[1]
    return textwrap.dedent("\n".join(line for line in block.splitlines() if line.startswith("    ")))


def run_readme(folder: Path, monkeypatch, capsys) -> str:
    monkeypatch.chdir(folder)
    capsys.readouterr()
    exec(compile(readme_code(folder), str(folder / "README.txt"), "exec"), {})
    return capsys.readouterr().out.strip()


def test_tflite_download_is_named_and_loads_with_plain_litert(run, tmp_path, monkeypatch, capsys):
    from ai_edge_litert.interpreter import Interpreter

    name, data = package.download_package(run, "tflite-fp32")
    assert name == f"classifier-lab-{run}-tflite-fp32.zip"
    model_file = f"classifier-lab-{run}-tflite-fp32.tflite"
    assert unpack(data, tmp_path) == sorted([model_file, "README.txt", "labels.txt"])
    labels = (tmp_path / "labels.txt").read_text().splitlines()
    assert labels == LABELS

    interpreter = Interpreter(model_path=str(tmp_path / model_file))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert list(inp["shape"]) == [1, SIZE, SIZE, 3] and out["shape"][-1] == len(labels)
    x = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    tflite_probs = interpreter.get_tensor(out["index"])[0]
    keras_probs = RunFolder.of(run).load_model().predict(x, verbose=0)[0]
    np.testing.assert_allclose(tflite_probs, keras_probs, atol=1e-4)  # label i means output i

    readme = (tmp_path / "README.txt").read_text()
    assert f"(1, {SIZE}, {SIZE}, 3)" in readme and f"{len(LABELS)} class names" in readme
    assert run_readme(tmp_path, monkeypatch, capsys) in LABELS


def test_onnx_download_carries_labels_in_its_metadata(run, tmp_path, monkeypatch, capsys):
    import onnxruntime as ort

    name, data = package.download_package(run, "onnx")
    assert name == f"classifier-lab-{run}-onnx.zip"
    model_file = f"classifier-lab-{run}-onnx.onnx"
    assert unpack(data, tmp_path) == sorted([model_file, "README.txt", "labels.txt"])
    session = ort.InferenceSession(str(tmp_path / model_file), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["labels"]) == LABELS and meta["run_id"] == run
    assert (tmp_path / "labels.txt").read_text().splitlines() == LABELS
    # the metadata changed only the package: the export the lab measures keeps its recorded bytes
    stored = convert.model_path(convert.open_run(run), "onnx")
    assert RunFolder.of(run).is_trusted(stored)
    assert run_readme(tmp_path, monkeypatch, capsys) in LABELS


def test_keras_download_loads_in_safe_mode_with_its_labels(run, tmp_path, monkeypatch, capsys):
    import keras

    name, data = package.download_package(run, "keras")
    assert name == f"classifier-lab-{run}-keras.zip"
    model_file = f"classifier-lab-{run}-keras.keras"
    assert unpack(data, tmp_path) == sorted([model_file, "README.txt", "labels.txt"])
    model = keras.saving.load_model(tmp_path / model_file, compile=False, safe_mode=True)
    labels = (tmp_path / "labels.txt").read_text().splitlines()
    assert model.output_shape[-1] == len(labels) and labels == LABELS
    assert run_readme(tmp_path, monkeypatch, capsys) in LABELS


def test_packages_only_what_the_lab_wrote(run):
    with pytest.raises(NotFound, match="no tflite-fp16 export yet"):
        package.download_package(run, "tflite-fp16")  # never converted in this module
    with pytest.raises(InvalidArgument, match="TensorRT engines are built per GPU"):
        package.download_package(run, "tensorrt-fp16")
    with pytest.raises(InvalidArgument, match="cannot be downloaded"):
        package.download_package(run, "../../etc")

    files = RunFolder.of(run)
    tflite = convert.model_path(convert.open_run(run), "tflite-fp32")
    for path, error in ((tflite, NotFound), (files.model_path, LabError)):
        original = path.read_bytes()
        try:
            path.write_bytes(original + b"planted")  # same run, other bytes
            with pytest.raises(error):
                package.download_package(run, "keras" if path == files.model_path else "tflite-fp32")
        finally:
            path.write_bytes(original)
    assert package.download_package(run, "tflite-fp32")[0].endswith("tflite-fp32.zip")


def test_convert_page_offers_named_packages_and_the_author(run):
    from streamlit.testing.v1 import AppTest

    page = Path(__file__).resolve().parents[1] / "dashboard" / "convert.py"
    at = AppTest.from_file(str(page), default_timeout=60)
    at.query_params["run"] = run
    at.run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    picker = at.selectbox(key="convert_run")
    assert picker.value == run and f"labels run · {run} · Ada L." in picker.options
    buttons = {b.proto.label: b.proto for b in at.get("download_button")}
    assert set(buttons) == {"Download keras", "Download tflite-fp32", "Download onnx"}
    assert buttons["Download onnx"].help == f"classifier-lab-{run}-onnx.zip"


def test_cli_convert_writes_the_named_packages(run, tmp_path, capsys):
    from engine.cli.main import main

    out = tmp_path / "downloads"
    assert main(["convert", "--run", run, "--to", "tflite-fp32,onnx", "--package", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = [out / f"classifier-lab-{run}-{fmt}.zip" for fmt in ("tflite-fp32", "onnx")]
    assert result["packages"] == [str(p) for p in expected]
    with zipfile.ZipFile(expected[0]) as zf:
        assert zf.read("labels.txt").decode().splitlines() == LABELS
    (tmp_path / "a file").write_text("")
    assert main(["convert", "--run", run, "--to", "onnx", "--package", str(tmp_path / "a file")]) == 2
    assert "--package" in capsys.readouterr().err  # one line naming the option, no traceback


@pytest.mark.slow
def test_int8_download_tells_a_litert_user_about_uint8(run, tmp_path, monkeypatch, capsys):
    convert.convert_run(run, ["tflite-int8"], calibration_images=20)  # calibrates on the demo set
    name, data = package.download_package(run, "tflite-int8")
    assert name == f"classifier-lab-{run}-tflite-int8.zip"
    assert f"classifier-lab-{run}-tflite-int8.tflite" in unpack(data, tmp_path)
    readme = (tmp_path / "README.txt").read_text()
    assert "uint8 RGB pixels 0..255" in readme and "divide by 255" in readme
    assert run_readme(tmp_path, monkeypatch, capsys) in LABELS  # the README's zeros are uint8 here


@pytest.mark.slow
def test_savedmodel_download_is_a_folder_with_labels(run, tmp_path, monkeypatch, capsys):
    convert.convert_run(run, ["savedmodel"])
    name, data = package.download_package(run, "savedmodel")
    assert name == f"classifier-lab-{run}-savedmodel.zip"
    names = unpack(data, tmp_path)
    assert f"classifier-lab-{run}-savedmodel/saved_model/saved_model.pb" in names and "labels.txt" in names
    assert run_readme(tmp_path, monkeypatch, capsys) in LABELS


def test_convert_page_opens_at_the_linked_run(run):
    from streamlit.testing.v1 import AppTest

    other = RunStore().create_run({"source": "demo"}, name="newer run")
    RunStore().finish_run(other.id, {})
    page = Path(__file__).resolve().parents[1] / "dashboard" / "convert.py"
    at = AppTest.from_file(str(page), default_timeout=60)
    assert at.run().selectbox(key="convert_run").value == other.id  # newest first
    at = AppTest.from_file(str(page), default_timeout=60)
    at.query_params["run"] = run
    assert at.run().selectbox(key="convert_run").value == run

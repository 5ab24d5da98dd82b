"""Side by side: model choices, untrusted .tflite files and labels, agreement, Coral models on real photos."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from engine.errors import InvalidArgument, LabError, NotFound
from engine.export import lineup
from engine.export.lineup import Lineup, ModelChoice
from engine.export.predict import Prediction

CORAL = Path(__file__).resolve().parents[2] / "shared" / "assets" / "coral_tflite"
CORAL_LABELS = CORAL / "imagenet_labels.txt"
CORAL_MODELS = ("mobilenet_v2_1.0_224_quant.tflite", "mobilenet_v1_0.25_128_quant.tflite")


@pytest.fixture
def coral_dir():
    if not CORAL_LABELS.exists():
        pytest.skip(f"needs the shared offline asset {CORAL} (../shared/assets is absent here)")
    return CORAL


def test_choice_round_trips_and_refuses_bad_fields():
    choice = ModelChoice("run", "20261203-1", "tflite-int8", title="flowers (tflite-int8)")
    assert choice.key == "run:20261203-1:tflite-int8"
    assert ModelChoice.from_dict(choice.as_dict()) == choice
    assert ModelChoice("imagenet", "mobilenet_0.25_224").key == "imagenet:mobilenet_0.25_224"
    with pytest.raises(InvalidArgument, match="kind='model'"):
        ModelChoice.from_dict({"kind": "model", "ref": "x"})
    with pytest.raises(InvalidArgument, match="tflite-int9"):
        ModelChoice("run", "x", "tflite-int9")
    with pytest.raises(InvalidArgument, match="unknown keys: code"):
        ModelChoice.from_dict({"kind": "run", "ref": "x", "code": "rm -rf"})
    with pytest.raises(InvalidArgument, match="labels file"):
        ModelChoice.from_dict({"kind": "tflite", "ref": "/m.tflite"})
    with pytest.raises(InvalidArgument, match="printable line"):
        ModelChoice("run", "x", title="a\x1b[2Jb")


def test_parse_run_choice_names_the_bad_part():
    with pytest.raises(InvalidArgument, match="tflite-int9"):
        lineup.parse_run_choice("somerun:tflite-int9")
    with pytest.raises(NotFound, match="nope"):
        lineup.parse_run_choice("nope:tflite-int8")
    with pytest.raises(InvalidArgument, match="RUN_ID:FORMAT"):
        lineup.parse_run_choice(":keras")


def _pred(label: str | None, error: str | None = None) -> Prediction:
    return Prediction("p.jpg", [label] if label else [], [0.9] if label else [], 1.0, error=error)


def test_agreement_counts_the_most_common_top1_case_and_underscore_blind():
    rows = [
        [_pred("Daisy"), _pred("daisy"), _pred("sunflowers")],
        [_pred("picket_fence"), _pred("Picket fence"), _pred(None, error="broken")],
        [_pred(None, error="broken"), _pred(None, error="broken"), _pred(None, error="broken")],
    ]
    result = Lineup(["a", "b", "c"], ["m1", "m2", "m3"], rows)
    assert result.agreement(0) == pytest.approx(2 / 3)
    assert result.agreement(1) == 1.0  # the unreadable answer is not a vote
    assert result.agreement(2) == 0.0
    assert result.disagreements() == [0, 2]
    entries = result.entries()
    assert len(entries) == 9 and entries[1]["model"] == "m2" and entries[5]["error"] == "broken"
    assert {"source", "model", "labels", "scores", "latency_ms"} <= set(entries[0])


def test_a_file_without_the_tflite_magic_is_refused(tmp_path, coral_dir):
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"PK\x03\x04" + b"\0" * 100)  # a zip renamed
    with pytest.raises(InvalidArgument, match=r"model.tflite is not a TFLite model: bytes 4..8"):
        lineup.tflite_choice(fake, coral_dir / "imagenet_labels.txt")
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(InvalidArgument, match="empty"):
        lineup.tflite_choice(empty, coral_dir / "imagenet_labels.txt")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        lineup.tflite_choice(tmp_path, coral_dir / "imagenet_labels.txt")
    fifo = tmp_path / "pipe.tflite"
    os.mkfifo(fifo)
    with pytest.raises(InvalidArgument, match="not a regular file"):  # never opened: it would block
        lineup.tflite_choice(fifo, coral_dir / "imagenet_labels.txt")
    with pytest.raises(NotFound, match="missing.tflite"):
        lineup.tflite_choice(tmp_path / "missing.tflite", coral_dir / "imagenet_labels.txt")


def test_damaged_tflite_with_the_magic_is_one_line(tmp_path, coral_dir):
    model = tmp_path / "cut.tflite"
    model.write_bytes((coral_dir / CORAL_MODELS[1]).read_bytes()[:5000])  # truncated download
    with pytest.raises(LabError, match="cut.tflite cannot be loaded by LiteRT") as info:
        lineup.tflite_choice(model, coral_dir / "imagenet_labels.txt")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"daisy\n\xff\xfe rose\n", "not UTF-8"),
        (b"daisy\nro\x1bse\n", "line 2 holds a control character"),
        (b"daisy\n\nrose\n", "line 2 is empty"),
        (b"\n\n", "names no classes"),
        (b"x\n" * 10_001, "10,001 lines"),
    ],
)
def test_bad_labels_files_are_refused(tmp_path, content, needle):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(content)
    with pytest.raises(InvalidArgument, match=needle):
        lineup.read_labels(labels)


def test_labels_that_do_not_fit_the_outputs_say_both_counts(tmp_path, coral_dir):
    labels = tmp_path / "imagenet_1000.txt"  # the background class dropped: 1000 names, 1001 outputs
    labels.write_text("\n".join(lineup.read_labels(coral_dir / "imagenet_labels.txt")[1:]) + "\n")
    with pytest.raises(
        InvalidArgument, match=r"has 1000 labels but mobilenet_v2_1.0_224_quant.tflite outputs 1001"
    ):
        lineup.tflite_choice(coral_dir / CORAL_MODELS[0], labels)
    with pytest.raises(InvalidArgument, match="embedding extractor is not a classifier"):
        lineup.tflite_choice(coral_dir / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite", labels)


def test_coral_classifiers_name_the_daisy_and_disagree_on_grace_hopper(
    coral_dir, sample_images_dir, tmp_path
):
    # a copy under a name of the user's choosing: the choice carries paths, not the shared folder
    model = tmp_path / "classmate.tflite"
    shutil.copy(coral_dir / CORAL_MODELS[0], model)
    choices = [
        lineup.tflite_choice(model, coral_dir / "imagenet_labels.txt"),
        lineup.tflite_choice(coral_dir / CORAL_MODELS[1], coral_dir / "imagenet_labels.txt"),
    ]
    assert choices[0].title == "classmate (tflite)" and choices[0].key == f"tflite:{model.resolve()}"
    classifiers = [lineup.load_choice(ModelChoice.from_dict(c.as_dict())) for c in choices]
    assert [c.input_size for c in classifiers] == [224, 128]
    photos = [sample_images_dir / "classic-daisy.jpg", sample_images_dir / "grace_hopper.bmp"]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photos[0].read_bytes()[:300])
    events = []
    result = lineup.side_by_side(classifiers, [*photos, broken], top_k=3, progress=events.append)
    daisy = result.predictions[0]
    assert [p.top1 for p in daisy] == ["daisy", "daisy"] and daisy[0].scores[0] > 0.9
    assert result.agreement(0) == 1.0
    assert result.predictions[1][0].top1 == "military uniform"
    assert all(p.error for p in result.predictions[2])
    assert all("familiar" not in p.extra for row in result.predictions for p in row)  # not runs
    assert result.disagreements() == [1, 2]  # v1 0.25 at 128 px sees an academic gown
    assert events[-1]["done"] == events[-1]["total"] == 6
    assert all(p.latency_ms > 0 for p in daisy)

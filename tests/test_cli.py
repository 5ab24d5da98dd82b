"""`python -m engine` as a user runs it: JSON last lines, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_retrain_classify_runs_json_on_demo_data(tmp_path):
    proc = run_cli(
        "retrain",
        "--image_dir",
        "demo",
        "--weights",
        "random",
        "--architecture",
        "mobilenet_0.25_128",
        "--how_many_training_steps",
        "60",
        "--eval_step_interval",
        "20",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = last_json(proc)
    assert {"run_id", "test_accuracy", "phases", "cache_hits", "cache_misses"} <= set(out)
    assert out["cache_misses"] > 0 and "extract" in out["phases"]
    demo_root = next((Path(os.environ["LAB_HOME"]) / "datasets").glob("demo-*"))
    folder = sorted(p for p in demo_root.iterdir() if p.is_dir())[0]  # one class folder
    proc = run_cli("classify", "--run", out["run_id"], str(folder), "--top_k", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    results = last_json(proc)["results"]
    assert len(results) == len(list(folder.iterdir()))
    assert all(len(r["labels"]) == 2 and r["latency_ms"] > 0 for r in results)
    listing = last_json(run_cli("runs", "--json"))
    assert [r["id"] for r in listing["runs"]] == [out["run_id"]]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["retrain", "--image_dir", "/no/such/folder"], "/no/such/folder"),
        (["retrain", "--image_dir", "demo", "--architecture", "resnet_9"], "mobilenet_0.25_224"),
        (["retrain", "--image_dir", "demo", "--learning_rate", "-1"], "learning_rate=-1"),
        (["classify", "--run", "nope", "README.md"], "nope"),
    ],
)
def test_expected_failures_are_one_line_without_traceback(args, needle):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr


def _subparser(parser, *path):
    import argparse

    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_training_flags_default_to_train_config_and_run_config():
    """No default is copied into the CLI: retrain's and every study's flags read TrainConfig()."""
    from dataclasses import fields

    from engine.cli.main import build_parser
    from engine.runs import experiments
    from engine.runs.retrain import RunConfig
    from engine.training.config import TrainConfig

    train = TrainConfig()
    run = {f.name: f.default for f in fields(RunConfig) if f.name in ("architecture", "weights")}
    parser = build_parser()
    retrain = vars(_subparser(parser, "retrain").parse_args(["--image_dir", "demo"]))
    assert retrain["learning_rate"] == train.learning_rate
    assert retrain["how_many_training_steps"] == train.steps
    assert retrain["train_batch_size"] == train.batch_size
    assert retrain["eval_step_interval"] == train.eval_interval
    assert (retrain["optimizer"], retrain["seed"]) == (train.optimizer, train.seed)
    assert retrain["fine_tune_layers"] == train.fine_tune_layers
    assert {k: retrain[k] for k in run} == run
    freeze = vars(_subparser(parser, "experiment", "freeze").parse_args(["--image_dir", "demo"]))
    for key in ("steps", "batch_size", "eval_interval", "learning_rate", "optimizer", "schedule", "seed"):
        assert freeze[key] == getattr(train, key), key
    for key in ("fine_tune_steps", "fine_tune_batch_size", "fine_tune_learning_rate"):
        assert freeze[key] == getattr(train, key), key
    assert freeze["layers"] == list(experiments.DEFAULT_LAYERS)
    race = vars(_subparser(parser, "experiment", "lr").parse_args(["--image_dir", "demo"]))
    assert (race["rates"], race["target"]) == (list(experiments.DEFAULT_RATES), experiments.DEFAULT_TARGET)


def test_bad_list_flag_echoes_the_bad_item(capsys):
    from engine.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", "lr", "--image_dir", "demo", "--rates", "0.01, fast ,0.1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --rates" in err and "'fast'" in err and "Traceback" not in err


def test_parse_list_is_shared_by_cli_and_pages():
    from engine.errors import InvalidArgument
    from engine.params import parse_list

    assert parse_list(" 0.005, 0.01;0.1 ,, ", float) == [0.005, 0.01, 0.1]
    assert parse_list("flowers,beans;", str) == ["flowers", "beans"]
    assert parse_list("", int) == []
    expected = "Layer counts must be comma-separated whole numbers, got '2.5'"
    with pytest.raises(InvalidArgument, match=expected):
        parse_list("0, 2.5", int, "Layer counts")


CORAL = ROOT.parent / "shared" / "assets" / "coral_tflite"


def test_classify_side_by_side_two_tflite_files(sample_images_dir):
    if not CORAL.is_dir():
        pytest.skip(f"needs the shared offline asset {CORAL} (../shared/assets is absent here)")
    labels = str(CORAL / "imagenet_labels.txt")
    models = [
        str(CORAL / "mobilenet_v2_1.0_224_quant.tflite"),
        str(CORAL / "mobilenet_v1_0.25_128_quant.tflite"),
    ]
    photos = [str(sample_images_dir / "classic-daisy.jpg"), str(sample_images_dir / "grace_hopper.bmp")]
    args = ["classify", "--tflite", models[0], "--labels", labels, "--tflite", models[1], "--labels", labels]
    proc = run_cli(*args, *photos, "--top_k", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    out = last_json(proc)
    assert [m["title"] for m in out["models"]] == [
        "mobilenet_v2_1.0_224_quant (tflite)",
        "mobilenet_v1_0.25_128_quant (tflite)",
    ]
    assert len(out["entries"]) == 4 and out["photos"] == photos
    first = out["entries"][0]
    assert {"source", "model", "labels", "scores", "latency_ms"} <= set(first) and len(first["labels"]) == 2
    assert [e["labels"][0] for e in out["entries"][:2]] == ["daisy", "daisy"]
    assert out["disagreements"] == [1] and out["agreement"][0] == 1.0
    lines = proc.stdout.splitlines()
    grace = lines.index(next(line for line in lines if line.startswith(photos[1])))
    assert "models disagree: 50% agree" in lines[grace]
    assert lines[grace + 1].startswith("* ") or lines[grace + 2].startswith("* ")  # the odd one out marked

    proc = run_cli("classify", "--tflite", models[0], photos[0])  # no --labels
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "each --tflite needs its --labels file: got 1 --tflite and 0 --labels" in proc.stderr
    proc = run_cli("classify", "--tflite", labels, "--labels", labels, photos[0])
    assert proc.returncode == 2 and "is not a TFLite model" in proc.stderr and "Traceback" not in proc.stderr

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

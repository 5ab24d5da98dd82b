"""Offline reports (engine.runs.report, `python -m engine report`) on a tiny real run and a tiny race.

The run is built fast: random weights, generated images, 30 steps; one class is named like an HTML
injection, so every test on it also checks escaping.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs

from engine.cli.main import build_parser, main
from engine.data import sources
from engine.runs import experiments, report
from engine.runs.retrain import RunConfig, retrain
from engine.runs.store import RunStore
from engine.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = "<img src=x onerror=alert(1)>"
SECTIONS = (
    "Training curves",
    "Confusion matrix and per-class accuracy",
    "Misclassified test images",
    "Model card",
    "Reproduce it",
    "Configuration",
    "Environment",
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One LAB_HOME for the module: a tiny run, a two-rate race, built on first use."""
    return {"home": tmp_path_factory.mktemp("report_lab")}


@pytest.fixture
def home(lab, monkeypatch):
    monkeypatch.setenv("LAB_HOME", str(lab["home"]))
    return lab


def _base(lab) -> RunConfig:
    data = lab["home"] / "data"
    if not data.exists():
        sources.make_demo_dataset(data, num_classes=3, per_class=12, size=32, seed=1)
        sorted(p for p in data.iterdir() if p.is_dir())[0].rename(data / HOSTILE)
    return RunConfig(
        source=str(data),
        architecture="mobilenet_0.25_128",
        weights="random",
        validation_percentage=20,
        testing_percentage=20,
        train=TrainConfig(steps=30, batch_size=16, schedule="cosine"),
        name="tiny <b>run</b>",
    )


@pytest.fixture
def run_id(home) -> str:
    if "run" not in home:
        home["run"] = retrain(_base(home)).run_id
    return home["run"]


@pytest.fixture
def experiment_id(home) -> str:
    if "experiment" not in home:
        base = replace(_base(home), name=None)
        home["experiment"] = experiments.lr_race(base, (0.01, 1.0), target=0.9, seeds=1).experiment_id
    return home["experiment"]


def _outside_plotly(page: str) -> str:
    """The page without the inlined plotly.js (whose own code mentions URLs it never fetches here)."""
    js = get_plotlyjs()
    assert page.count(js) == 1, "plotly.js is inlined exactly once"
    return page.replace(js, "")


def test_run_report_has_every_section(run_id):
    run = RunStore().get_run(run_id)
    page = report.run_report_html(run_id)
    for section in SECTIONS:
        assert f">{section}</h2>" in page, section
    accuracy = run.results["test_accuracy"]
    assert re.search(rf'Test accuracy</div><div class="value">{re.escape(f"{accuracy:.1%}")}<', page)
    assert f"on {run.results['test_count']} test images" in page
    assert page.count('class="plotly-graph-div"') == 4  # two curves, confusion matrix, per-class
    shown = min(len(run.results["misclassified"]), report.GALLERY_LIMIT)
    assert shown > 0, "random weights get some test images wrong"
    assert page.count('<img alt="" src="data:image/jpeg;base64,') == shown
    assert run_id in page and "mobilenet_0.25_128" in page
    assert "tensorflow_version" in page  # the environment table


def test_report_points_nowhere(run_id):
    rest = _outside_plotly(report.run_report_html(run_id))
    assert "http://" not in rest and "https://" not in rest
    assert not re.search(r"<script[^>]*\bsrc\s*=", rest, re.I)
    assert not re.search(r"<link\b", rest, re.I)
    assert not re.search(r"<img[^>]*\bsrc\s*=\s*\"(?!data:image/)", rest, re.I)
    assert "@import" not in rest and "url(" not in rest and "MathJax" not in rest


def test_hostile_names_are_escaped(run_id):
    rest = _outside_plotly(report.run_report_html(run_id))
    assert HOSTILE not in rest and "<b>run</b>" not in rest
    assert "&lt;img src=x onerror=alert(1)&gt;" in rest and "tiny &lt;b&gt;run&lt;/b&gt;" in rest
    # inside the figures' JSON, plotly writes < and > as \u003c and \u003e
    assert "\\u003cimg src=x onerror=alert(1)\\u003e" in rest
    card = report.model_card_markdown(run_id)
    assert HOSTILE not in card and "&lt;img src=x onerror=alert(1)&gt;" in card


def test_model_card_markdown(run_id):
    run = RunStore().get_run(run_id)
    card = report.model_card_markdown(run_id)
    for heading in ("# Model card:", "## Model details", "## Training data", "## Intended use", "## Metrics",
                    "## Limitations"):  # fmt: skip
        assert heading in card, heading
    assert (
        f"Test accuracy: {run.results['test_accuracy']:.1%} on {run.results['test_count']} test images"
        in card
    )
    assert "green_square" in card and "red_circle" in card and "random weights" in card


def _retrain_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["retrain"]


def test_reproduce_command_has_every_cli_flag_and_parses_back(run_id):
    retrain_parser = _retrain_parser()
    cli_flags = {o for a in retrain_parser._actions for o in a.option_strings} - {"-h", "--help", "--json"}
    assert {flag for flag, _ in report.RETRAIN_FLAGS} == cli_flags, "RETRAIN_FLAGS must follow the CLI"
    config = RunStore().get_run(run_id).config
    command, notes = report.reproduce_command(config)
    words = shlex.split(command)
    assert words[:4] == ["python", "-m", "engine", "retrain"]
    args = retrain_parser.parse_args(words[4:])
    dests = {o: a.dest for a in retrain_parser._actions for o in a.option_strings}
    for flag, key in report.RETRAIN_FLAGS:
        value = config
        for part in key.split("."):
            value = value[part]
        assert getattr(args, dests[flag]) == value, flag
    # the cosine schedule has no flag: the card says so instead of pretending the command reproduces it
    assert any("schedule='cosine'" in note for note in notes), notes
    assert report.reproduce_command({**config, "train": {**config["train"], "schedule": "constant"}})[1] == []


def test_experiment_report_overlays_runs_with_table_and_verdicts(experiment_id):
    page = report.experiment_report_html(experiment_id)
    rest = _outside_plotly(page)
    rows = experiments.experiment_table(experiment_id)
    assert [r["name"] for r in rows] == ["lr=0.01", "lr=1"]
    for row in rows:
        assert row["run_id"] in rest
        assert report._e(row["explanation"]) in rest  # the verdict of summaries.race_row
    assert ">Verdicts</h2>" in rest and "Learning-rate race" in rest and "Steps to target" in rest
    assert rest.count('class="plotly-graph-div"') == 2  # accuracy and cross-entropy, one line per run
    assert '"name":"lr=0.01"' in rest and '"name":"lr=1"' in rest
    assert "http://" not in rest and "https://" not in rest
    assert HOSTILE not in rest


def test_report_kind_and_file_names(run_id, experiment_id):
    assert report.report_kind(run_id) == "run"
    assert report.report_kind(experiment_id) == "experiment"
    assert report.report_file_name("run", run_id) == f"classifier-lab-run-{run_id}.html"
    assert report.report_file_name("experiment", "../x y") == "classifier-lab-experiment-.._x_y.html"


def test_cli_writes_reports_and_refuses_unknown_ids(run_id, experiment_id, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["report", run_id]) == 0
    assert (tmp_path / f"classifier-lab-run-{run_id}.html").is_file()
    out = tmp_path / "exp.html"
    capsys.readouterr()
    assert main(["report", experiment_id, "--out", str(out), "--json"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["kind"] == "experiment" and last["path"] == str(out) and last["bytes"] == out.stat().st_size
    assert ">Verdicts</h2>" in out.read_text(encoding="utf-8")
    assert main(["report", experiment_id, "--out", str(tmp_path)]) == 0  # a folder gets the default name
    assert (tmp_path / f"classifier-lab-experiment-{experiment_id}.html").is_file()

    assert main(["report", "no-such-id"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: No run or experiment with id 'no-such-id' (see `python -m engine runs`)"]
    assert main(["report", run_id, "--out", str(tmp_path / "missing" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_experiments_page_opens_a_linked_experiment_with_report_and_link(experiment_id, home):
    from streamlit.testing.v1 import AppTest

    base = replace(_base(home), name=None)
    other = experiments.freezing_study(base, (0,)).experiment_id  # the page would open the race tab
    at = AppTest.from_file(str(ROOT / "dashboard" / "experiments.py"), default_timeout=120)
    at.query_params["experiment"] = other
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert at.session_state["experiment_study"] == "freezing"
    picked = next(s for s in at.selectbox if s.label == "Results of")
    assert picked.value == other
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download report (HTML)" in labels and "Download CSV" in labels
    assert f"?experiment={other}" in "".join(c.value for c in at.code)

    at = AppTest.from_file(str(ROOT / "dashboard" / "experiments.py"), default_timeout=120)
    at.query_params["experiment"] = "<nope>"
    at.run()
    assert not at.exception and "not in this lab" in at.warning[0].value


def test_a_failed_run_by_a_named_author_still_reports(home):
    store = RunStore()
    author = "Ada <script>alert(2)</script>"
    run = store.create_run({"source": "/data/<x>", "architecture": "mobilenet_0.25_128"}, author=author)
    store.finish_run(run.id, {}, status="failed", error="ran out of <memory>")
    page = report.run_report_html(run.id, store)
    rest = page if get_plotlyjs() not in page else _outside_plotly(page)
    assert (
        "<script>alert(2)" not in rest and "Author: <b>Ada &lt;script&gt;alert(2)&lt;/script&gt;</b>" in rest
    )
    assert "ran out of &lt;memory&gt;" in rest and "No evaluations were recorded." in rest
    assert "by Ada &lt;script&gt;" in report.model_card_markdown(run.id, store)
    for section in SECTIONS:
        assert f">{section}</h2>" in page, section


def test_imported_thumbnails_are_used_only_when_plain_data_uris(home):
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="JPEG")
    good = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    hostile = 'data:image/png;base64,AAAA" onerror="alert(3)'
    store = RunStore()
    run = store.create_run({"source": "flowers"}, origin={"from": "Bo", "original_run_id": "r1"})
    wrong = [
        {"path": "a.jpg", "true": "a", "predicted": "b", "probability": 0.9, "thumbnail": good},
        {"path": "b.jpg", "true": "b", "predicted": "a", "probability": 0.8, "thumbnail": hostile},
    ]
    results = {"test_accuracy": 0.5, "test_count": 4, "class_names": ["a", "b"], "misclassified": wrong}
    store.finish_run(run.id, results)
    page = report.run_report_html(run.id, store)  # no history or confusion matrix: no plotly.js either
    assert page.count(f'<img alt="" src="{good}">') == 1
    assert "alert(3)" not in page and page.count("image not on this machine") == 1
    assert "Imported from Bo (their run r1)" in page and "<script" not in page

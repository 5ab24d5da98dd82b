"""A run report opened in Chromium with every network request blocked: it renders, and asks for nothing.

The run is tiny (random weights, generated images, 30 steps) and one class is named like an HTML
injection, so the same page also proves the report escapes what users typed: a live `<img onerror>`
would both request its `src` (counted) and open a dialog (counted).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.data import sources
from engine.runs import report
from engine.runs.retrain import RunConfig, retrain
from engine.runs.store import RunStore
from engine.training.config import TrainConfig

pytest.importorskip("playwright.sync_api", reason="e2e needs playwright")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "_artifacts"
HOSTILE = "<img src=x onerror=alert(1)>"


def _tiny_run(tmp_path: Path) -> str:
    data = sources.make_demo_dataset(tmp_path / "data", num_classes=3, per_class=12, size=32, seed=1)
    sorted(p for p in data.iterdir() if p.is_dir())[0].rename(data / HOSTILE)
    config = RunConfig(
        source=str(data),
        architecture="mobilenet_0.25_128",
        weights="random",
        validation_percentage=20,
        testing_percentage=20,
        train=TrainConfig(steps=30, batch_size=16),
    )
    return retrain(config).run_id


def test_report_renders_offline_with_zero_requests(tmp_path, browser):
    """`browser` is the suite's one Playwright Chromium (a second sync Playwright cannot run beside it)."""
    run_id = _tiny_run(tmp_path)
    accuracy = RunStore().get_run(run_id).results["test_accuracy"]
    path = tmp_path / report.report_file_name("run", run_id)
    path.write_text(report.run_report_html(run_id), encoding="utf-8")
    url = path.as_uri()

    requests, dialogs = [], []
    context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    try:

        def block(route):
            if route.request.url != url:  # the report file itself is the only thing it may load
                requests.append(route.request.url)
            route.abort()

        context.route("**/*", lambda route: route.continue_() if route.request.url == url else block(route))
        page = context.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url, wait_until="load")
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
        charts = page.locator(".js-plotly-plot").count()
        headline = page.locator(".metric").first.inner_text()
        visible = page.locator(".metric .value").first.is_visible()
        body = page.inner_text("body")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    finally:
        context.close()

    assert requests == [], requests
    assert dialogs == [], dialogs
    assert charts == 4, charts  # accuracy, cross-entropy, confusion matrix, per-class accuracy
    assert visible and "test accuracy" in headline.lower() and f"{accuracy:.1%}" in headline, headline
    assert HOSTILE in body  # shown as text, not run
    for section in (
        "Training curves",
        "Misclassified test images",
        "Model card",
        "Reproduce it",
        "Environment",
    ):
        assert section in body, section

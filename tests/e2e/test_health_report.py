"""The Data page's health check in a real browser: a flowers copy with a resized copy of a training photo in
the test split, a byte-identical copy and a photo moved into another class; the report shows all three."""

from __future__ import annotations

import re
import shutil
import time

import pytest
from PIL import Image

from engine.data.datasets import assign_split

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

JOB_SECONDS = 300


def _planted(flowers, tmp_path):
    root = tmp_path / "flowers-planted"
    shutil.copytree(flowers, root, ignore=shutil.ignore_patterns("LICENSE*"))
    source = next(p for p in sorted((root / "roses").glob("*.jpg")) if assign_split(p.name) == "train")
    name = next(f"half_{n}.jpg" for n in range(1000) if assign_split(f"half_{n}.jpg") == "test")
    im = Image.open(source).convert("RGB")
    im.resize((im.width // 2, im.height // 2)).save(root / "roses" / name, quality=85)
    # a clear daisy (its 7 nearest flowers are daisies) copied byte for byte into tulips
    shutil.copy(root / "daisy" / "174131220_c853df1287.jpg", root / "tulips" / "same_as_a_daisy.jpg")
    return root


def _metric(tab, label: str) -> str:
    box = tab.locator(
        "[data-testid=stMetric]", has=tab.locator("[data-testid=stMetricLabel]", has_text=label)
    )
    return box.first.locator("[data-testid=stMetricValue]").inner_text()


def test_health_report_shows_copies_and_mislabels(browser, app_url, assets, screenshot, tmp_path):
    root = _planted(assets["flowers"], tmp_path)
    # its own browser session, so the suite's chosen dataset stays as it was
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(30_000)
    try:
        tab = context.new_page()
        tab.goto(app_url + "/data")
        tab.locator("button", has_text="Stored folder").first.click()
        tab.get_by_label("…or any folder of class subfolders on this computer").fill(str(root))
        tab.get_by_label("…or any folder of class subfolders on this computer").press("Enter")
        tab.locator("button", has_text="Use this folder").first.click()
        tab.locator("h3", has_text="Dataset: flowers-planted").wait_for(timeout=120_000)
        tab.locator("button", has_text="Check health").first.click()
        deadline = time.time() + JOB_SECONDS
        done = tab.locator("[data-testid=stMetricLabel]", has_text="Likely mislabels")
        while not done.count():
            errors = tab.locator("[data-testid=stAlertContentError]")
            assert errors.count() == 0, errors.first.inner_text()
            assert time.time() < deadline, f"no health report within {JOB_SECONDS} s"
            tab.wait_for_timeout(500)
        tab.wait_for_timeout(1500)
        assert tab.locator("[data-testid=stException]").count() == 0
        assert _metric(tab, "Exact copies") == "1"
        assert _metric(tab, "Near-duplicate pairs") == "1"
        main = tab.locator("[data-testid=stMain]")
        assert main.get_by_text("1 pair (1 across splits, 0 across classes)").count() == 1
        copy = re.escape("tulips/same_as_a_daisy.jpg")
        assert main.get_by_text(re.compile(copy)).count() >= 2  # shown as an exact copy and as a mislabel
        assert main.get_by_text(re.compile(copy + ".*looks like daisy")).count() == 1
        assert main.locator(".js-plotly-plot").count() >= 2
        screenshot(tab, "health_report")
    finally:
        context.close()

"""Classify in a real browser: a flowers run beside Coral's ImageNet .tflite on one photo, its heatmap,
a batch folder with its confusion matrix; on a 1400 x 1000 screen and on a 390 x 844 phone.

The run is seeded through the engine (faster than training through the UI) in a data directory and
server of this module's own, and the test uses its own browser contexts: the suite's shared server,
data directory and tab are left alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import start_server, stop_server
from tests.e2e.test_dashboard import no_error_alert, no_exception, wait_idle

pytest.importorskip("playwright.sync_api", reason="e2e needs playwright")

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

CORAL = Path(__file__).resolve().parents[3] / "shared" / "assets" / "coral_tflite"
CORAL_MODEL, CORAL_LABELS = CORAL / "mobilenet_v2_1.0_224_quant.tflite", CORAL / "imagenet_labels.txt"


@pytest.fixture(scope="module")
def classify_app(e2e_dirs, assets) -> tuple[str, str]:
    """(server address, run id): a server of its own data directory holding one finished flowers run.

    Its own LAB_HOME keeps the seeded run out of the suite's shared one (test_dashboard counts its runs).
    """
    from engine.runs.retrain import RunConfig, retrain
    from engine.training.config import TrainConfig

    if not CORAL_MODEL.exists():
        pytest.skip(f"needs the shared offline asset {CORAL_MODEL}")
    lab_home = e2e_dirs["base"] / "classify_lab_home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_HOME", str(lab_home))
        mp.setenv("KERAS_HOME", str(e2e_dirs["keras_home"]))
        config = RunConfig(
            source=str(assets["flowers"]), name="e2e classify", train=TrainConfig(steps=200, batch_size=32)
        )
        run_id = retrain(config).run_id
    proc, url = start_server(lab_home, e2e_dirs["keras_home"], e2e_dirs["base"] / "streamlit_classify.log")
    yield url, run_id
    stop_server(proc, lab_home)


def open_classify(browser, app_url: str, width: int, height: int, phone: bool = False):
    context = browser.new_context(
        viewport={"width": width, "height": height}, is_mobile=phone, has_touch=phone, device_scale_factor=1
    )
    context.set_default_timeout(60_000)
    tab = context.new_page()
    tab.goto(app_url + "/classify")
    tab.locator("h1", has_text="Classify").wait_for()
    wait_idle(tab)
    return context, tab


def add_coral(tab) -> None:
    """Upload Coral's ImageNet classifier with its labels in 'More models' and add it to the chosen models."""
    tab.locator("[data-testid=stExpander] summary", has_text="More models").click()
    uploaders = tab.locator("[data-testid=stExpander] [data-testid=stFileUploader]")
    upload(tab, uploaders.nth(0), CORAL_MODEL)
    upload(tab, uploaders.nth(1), CORAL_LABELS)
    tab.locator("button", has_text="Add this model").click()
    tab.locator("[data-testid=stMultiSelect]", has_text="(uploaded)").wait_for()
    wait_idle(tab)


def upload(tab, uploader, path: Path, tries: int = 3) -> None:
    """Give `uploader` a file and wait until its chip shows. The upload before it reruns the script; a file
    set while that rerun replaces the widget can be dropped, so it is set again (at most `tries` times)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    chip = uploader.locator(f"[data-testid=stFileChipName][title='{path.name}']")
    for attempt in range(tries):
        wait_idle(tab)
        uploader.locator("input[type=file]").set_input_files(str(path))
        try:
            chip.wait_for(timeout=20_000)
            break
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise
    wait_idle(tab)


def classify_photo(tab, photo: Path) -> None:
    photos = tab.locator("[data-testid=stFileUploader]", has_text="Photos").first
    photos.locator("input[type=file]").set_input_files(str(photo))
    tab.get_by_text(re.compile(r"Side by side: 1 photo\(s\)")).wait_for(timeout=180_000)
    wait_idle(tab)


def metrics(tab, label: str) -> list[str]:
    boxes = tab.locator(
        "[data-testid=stMetric]", has=tab.locator("[data-testid=stMetricLabel]", has_text=label)
    )
    return [boxes.nth(i).locator("[data-testid=stMetricValue]").inner_text() for i in range(boxes.count())]


def side_by_side_ms(tab) -> float:
    text = tab.get_by_text(re.compile(r"Side by side: ")).first.inner_text()
    return float(re.search(r" in ([\d,.]+) ms", text).group(1).replace(",", ""))


def test_classify_side_by_side_heatmap_batch_and_phone(browser, classify_app, assets, screenshot):
    app_url, _ = classify_app
    daisy = assets["samples"] / "classic-daisy.jpg"
    context, tab = open_classify(browser, app_url, 1400, 1000)
    try:
        chosen = tab.locator("[data-testid=stMultiSelect]").first.inner_text()
        assert "e2e classify (keras)" in chosen, chosen  # the best finished run is chosen by default
        add_coral(tab)
        assert not tab.get_by_text("Add this model").is_visible(), "More models closes once one is added"
        classify_photo(tab, daisy)
        no_exception(tab)
        no_error_alert(tab)
        tops, latencies = metrics(tab, "Top-1"), metrics(tab, "Latency")
        assert len(tops) == 2 and tops == ["daisy", "daisy"], tops  # the run and Coral's model agree
        assert tab.get_by_text("2 of 2 models agree").count() == 1
        first_ms = side_by_side_ms(tab)
        print(f"side by side (desktop, first): {first_ms:.0f} ms; per model {latencies}")

        tab.locator("[data-testid=stCheckbox]", has_text="Why it decided").first.click()
        tab.get_by_text("Warm areas show where the evidence for 'daisy' lies").wait_for(timeout=120_000)
        wait_idle(tab)
        heat = tab.locator("[data-testid=stImage]", has_text="grad-cam: daisy")
        assert heat.count() == 1 and heat.locator("img").evaluate("i => i.naturalWidth") >= 200
        no_exception(tab)
        screenshot(tab, "20_classify_side_by_side")
        assert_no_horizontal_scroll(tab)

        batch(tab, assets["flowers"], screenshot)
    finally:
        context.close()

    context, tab = open_classify(browser, app_url, 390, 844, phone=True)
    try:
        box = tab.locator("[data-testid=stSidebar]").bounding_box()
        assert box is None or box["x"] + box["width"] <= 1, f"the sidebar starts collapsed on a phone: {box}"
        add_coral(tab)
        tab.locator("[data-testid=stCheckbox]", has_text="Use the camera").first.click()
        tab.locator("[data-testid=stCameraInput]").first.wait_for()  # reachable (blank without a camera)
        classify_photo(tab, daisy)
        no_exception(tab)
        assert metrics(tab, "Top-1") == ["daisy", "daisy"]
        cards = tab.locator("[data-testid=stMetricLabel]", has_text="Top-1")
        boxes = [cards.nth(i).bounding_box() for i in range(cards.count())]
        assert boxes[1]["y"] > boxes[0]["y"] + 100, "the model cards stack on a phone"
        assert all(b["x"] >= 0 and b["x"] + b["width"] <= 390 for b in boxes)
        assert_no_horizontal_scroll(tab)
        print(f"side by side (phone): {side_by_side_ms(tab):.0f} ms")
        screenshot(tab, "21_classify_phone")
        screenshot(tab, "22_classify_phone_first_screen", full=False)
    finally:
        context.close()


def assert_no_horizontal_scroll(tab) -> None:
    widths = tab.evaluate(
        "() => { const m = document.querySelector('[data-testid=stMain]');"
        " return [m.scrollWidth, m.clientWidth] }"
    )
    assert widths[0] <= widths[1] + 1, f"the page scrolls sideways: {widths}"


def batch(tab, flowers: Path, screenshot) -> None:
    """The Batch tab on the flowers folder (class subfolders): a job, then accuracy and confusion matrix."""
    tab.get_by_role("tab", name=re.compile("Batch")).click()
    wait_idle(tab)
    panel = tab.locator("[data-testid=stTabs] [role=tabpanel]:visible")
    panel.get_by_text("A folder on this computer").click()
    wait_idle(tab)
    folder = panel.get_by_label("Folder", exact=True)
    folder.fill(str(flowers))
    folder.press("Enter")
    wait_idle(tab)
    panel.locator("button", has_text="Classify the batch").click()
    panel.locator("[data-testid=stMetricLabel]", has_text="Accuracy").wait_for(timeout=300_000)
    wait_idle(tab)
    no_exception(tab)
    accuracy = panel.locator(
        "[data-testid=stMetric]", has=tab.locator("[data-testid=stMetricLabel]", has_text="Accuracy")
    ).locator("[data-testid=stMetricValue]")
    assert accuracy.inner_text().endswith("%") and float(accuracy.inner_text()[:-1]) >= 60
    confusion = panel.locator(".js-plotly-plot", has_text="Confusion matrix")
    confusion.wait_for()
    matrices = confusion.evaluate(
        "p => p._fullData.filter(t => t.type === 'heatmap').map(t => Array.from(t.z, r => Array.from(r)))"
    )
    assert len(matrices) == 1 and len(matrices[0]) == 5  # five flower classes
    assert sum(map(sum, matrices[0])) == 200  # every flower photo counted once
    screenshot(tab, "23_classify_batch")

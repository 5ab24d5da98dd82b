"""The dashboard in a real browser: upload a zip, train twice, compare, classify, refuse bad input.

The tests run in file order against one server and one browser tab (see conftest.py), so the
dataset uploaded first is the one trained on, and the runs trained are the ones compared.
"""

from __future__ import annotations

import json
import re
import time
import zipfile
from pathlib import Path

import pytest

import streamlit_app

PlaywrightTimeout = pytest.importorskip("playwright.sync_api", reason="e2e needs playwright").TimeoutError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TRAIN_TIMEOUT_MS = 300_000
ARTIFACTS = Path(__file__).resolve().parents[1] / "_artifacts"
HEADINGS = {"Overview": "Classifier Lab"}  # a page's h1 where it is not its title in the sidebar


# -- helpers -----------------------------------------------------------------------------------
def wait_idle(page, timeout: float = 90.0, quiet_checks: int = 3) -> None:
    """Wait until Streamlit has finished running the script (no running indicator for a while)."""
    deadline, quiet = time.time() + timeout, 0
    while quiet < quiet_checks:
        if time.time() > deadline:
            raise AssertionError(f"the app kept running for more than {timeout:.0f} s")
        page.wait_for_timeout(400)
        busy = page.evaluate("() => !!document.querySelector('[data-testid=stStatusWidgetRunningIcon]')")
        quiet = 0 if busy else quiet + 1


def go(page, title: str, heading: str | None = None) -> None:
    """Open a page from the sidebar navigation (keeps the browser session and its selections)."""
    page.locator("[data-testid=stSidebarNav] a", has_text=title).first.click()
    page.locator("h1", has_text=heading or title).first.wait_for()
    wait_idle(page)


def button(page, text: str):
    return page.locator("button", has_text=text).first


def no_exception(page) -> None:
    """No Streamlit exception box (a traceback) anywhere on the page."""
    assert page.locator("[data-testid=stException]").count() == 0, page.locator(
        "[data-testid=stException]"
    ).first.inner_text()


def no_error_alert(page, expected: tuple[str, ...] = ()) -> None:
    """No `st.error` box (what `guard()` shows for an engine failure) but those containing `expected`."""
    texts = page.locator("[data-testid=stAlertContentError]").all_inner_texts()
    unexpected = [t for t in texts if not any(e in t for e in expected)]
    assert not unexpected, unexpected


def metric(page, label: str) -> str:
    box = page.locator(
        "[data-testid=stMetric]", has=page.locator("[data-testid=stMetricLabel]", has_text=label)
    )
    return box.first.locator("[data-testid=stMetricValue]").inner_text()


def plot_traces(page) -> list[int]:
    """Number of traces holding data in each plotly chart on the page (plotly.js' own view)."""
    return page.evaluate(
        "() => Array.from(document.querySelectorAll('[data-testid=stMain] .js-plotly-plot'))"
        ".map(p => (p._fullData || []).filter(t => (t._length || 0) > 0 || (t.z && t.z.length)).length)"
    )


def _text_now(locator) -> str | None:
    """The first match's text if it is there right now, else None (no waiting)."""
    try:
        return locator.first.inner_text(timeout=500) if locator.count() else None
    except PlaywrightTimeout:
        return None


def flowers_zip(flowers: Path, folder: Path) -> Path:
    path = folder / "flowers-small.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for image in sorted(flowers.glob("*/*.jpg")):
            zf.write(image, f"{image.parent.name}/{image.name}")
    return path


# long enough (~25 s in a warm worker on 2 cores) for this tab to see the curves grow and a second
# tab to find the job still running
SECOND_RUN_STEPS = 30000


def train(
    page, steps: int, learning_rate: str, name: str, screenshot=None, shot_name: str = "", while_running=None
) -> dict:
    """Start a run from the Train page and follow it until its results show.

    `while_running(name)` is called once, the first time the live view shows the job running.
    """
    page.get_by_label("Training steps").fill(str(steps))
    page.get_by_label("Learning rate").fill(learning_rate)
    page.get_by_label("Run name (optional)").fill(name)
    page.get_by_label("Run name (optional)").press("Enter")
    wait_idle(page)
    button(page, "Start training").click()
    clicked = time.time()
    main = page.locator("[data-testid=stMain]")
    main.locator("[data-testid=stProgress]").first.wait_for(timeout=60_000)
    seen = {"live_curves": 0, "phases": set(), "first_curve_s": None}
    deadline = time.time() + TRAIN_TIMEOUT_MS / 1000
    shot_taken = False
    while time.time() < deadline:
        if seen["first_curve_s"] is None and any(plot_traces(page)):  # the first curve point is drawn
            seen["first_curve_s"] = round(time.time() - clicked, 2)
        running = button(page, "Cancel").count() > 0
        done = main.locator("[data-testid=stMetricLabel]", has_text="Test accuracy").count()
        if done and not running and main.get_by_text(name).count():
            break
        bars = main.locator("[data-testid=stProgress]")
        text = _text_now(bars) if running else None  # the live view is redrawn every second
        if text is not None:
            seen["phases"].add(text.split("·")[0].strip())
            traces = plot_traces(page)
            if traces and max(traces) >= 2:
                seen["live_curves"] += 1
                training = text.startswith("Training the head")
                if screenshot and not shot_taken and training:
                    screenshot(page, shot_name, full=False)
                    shot_taken = True
        # the second tab opens once this tab has drawn the live curves: a warm worker trains fast
        if running and while_running is not None and seen["live_curves"]:
            while_running(name)
            while_running = None
        page.wait_for_timeout(250)
    else:
        raise AssertionError(f"run {name!r} did not finish within {TRAIN_TIMEOUT_MS / 1000:.0f} s")
    wait_idle(page)
    return seen


# -- the suite -----------------------------------------------------------------------------------
def test_overview(page, screenshot):
    page.locator("h1", has_text="Classifier Lab").wait_for()
    page.get_by_text("TensorRT cannot be used here", exact=False).or_(
        page.get_by_text("TensorRT can be used here", exact=False)
    ).first.wait_for(timeout=90_000)
    wait_idle(page)
    no_exception(page)
    assert re.match(r"\d+\.\d+", metric(page, "TensorFlow"))
    assert page.get_by_text("14,197,122").count() >= 1
    assert page.get_by_text("GPUs visible to TensorFlow").count() == 1
    screenshot(page, "01_overview")


def test_data_upload_zip(page, screenshot, assets, tmp_path):
    go(page, "Data")
    button(page, "Upload a zip").click()
    wait_idle(page)

    # a zip without class folders is refused with the reason, and the page keeps working
    bad = tmp_path / "loose.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.write(assets["samples"] / "classic-daisy.jpg", "classic-daisy.jpg")
    page.locator("[data-testid=stFileUploader] input[type=file]").set_input_files(str(bad))
    wait_idle(page)
    button(page, "Unpack and use").click()
    page.locator("[data-testid=stAlertContentError]").first.wait_for()
    assert "class" in page.locator("[data-testid=stAlertContentError]").first.inner_text().lower()
    no_exception(page)
    screenshot(page, "02_data_bad_zip")

    page.locator("[data-testid=stFileUploader] input[type=file]").set_input_files(
        str(flowers_zip(assets["flowers"], tmp_path))
    )
    page.locator("[data-testid=stFileUploader]", has_text="flowers-small.zip").wait_for()
    wait_idle(page)
    page.get_by_label("Dataset name").fill("flowers-small")
    page.get_by_label("Dataset name").press("Enter")
    wait_idle(page)
    button(page, "Unpack and use").click()
    page.locator("h3", has_text="Dataset: flowers-small").wait_for(timeout=180_000)
    wait_idle(page)
    no_exception(page)
    assert metric(page, "Classes") == "5"
    assert metric(page, "Images") == "200"
    assert page.locator("[data-testid=stImage] img").count() >= 5 * 8  # thumbnails of every class
    screenshot(page, "03_data_flowers")


def test_train_two_runs(page, screenshot, e2e_dirs):
    go(page, "Train")
    assert "flowers-small" in page.locator("[data-testid=stSelectbox] input").first.input_value()
    first = train(page, 300, "0.01", "e2e lr=0.01")
    no_exception(page)
    accuracy = metric(page, "Test accuracy")
    assert accuracy.endswith("%") and float(accuracy[:-1]) >= 50, accuracy
    assert min(plot_traces(page)[:2]) >= 2  # accuracy and cross-entropy, train and validation
    screenshot(page, "05_train_done")

    def second_tab_finds_the_job(name: str) -> None:
        # another browser session (no shared session state) opens Train and follows the same job
        other = page.context.browser.new_context(viewport={"width": 1440, "height": 1000})
        try:
            tab = other.new_page()
            tab.goto(page.url.rsplit("/", 1)[0] + "/train")
            try:
                tab.locator("[data-testid=stMain]").get_by_text(name).first.wait_for(timeout=30_000)
                tab.locator("[data-testid=stMain] button", has_text="Cancel").first.wait_for(timeout=60_000)
            finally:
                screenshot(tab, "06b_train_second_tab", full=False)
            seen_elsewhere.append(name)
        finally:
            other.close()

    seen_elsewhere: list[str] = []
    second = train(
        page,
        SECOND_RUN_STEPS,
        "0.005",
        "e2e lr=0.005",
        screenshot,
        "06_train_running",
        while_running=second_tab_finds_the_job,
    )
    record_first_curve_point(first, second, e2e_dirs["lab_home"])
    assert seen_elsewhere == ["e2e lr=0.005"]
    no_exception(page)
    assert metric(page, "Test accuracy").endswith("%")
    assert metric(page, "Cache hits") == "200 of 200", "the second run must reuse every bottleneck"
    print(f"live views: first {first}, second {second}")
    assert second["live_curves"] >= 1, "curves must update while the job trains"
    screenshot(page, "07_train_second_done")


def record_first_curve_point(first: dict, second: dict, lab_home: Path) -> None:
    """Seconds from the Start training click to the first curve point drawn in the browser (polled every
    ~0.25 s here; the Train page redraws every second), beside what the runs recorded (submission to
    the first evaluation row in the store): recorded, not asserted (bench/bench_first_point.py
    measures the job API against the targets)."""
    from engine import config
    from engine.runs.store import RunStore

    runs = {run.name: run for run in RunStore(config.store_file(lab_home)).list_runs()}
    record = {
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "note": "the second run's browser figure also holds the second tab this test opens while it runs",
    }
    runs_seen = (
        ("first_run_300_steps", first, "e2e lr=0.01"),
        (f"second_run_{SECOND_RUN_STEPS}_steps_warm_cache", second, "e2e lr=0.005"),
    )
    for key, seen, name in runs_seen:
        run = runs.get(name)
        record[key] = {
            "browser_first_curve_s": seen["first_curve_s"],
            "run_first_metric_seconds": run and run.first_metric_seconds,
            "run_queue_seconds": run and run.queue_seconds,
        }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "first_curve_point.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"first curve point: {record}")


def test_runs_compare(page, screenshot):
    go(page, "Runs")
    no_exception(page)
    assert page.get_by_text("2 of 2 runs").count() == 1
    chosen = page.locator("[data-testid=stMultiSelect]", has_text="Runs to overlay")
    assert chosen.inner_text().count("e2e lr=") == 2
    traces = plot_traces(page)
    assert traces[0] >= 4  # two runs, raw + smoothed each
    screenshot(page, "08_runs")
    page.get_by_role("tab", name="Misclassified test images").click()
    page.wait_for_timeout(500)
    gallery = page.locator("[data-testid=stTabs] [data-testid=stImage] img")
    assert gallery.count() >= 1  # 68% test accuracy leaves misclassified images to show
    screenshot(page, "08b_runs_misclassified")
    with page.expect_download() as download:
        button(page, "Download model.keras").click()
    assert download.value.suggested_filename.endswith(".keras")
    assert Path(download.value.path()).stat().st_size > 100_000  # backbone + head, loadable elsewhere


def test_classify_daisy_and_bad_upload(page, screenshot, assets, tmp_path):
    go(page, "Classify")
    # the page has other uploaders (a .tflite model, its labels, a batch zip): take the photos one
    photos = page.locator("[data-testid=stFileUploader]", has_text="Photos").first
    uploader = photos.locator("input[type=file]")
    uploader.set_input_files(str(assets["samples"] / "classic-daisy.jpg"))
    page.locator("[data-testid=stMetricLabel]", has_text="Top-1").wait_for(timeout=120_000)
    wait_idle(page)
    no_exception(page)
    assert metric(page, "Top-1") == "daisy"
    assert metric(page, "Latency").endswith("ms")
    screenshot(page, "09_classify_daisy")

    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    uploader.set_input_files([str(assets["samples"] / "classic-daisy.jpg"), str(notes)])
    page.locator("[data-testid=stAlertContentError]", has_text="notes.txt").wait_for(timeout=60_000)
    wait_idle(page)
    no_exception(page)
    assert "not an image" in page.locator("[data-testid=stAlertContentError]").first.inner_text()
    assert metric(page, "Top-1") == "daisy"  # the good photo is still classified
    screenshot(page, "10_classify_bad_upload")


def test_every_page_renders(page, screenshot):
    """Every page the router serves opens with neither a traceback nor an error alert."""
    served = page.locator("[data-testid=stSidebarNav] a").all_inner_texts()
    titles = [title for _, title, _ in streamlit_app.PAGES if any(title in t for t in served)]
    assert titles and titles[0] == "Overview"
    for title in [*titles[1:], titles[0]]:  # end where the app starts
        go(page, title, heading=HEADINGS.get(title))
        wait_idle(page, timeout=180)  # Architectures builds Keras models the first time
        no_exception(page)
        no_error_alert(page)
        if title == "Architectures":
            screenshot(page, "11_architectures")


def _wait_for(page, locator, what: str, timeout_s: float = 300) -> None:
    """Poll until `locator` shows, failing with the page's error text if one appears first."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if locator.count():
            return
        errors = page.locator("[data-testid=stAlertContentError]")
        assert errors.count() == 0, errors.first.inner_text()
        page.wait_for_timeout(500)
    raise AssertionError(f"{what} did not show within {timeout_s:.0f} s")


def test_experiments_lr_race_shows_overlaid_curves(page, screenshot):
    go(page, "Experiments")
    no_exception(page)
    page.get_by_label("Training steps").fill("300")
    page.get_by_label("Training steps").press("Enter")
    wait_idle(page)
    button(page, "Start experiment").click()
    main = page.locator("[data-testid=stMain]")
    _wait_for(page, main.locator("[data-testid=stSelectbox]", has_text="Results of"), "the race's results")
    wait_idle(page)
    no_exception(page)
    table = main.locator("[data-testid=stDataFrame]").first
    table.wait_for()
    traces = plot_traces(page)
    assert traces and max(traces) >= 4, traces  # one curve per learning rate, overlaid
    screenshot(page, "12_experiments_lr_race")


def test_convert_and_compare_formats(page, screenshot):
    go(page, "Convert & compare")
    no_exception(page)
    button(page, "Convert").click()
    main = page.locator("[data-testid=stMain]")
    _wait_for(page, main.get_by_text("tflite-int8").nth(1), "the comparison", timeout_s=400)
    _wait_for(page, main.locator("[data-testid=stDataFrame]"), "the comparison table", timeout_s=400)
    wait_idle(page)
    no_exception(page)
    screenshot(page, "13_convert_compare")
    go(page, "CPU vs GPU")
    no_exception(page)
    screenshot(page, "14_cpu_vs_gpu")

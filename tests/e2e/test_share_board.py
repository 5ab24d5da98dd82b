"""Browser: a classmate's run, shared from another lab, is imported on Runs and ranked on the Class board."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.e2e.conftest import FLOWERS, ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def _engine(lab_home, keras_home, *args: str) -> dict:
    """`python -m engine ... --json` in another lab; the last stdout line is its JSON answer."""
    env = dict(os.environ, LAB_HOME=str(lab_home), KERAS_HOME=str(keras_home), TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def classmate_bundle(e2e_dirs, tmp_path_factory):
    """A finished flowers run of "Sam" in a lab of its own, shared as a bundle file."""
    other_lab = tmp_path_factory.mktemp("sams_lab")
    run = _engine(
        other_lab, e2e_dirs["keras_home"], "retrain", "--image_dir", str(FLOWERS),
        "--architecture", "mobilenet_0.25_224", "--how_many_training_steps", "200", "--author", "Sam",
    )  # fmt: skip
    out = tmp_path_factory.mktemp("bundle") / "sams_run.zip"
    shared = _engine(other_lab, e2e_dirs["keras_home"], "share", run["run_id"], "--out", str(out))
    # and one run of our own on the same photos in the served lab, so the board has two to set side by side
    _engine(
        e2e_dirs["lab_home"], e2e_dirs["keras_home"], "retrain", "--image_dir", str(FLOWERS),
        "--architecture", "mobilenet_0.25_224", "--how_many_training_steps", "200", "--author", "Me",
    )  # fmt: skip
    return {"run_id": run["run_id"], "path": out, "accuracy": run["test_accuracy"], "shared": shared}


def test_import_a_classmates_bundle_and_see_it_on_the_class_board(
    browser, app_url, classmate_bundle, screenshot
):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(60_000)
    try:
        tab = context.new_page()
        tab.goto(f"{app_url}/runs")
        tab.get_by_role("heading", name="Runs").first.wait_for()
        tab.get_by_text("Import a run bundle").first.click()  # the expander holding the import box
        tab.locator("input[type=file]").first.set_input_files(str(classmate_bundle["path"]))
        tab.get_by_role("button", name="Import").click()
        tab.get_by_text("Imported as run").first.wait_for(timeout=120_000)
        assert tab.locator("[data-testid=stException]").count() == 0
        assert tab.locator("[data-testid=stAlertContentError]").count() == 0
        screenshot(tab, "runs_imported_bundle")

        tab.goto(f"{app_url}/board")
        tab.get_by_role("heading", name="Class board").first.wait_for()
        # other tests' runs may form other groups: pick the 200 flowers at the default split
        tab.get_by_label("Dataset and split").click()
        flowers = "200 images · split 10% validation / 10% test"
        tab.get_by_role("option").filter(has_text=flowers).first.click()
        # "Your run" lists every run on these photos by author (other tests' runs may rank first)
        tab.get_by_label("Your run").click()
        options = tab.get_by_role("option")
        options.filter(has_text="Sam · mobilenet_0.25_224").first.wait_for(timeout=60_000)
        options.filter(has_text="Me · mobilenet_0.25_224").first.wait_for(timeout=60_000)
        tab.keyboard.press("Escape")
        assert tab.locator("[data-testid=stException]").count() == 0
        assert tab.locator("[data-testid=stAlertContentError]").count() == 0
        screenshot(tab, "class_board")
    finally:
        context.close()

"""Browser: the sidebar's "Your name" survives a new tab (cookie), and /?run=ID lands on the Runs page."""

from __future__ import annotations

import pytest

expect = pytest.importorskip("playwright.sync_api", reason="e2e needs playwright").expect

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_name_is_remembered_by_the_browser_and_a_run_link_opens_runs(browser, app_url, screenshot):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(60_000)
    try:
        tab = context.new_page()
        tab.goto(app_url)
        field = tab.get_by_role("textbox", name="Your name")
        field.fill("Zoë Ng")
        field.press("Enter")
        tab.wait_for_function(
            "() => document.cookie.includes('classifier_lab_name=Zo%C3%AB%20Ng')", timeout=30_000
        )
        cookies = {c["name"]: c for c in context.cookies()}
        assert cookies["classifier_lab_name"]["value"] == "Zo%C3%AB%20Ng"
        assert cookies["classifier_lab_name"]["expires"] > 0  # kept after the browser closes

        second = context.new_page()  # a new Streamlit session in the same browser
        second.goto(f"{app_url}/?run=no-such-run")
        second.wait_for_url("**/runs?run=no-such-run", timeout=60_000)
        second.get_by_role("heading", name="Runs").first.wait_for()
        # the sidebar may still show the home page's first draw for a moment after the switch
        expect(second.get_by_role("textbox", name="Your name")).to_have_value("Zoë Ng", timeout=30_000)
        screenshot(second, "name_remembered_run_link", full=False)
    finally:
        context.close()

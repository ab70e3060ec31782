"""The web explorer in a real browser (Playwright driving a Chromium): compare AMM off vs on.

The Chromium is the first of `chromium`, `chromium-browser`, `google-chrome` on PATH, else Playwright's own
download; without one the test is skipped and says how to get one (CI installs Debian's chromium).
"""

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from test_app import app_server, make_models_dir

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
NO_CHROMIUM = ("no Chromium to drive: none of chromium, chromium-browser, google-chrome is on PATH and Playwright "
               "has not downloaded its own; install one (Debian/Ubuntu: apt-get install chromium) or run "
               "`python -m playwright install chromium`")


def find_chromium(playwright) -> str | None:
    """The path of a Chromium on PATH, else of Playwright's own; None when there is neither."""
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    own = playwright.chromium.executable_path
    return own if Path(own).is_file() else None


def label_badge_shown(page, selector: str) -> bool:
    """Whether gradio's label badge, which sits over an image's top left corner, shows in `selector`."""
    badges = page.locator(f"{selector} [data-testid='block-label']")
    return any((box := badges.nth(i).bounding_box()) and box["height"] > 1 and box["width"] > 1
               for i in range(badges.count()))


@pytest.mark.slow
def test_compare_button_shows_both_image_sets_and_each_tab_its_view_of_the_run(tmp_path):
    with sync_playwright() as playwright:
        chromium = find_chromium(playwright)
        if chromium is None:
            pytest.skip(NO_CHROMIUM)
        with app_server(make_models_dir(tmp_path / "models")) as url:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                page.locator("#model-note").get_by_text("untrained demo model").wait_for(timeout=30_000)
                started_with = page.locator("#amm-field textarea").input_value()  # the page's own AMM blocks
                # the buttons and the status line are in sight without scrolling past the controls
                for part in ("#generate-button", "#compare-button", "#status"):
                    box = page.locator(part).bounding_box()
                    assert box["y"] + box["height"] <= 1000, f"{part} is below the window: {box}"
                page.locator("#num-images input[type=number]").fill("16")
                page.locator("#num-images input[type=number]").press("Enter")
                page.locator("#compare-button").click()
                for gallery in ("#off-gallery", "#on-gallery"):
                    page.locator(f"{gallery} img").first.wait_for(state="visible", timeout=60_000)
                page.locator("#status").get_by_text("AMM on").wait_for(timeout=30_000)
                # all 16 images of each side in sight: no gallery scrolls them away
                for gallery in ("#off-gallery", "#on-gallery"):
                    assert page.locator(f"{gallery} img").count() == 16
                    hidden = page.locator(f"{gallery} .grid-wrap").evaluate(
                        "e => [e.scrollHeight - e.clientHeight, e.scrollWidth - e.clientWidth]")
                    assert max(hidden) <= 1, f"{gallery} hides {hidden} px of its images (height, width)"
                    rows = page.locator(f"{gallery} .grid-container img").evaluate_all(
                        "images => new Set(images.map(i => Math.round(i.getBoundingClientRect().top))).size")
                    assert rows <= 6, f"{gallery} spreads 16 images over {rows} rows"  # 3 columns, not 2
                # a narrower window shrinks the tiles instead of pushing a column out of sight; on a phone, where
                # the columns stack, the buttons come before the controls
                page.set_viewport_size({"width": 1024, "height": 768})
                page.wait_for_timeout(500)
                for gallery in ("#off-gallery", "#on-gallery"):
                    overflow = page.locator(f"{gallery} .grid-wrap").evaluate("e => e.scrollWidth - e.clientWidth")
                    assert overflow <= 1, f"{gallery} at 1024 px hides {overflow} px of its columns"
                for width in (700, 420):  # the columns stack: a small tablet, a phone
                    page.set_viewport_size({"width": width, "height": 900})
                    page.wait_for_timeout(500)
                    end = page.locator("#compare-button").evaluate(
                        "e => e.getBoundingClientRect().bottom + window.scrollY")
                    assert end <= 900, f"{width} px wide, the buttons end {end} px down the page"
                page.set_viewport_size({"width": 1400, "height": 1000})
                # the run's previews and attention are drawn when their tab is opened
                page.get_by_role("tab", name="Denoising").click()
                page.locator("#previews img").first.wait_for(state="visible", timeout=30_000)
                assert not label_badge_shown(page, "#previews")
                page.get_by_role("tab", name="AMM and attention").click()
                page.locator("#attention-plot img").first.wait_for(state="visible", timeout=30_000)
                page.get_by_role("tab", name="Images").click()
                page.screenshot(path=tmp_path / "app.png", full_page=True)
                assert (tmp_path / "app.png").stat().st_size > 10_000
                # with no AMM block there is nothing to compare: the button waits for blocks
                # (typing alone updates it: an Enter here would queue an update of the field that could land after
                # the next typing)
                field = page.locator("#amm-field textarea")
                field.fill("")
                expect(page.locator("#compare-button")).to_be_disabled(timeout=30_000)
                expect(page.locator("#compare-button")).to_contain_text("choose AMM blocks first")
                field.fill("10")
                expect(page.locator("#compare-button")).to_be_enabled(timeout=30_000)
                # leaving the field applies it (tidied, and the toggles follow), as Generate reads it
                field.fill(" 3 ,")
                page.locator("#status").click()
                expect(field).to_have_value("3", timeout=30_000)
                expect(page.get_by_role("checkbox", name="3 · 8×8 · down")).to_be_checked()
                expect(page.get_by_role("checkbox", name="10 · 16×16 · up")).not_to_be_checked()
                page.get_by_role("button", name="as the page started").click()  # and back
                expect(field).to_have_value(started_with, timeout=30_000)
                # the radius slider waits while each block's released radius applies
                radius = page.locator("#radius input[type=number]")
                expect(radius).to_be_disabled()
                page.locator("#released-radius input").uncheck()
                expect(radius).to_be_enabled(timeout=30_000)
                # labels sit above the images, never on them
                for picture in ("#off-gallery", "#on-gallery", "#difference", "#samples"):
                    assert not label_badge_shown(page, picture), picture
                caption = page.locator(".caption").get_by_text("AMM off", exact=True).bounding_box()
                first = page.locator("#off-gallery img").first.bounding_box()
                assert caption["y"] + caption["height"] <= first["y"], (caption, first)
                # a refused run: one message, in the status line, and no error on the images; the next run clears it
                steps = page.locator("#steps input[type=number]")
                steps.fill("0")
                page.locator("#generate-button").click()
                refused = "Refused: steps must lie in 1..250, got 0"
                expect(page.locator("#status")).to_contain_text(refused, timeout=30_000)
                expect(steps).to_have_value("0")  # not clamped to 1
                field.fill("99")
                field.press("Enter")
                page.locator("#status").click()  # leaves the field: applied again
                steps.fill("2")
                page.locator("#generate-button").click()
                expect(page.locator("#status")).to_contain_text("AMM block 99 is out of range", timeout=30_000)
                page.wait_for_timeout(1000)
                assert page.get_by_text("AMM block 99 is out of range").count() == 1  # no toast, no repeat
                assert page.locator(".toast-body").count() == 0
                assert page.get_by_text("Error", exact=True).count() == 0  # no error badge on an image
                field.fill("10")
                page.locator("#status").click()
                page.locator("#generate-button").click()
                expect(page.locator("#status")).to_contain_text("2 steps", timeout=60_000)
                expect(page.locator("#status")).not_to_contain_text("Refused")
                # an EDT is offered the masked passes it can train with, not MDT's token removal
                page.get_by_role("tab", name="Masking (training)").click()
                expect(page.locator("#strategy")).to_contain_text("input-zero")
                expect(page.locator("#strategy")).not_to_contain_text("mdt")
            finally:
                browser.close()

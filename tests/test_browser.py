"""The web explorer in a real browser (Playwright driving Debian's chromium): compare AMM off vs on."""

from playwright.sync_api import sync_playwright

from test_app import app_server, make_models_dir

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_compare_button_shows_both_image_sets(tmp_path):
    with app_server(make_models_dir(tmp_path / "models")) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.locator("#model-note").get_by_text("untrained demo model").wait_for(timeout=30_000)
            page.locator("#compare-button").click()
            for gallery in ("#off-gallery", "#on-gallery"):
                page.locator(f"{gallery} img").first.wait_for(state="visible", timeout=60_000)
            page.locator("#status").get_by_text("AMM on").wait_for(timeout=30_000)
            assert page.locator("#off-gallery img").count() >= 4 and page.locator("#on-gallery img").count() >= 4
            page.screenshot(path=tmp_path / "app.png", full_page=True)
            assert (tmp_path / "app.png").stat().st_size > 10_000
        finally:
            browser.close()

"""A person's view of the web app: Debian's Chromium, headless, driven by Playwright."""

from __future__ import annotations

from playwright.sync_api import sync_playwright

from lab.cluster import cluster
from tests.conftest import REPO

CHROMIUM = "/usr/bin/chromium"
# As root, without a display, and without reaching for Google's services (no internet here).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_add_a_message_see_its_id_look_it_up_and_see_the_cluster(lab):
    output = REPO / "tests" / "output"
    output.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{cluster().url}/cgi-bin/db_app.cgi")
            page.fill("#text", "typed in a real browser")
            page.click("#add")
            new_id = page.text_content("#new-id")
            assert new_id and new_id.isdigit()
            page.fill("#id", new_id)
            page.click("#show")
            assert page.text_content("#found-text") == "typed in a real browser"
            members = cluster().members
            shown = page.text_content("#cluster")
            assert all(name in shown for name in members) and "Leader" in shown
            assert page.text_content("#read-from").split()[0] in members.values()
            page.screenshot(path=str(output / "webapp.png"), full_page=True)
        finally:
            browser.close()
    assert (output / "webapp.png").stat().st_size > 0

"""A person's view of the web app: Debian's Chromium, headless, driven by Playwright."""

from __future__ import annotations

from playwright.sync_api import sync_playwright

from lab.cluster import SYNCHRONOUS_ROLES, cluster, leader, on_web, roles
from lab.workload import wait_healthy
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


def test_the_page_draws_the_hours_charts_and_shows_a_new_leader_without_a_reload(lab):
    """The live part (webapp/static/live.js): the charts from Prometheus draw, and after a
    switchover the cluster table names the new leader by itself, the page never reloaded."""
    wait_healthy(240, settled=True)
    output = REPO / "tests" / "output"
    output.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"{cluster().url}/")
            # Each chart is a uPlot canvas with points in it.
            page.wait_for_function(
                "() => ['writes', 'lag', 'leader'].every(n => window.pgclusterCharts[n])", timeout=30000)
            points = page.evaluate(
                "() => Object.fromEntries(Object.entries(window.pgclusterCharts).map(([n, c]) =>"
                " [n, c.plot.data.slice(1).flat().filter(v => v !== null).length]))")
            assert points["leader"] > 0, points
            assert page.locator("#chart-leader canvas").count() >= 1
            # A marker that a reload would lose.
            page.evaluate("() => { window.notReloaded = true; }")
            old = leader()
            candidate = next(n for n, r in sorted(roles().items()) if r in SYNCHRONOUS_ROLES)
            on_web("patroni.switchover", f"candidate={candidate}", check=True)
            page.wait_for_function(
                "name => [...document.querySelectorAll('#members tr')].some(tr =>"
                " tr.cells[0].textContent === name && tr.cells[2].textContent === 'Leader')",
                arg=candidate, timeout=30000)
            assert page.evaluate("() => window.notReloaded") is True
            shown = page.text_content("#members")
            assert old in shown
            page.screenshot(path=str(output / "webapp-live.png"), full_page=True)
        finally:
            browser.close()
    wait_healthy(240, settled=True)

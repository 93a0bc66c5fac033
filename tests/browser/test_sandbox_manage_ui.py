"""Managing a sandbox and a workspace in real Chromium: rename (with the live character
count), restart, and the workspace's own idle timeout on its settings page."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveServer, Tour
from tests.browser.test_web_ui import START_TIMEOUT_MS, row, sign_up, status_of


@pytest.mark.browser
@pytest.mark.opencode
def test_rename_restart_and_idle_timeout_from_the_browser(
    live_server_factory: Callable[..., LiveServer],
    tour_factory: Callable[..., Tour],
    opencode_bin: str,
) -> None:
    """Rename counts characters live and refuses one too many; Restart takes the sandbox
    through resuming back to running; the settings page shows and sets the idle timeout,
    says the maximum when asked for more, and returns to the server's default."""
    server = live_server_factory(opencode_bin=opencode_bin, idle_timeout="30m")
    tour = tour_factory(server.url, viewport={"width": 1280, "height": 800})
    tour.allow(r"\b400\b")  # more than the maximum idle timeout, asked for on purpose below
    page = tour.page
    sign_up(page, server.url, "alice")
    page.get_by_label("New workspace name").fill("Team A")
    page.get_by_role("button", name="Create workspace").click()
    expect(page.get_by_text("Live", exact=True)).to_be_visible()
    page.get_by_label("Name").fill("demo")
    page.get_by_role("button", name="Create sandbox").click()
    expect(status_of(page, "demo")).to_have_attribute(
        "data-status", "running", timeout=START_TIMEOUT_MS
    )

    page.get_by_role("button", name="Rename demo").click()
    field = page.get_by_label("New name for demo")
    count = page.locator(
        "#rename-sandbox-" + str(row(page, "sandbox", "demo").get_attribute("data-id")) + "-count"
    )
    expect(count).to_have_text("4 / 100")
    field.fill("x" * 101)
    expect(count).to_have_text("101 / 100 characters: 1 too many")
    save = page.get_by_role("form", name="Rename demo").get_by_role("button", name="Save")
    expect(save).to_be_disabled()
    field.fill("  renamed  ")
    expect(count).to_have_text("7 / 100")
    save.click()
    expect(row(page, "sandbox", "renamed")).to_be_visible()
    expect(row(page, "sandbox", "demo")).to_have_count(0)
    tour.shot("1-renamed")

    page.get_by_role("button", name="Restart renamed").click()
    expect(status_of(page, "renamed")).to_have_attribute("data-status", "resuming")
    expect(status_of(page, "renamed")).to_have_attribute(
        "data-status", "running", timeout=START_TIMEOUT_MS
    )
    tour.shot("2-restarted")

    page.get_by_role("link", name="Settings").click()
    shown = page.locator("[data-idle-timeout]")
    expect(shown).to_have_text("30 minutes (the server's default)")
    minutes = page.get_by_label("Minutes without activity")
    minutes.fill("5")
    page.get_by_role("form", name="Idle timeout").get_by_role("button", name="Save").click()
    expect(shown).to_have_text("5 minutes")
    minutes.fill("1441")
    page.get_by_role("form", name="Idle timeout").get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert").filter(has_text="at most 24h")).to_be_visible()
    expect(shown).to_have_text("5 minutes")
    tour.shot("3-idle-timeout")
    page.get_by_role("button", name="Use the server's default").click()
    expect(shown).to_have_text("30 minutes (the server's default)")

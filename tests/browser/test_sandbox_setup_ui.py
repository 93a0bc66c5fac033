"""The create form's "Advanced" disclosure (environment variables, git repository) and the
detail page that lists the variables' names, never their values."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveServer, Tour
from tests.browser.test_web_ui import row, sign_up

SECRET = "browser-secret-value-7d41"


@pytest.mark.browser
def test_advanced_create_sends_variables_and_repository(
    live_server_factory: Callable[..., LiveServer], tour_factory: Callable[..., Tour]
) -> None:
    """Two variables added (one removed again) and a repository: the sandbox is created with
    them, and its detail page shows the remaining name and the repository, not the value."""
    server = live_server_factory()
    tour = tour_factory(server.url, viewport={"width": 1280, "height": 800})
    page = tour.page
    sign_up(page, server.url, "alice")
    page.get_by_label("New workspace name").fill("Team A")
    page.get_by_role("button", name="Create workspace").click()
    expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("configured")
    page.get_by_text("Advanced", exact=True).click()
    page.get_by_role("button", name="Add variable").click()
    page.get_by_label("Variable 1 name").fill("API_TOKEN")
    page.get_by_label("Variable 1 value").fill(SECRET)
    page.get_by_role("button", name="Add variable").click()
    page.get_by_label("Variable 2 name").fill("DROPPED")
    page.get_by_role("button", name="Remove variable 2").click()
    expect(page.get_by_label("Variable 2 name")).to_have_count(0)
    page.get_by_label("Git repository").fill("https://example.com/team/project.git")
    page.get_by_label("Branch or tag").fill("main")
    tour.shot("1-advanced")
    page.get_by_role("button", name="Create sandbox").click()
    expect(row(page, "sandbox", "configured")).to_be_visible()

    page.get_by_role("link", name="configured", exact=True).click()
    expect(page.get_by_role("heading", name="configured")).to_be_visible()
    expect(page.locator("[data-env-names]")).to_have_text("API_TOKEN")
    expect(page.locator("[data-git-url]")).to_have_text(
        "https://example.com/team/project.git (main)"
    )
    tour.shot("2-detail")
    assert SECRET not in page.content()

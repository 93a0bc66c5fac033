"""The account menu's "Sign out everywhere" in real Chromium."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveServer, Tour
from tests.browser.test_web_ui import PASSWORD, sign_in


@pytest.mark.browser
def test_sign_out_everywhere_ends_the_other_devices_session_too(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """Clicking "Sign out everywhere" in the account menu returns this browser to sign-in and
    signs out another device of the same user."""
    with closing(live_server.register("roam")) as laptop, closing(live_server.client()) as phone:
        signed_in = phone.post("/api/auth/login", json={"username": "roam", "password": PASSWORD})
        assert signed_in.status_code == 200, signed_in.text
        tour = tour_factory(live_server.url, viewport={"width": 1280, "height": 800})
        sign_in(tour, "roam")
        page = tour.page
        page.goto(live_server.url + "/workspaces")
        expect(page.get_by_role("heading", name="Workspaces")).to_be_visible()
        page.get_by_text("Account", exact=True).click()
        tour.shot("account-menu")
        page.get_by_role("button", name="Sign out everywhere").click()
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        assert phone.get("/api/auth/me").status_code == 401
        assert laptop.get("/api/auth/me").status_code == 401

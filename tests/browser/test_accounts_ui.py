"""The Account page, the admin's user controls and name limits, in real Chromium."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing

import httpx
import psycopg
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveServer, Tour
from tests.browser.test_web_ui import PASSWORD, api_workspace, row, sign_in


def login(server: LiveServer, username: str, password: str = PASSWORD) -> httpx.Client:
    """Another device signed in as `username` (asserted)."""
    client = server.client()
    signed_in = client.post("/api/auth/login", json={"username": username, "password": password})
    assert signed_in.status_code == 200, signed_in.text
    return client


@pytest.mark.browser
def test_account_page_changes_the_password_ends_a_session_and_signs_out_everywhere(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """On the Account page the new password is checked as it is typed (length, username) and by
    the server (common passwords); a change ends the other devices; "End" ends one session;
    "Sign out everywhere" ends the rest and returns to sign-in."""
    live_server.register("accountant").close()
    tour = tour_factory(live_server.url, viewport={"width": 1280, "height": 800})
    # The common password, on purpose: the server's 400 (and the console's note of it).
    tour.allow(r"HTTP 400: POST .*/api/auth/password|status of 400 .*/api/auth/password")
    with closing(login(live_server, "accountant")) as phone:
        sign_in(tour, "accountant")
        page = tour.page
        page.goto(live_server.url + "/workspaces")
        page.get_by_role("link", name="Your account").click()
        expect(page.get_by_role("heading", name="Your account")).to_be_visible()
        sessions = page.locator("[data-session]")
        expect(sessions).to_have_count(3)  # registration's, the phone's and this one
        expect(page.locator('[data-current="true"]')).to_contain_text("this session")

        page.get_by_label("Current password").fill(PASSWORD)
        page.get_by_label("New password").fill("short")
        expect(page.get_by_text("At least 8 characters (5 so far).")).to_be_visible()
        page.get_by_label("New password").fill("Accountant")
        expect(page.get_by_text("Not your username.")).to_be_visible()
        expect(page.get_by_role("button", name="Change password")).to_be_disabled()
        page.get_by_label("New password").fill("password123")
        page.get_by_role("button", name="Change password").click()
        form = page.get_by_role("form", name="Change password")
        expect(form.get_by_role("alert")).to_contain_text("most common")
        page.get_by_label("New password").fill("ledger-balance-77")
        page.get_by_role("button", name="Change password").click()
        expect(page.get_by_text("Password changed.")).to_be_visible()
        assert phone.get("/api/auth/me").status_code == 401
        expect(sessions).to_have_count(1)
        tour.shot("password-changed")

    new = "ledger-balance-77"
    with (
        closing(login(live_server, "accountant", new)) as laptop,
        closing(login(live_server, "accountant", new)) as tablet,
    ):
        page.reload()
        expect(sessions).to_have_count(3)
        ids = {r.get_attribute("data-session") for r in sessions.all()}
        laptop_id = next(s["id"] for s in laptop.get("/api/auth/sessions").json() if s["current"])
        assert laptop_id in ids
        page.locator(f'[data-session="{laptop_id}"]').get_by_role("button").click()
        expect(sessions).to_have_count(2)
        assert laptop.get("/api/auth/me").status_code == 401
        assert tablet.get("/api/auth/me").status_code == 200
        tour.shot("session-ended")
        page.get_by_role("button", name="Sign out everywhere").click()
        dialog = page.get_by_role("dialog", name="Sign out everywhere")
        dialog.get_by_role("button", name="Sign out everywhere").click()
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        assert tablet.get("/api/auth/me").status_code == 401


@pytest.mark.browser
def test_admin_disables_enables_and_resets_a_password(
    live_server: LiveServer, tour_factory: Callable[..., Tour], db_url: str
) -> None:
    """On the admin page: disabling a user signs them out and refuses their sign-in, enabling
    lets them back, a generated password is shown once and works; every sandbox is listed."""
    with closing(live_server.register("root")), closing(live_server.register("plain")) as plain:
        wid = api_workspace(plain, "Plain ws")
        plain_id = plain.get("/api/auth/me").json()["id"]
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO sandboxes (id, workspace_id, name, type, status, created_by,"
                " agent_secret)"
                " VALUES ('plainbox', %s, 'plain-box', 'opencode', 'paused', %s, 'x')",
                (wid, plain_id),
            )
        tour = tour_factory(live_server.url, viewport={"width": 1280, "height": 800})
        sign_in(tour, "root")
        page = tour.page
        page.goto(live_server.url + "/admin")
        box = row(page, "admin-sandbox", "plain-box")
        expect(box).to_contain_text("Plain ws")
        expect(box).to_contain_text("plain")
        expect(box).to_contain_text("Paused")

        page.get_by_role("button", name="Disable plain").click()
        page.get_by_role("dialog", name="Disable user").get_by_role(
            "button", name="Disable user"
        ).click()
        expect(row(page, "user", "plain")).to_have_attribute("data-disabled", "true")
        assert plain.get("/api/auth/me").status_code == 401
        with live_server.client() as again:
            refused = again.post(
                "/api/auth/login", json={"username": "plain", "password": PASSWORD}
            )
            assert refused.status_code == 403
        tour.shot("disabled")
        page.get_by_role("button", name="Enable plain").click()
        expect(row(page, "user", "plain")).to_have_attribute("data-disabled", "false")
        login(live_server, "plain").close()

        page.get_by_role("button", name="Reset the password of plain").click()
        page.get_by_role("button", name="Generate one").click()
        generated = page.locator("[data-generated-password]")
        expect(generated).to_be_visible()
        tour.shot("generated-password")
        login(live_server, "plain", generated.inner_text().strip()).close()
        with live_server.client() as old:
            old_password = old.post(
                "/api/auth/login", json={"username": "plain", "password": PASSWORD}
            )
            assert old_password.status_code == 401


@pytest.mark.browser
def test_names_show_a_counter_and_duplicates_a_clear_message(
    live_server_factory: Callable[..., LiveServer], tour_factory: Callable[..., Tour]
) -> None:
    """Name fields count characters against the API's 100 instead of cutting, and refuse to
    submit past it; a duplicate workspace or sandbox name shows the server's message."""
    server = live_server_factory(opencode_bin="/nonexistent/opencode")
    with closing(server.register("namer")) as namer:
        wid = api_workspace(namer, "Taken")
        made = namer.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "box"})
        assert made.status_code == 201, made.text
    tour = tour_factory(server.url, viewport={"width": 1280, "height": 800})
    tour.allow(r"HTTP 409: POST |status of 409 ")  # the duplicates, on purpose
    sign_in(tour, "namer")
    page = tour.page
    page.goto(server.url + "/workspaces")
    field = page.get_by_label("New workspace name")
    field.fill("x" * 101)
    assert field.input_value() == "x" * 101  # nothing cut silently
    expect(page.locator("#new-workspace-count")).to_have_text("101 / 100 characters: 1 too many")
    expect(page.get_by_role("button", name="Create workspace")).to_be_disabled()
    tour.shot("counter")
    field.fill("  taken ")
    expect(page.locator("#new-workspace-count")).to_have_text("5 / 100")
    page.get_by_role("button", name="Create workspace").click()
    alert = page.get_by_role("form", name="New workspace").get_by_role("alert")
    expect(alert).to_have_text('you already have a workspace named "taken"')
    tour.shot("duplicate-workspace")

    page.goto(f"{server.url}/w/{wid}")
    name = page.get_by_label("Name", exact=True)
    name.fill("b" * 120)
    expect(page.locator("#sandbox-name-count")).to_contain_text("20 too many")
    expect(page.get_by_role("button", name="Create sandbox")).to_be_disabled()
    name.fill("BOX")
    page.get_by_role("button", name="Create sandbox").click()
    alert = page.get_by_role("form", name="New sandbox").get_by_role("alert")
    expect(alert).to_have_text('this workspace already has a sandbox named "BOX"')

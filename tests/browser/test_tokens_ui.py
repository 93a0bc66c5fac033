"""The Tokens page and the command line's approval page in real Chromium."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveServer, Tour
from tests.browser.test_first_hour import PHONE, phone_check
from tests.browser.test_web_ui import api_workspace, sign_in


@pytest.mark.browser
def test_create_a_token_copy_it_once_and_revoke_it(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """On the Tokens page a read token limited to one workspace is created and shown once with
    a copy button; it works as a Bearer token (only that workspace, only reading); after Done
    it is never shown again; Revoke stops it at once."""
    with closing(live_server.register("tokie")) as owner:
        wid = api_workspace(owner, "Team")
        api_workspace(owner, "Other")
    tour = tour_factory(live_server.url, viewport={"width": 1280, "height": 800})
    sign_in(tour, "tokie")
    page = tour.page
    page.goto(live_server.url + "/workspaces")
    page.get_by_role("link", name="Tokens").click()
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    form = page.get_by_role("form", name="New token")
    form.get_by_label("Name").fill("nightly job")
    form.get_by_label("Scope").select_option("read")
    form.get_by_label("Workspace").select_option(label="Only Team")
    form.get_by_label("Expires after (days)").fill("7")
    form.get_by_role("button", name="Create token").click()
    shown = page.locator("code[data-code=token]")
    expect(shown).to_be_visible()
    token = shown.inner_text()
    assert token.startswith("ast_")
    expect(page.get_by_role("button", name="Copy token")).to_be_visible()
    tour.shot("token-created")
    with httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}
    ) as cli:
        assert [w["id"] for w in cli.get("/api/workspaces").json()] == [wid]
        assert cli.post("/api/workspaces", json={"name": "no"}).status_code == 403
    page.get_by_role("button", name="Done").click()
    expect(page.locator("code[data-code=token]")).to_have_count(0)
    assert token not in page.content()
    mine = page.get_by_role("table", name="Your tokens")
    row = mine.locator("tr[data-token='nightly job']")
    expect(row).to_contain_text("read")
    expect(row).to_contain_text("Team")
    row.get_by_role("button", name="Revoke nightly job").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    expect(mine.locator("tr[data-token='nightly job'][data-state=revoked]")).to_be_visible()
    with httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}
    ) as cli:
        assert cli.get("/api/auth/me").status_code == 401


@pytest.mark.browser
def test_the_command_line_sign_in_is_approved_on_its_page(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """The link `agentserver login` prints shows the signed-in person what is asked (name,
    scope); Approve hands the command line its token on its next poll."""
    live_server.register("approver").close()
    with closing(httpx.Client(base_url=live_server.url, timeout=30)) as cli:
        started = cli.post("/api/cli-login", json={"name": "laptop CLI", "scope": "read"})
        assert started.status_code == 201, started.text
        login = started.json()
        assert (
            cli.post("/api/cli-login/poll", json={"request": login["request"]}).status_code == 202
        )
        tour = tour_factory(live_server.url, viewport={"width": 1280, "height": 800})
        sign_in(tour, "approver")
        page = tour.page
        page.goto(login["approveUrl"])
        expect(page.get_by_role("heading", name="Command-line sign-in")).to_be_visible()
        expect(page.get_by_text("laptop CLI")).to_be_visible()
        expect(page.get_by_text("read (look only)")).to_be_visible()
        tour.shot("cli-login")
        page.get_by_role("button", name="Approve").click()
        expect(page.get_by_text("Approved.")).to_be_visible()
        polled = cli.post("/api/cli-login/poll", json={"request": login["request"]})
        assert polled.status_code == 200, polled.text
        assert polled.json()["name"] == "laptop CLI"


@pytest.mark.browser
def test_the_tokens_page_fits_a_phone(
    live_server: LiveServer, tour_factory: Callable[..., Tour], tmp_path: Path
) -> None:
    """At 390 by 844 the Tokens page, with a token listed, is no wider than the screen."""
    with closing(live_server.register("pocket-user-with-a-long-name")) as owner:
        wid = api_workspace(owner, "A workspace with a long name for a phone")
        made = owner.post(
            "/api/tokens", json={"name": "a token with a rather long name", "workspaceId": wid}
        )
        assert made.status_code == 201, made.text
    tour = tour_factory(
        live_server.url, viewport=PHONE, is_mobile=True, has_touch=True, label="phone"
    )
    sign_in(tour, "pocket-user-with-a-long-name")
    tour.page.goto(live_server.url + "/tokens")
    # The owner sees the token twice: in "Your tokens" and in the workspace's list.
    mine = tour.page.get_by_role("table", name="Your tokens")
    expect(mine.locator("tr[data-token='a token with a rather long name']")).to_be_visible()
    phone_check(tour.page, tmp_path, "tokens")

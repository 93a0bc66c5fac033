"""Private sandboxes in real Chromium: the create form's checkbox, the badge, and the controls
each member may (or may not) use, with the workspace's setting on the members page."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveServer, Tour
from tests.browser.test_web_ui import add_member, api_workspace, row, sign_in

VIEWPORT = {"width": 1280, "height": 800}


@pytest.mark.browser
def test_private_checkbox_badge_and_controls_follow_who_may(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """A developer creates a private sandbox with the checkbox and sees its badge and their
    own controls; another developer sees the badge but no control on it until the owner
    lets members manage all sandboxes (a setting only the owner is shown)."""
    owner = live_server.register("olivia")
    live_server.register("dana").close()
    live_server.register("olly").close()
    wid = api_workspace(owner, "Crew")
    add_member(owner, wid, "dana", "developer")
    add_member(owner, wid, "olly", "developer")

    dana = tour_factory(live_server.url, label="creator", viewport=VIEWPORT)
    sign_in(dana, "dana")
    page = dana.page
    page.goto(f"{live_server.url}/w/{wid}")
    main = page.locator("main")
    main.get_by_label("Name").fill("secret-box")
    main.get_by_label("Private").check()
    main.get_by_role("button", name="Create sandbox").click()
    mine = row(page, "sandbox", "secret-box")
    expect(mine.locator(".badge.private")).to_have_text("Private")
    expect(main.get_by_label("Private")).not_to_be_checked()  # the form starts over
    expect(main.get_by_role("button", name="Make shared secret-box")).to_be_visible()
    expect(main.get_by_role("button", name="Delete secret-box")).to_be_visible()
    dana.shot("creator-list")
    with live_server.client() as check:
        check.post("/api/auth/login", json={"username": "olivia", "password": "correct-horse"})
        listed = check.get(f"/api/workspaces/{wid}/sandboxes").json()
    assert [(s["name"], s["private"]) for s in listed] == [("secret-box", True)]

    olly = tour_factory(live_server.url, label="other", viewport=VIEWPORT)
    sign_in(olly, "olly")
    page = olly.page
    page.goto(f"{live_server.url}/w/{wid}")
    main = page.locator("main")
    theirs = row(page, "sandbox", "secret-box")
    expect(theirs.locator(".badge.private")).to_have_text("Private")
    expect(main.get_by_label("Private")).to_be_visible()  # they may make their own private
    expect(theirs.get_by_role("button")).to_have_count(0)
    expect(theirs.get_by_role("link", name="Open secret-box")).to_have_count(0)
    olly.shot("other-list")
    theirs.get_by_role("link", name="secret-box", exact=True).click()
    expect(page.get_by_role("heading", name="secret-box")).to_be_visible()
    expect(page.get_by_role("heading", name="Logs")).to_have_count(0)
    expect(main.get_by_role("button", name=re.compile("secret-box$"))).to_have_count(0)
    page.get_by_role("link", name="Members", exact=True).click()
    expect(row(page, "member", "dana")).to_be_visible()
    expect(page.locator("#members-manage-all")).to_have_count(0)

    boss = tour_factory(live_server.url, label="owner", viewport=VIEWPORT)
    sign_in(boss, "olivia")
    boss.page.goto(f"{live_server.url}/w/{wid}/members")
    setting = boss.page.locator("#members-manage-all")
    expect(setting).not_to_be_checked()
    setting.check()
    expect(setting).to_be_checked()
    boss.shot("setting-on")
    boss.page.get_by_role("link", name="Sandboxes", exact=True).click()
    expect(boss.page.get_by_role("button", name="Make shared secret-box")).to_be_visible()

    page.reload()  # the workspace list (and its setting) is read when the app starts
    page.get_by_role("link", name="Sandboxes", exact=True).click()
    theirs = row(page, "sandbox", "secret-box")
    expect(theirs.get_by_role("button", name="Delete secret-box")).to_be_visible()
    expect(theirs.get_by_role("button", name=re.compile("^Make "))).to_have_count(0)
    owner.close()

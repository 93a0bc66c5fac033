"""Pages that never strand a person (issue 21): refusal pages, a deleted workspace's tab, the
guest's read-only notice, OpenClaw only where it runs, why a sandbox was paused, the role
table, and every main screen at phone width."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import expect

from agentserver.auth.permissions import MATRIX
from agentserver.auth.tokens import new_id
from agentserver.models import Role
from tests.browser.conftest import LiveServer, Tour
from tests.browser.test_web_ui import (
    add_member,
    api_workspace,
    row,
    seed_statuses_and_usage,
    sign_in,
    sign_up,
)

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


def insert_sandbox(
    db_url: str,
    workspace_id: str,
    name: str,
    status: str,
    created_by: str | None = None,
    **pause: Any,
) -> str:
    """A sandbox row with no process behind it (the UI and the proxy only read the row)."""
    sandbox_id = new_id()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sandboxes (id, workspace_id, name, type, status, agent_secret,"
            " paused_reason, paused_by, paused_idle_seconds, created_by)"
            " VALUES (%s, %s, %s, 'opencode', %s, 'x', %s, %s, %s, %s)",
            (
                sandbox_id,
                workspace_id,
                name,
                status,
                pause.get("reason"),
                pause.get("by"),
                pause.get("idle"),
                created_by,
            ),
        )
    return sandbox_id


def user_id(server: LiveServer, username: str) -> str:
    with server.client() as client:
        client.post("/api/auth/login", json={"username": username, "password": "correct-horse"})
        return str(client.get("/api/auth/me").json()["id"])


def expect_refusal_page(page: Any, tour: Tour, step: str) -> None:
    """The styled page (not JSON), with its way back to the workspace list, which works."""
    expect(page.get_by_role("heading", name="Sandbox not found")).to_be_visible()
    assert "application/json" not in page.evaluate("document.contentType")
    assert page.evaluate("getComputedStyle(document.body).display") == "grid"  # styled
    tour.shot(step, page)
    page.get_by_role("link", name="Back to your workspaces").click()
    expect(page.get_by_role("heading", name="Workspaces")).to_be_visible()


@pytest.mark.browser
def test_refusal_pages_for_a_deleted_sandbox_and_a_non_member(
    live_server: LiveServer, tour_factory: Callable[..., Tour], db_url: str
) -> None:
    """Opening a deleted sandbox (from the main host and on its own host) or one of another
    team shows a styled page whose link leads back to the workspace list."""
    with closing(live_server.register("owner")) as owner:
        wid = api_workspace(owner, "Team")
    live_server.register("eve").close()
    deleted = insert_sandbox(db_url, wid, "gone-box", "running")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM sandboxes WHERE id = %s", (deleted,))
    hidden = insert_sandbox(db_url, wid, "their-box", "running")

    tour = tour_factory(live_server.url, viewport=DESKTOP)
    tour.allow(r"404.*/api/sandboxes/\w+/open")
    sign_in(tour, "owner")
    page = tour.page
    page.goto(f"{live_server.url}/api/sandboxes/{deleted}/open")
    expect_refusal_page(page, tour, "deleted-main-host")
    page.goto(f"http://oc-{deleted}.localhost:{live_server.port}/")
    expect_refusal_page(page, tour, "deleted-own-host")

    stranger = tour_factory(live_server.url, label="stranger", viewport=DESKTOP)
    stranger.allow(r"404.*/api/sandboxes/\w+/open")
    sign_in(stranger, "eve")
    stranger.page.goto(f"{live_server.url}/api/sandboxes/{hidden}/open")
    expect_refusal_page(stranger.page, stranger, "non-member")


@pytest.mark.browser
def test_a_tab_on_a_deleted_workspace_says_so_once(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """Deleting the workspace a tab shows: the tab says so once, offers the workspace list, and
    stops asking the server about it; a reload says it is not there."""
    with closing(live_server.register("dana")) as dana:
        wid = api_workspace(dana, "Doomed")
        api_workspace(dana, "Kept")
        tour = tour_factory(live_server.url, viewport=DESKTOP)
        # The event stream's reconnect and the list reload each meet the deleted workspace once.
        tour.allow(rf"404.*/api/workspaces/{wid}/(events|sandboxes)")
        sign_in(tour, "dana")
        page = tour.page
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url) if f"/workspaces/{wid}" in r.url else None)
        page.goto(f"{live_server.url}/w/{wid}")
        expect(page.get_by_text("Live", exact=True)).to_be_visible()
        assert dana.delete(f"/api/workspaces/{wid}").status_code == 204

    expect(page.get_by_role("heading", name="Workspace deleted")).to_be_visible()
    expect(page.locator("main").get_by_role("alert")).to_have_count(1)
    tour.shot("deleted")
    seen = len(asked)
    # Longer than the stream's retry interval (5 s): nothing more is asked once it said so.
    page.wait_for_timeout(6500)
    assert len(asked) == seen, asked[seen:]
    expect(page.get_by_role("heading", name="Workspace deleted")).to_have_count(1)
    page.reload()
    expect(page.get_by_role("heading", name="Workspace not found")).to_be_visible()
    page.get_by_role("link", name="See your workspaces").click()
    expect(row(page, "workspace", "Kept")).to_be_visible()
    expect(row(page, "workspace", "Doomed")).to_have_count(0)


@pytest.mark.browser
def test_a_guest_sees_a_read_only_notice_and_no_forbidden_control(
    live_server: LiveServer, tour_factory: Callable[..., Tour], db_url: str
) -> None:
    """On every workspace screen a guest reads a read-only notice and finds no control the
    server would refuse; a developer on the same screens has them (and no notice)."""
    with closing(live_server.register("olga")) as owner:
        wid = api_workspace(owner, "Shared")
        live_server.register("gina").close()
        live_server.register("dev").close()
        add_member(owner, wid, "gina", "guest")
        dev_id = add_member(owner, wid, "dev", "developer")
    # The developer's own sandbox: developers manage their own (auth/permissions.py).
    insert_sandbox(db_url, wid, "nap-box", "paused", created_by=dev_id)
    forbidden = [
        ("button", "Create sandbox"),
        ("button", "Connect a local agent"),
        ("button", "Resume nap-box"),
        ("button", "Delete nap-box"),
        ("button", "Add member"),
        ("button", re.compile("^Remove ")),
        ("combobox", re.compile("^Role of ")),
    ]
    for who in ("gina", "dev"):
        tour = tour_factory(live_server.url, label=who, viewport=DESKTOP)
        sign_in(tour, who)
        page = tour.page
        main = page.locator("main")
        notice = main.get_by_role("note").filter(has_text="Read-only")
        # In-app links, as a person moves (a full reload would cut the screen's calls short).
        screens = {
            "sandboxes": (None, page.get_by_text("Live", exact=True)),
            "detail": ("nap-box", page.get_by_role("heading", name="Details")),
            "members": ("Members", row(page, "member", "olga")),
            "usage": ("Usage", page.get_by_text("No LLM calls yet", exact=False)),
        }
        page.goto(f"{live_server.url}/w/{wid}")
        for screen, (link, loaded) in screens.items():
            if link:
                page.get_by_role("link", name=link, exact=True).click()
            expect(loaded).to_be_visible()
            if who == "gina":
                expect(notice).to_be_visible()
                expect(notice).to_contain_text("guest")
                for role, name in forbidden:
                    expect(main.get_by_role(role, name=name)).to_have_count(0)
                tour.shot(screen)
            else:
                expect(notice).to_have_count(0)
        if who == "dev":  # the same screens offer a developer what a guest may not use
            page.get_by_role("link", name="Sandboxes", exact=True).click()
            expect(main.get_by_role("button", name="Create sandbox")).to_be_visible()
            expect(main.get_by_role("button", name="Resume nap-box")).to_be_visible()


@pytest.mark.browser
def test_openclaw_is_offered_only_where_it_can_run(
    live_server_factory: Callable[..., LiveServer], tour_factory: Callable[..., Tour]
) -> None:
    """Without an OpenClaw binary the create form offers only OpenCode; with one, both."""
    for openclaw_bin, offered in (("", ["OpenCode"]), ("/usr/bin/true", ["OpenCode", "OpenClaw"])):
        server = live_server_factory(openclaw_bin=openclaw_bin)
        name = f"otto{len(offered)}"  # the servers share one database
        with closing(server.register(name)) as otto:
            wid = api_workspace(otto, "Claws")
            types = otto.get("/api/auth/config").json()["sandboxTypes"]
        assert types == [name.lower() for name in offered]
        tour = tour_factory(server.url, label=f"offered-{len(offered)}", viewport=DESKTOP)
        sign_in(tour, name)
        tour.page.goto(f"{server.url}/w/{wid}")
        options = tour.page.get_by_label("Type").locator("option")
        expect(options).to_have_text(offered)
        tour.shot("create-form")


@pytest.mark.browser
def test_the_wake_page_and_the_detail_say_why_it_was_paused(
    live_server: LiveServer, tour_factory: Callable[..., Tour], db_url: str
) -> None:
    """A sandbox paused while idle says after how long, one a member paused says who: in the
    sandbox's detail and on the page that wakes it."""
    with closing(live_server.register("wanda")) as owner:
        wid = api_workspace(owner, "Sleepers")
    wanda = user_id(live_server, "wanda")
    idle = insert_sandbox(db_url, wid, "idle-box", "paused", reason="idle", idle=1800)
    by_user = insert_sandbox(db_url, wid, "held-box", "paused", reason="user", by=wanda)
    cases = {
        idle: "Paused after 30 minutes without activity",
        by_user: "Paused by wanda",
    }
    tour = tour_factory(live_server.url, viewport=DESKTOP)
    sign_in(tour, "wanda")
    page = tour.page
    for sandbox_id, words in cases.items():
        page.goto(f"{live_server.url}/w/{wid}/sandboxes/{sandbox_id}")
        expect(page.locator("[data-pause-reason]")).to_have_text(words)
        tour.shot(f"detail-{sandbox_id[:4]}")
    for sandbox_id, words in cases.items():
        wake = tour.new_page()
        answer = wake.goto(f"{live_server.url}/api/sandboxes/{sandbox_id}/open")
        assert answer is not None
        assert answer.status == 503
        assert f"It was {words[0].lower()}{words[1:]}." in answer.text()
        assert wake.url.startswith(f"http://oc-{sandbox_id}.localhost:{live_server.port}/")
        tour.shot(f"wake-{sandbox_id[:4]}", wake)
        wake.close()


@pytest.mark.browser
def test_members_page_explains_roles_and_confirms_a_role_change(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """The members page shows what each role may do (the server's matrix), and changing a role
    asks first: cancelling keeps it, confirming changes it."""
    with closing(live_server.register("olivia")) as owner:
        wid = api_workspace(owner, "Crew")
        live_server.register("dev").close()
        add_member(owner, wid, "dev", "developer")
        tour = tour_factory(live_server.url, viewport=DESKTOP)
        sign_in(tour, "olivia")
        page = tour.page
        page.goto(f"{live_server.url}/w/{wid}/members")
        main = page.locator("main")
        expect(row(page, "member", "dev")).to_be_visible()
        page.get_by_text("What each role may do").click()
        table = page.get_by_role("table", name="What each role may do")
        expect(table).to_be_visible()
        roles = [Role.OWNER, Role.MAINTAINER, Role.DEVELOPER, Role.GUEST]
        expect(table.locator("thead th")).to_have_text(["Action", *[r.value for r in roles]])
        expect(table.locator("tbody tr")).to_have_count(len(MATRIX))
        for action, allowed in MATRIX.items():
            cells = table.locator(f'tr[data-action="{action.value}"] td')
            expect(cells).to_have_text(["✓" if r in allowed else "—" for r in roles])
        tour.shot("role-table")

        main.get_by_label("Role of dev").select_option("maintainer")
        dialog = page.get_by_role("dialog", name="Change role")
        expect(dialog).to_contain_text("Make dev a maintainer instead of a developer?")
        tour.shot("confirm")
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_have_count(0)
        expect(main.get_by_label("Role of dev")).to_have_value("developer")
        members = owner.get(f"/api/workspaces/{wid}/members").json()
        assert {m["username"]: m["role"] for m in members}["dev"] == "developer"

        main.get_by_label("Role of dev").select_option("maintainer")
        page.get_by_role("dialog").get_by_role("button", name="Change role").click()
        expect(main.get_by_label("Role of dev")).to_have_value("maintainer")
        members = owner.get(f"/api/workspaces/{wid}/members").json()
        assert {m["username"]: m["role"] for m in members}["dev"] == "maintainer"


OVERFLOW = """() => {
  const wide = [...document.querySelectorAll('table, .tabs, nav, .topbar')]
    .filter((el) => el.scrollWidth > el.clientWidth + 1
      || el.getBoundingClientRect().right > innerWidth + 1)
    .map((el) => `${el.tagName}.${el.className} ${el.scrollWidth}/${el.clientWidth}`);
  return { page: document.documentElement.scrollWidth, wide };
}"""


def phone_check(page: Any, tmp_path: Path, screen: str) -> None:
    """Nothing on the screen is wider than the phone; a screenshot goes to the test's tmp dir."""
    found = page.evaluate(OVERFLOW)
    assert found["page"] <= PHONE["width"], f"{screen}: page is {found['page']} px wide"
    assert found["wide"] == [], f"{screen}: overflows sideways: {found['wide']}"
    page.screenshot(path=str(tmp_path / f"phone-{screen}.png"), full_page=True)


@pytest.mark.browser
def test_every_main_screen_fits_a_phone(
    live_server: LiveServer, tour_factory: Callable[..., Tour], db_url: str, tmp_path: Path
) -> None:
    """At 390 by 844 no page, table or tab bar is wider than the screen: sign-in, workspaces,
    sandboxes, sandbox detail, members (with the role table open), usage and admin."""
    phone = {"viewport": PHONE, "is_mobile": True, "has_touch": True}
    tour = tour_factory(live_server.url, **phone)
    page = tour.page
    sign_up(page, live_server.url, "phoebe-with-a-rather-long-name")
    with closing(live_server.client()) as owner:
        login = {"username": "phoebe-with-a-rather-long-name", "password": "correct-horse"}
        assert owner.post("/api/auth/login", json=login).status_code == 200
        wid = api_workspace(owner, "A workspace with a long name for a phone")
        me = owner.get("/api/auth/me").json()["id"]
        live_server.register("member-number-two").close()
        add_member(owner, wid, "member-number-two", "maintainer")
    seed_statuses_and_usage(db_url, wid, me)
    paused = row(page, "sandbox", "paused-box")

    page.goto(f"{live_server.url}/workspaces")
    expect(page.get_by_role("heading", name="Workspaces")).to_be_visible()
    phone_check(page, tmp_path, "workspaces")
    page.goto(f"{live_server.url}/w/{wid}")
    expect(paused).to_be_visible()
    phone_check(page, tmp_path, "sandboxes")
    page.get_by_role("link", name="paused-box", exact=True).click()
    expect(page.get_by_text("Input tokens")).to_be_visible()
    phone_check(page, tmp_path, "sandbox-detail")
    page.get_by_role("link", name="Members").click()
    expect(row(page, "member", "member-number-two")).to_be_visible()
    page.get_by_text("What each role may do").click()
    expect(page.get_by_role("table", name="What each role may do")).to_be_visible()
    phone_check(page, tmp_path, "members")
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_role("table").first).to_be_visible()
    phone_check(page, tmp_path, "usage")
    page.get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", name="Users")).to_be_visible()
    expect(page.get_by_role("table").first).to_be_visible()
    phone_check(page, tmp_path, "admin")
    page.goto(f"{live_server.url}/w/{wid}/settings")
    expect(page.get_by_role("heading", name="Idle timeout")).to_be_visible()
    phone_check(page, tmp_path, "workspace-settings")
    page.goto(f"{live_server.url}/account")
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    expect(page.get_by_role("heading", name="Change password")).to_be_visible()
    phone_check(page, tmp_path, "account")

    signin = tour_factory(live_server.url, label="signin", **phone)
    signin.page.goto(live_server.url + "/")
    expect(signin.page.get_by_role("button", name="Sign in")).to_be_visible()
    phone_check(signin.page, tmp_path, "sign-in")
    assert len(list(tmp_path.glob("phone-*.png"))) == 9

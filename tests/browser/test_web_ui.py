"""The web UI in real Chromium: sign-in, workspaces, members, sandboxes, agent dialog, admin."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import expect

from agentserver.auth.tokens import new_id
from tests.browser.conftest import LiveServer, Tour
from tests.conftest import REPO

PASSWORD = "correct-horse"
START_TIMEOUT_MS = 90_000  # opencode's first start on a busy 2-core machine


def require_route(server: LiveServer, method: str, path: str, what: str) -> None:
    """Skip when the server has no such route yet (a feature another issue delivers)."""
    with server.client() as client:
        response = client.request(method, path)
    if response.status_code in (404, 405) and response.json()["error"]["message"] in (
        "no such route",
        "method not allowed on this route",
    ):
        pytest.skip(f"{what} is not on this server yet ({method} {path})")


def sign_up(page: Any, url: str, username: str) -> None:
    """Register through the sign-in screen (on an empty server: its first-visit admin form)."""
    page.goto(url + "/")
    create_one = page.get_by_role("button", name="Create one")
    setup = page.get_by_role("heading", name="Create the admin account")
    expect(create_one.or_(setup)).to_be_visible()
    if create_one.is_visible():
        create_one.click()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name=re.compile(r"^Create (admin )?account$")).click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def sign_in(tour: Tour, username: str) -> None:
    """Sign the tour's browser in through the API (shares the context's cookie jar)."""
    response = tour.context.request.post(
        tour.origin + "/api/auth/login",
        data={"username": username, "password": PASSWORD},
        headers={"Origin": tour.origin},
    )
    assert response.status == 200, response.text()


def api_workspace(client: httpx.Client, name: str) -> str:
    response = client.post("/api/workspaces", json={"name": name})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def add_member(client: httpx.Client, workspace_id: str, username: str, role: str) -> str:
    response = client.post(
        f"/api/workspaces/{workspace_id}/members", json={"username": username, "role": role}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["userId"])


def row(page: Any, attribute: str, name: str) -> Any:
    return page.locator(f'[data-{attribute}="{name}"]')


def status_of(page: Any, name: str) -> Any:
    return row(page, "sandbox", name).locator("[data-status]")


@pytest.mark.browser
@pytest.mark.opencode
def test_sandbox_lifecycle_from_the_browser(
    live_server_factory: Callable[..., LiveServer],
    tour_factory: Callable[..., Tour],
    opencode_bin: str,
) -> None:
    """Sign up, make a workspace and sandbox; it turns running live; pause, resume, open, delete."""
    server = live_server_factory(opencode_bin=opencode_bin)
    require_route(server, "GET", "/api/workspaces/x/sandboxes", "the sandbox lifecycle API")
    require_route(server, "GET", "/api/sandboxes/x/open", "the subdomain proxy's open route")
    tour = tour_factory(server.url, viewport={"width": 1280, "height": 800})
    page = tour.page
    sign_up(page, server.url, "alice")
    page.get_by_label("New workspace name").fill("Team A")
    page.get_by_role("button", name="Create workspace").click()
    expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
    expect(page.get_by_text("Live", exact=True)).to_be_visible()
    page.get_by_label("Name").fill("demo")
    page.get_by_role("button", name="Create sandbox").click()
    expect(row(page, "sandbox", "demo")).to_be_visible()
    tour.shot("1-created")
    # No reload: the status arrives over the workspace event stream.
    expect(status_of(page, "demo")).to_have_attribute(
        "data-status", "running", timeout=START_TIMEOUT_MS
    )
    tour.shot("2-running")

    page.get_by_role("button", name="Pause demo").click()
    expect(status_of(page, "demo")).to_have_attribute("data-status", "paused", timeout=30_000)
    tour.shot("3-paused")
    page.get_by_role("button", name="Resume demo").click()
    expect(status_of(page, "demo")).to_have_attribute(
        "data-status", "running", timeout=START_TIMEOUT_MS
    )

    # Opened last: a closed opencode tab's late requests would wake a paused sandbox again.
    with tour.context.expect_page() as opened:
        page.get_by_role("link", name="Open demo").click()
    tab = opened.value
    tab.wait_for_load_state("domcontentloaded")
    sandbox_id = row(page, "sandbox", "demo").get_attribute("data-id")
    assert tab.url.startswith(f"http://oc-{sandbox_id}.localhost:{server.port}/")
    expect(tab).to_have_title(re.compile("opencode", re.IGNORECASE), timeout=30_000)
    tour.shot("4-opencode", tab)
    tab.close()

    page.get_by_role("link", name="demo", exact=True).click()
    expect(page.get_by_role("heading", name="demo")).to_be_visible()
    expect(page.get_by_role("heading", name="Logs")).to_be_visible()
    tour.shot("5-detail")
    page.get_by_role("button", name="Delete demo").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete sandbox").click()
    expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
    expect(row(page, "sandbox", "demo")).to_have_count(0)
    tour.shot("6-deleted")


@pytest.mark.browser
@pytest.mark.opencode
def test_guest_sees_sandbox_but_cannot_change_it(
    live_server_factory: Callable[..., LiveServer],
    tour_factory: Callable[..., Tour],
    opencode_bin: str,
) -> None:
    """A guest sees the sandbox with no changing control, and the API refuses their changes."""
    server = live_server_factory(opencode_bin=opencode_bin)
    require_route(server, "GET", "/api/workspaces/x/sandboxes", "the sandbox lifecycle API")
    with closing(server.register("owner")) as owner, closing(server.register("gina")) as guest:
        wid = api_workspace(owner, "Shared")
        created = owner.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "shared-box"})
        assert created.status_code in (200, 201, 202), created.text
        sandbox_id = created.json()["id"]
        add_member(owner, wid, "gina", "guest")

        tour = tour_factory(server.url, viewport={"width": 1280, "height": 800})
        sign_in(tour, "gina")
        page = tour.page
        page.goto(f"{server.url}/w/{wid}")
        expect(page.get_by_text("Live", exact=True)).to_be_visible()
        # Running is when Pause would show; a guest may still open it (read-only).
        expect(status_of(page, "shared-box")).to_have_attribute(
            "data-status", "running", timeout=START_TIMEOUT_MS
        )
        expect(page.get_by_role("link", name="Open shared-box")).to_be_visible()
        tour.shot("guest-list")
        main = page.locator("main")
        for name in (
            "Create sandbox",
            "Connect a local agent",
            "Pause shared-box",
            "Resume shared-box",
            "Delete shared-box",
        ):
            expect(main.get_by_role("button", name=name)).to_have_count(0)
        expect(main.get_by_label("Name")).to_have_count(0)
        page.get_by_role("link", name="shared-box", exact=True).click()
        expect(page.get_by_role("heading", name="shared-box")).to_be_visible()
        expect(main.get_by_role("button")).to_have_count(0)
        tour.shot("guest-detail")

        refused = [
            guest.post(f"/api/sandboxes/{sandbox_id}/pause"),
            guest.post(f"/api/sandboxes/{sandbox_id}/resume"),
            guest.delete(f"/api/sandboxes/{sandbox_id}"),
            guest.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "mine"}),
            guest.post(f"/api/workspaces/{wid}/members", json={"username": "owner"}),
            guest.delete(f"/api/workspaces/{wid}"),
        ]
        assert [r.status_code for r in refused] == [403] * len(refused)
        still = owner.get(f"/api/sandboxes/{sandbox_id}")
        assert still.status_code == 200
        assert still.json()["status"] == "running"

        # What the owner does elsewhere shows up on the guest's open page without a reload.
        assert owner.post(f"/api/sandboxes/{sandbox_id}/pause").status_code == 200
        expect(page.get_by_role("heading", name="shared-box").locator("xpath=..")).to_contain_text(
            "Paused", timeout=30_000
        )
        assert owner.delete(f"/api/sandboxes/{sandbox_id}").status_code == 204
        expect(page.get_by_role("heading", name="Sandbox not found")).to_be_visible()


@pytest.mark.browser
def test_agent_dialog_shows_ready_to_copy_command(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """The laptop button makes a one-time code and shows the connect command with a copy button."""
    require_route(live_server, "POST", "/api/workspaces/x/agent-code", "the agent-code API")
    require_route(live_server, "GET", "/api/workspaces/x/sandboxes", "the sandbox lifecycle API")
    with closing(live_server.register("dev")) as dev:
        wid = api_workspace(dev, "Laptops")
    tour = tour_factory(
        live_server.url,
        viewport={"width": 1280, "height": 800},
        permissions=["clipboard-read", "clipboard-write"],
    )
    sign_in(tour, "dev")
    page = tour.page
    page.goto(f"{live_server.url}/w/{wid}")
    page.get_by_role("button", name="Connect a local agent").click()
    dialog = page.get_by_role("dialog", name="Connect a local agent")
    command = dialog.locator("#agent-command")
    # No name given: no --name, so the agent names itself after its machine (the placeholder).
    expect(dialog.get_by_label("Name of this machine")).to_have_value("")
    expect(command).to_have_text(
        re.compile(
            rf"^python3 agentserver-agent\.pyz agent connect --server {re.escape(live_server.url)}"
            r" --code \S+$"
        )
    )
    dialog.get_by_label("Name of this machine").fill('Bob\'s "box"')
    expect(command).to_contain_text('--name "Bob\'s \\"box\\""')
    dialog.get_by_role("button", name="Copy command").click()
    expect(dialog.get_by_text("Copied to the clipboard.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == command.text_content()
    tour.shot("dialog")
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_have_count(0)
    expect(page.get_by_role("button", name="Connect a local agent")).to_be_focused()


@pytest.mark.browser
def test_local_agent_command_makes_a_local_sandbox_appear(
    live_server: LiveServer, tour_factory: Callable[..., Tour], tmp_path: Path
) -> None:
    """Running the dialog's command makes a `local` sandbox appear live, and go offline live."""
    if not (REPO / "src/agentserver/agent/connect.py").exists():
        pytest.skip("`agentserver agent connect` (src/agentserver/agent/connect.py) is not built")
    require_route(live_server, "POST", "/api/workspaces/x/agent-code", "the agent-code API")
    with closing(live_server.register("dev")) as dev:
        wid = api_workspace(dev, "Laptops")
    tour = tour_factory(live_server.url, viewport={"width": 1280, "height": 800})
    sign_in(tour, "dev")
    page = tour.page
    page.goto(f"{live_server.url}/w/{wid}")
    expect(page.get_by_text("Live", exact=True)).to_be_visible()
    page.get_by_role("button", name="Connect a local agent").click()
    dialog = page.get_by_role("dialog", name="Connect a local agent")
    dialog.get_by_label("Name of this machine").fill("laptop-1")
    words = shlex.split(dialog.locator("#agent-command").text_content() or "")
    assert words[:4] == ["python3", "agentserver-agent.pyz", "agent", "connect"]
    dialog.get_by_role("button", name="Close").click()
    # The command as shown, plus where to keep its credentials (not the real home directory).
    # Nothing listens at the opencode URL: the tunnel comes up regardless.
    command = [
        str(REPO / ".venv/bin/agentserver"),  # the same agent as the downloaded file
        *words[2:],
        "--config",
        str(tmp_path / "agent.json"),
        "--opencode-url",
        "http://127.0.0.1:9",
    ]
    agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        expect(row(page, "sandbox", "laptop-1")).to_be_visible(timeout=60_000)
        expect(status_of(page, "laptop-1")).to_have_attribute("data-status", "running")
        expect(row(page, "sandbox", "laptop-1").get_by_text("local")).to_be_visible()
        tour.shot("local-running")
    finally:
        agent.terminate()
        # Shown by pytest when the test fails.
        print(agent.communicate(timeout=30)[0].decode(errors="replace"))
    expect(status_of(page, "laptop-1")).to_have_attribute("data-status", "offline", timeout=60_000)
    tour.shot("local-offline")


@pytest.mark.browser
def test_members_controls_follow_the_role(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """Owners get add/role/remove controls, maintainers only add, developers and guests none."""
    names = {"owner": "olivia", "maintainer": "mara", "developer": "dev", "guest": "gus"}
    clients = {role: live_server.register(name) for role, name in names.items()}
    live_server.register("newbie").close()
    wid = api_workspace(clients["owner"], "Crew")
    for role in ("maintainer", "developer", "guest"):
        add_member(clients["owner"], wid, names[role], role)
    for client in clients.values():
        client.close()

    for role, name in names.items():
        tour = tour_factory(live_server.url, label=role, viewport={"width": 1280, "height": 800})
        sign_in(tour, name)
        page = tour.page
        page.goto(f"{live_server.url}/w/{wid}/members")
        expect(row(page, "member", "gus")).to_be_visible()
        tour.shot("members")
        main = page.locator("main")
        add = main.get_by_role("button", name="Add member")
        selects = main.get_by_role("combobox", name=re.compile("^Role of "))
        removes = main.get_by_role("button", name=re.compile("^Remove "))
        if role == "owner":
            expect(add).to_be_visible()
            expect(selects).to_have_count(4)  # their own too: a co-owner may step down
            expect(removes).to_have_count(3)
        elif role == "maintainer":
            expect(add).to_be_visible()
            options = main.get_by_label("Role", exact=True).locator("option")
            expect(options).to_have_text(["maintainer", "developer", "guest"])
            expect(selects).to_have_count(0)
            expect(removes).to_have_count(0)
        else:
            expect(add).to_have_count(0)
            expect(selects).to_have_count(0)
            expect(removes).to_have_count(0)
        expect(main.get_by_role("button", name="Leave")).to_have_count(1)

    # The last one looking was the guest: no workspace controls either.
    page.get_by_role("link", name="Workspaces", exact=True).click()
    expect(row(page, "workspace", "Crew")).to_be_visible()
    expect(page.get_by_role("button", name="Delete Crew")).to_have_count(0)
    expect(page.get_by_role("button", name="Rename Crew")).to_have_count(0)

    # The owner uses each control: add by username, change a role, remove with confirmation.
    tour = tour_factory(live_server.url, label="edits", viewport={"width": 1280, "height": 800})
    sign_in(tour, "olivia")
    page = tour.page
    page.goto(f"{live_server.url}/w/{wid}/members")
    main = page.locator("main")
    main.get_by_label("Username or email").fill("newbie")
    main.get_by_label("Role", exact=True).select_option("developer")
    main.get_by_role("button", name="Add member").click()
    expect(row(page, "member", "newbie")).to_be_visible()
    main.get_by_label("Role of dev").select_option("maintainer")
    page.get_by_role("dialog").get_by_role("button", name="Change role").click()
    expect(main.get_by_label("Role of dev")).to_have_value("maintainer")
    main.get_by_role("button", name="Remove gus").click()
    page.get_by_role("dialog").get_by_role("button", name="Remove").click()
    expect(row(page, "member", "gus")).to_have_count(0)
    tour.shot("after-edits")
    with live_server.client() as check:
        check.post("/api/auth/login", json={"username": "olivia", "password": PASSWORD})
        members = check.get(f"/api/workspaces/{wid}/members").json()
    roles = {m["username"]: m["role"] for m in members}
    assert roles == {
        "olivia": "owner",
        "mara": "maintainer",
        "dev": "maintainer",
        "newbie": "developer",
    }


@pytest.mark.browser
def test_admin_screen_only_for_the_admin(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """The first user (admin) sees users and quotas and can change them; others see no admin UI."""
    admin = live_server.register("root")
    other = live_server.register("plain")
    wid = api_workspace(admin, "Quota ws")
    api_workspace(other, "Plain ws")

    tour = tour_factory(live_server.url, label="admin", viewport={"width": 1280, "height": 800})
    sign_in(tour, "root")
    page = tour.page
    page.goto(live_server.url + "/workspaces")
    page.get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", name="Server admin")).to_be_visible()
    expect(row(page, "user", "plain")).to_be_visible()
    expect(page.get_by_label("Server role of root")).to_be_disabled()
    page.get_by_label("Server role of plain").select_option("admin")
    expect(page.get_by_label("Server role of plain")).to_have_value("admin")
    assert admin.get("/api/admin/users").json()[1]["role"] == "admin"
    page.get_by_label("Server role of plain").select_option("user")
    expect(page.get_by_label("Server role of plain")).to_have_value("user")
    expect(row(page, "workspace", "Plain ws")).to_be_visible()
    with live_server.client() as probe:
        has_quota = probe.get(f"/api/admin/workspaces/{wid}/quota").status_code != 404
    if has_quota:
        page.get_by_role("button", name="Edit LLM quota of Quota ws").click()
        page.get_by_label("Requests per minute").fill("7")
        page.get_by_label("Tokens per day").fill("5000")
        page.get_by_role("button", name="Save quota").click()
        expect(page.get_by_text("Saved.")).to_be_visible()
        quota = admin.get(f"/api/admin/workspaces/{wid}/quota").json()
        assert (quota["rpm"], quota["tokensPerDay"]) == (7, 5000)
    tour.shot("admin")

    plain = tour_factory(live_server.url, label="plain", viewport={"width": 1280, "height": 800})
    sign_in(plain, "plain")
    plain.page.goto(live_server.url + "/workspaces")
    expect(plain.page.get_by_role("heading", name="Workspaces")).to_be_visible()
    expect(plain.page.get_by_role("link", name="Admin")).to_have_count(0)
    plain.page.goto(live_server.url + "/admin")
    expect(plain.page.get_by_text("Only the server admin can see this page.")).to_be_visible()
    plain.shot("refused")
    plain.page.get_by_role("button", name="Sign out").click()
    expect(plain.page.get_by_role("button", name="Sign in")).to_be_visible()
    plain.page.reload()  # the session is gone on the server too, not just from the page
    expect(plain.page.get_by_role("button", name="Sign in")).to_be_visible()
    assert other.get("/api/admin/users").status_code == 403
    admin.close()
    other.close()


STATUS_TEXT = {
    "creating": "Creating",
    "running": "Running",
    "pausing": "Pausing",
    "paused": "Paused",
    "resuming": "Resuming",
    "offline": "Offline",
    "failed": "Failed",
}


def seed_statuses_and_usage(db_url: str, workspace_id: str, user_id: str) -> None:
    """One sandbox row per status (no process behind them) and LLM usage over three days."""
    ids = {status: new_id() for status in STATUS_TEXT}
    with psycopg.connect(db_url, autocommit=True) as conn:
        for status in STATUS_TEXT:
            kind = "local" if status == "offline" else "opencode"
            reason = "image pull failed: no such image" if status == "failed" else None
            conn.execute(
                "INSERT INTO sandboxes (id, workspace_id, name, type, status, status_reason,"
                " created_by, agent_secret) VALUES (%s, %s, %s, %s, %s, %s, %s, 'x')",
                (ids[status], workspace_id, f"{status}-box", kind, status, reason, user_id),
            )
        for days, model, tokens in (
            (2, "claude-sonnet-4", 1200),
            (1, "claude-haiku-4", 300),
            (0, "claude-sonnet-4", 2500),
        ):
            conn.execute(
                "INSERT INTO llm_usage (sandbox_id, workspace_id, user_id, sandbox_name, method,"
                " endpoint, model, status, input_tokens, output_tokens, cache_read_input_tokens,"
                " created_at) VALUES (%s, %s, %s, 'paused-box', 'POST', '/v1/messages', %s, 200,"
                " %s, %s, %s, now() - make_interval(days => %s))",
                (
                    ids["paused"],
                    workspace_id,
                    user_id,
                    model,
                    tokens,
                    tokens // 3,
                    tokens // 2,
                    days,
                ),
            )


UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button, a[href]')]
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
    && !el.getAttribute('aria-labelledby') && !el.textContent.trim())
  .map((el) => el.outerHTML.slice(0, 120))"""


def shot_labelled(tour: Tour, step: str) -> None:
    """Screenshot the screen after checking every control on it has an accessible name."""
    assert tour.page.evaluate(UNLABELLED) == [], f"controls without a label on {step}"
    tour.shot(step)


def visit_every_screen(tour: Tour, url: str, wid: str, sandbox: str | None) -> None:
    """Open each screen by its link, wait until it has loaded, and screenshot it."""
    page = tour.page
    page.goto(f"{url}/w/{wid}")
    expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
    expect(page.get_by_text("Live", exact=True)).to_be_visible()
    shot_labelled(tour, "sandboxes")
    if sandbox:
        page.get_by_role("link", name=sandbox, exact=True).click()
        expect(page.get_by_role("heading", name="Details")).to_be_visible()
        expect(page.get_by_text("Input tokens")).to_be_visible()
        shot_labelled(tour, "sandbox-detail")
    page.get_by_role("link", name="Members").click()
    expect(row(page, "member", "tourist")).to_be_visible()
    shot_labelled(tour, "members")
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name=re.compile("^LLM usage"))).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="Loading")).to_have_count(0)
    shot_labelled(tour, "usage")
    page.get_by_role("link", name="Workspaces", exact=True).click()
    expect(page.get_by_role("heading", name="Workspaces")).to_be_visible()
    shot_labelled(tour, "workspaces")
    page.get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", name="Users")).to_be_visible()
    shot_labelled(tour, "admin")


@pytest.mark.browser
def test_full_tour_is_clean_in_light_dark_and_on_a_phone(
    live_server: LiveServer, tour_factory: Callable[..., Tour], db_url: str
) -> None:
    """Every screen loads with no console error or failed request, light, dark and 375 px wide."""
    require_route(live_server, "GET", "/api/workspaces/x/sandboxes", "the sandbox lifecycle API")
    require_route(live_server, "GET", "/api/workspaces/x/events", "the workspace event stream")
    signin = tour_factory(live_server.url, label="signin", viewport={"width": 1280, "height": 800})
    signin.page.goto(live_server.url + "/")
    expect(signin.page.get_by_role("heading", name="Create the admin account")).to_be_visible()
    signin.shot("setup")
    sign_up(signin.page, live_server.url, "tourist")
    wid = signin.page.evaluate("() => location.pathname")
    assert wid == "/workspaces"
    signin.context.clear_cookies()
    signin.page.goto(live_server.url + "/")
    expect(signin.page.get_by_role("button", name="Sign in")).to_be_visible()
    signin.shot("light")
    with live_server.client() as client:
        client.post("/api/auth/login", json={"username": "tourist", "password": PASSWORD})
        wid = api_workspace(client, "Tour workspace")
        user_id = client.get("/api/auth/me").json()["id"]
    seed_statuses_and_usage(db_url, wid, user_id)
    looks = {
        "light": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "light"},
        "dark": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "dark"},
        "phone": {
            "viewport": {"width": 375, "height": 740},
            "color_scheme": "light",
            "is_mobile": True,
            "has_touch": True,
        },
        "phone-dark": {
            "viewport": {"width": 375, "height": 740},
            "color_scheme": "dark",
            "is_mobile": True,
            "has_touch": True,
        },
    }
    for label, options in looks.items():
        tour = tour_factory(live_server.url, label=label, **options)
        sign_in(tour, "tourist")
        visit_every_screen(tour, live_server.url, wid, "paused-box")
        tour.page.get_by_role("link", name="Sandboxes").click()
        for status, text in STATUS_TEXT.items():
            badge = status_of(tour.page, f"{status}-box")
            expect(badge).to_have_text(text)
            expect(badge).to_have_attribute("data-status", status)
        expect(row(tour.page, "sandbox", "failed-box")).to_contain_text("image pull failed")
        width = tour.page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= options["viewport"]["width"], f"{label}: page scrolls sideways ({width} px)"


@pytest.mark.browser
def test_keyboard_alone_creates_a_workspace(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """Name, Tab to the create button, Enter: creates a workspace, then a sandbox; then delete."""
    require_route(live_server, "GET", "/api/workspaces/x/sandboxes", "the sandbox lifecycle API")
    live_server.register("keys").close()
    tour = tour_factory(live_server.url, viewport={"width": 1280, "height": 800})
    sign_in(tour, "keys")
    page = tour.page
    page.goto(live_server.url + "/workspaces")
    page.get_by_label("New workspace name").focus()
    page.keyboard.type("Typed")
    page.keyboard.press("Tab")
    focused = page.evaluate("() => document.activeElement.textContent.trim()")
    assert focused == "Create workspace"
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused button shows no focus ring"
    tour.shot("focus")
    page.keyboard.press("Enter")
    expect(page.get_by_role("option", name="Typed")).to_have_count(1)
    assert re.fullmatch(r"/w/[^/]+", page.evaluate("() => location.pathname"))

    # The same on the sandbox form: name, Tab past the type and the Private checkbox, Enter on
    # "Create sandbox".
    page.get_by_label("Name").focus()
    page.keyboard.type("by-keys")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent.trim()") == "Create sandbox"
    page.keyboard.press("Enter")
    expect(row(page, "sandbox", "by-keys")).to_be_visible()

    # The owner deletes the workspace after confirming; it leaves the switcher and the list.
    page.get_by_role("link", name="Workspaces", exact=True).click()
    page.get_by_role("button", name="Delete Typed").click()
    dialog = page.get_by_role("dialog", name="Delete workspace")
    expect(dialog).to_contain_text("cannot be undone")
    dialog.get_by_role("button", name="Delete workspace").click()
    expect(row(page, "workspace", "Typed")).to_have_count(0)
    expect(page.get_by_role("option", name="Typed")).to_have_count(0)


@pytest.mark.browser
def test_sign_in_offers_one_button_per_sso_provider(
    live_server_factory: Callable[..., LiveServer], tour_factory: Callable[..., Tour]
) -> None:
    """With GitHub configured the sign-in card has a "Sign in with GitHub" link to its login URL."""
    server = live_server_factory(
        github_client_id="gh-id",
        github_client_secret="gh-secret",
        oidc_redirect_base_url="http://localhost:8080",
    )
    with server.client() as client:
        providers = client.get("/api/auth/config").json()["providers"]
    if not providers:
        pytest.skip("this server lists no sign-in providers yet (the OIDC feature)")
    tour = tour_factory(server.url, viewport={"width": 1280, "height": 800})
    tour.page.goto(server.url + "/")
    for provider in providers:
        link = tour.page.get_by_role("link", name=f"Sign in with {provider['name']}")
        expect(link).to_have_attribute("href", provider["loginUrl"])
    tour.shot("providers")


@pytest.mark.browser
def test_api_errors_are_shown_and_a_lost_session_returns_to_sign_in(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """The server's error message appears next to the form; a 401 brings back the sign-in card."""
    live_server.register("taken").close()
    tour = tour_factory(live_server.url, viewport={"width": 1280, "height": 800})
    tour.allow(r"\b(409|401)\b")  # provoked on purpose below
    page = tour.page
    page.goto(live_server.url + "/")
    page.get_by_role("button", name="Create one").click()
    page.get_by_label("Username").fill("taken")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("alert")).to_have_text("username already taken")
    tour.shot("taken")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Username or email").fill("taken")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Workspaces")).to_be_visible()
    tour.context.clear_cookies()  # the session ends elsewhere (expiry, sign-out in another tab)
    page.get_by_label("New workspace name").fill("Too late")
    page.get_by_role("button", name="Create workspace").click()
    expect(page.get_by_role("heading", name="agentserver")).to_be_visible()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    tour.shot("signed-out")


@pytest.mark.browser
def test_first_visit_creates_the_admin_account(
    live_server: LiveServer, tour_factory: Callable[..., Tour]
) -> None:
    """An empty server greets its first visitor with the admin form, which refuses `password`."""
    tour = tour_factory(live_server.url, viewport={"width": 1280, "height": 800})
    tour.allow(r"\b400\b")  # the common password is refused on purpose below
    page = tour.page
    page.goto(live_server.url + "/")
    expect(page.get_by_role("heading", name="Create the admin account")).to_be_visible()
    expect(page.get_by_role("button", name="Create one")).to_have_count(0)
    expect(page.get_by_text("not a common password")).to_be_visible()
    tour.shot("first-visit")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("password")
    page.get_by_role("button", name="Create admin account").click()
    expect(page.get_by_role("alert")).to_contain_text("most common")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create admin account").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    with live_server.client() as client:
        client.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
        assert client.get("/api/auth/me").json()["role"] == "admin"
    tour.context.clear_cookies()
    page.goto(live_server.url + "/")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    expect(page.get_by_role("heading", name="Create the admin account")).to_have_count(0)


@pytest.mark.browser
def test_a_server_warning_is_shown_above_every_screen(
    live_server_factory: Callable[..., LiveServer],
    tour_factory: Callable[..., Tour],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When sandboxes run without isolation, a signed-in user sees the server's warning banner."""
    from agentserver.sandboxes import process as process_backend
    from agentserver.sandboxes.isolation import Isolation

    async def unusable(*args: object) -> Isolation:
        return Isolation(problem="bubblewrap does not work here (test)")

    monkeypatch.setattr(process_backend, "probe_isolation", unusable)
    server = live_server_factory(allow_unisolated_sandboxes="true")
    server.register("warned").close()
    tour = tour_factory(server.url, viewport={"width": 1280, "height": 800})
    sign_in(tour, "warned")
    tour.page.goto(server.url + "/workspaces")
    banner = tour.page.get_by_role("alert")
    expect(banner).to_contain_text("Sandboxes run without isolation")
    expect(banner).to_contain_text("--allow-unisolated-sandboxes")
    tour.shot("warning")

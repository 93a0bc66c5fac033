"""Refusals a person can meet (a deleted sandbox, one they may not see) are pages for a browser
and the same JSON errors as before for API clients; the wake page says why it was paused."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from agentserver.auth.tokens import new_id
from tests.conftest import register
from tests.support.proxy_world import World

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
JSON = {"Accept": "application/json"}
NOT_FOUND = {"error": {"code": "not_found", "message": "sandbox not found"}}


def assert_refusal_page(response: httpx.Response, main_url: str) -> None:
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>Sandbox not found</h1>" in response.text
    assert f'href="{main_url}/workspaces"' in response.text
    assert "Back to your workspaces" in response.text
    assert "<style>" in response.text  # the shared styled layout, not a bare message


async def test_open_of_a_deleted_sandbox_is_a_page_for_browsers_and_json_for_apis(
    world: World,
) -> None:
    """/open of a sandbox that was deleted: a styled 404 page for a browser navigation, the
    unchanged JSON 404 for an API client."""
    sid = await world.sandbox()
    await world.sql("DELETE FROM sandboxes WHERE id = %s", sid)
    main_url = world.server.deps.settings.main_url
    page = await world.owner.get(f"/api/sandboxes/{sid}/open", headers=HTML)
    assert_refusal_page(page, main_url)
    api = await world.owner.get(f"/api/sandboxes/{sid}/open", headers=JSON)
    assert api.status_code == 404
    assert api.headers["content-type"].startswith("application/json")
    assert api.json() == NOT_FOUND


async def test_open_by_a_non_member_is_a_page_for_browsers_and_json_for_apis(
    world: World,
) -> None:
    """/open by a signed-in stranger to the workspace: the same page (it never says whether
    the sandbox exists), and the unchanged JSON 404 for an API client."""
    sid = await world.sandbox()
    main_url = world.server.deps.settings.main_url
    async with world.server.client() as stranger:
        await register(stranger, "stranger")
        page = await stranger.get(f"/api/sandboxes/{sid}/open", headers=HTML)
        api = await stranger.get(f"/api/sandboxes/{sid}/open", headers=JSON)
        missing = await stranger.get(f"/api/sandboxes/{new_id()}/open", headers=HTML)
    assert_refusal_page(page, main_url)
    assert page.text == missing.text  # a stranger cannot tell a hidden sandbox from none
    assert api.status_code == 404
    assert api.json() == NOT_FOUND


async def test_a_deleted_sandbox_host_ends_on_the_page_not_on_json(world: World) -> None:
    """A browser on a deleted sandbox's own host is sent to /open, which shows the page."""
    sid = await world.sandbox()
    await world.sql("DELETE FROM sandboxes WHERE id = %s", sid)
    async with world.sub(sid) as sub:
        started = await sub.get("/", headers=HTML)
    assert started.status_code == 302
    back = urlsplit(started.headers["location"])
    assert back.path == f"/api/sandboxes/{sid}/open"
    page = await world.owner.get(f"{back.path}?{back.query}", headers=HTML)
    assert_refusal_page(page, world.server.deps.settings.main_url)
    api = await world.owner.get(f"{back.path}?{back.query}", headers=JSON)
    assert api.json() == NOT_FOUND


async def test_the_wake_page_says_who_paused_it(world: World) -> None:
    """A sandbox a member paused: its waking page names them; the JSON answer is unchanged."""
    sid = await world.sandbox(status="paused")
    owner_id = (await world.owner.get("/api/auth/me")).json()["id"]
    await world.sql(
        "UPDATE sandboxes SET paused_reason = 'user', paused_by = %s WHERE id = %s", owner_id, sid
    )
    token = await world.open(sid)
    async with world.sub(sid, token) as sub:
        api = await sub.get("/session", headers=JSON)
        page = await sub.get("/", headers=HTML)
    assert page.status_code == 503
    assert "It was paused by owner." in page.text
    assert "Back to your workspaces" in page.text
    assert api.json()["error"] == {
        "code": "sandbox_paused",
        "message": "This sandbox is paused. Open or reload this page in the browser to wake it.",
    }


async def test_the_wake_page_says_how_long_it_was_idle(world: World) -> None:
    """A sandbox the idle watcher paused: its waking page says after how long."""
    sid = await world.sandbox(status="paused")
    await world.sql(
        "UPDATE sandboxes SET paused_reason = 'idle', paused_idle_seconds = 1800 WHERE id = %s",
        sid,
    )
    token = await world.open(sid)
    async with world.sub(sid, token) as sub:
        page = await sub.get("/", headers=HTML)
    assert page.status_code == 503
    assert "It was paused after 30 minutes without activity." in page.text

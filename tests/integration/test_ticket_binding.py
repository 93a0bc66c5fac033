"""A ticket opens the sandbox only in the browser that asked for it (the binding nonce)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import trio

from agentserver.auth.tokens import hash_token
from tests.conftest import register
from tests.support.proxy_world import World
from tests.support.sandbox_login import BIND_COOKIE, bound_ticket, redeem


async def attacker_in(world: World) -> httpx.AsyncClient:
    """A developer of the world's workspace: able to mint tickets of their own."""
    client = world.server.client()
    await register(client, "mallory")
    added = await world.owner.post(
        f"/api/workspaces/{world.workspace_id}/members",
        json={"username": "mallory", "role": "developer"},
    )
    assert added.status_code == 201, added.text
    return client


async def test_a_ticket_minted_for_someone_else_does_not_sign_the_victim_in(
    world: World,
) -> None:
    """A victim's browser following an attacker's ticket link gets no sandbox cookie, whether
    it holds no binding nonce or a nonce of its own."""
    sid = await world.sandbox()
    mallory = await attacker_in(world)
    try:
        async with world.sub(sid) as attacker_browser:
            ticket_url, _ = await bound_ticket(mallory, attacker_browser, sid)
        url = urlsplit(ticket_url)
        async with world.sub(sid, Cookie="") as victim:
            bare = await victim.get(f"{url.path}?{url.query}", headers={"Accept": "text/html"})
        assert bare.status_code == 401
        assert "set-cookie" not in bare.headers
        async with world.sub(sid) as attacker_browser:
            ticket_url, _ = await bound_ticket(mallory, attacker_browser, sid)
        async with world.sub(sid) as victim:
            _, own_nonce = await bound_ticket(world.owner, victim, sid)
            crossed = await redeem(victim, ticket_url, own_nonce)
        assert crossed.status_code == 401
        assert "set-cookie" not in crossed.headers
    finally:
        await mallory.aclose()


async def test_the_browser_holding_the_nonce_is_signed_in(world: World) -> None:
    """The same ticket redeemed with the nonce it was bound to gives the sandbox cookie, and
    the session is the minting user's."""
    sid = await world.sandbox()
    async with world.sub(sid) as browser:
        ticket_url, nonce = await bound_ticket(world.owner, browser, sid)
        redeemed = await redeem(browser, ticket_url, nonce)
    assert redeemed.status_code == 302
    assert redeemed.cookies["agentserver_sandbox"]


async def test_the_binding_cookie_is_host_only_and_http_only(world: World) -> None:
    """The sandbox host gives the nonce in a host-only, HttpOnly, SameSite=Lax cookie and
    sends only its SHA-256 to the main host."""
    sid = await world.sandbox()
    async with world.sub(sid) as sub:
        started = await sub.get("/_agentserver/auth")
    assert started.status_code == 302
    set_cookie = started.headers["set-cookie"]
    assert set_cookie.startswith(f"{BIND_COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in set_cookie
    assert "domain" not in set_cookie.lower()
    nonce = started.cookies[BIND_COOKIE]
    location = urlsplit(started.headers["location"])
    assert location.path == f"/api/sandboxes/{sid}/open"
    assert parse_qs(location.query) == {"bind": [hash_token(nonce)]}
    assert nonce not in started.headers["location"]


async def test_open_without_a_binding_mints_no_ticket(world: World) -> None:
    """/open without `bind` sends the browser to the sandbox host to get a nonce first, and
    no ticket exists yet."""
    sid = await world.sandbox()
    opened = await world.owner.get(f"/api/sandboxes/{sid}/open")
    assert opened.status_code == 302
    location = urlsplit(opened.headers["location"])
    assert (location.netloc, location.path, location.query) == (
        world.host(sid),
        "/_agentserver/auth",
        "",
    )

    def tickets() -> int:
        with psycopg.connect(world.db_url) as conn:
            row = conn.execute("SELECT count(*) FROM sandbox_tickets").fetchone()
        assert row is not None
        return int(row[0])

    assert await trio.to_thread.run_sync(tickets) == 0


async def test_open_refuses_a_malformed_binding(world: World) -> None:
    """A `bind` that is not a hex SHA-256 is a 400 naming the field."""
    sid = await world.sandbox()
    response = await world.owner.get(f"/api/sandboxes/{sid}/open?bind=not-a-hash")
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "bind"


async def test_a_second_tab_keeps_the_nonce_the_browser_already_holds(world: World) -> None:
    """Starting again with a nonce cookie keeps it (no new Set-Cookie), so two tabs opening
    the same sandbox at once both succeed."""
    sid = await world.sandbox()
    async with world.sub(sid) as browser:
        first_url, nonce = await bound_ticket(world.owner, browser, sid)
        again = await browser.get(
            "/_agentserver/auth", headers={"Cookie": f"{BIND_COOKIE}={nonce}"}
        )
        assert "set-cookie" not in again.headers
        assert again.headers["location"].endswith(f"bind={hash_token(nonce)}")
        second = urlsplit(again.headers["location"])
        ticketed = await world.owner.get(f"{second.path}?{second.query}")
        assert (await redeem(browser, first_url, nonce)).status_code == 302
        assert (await redeem(browser, ticketed.headers["location"], nonce)).status_code == 302


async def test_the_binding_cookie_never_reaches_the_agent(world: World) -> None:
    """The nonce cookie is stripped like our other cookies before a request is forwarded."""
    sid = await world.sandbox()
    token = await world.open(sid)
    nonce = world.nonces[sid]
    async with world.sub(sid, token) as sub:
        assert (await sub.get("/json")).status_code == 200
    assert world.upstream.requests
    for seen in world.upstream.requests:
        assert nonce not in str(seen.headers)

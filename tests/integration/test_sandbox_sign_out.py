"""Signing out ends sandbox-host sessions too: here, everywhere, and on a password change."""

from __future__ import annotations

import contextlib

import httpx
import pytest
import trio
import trio_websocket

from tests.conftest import register
from tests.support.proxy_world import World

PASSWORD = "correct-horse"


async def sandbox_ok(world: World, sandbox_id: str, token: str) -> bool:
    """Whether the sandbox cookie `token` still reaches the agent."""
    async with world.sub(sandbox_id, token) as sub:
        response = await sub.get("/json")
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


async def second_browser(world: World, username: str = "owner") -> httpx.AsyncClient:
    """Another browser signed in as the same user."""
    client = world.server.client()
    signed_in = await client.post(
        "/api/auth/login", json={"username": username, "password": PASSWORD}
    )
    assert signed_in.status_code == 200, signed_in.text
    return client


async def test_signing_out_ends_the_sandbox_session_it_opened(world: World) -> None:
    """After sign-out, the sandbox cookie opened from that session is refused at once, even
    though it was used (and so cached by the proxy) just before."""
    sid = await world.sandbox()
    token = await world.open(sid)
    assert await sandbox_ok(world, sid, token)
    assert (await world.owner.post("/api/auth/logout")).status_code == 200
    assert not await sandbox_ok(world, sid, token)


async def test_signing_out_leaves_another_browsers_sandbox_session(world: World) -> None:
    """Signing out in one browser keeps the sandbox session opened from another browser."""
    sid = await world.sandbox()
    other = await second_browser(world)
    try:
        kept = await world.open(sid, other)
        ended = await world.open(sid)
        assert (await world.owner.post("/api/auth/logout")).status_code == 200
        assert not await sandbox_ok(world, sid, ended)
        assert await sandbox_ok(world, sid, kept)
        assert (await other.get("/api/auth/me")).status_code == 200
    finally:
        await other.aclose()


async def test_sign_out_everywhere_ends_every_session_of_the_user(world: World) -> None:
    """`POST /api/auth/logout-all` ends every main session of the user and every sandbox
    session opened from any of them, and clears this browser's cookie."""
    sid = await world.sandbox()
    other = await second_browser(world)
    try:
        from_other = await world.open(sid, other)
        from_here = await world.open(sid)
        assert await sandbox_ok(world, sid, from_other)
        response = await world.owner.post("/api/auth/logout-all")
        assert response.status_code == 200, response.text
        assert "Max-Age=0" in response.headers["set-cookie"]
        assert (await other.get("/api/auth/me")).status_code == 401
        assert not await sandbox_ok(world, sid, from_other)
        assert not await sandbox_ok(world, sid, from_here)
    finally:
        await other.aclose()


async def test_sign_out_everywhere_leaves_other_users_alone(world: World) -> None:
    """One user signing out everywhere does not end another user's sessions."""
    sid = await world.sandbox()
    async with world.server.client() as dev:
        await register(dev, "dev")
        added = await world.owner.post(
            f"/api/workspaces/{world.workspace_id}/members",
            json={"username": "dev", "role": "developer"},
        )
        assert added.status_code == 201
        dev_token = await world.open(sid, dev)
        assert (await world.owner.post("/api/auth/logout-all")).status_code == 200
        assert (await dev.get("/api/auth/me")).status_code == 200
        assert await sandbox_ok(world, sid, dev_token)


async def test_sign_out_everywhere_needs_a_session(world: World) -> None:
    """Without a session, logout-all is a 401 with the JSON error shape."""
    async with world.server.client() as anonymous:
        response = await anonymous.post("/api/auth/logout-all")
    assert response.status_code == 401
    assert response.json()["error"]["code"]


async def test_a_password_change_keeps_this_session_and_ends_the_others(world: World) -> None:
    """Changing the password keeps the session (and its sandbox sessions) that made the
    change, ends every other session with its sandbox sessions, and the new password works."""
    sid = await world.sandbox()
    other = await second_browser(world)
    try:
        from_other = await world.open(sid, other)
        from_here = await world.open(sid)
        changed = await world.owner.post(
            "/api/auth/password",
            json={"currentPassword": PASSWORD, "newPassword": "battery-staple-2"},
        )
        assert changed.status_code == 200, changed.text
        assert (await world.owner.get("/api/auth/me")).status_code == 200
        assert await sandbox_ok(world, sid, from_here)
        assert (await other.get("/api/auth/me")).status_code == 401
        assert not await sandbox_ok(world, sid, from_other)
        login = await other.post(
            "/api/auth/login", json={"username": "owner", "password": "battery-staple-2"}
        )
        assert login.status_code == 200
    finally:
        await other.aclose()


async def test_a_password_change_needs_the_current_password(world: World) -> None:
    """A wrong current password is a 403 and changes nothing: other sessions live on."""
    other = await second_browser(world)
    try:
        refused = await world.owner.post(
            "/api/auth/password",
            json={"currentPassword": "wrong-guess-1", "newPassword": "battery-staple-2"},
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
        assert (await other.get("/api/auth/me")).status_code == 200
    finally:
        await other.aclose()


async def test_a_password_change_validates_the_new_password(world: World) -> None:
    """A too-short new password is a 400 naming `newPassword`; a missing field is a 400."""
    short = await world.owner.post(
        "/api/auth/password", json={"currentPassword": PASSWORD, "newPassword": "x"}
    )
    assert short.status_code == 400
    assert short.json()["error"]["field"] == "newPassword"
    missing = await world.owner.post("/api/auth/password", json={"currentPassword": PASSWORD})
    assert missing.status_code == 400


async def test_a_sandbox_session_ends_when_its_main_session_expires(world: World) -> None:
    """A sandbox session never outlives the main session it was opened from."""
    sid = await world.sandbox()
    token = await world.open(sid)
    await world.sql("UPDATE sessions SET expires_at = now() - interval '1 second'")
    assert not await sandbox_ok(world, sid, token)


async def test_signing_out_ends_an_open_stream_through_the_proxy(world: World) -> None:
    """An event stream proxied from the sandbox ends when the session that opened it signs
    out, and the agent sees its client go."""
    sid = await world.sandbox()
    token = await world.open(sid)
    async with world.sub(sid, token) as sub, sub.stream("GET", "/forever") as response:
        assert response.status_code == 200
        chunks = response.aiter_raw()
        await anext(chunks)
        assert (await world.owner.post("/api/auth/logout")).status_code == 200
        with trio.fail_after(10):
            with contextlib.suppress(httpx.HTTPError):
                async for _ in chunks:
                    pass
    with trio.fail_after(10):
        await world.upstream.stream_closed.wait()


async def test_removing_a_member_closes_their_open_terminal(
    world: World, nursery: trio.Nursery
) -> None:
    """A removed developer's open WebSocket (the terminal) through the proxy is closed."""
    sid = await world.sandbox()
    async with world.server.client() as dev:
        user = await register(dev, "dev")
        added = await world.owner.post(
            f"/api/workspaces/{world.workspace_id}/members",
            json={"username": "dev", "role": "developer"},
        )
        assert added.status_code == 201
        token = await world.open(sid, dev)
    stream = await trio.open_tcp_stream("127.0.0.1", world.server.port)
    ws = await trio_websocket.wrap_client_stream(
        nursery,
        stream,
        world.host(sid),
        "/ws",
        extra_headers=[
            (b"origin", f"http://{world.host(sid)}".encode()),
            (b"cookie", f"agentserver_sandbox={token}".encode()),
        ],
    )
    await ws.send_message("hello")
    assert await ws.get_message() == "echo:hello"
    removed = await world.owner.delete(f"/api/workspaces/{world.workspace_id}/members/{user['id']}")
    assert removed.status_code == 204
    with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionClosed):
        await ws.get_message()
    await ws.aclose()

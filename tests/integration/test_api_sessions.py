"""A user's own sessions: listed without ever exposing a token, ended one at a time."""

from __future__ import annotations

import hashlib
from datetime import datetime

import httpx
import psycopg

from agentserver.auth.sessions import SESSION_COOKIE
from tests.conftest import Server, register
from tests.integration.test_sandbox_sign_out import PASSWORD, sandbox_ok
from tests.support.proxy_world import World


async def test_the_list_shows_own_sessions_and_never_a_token(server: Server) -> None:
    """Each session is listed with a public id, times, client address and user agent; the
    one asking is marked current; neither a token nor its hash appears; nor do other users'."""
    async with (
        server.client(headers={"User-Agent": "Browser A"}) as here,
        server.client(headers={"User-Agent": "Browser B"}) as there,
        server.client() as stranger,
    ):
        await register(here, "alice")
        signed_in = await there.post(
            "/api/auth/login", json={"username": "alice", "password": PASSWORD}
        )
        assert signed_in.status_code == 200
        await register(stranger, "bob")
        listed = await here.get("/api/auth/sessions")
        assert listed.status_code == 200, listed.text
        sessions = listed.json()
        assert len(sessions) == 2
        assert [s["userAgent"] for s in sessions if s["current"]] == ["Browser A"]
        assert {s["userAgent"] for s in sessions} == {"Browser A", "Browser B"}
        assert {s["clientAddress"] for s in sessions} == {"127.0.0.1"}
        for session in sessions:
            assert session["createdAt"].endswith("Z")
            assert session["lastUsedAt"].endswith("Z")
            assert session["expiresAt"] > session["createdAt"]
        tokens = [c.cookies[SESSION_COOKIE] for c in (here, there, stranger)]
        for token in tokens:
            assert token not in listed.text
            assert hashlib.sha256(token.encode()).hexdigest() not in listed.text
        theirs = (await stranger.get("/api/auth/sessions")).json()
        assert len(theirs) == 1
        assert theirs[0]["id"] not in {s["id"] for s in sessions}


async def test_a_session_id_signs_nobody_in(server: Server) -> None:
    """Presenting a listed session id as the session cookie is a 401."""
    async with server.client() as alice:
        await register(alice, "alice")
        session_id = (await alice.get("/api/auth/sessions")).json()[0]["id"]
    async with server.client(cookies={SESSION_COOKIE: session_id}) as forger:
        assert (await forger.get("/api/auth/me")).status_code == 401
        assert (await forger.get("/api/auth/sessions")).status_code == 401


async def browser(world: World, agent: str) -> httpx.AsyncClient:
    """Another browser (known by its user agent) signed in as the owner."""
    client = world.server.client(headers={"User-Agent": agent})
    signed_in = await client.post(
        "/api/auth/login", json={"username": "owner", "password": PASSWORD}
    )
    assert signed_in.status_code == 200, signed_in.text
    return client


async def test_ending_one_session_leaves_the_others(world: World) -> None:
    """Ending another browser's session signs that browser out and ends the sandbox session
    it opened; this browser, a third one and their sandbox sessions carry on."""
    sid = await world.sandbox()
    other = await browser(world, "Other")
    third = await browser(world, "Third")
    try:
        from_other = await world.open(sid, other)
        from_third = await world.open(sid, third)
        from_here = await world.open(sid)
        assert await sandbox_ok(world, sid, from_other)  # used (and cached) before it ends
        sessions = (await world.owner.get("/api/auth/sessions")).json()
        assert len(sessions) == 3
        (other_id,) = [s["id"] for s in sessions if s["userAgent"] == "Other"]
        ended = await world.owner.delete(f"/api/auth/sessions/{other_id}")
        assert ended.status_code == 204, ended.text
        assert "set-cookie" not in ended.headers  # not this browser's session
        assert (await other.get("/api/auth/me")).status_code == 401
        assert not await sandbox_ok(world, sid, from_other)
        assert (await world.owner.get("/api/auth/me")).status_code == 200
        assert (await third.get("/api/auth/me")).status_code == 200
        assert await sandbox_ok(world, sid, from_here)
        assert await sandbox_ok(world, sid, from_third)
        left = (await world.owner.get("/api/auth/sessions")).json()
        assert sorted(s["userAgent"] != "Other" for s in left) == [True, True]
    finally:
        await other.aclose()
        await third.aclose()


async def test_ending_this_session_signs_this_browser_out(server: Server) -> None:
    """Ending the current session clears this browser's cookie; the next request is a 401."""
    async with server.client() as alice:
        await register(alice, "alice")
        mine = (await alice.get("/api/auth/sessions")).json()[0]
        assert mine["current"]
        ended = await alice.delete(f"/api/auth/sessions/{mine['id']}")
        assert ended.status_code == 204
        assert "Max-Age=0" in ended.headers["set-cookie"]
        assert (await alice.get("/api/auth/me")).status_code == 401


async def test_another_users_session_cannot_be_ended(server: Server) -> None:
    """Naming someone else's session (or none) is a 404, and their session stays."""
    async with server.client() as alice, server.client() as bob:
        await register(alice, "alice")
        await register(bob, "bob")
        bobs = (await bob.get("/api/auth/sessions")).json()[0]["id"]
        refused = await alice.delete(f"/api/auth/sessions/{bobs}")
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "not_found"
        assert (await alice.delete("/api/auth/sessions/nope")).status_code == 404
        assert (await bob.get("/api/auth/me")).status_code == 200


async def test_the_session_routes_need_a_session(server: Server) -> None:
    """Without a session, listing or ending sessions is a 401."""
    async with server.client() as anonymous:
        assert (await anonymous.get("/api/auth/sessions")).status_code == 401
        assert (await anonymous.delete("/api/auth/sessions/x")).status_code == 401


async def test_last_used_is_noted_at_most_once_a_minute(server: Server, db_url: str) -> None:
    """A request on a session last used long ago moves its "last used" to now; one on a
    session used half a minute ago leaves it as it was (no write on every request)."""

    def last_used(seconds_ago: float | None = None) -> datetime:
        """The session's stored "last used", after setting it `seconds_ago` if given."""
        with psycopg.connect(db_url, autocommit=True) as conn:
            if seconds_ago is not None:
                conn.execute(
                    "UPDATE sessions SET last_used_at = now() - make_interval(secs => %s)",
                    (seconds_ago,),
                )
            row = conn.execute("SELECT last_used_at FROM sessions").fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    async with server.client() as alice:
        await register(alice, "alice")
        old = last_used(3600)
        assert (await alice.get("/api/auth/me")).status_code == 200
        noted = last_used()
        assert (noted - old).total_seconds() > 3500
        recent = last_used(30)
        assert (await alice.get("/api/auth/me")).status_code == 200
        assert last_used() == recent

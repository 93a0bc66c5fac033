"""Personal API tokens against a real server: lifecycle, scope, workspace limit, what a token
may never do, admins, the command line's browser-approved sign-in and one-time launch links.
(Every route with every kind of token: test_authz_matrix.py.)"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import trio

from agentserver.auth.tokens import hash_token
from tests.conftest import Server, register
from tests.support.accounts import create_workspace, owner_of_workspace
from tests.support.proxy_world import World


async def new_token(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """A token created by `client`'s signed-in user (`body` adds to the name)."""
    created = await client.post("/api/tokens", json={"name": "t", **body})
    assert created.status_code == 201, created.text
    return dict(created.json())


def bearer(server: Server, token: str) -> httpx.AsyncClient:
    """A client that is no browser: only the token, no cookies, no Origin."""
    return httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


async def sql(db_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    def run() -> list[tuple[Any, ...]]:
        with psycopg.connect(db_url, autocommit=True) as conn:
            cursor = conn.execute(query, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    return await trio.to_thread.run_sync(run)


async def test_a_token_is_shown_once_stored_hashed_and_works_until_revoked(
    server: Server, db_url: str
) -> None:
    """Creating answers the token once (prefixed `ast_`); the database holds only its SHA-256;
    the list never shows it; it signs in as its owner, notes its last use, and stops at
    once when revoked, with a message saying so."""
    async with server.client() as browser:
        me = await register(browser, "alice")
        created = await new_token(browser, name="ci")
        token = created["token"]
        assert token.startswith("ast_")
        assert created["scope"] == "full"
        assert created["state"] == "active"
        stored = await sql(db_url, "SELECT token_hash FROM api_tokens")
        assert stored == [(hash_token(token),)]
        async with bearer(server, token) as cli:
            who = await cli.get("/api/auth/me")
            assert who.status_code == 200
            assert who.json()["id"] == me["id"]
        listed = (await browser.get("/api/tokens")).json()
        assert token not in str(listed)
        assert [t["name"] for t in listed] == ["ci"]
        assert listed[0]["lastUsedAt"] is not None
        revoked = await browser.delete(f"/api/tokens/{created['id']}")
        assert revoked.status_code == 204
        async with bearer(server, token) as cli:
            refused = await cli.get("/api/auth/me")
        assert refused.status_code == 401
        assert "revoked" in refused.json()["error"]["message"]
        assert (await browser.get("/api/tokens")).json()[0]["state"] == "revoked"


async def test_expiry_defaults_to_30_days_and_an_expired_token_says_so(
    server: Server, db_url: str
) -> None:
    """A new token lives 30 days unless told; once past its expiry it is refused with 401 and
    a message naming the expiry."""
    async with server.client() as browser:
        await register(browser, "bob")
        created = await new_token(browser)
        days = await sql(
            db_url,
            "SELECT round(extract(epoch FROM expires_at - created_at) / 86400) FROM api_tokens",
        )
        assert days == [(30,)]
        await sql(db_url, "UPDATE api_tokens SET expires_at = now() - interval '1 second'")
        async with bearer(server, created["token"]) as cli:
            refused = await cli.get("/api/workspaces")
        assert refused.status_code == 401
        assert "expired" in refused.json()["error"]["message"]


async def test_lifetime_beyond_the_server_maximum_is_refused(server: Server) -> None:
    """`expiresInDays` above --max-token-lifetime (365 days by default) is a 400 naming the
    field; at the maximum it is accepted."""
    async with server.client() as browser:
        await register(browser, "carol")
        too_long = await browser.post("/api/tokens", json={"name": "x", "expiresInDays": 366})
        assert too_long.status_code == 400
        assert too_long.json()["error"]["field"] == "expiresInDays"
        await new_token(browser, expiresInDays=365)


async def test_a_read_token_may_only_read(server: Server) -> None:
    """A `read` token lists workspaces but may not create one (403)."""
    async with server.client() as browser:
        await owner_of_workspace(browser, "dave")
        token = (await new_token(browser, scope="read"))["token"]
    async with bearer(server, token) as cli:
        assert (await cli.get("/api/workspaces")).status_code == 200
        refused = await cli.post("/api/workspaces", json={"name": "new"})
    assert refused.status_code == 403
    assert "read" in refused.json()["error"]["message"]


async def test_a_workspace_limited_token_reaches_only_its_workspace(server: Server) -> None:
    """A token limited to W lists only W, gets 404 on the owner's other workspace, and may
    not create workspaces; one limited to a workspace its user is not in cannot be made."""
    async with server.client() as browser, server.client() as other:
        _, mine = await owner_of_workspace(browser, "erin", "mine")
        second = await create_workspace(browser, "second")
        _, foreign = await owner_of_workspace(other, "frank", "theirs")
        token = (await new_token(browser, workspaceId=mine["id"]))["token"]
        outside = await browser.post(
            "/api/tokens", json={"name": "x", "workspaceId": foreign["id"]}
        )
        assert outside.status_code == 404
    async with bearer(server, token) as cli:
        listed = await cli.get("/api/workspaces")
        assert [w["id"] for w in listed.json()] == [mine["id"]]
        assert (await cli.get(f"/api/workspaces/{mine['id']}/sandboxes")).status_code == 200
        assert (await cli.get(f"/api/workspaces/{second['id']}")).status_code == 404
        assert (await cli.get(f"/api/workspaces/{second['id']}/sandboxes")).status_code == 404
        assert (await cli.post("/api/workspaces", json={"name": "n"})).status_code == 403


async def test_a_token_never_changes_the_password_sessions_or_other_tokens(server: Server) -> None:
    """With a full token: no password change, no session list or sign-out everywhere, no new
    token, no revoking another token (403 each); revoking itself works."""
    async with server.client() as browser:
        await register(browser, "gina")
        first = await new_token(browser, name="one")
        second = await new_token(browser, name="two")
    async with bearer(server, first["token"]) as cli:
        attempts = [
            await cli.post(
                "/api/auth/password",
                json={"currentPassword": "correct-horse", "newPassword": "another-horse-9"},
            ),
            await cli.get("/api/auth/sessions"),
            await cli.post("/api/auth/logout-all"),
            await cli.post("/api/tokens", json={"name": "minted"}),
            await cli.delete(f"/api/tokens/{second['id']}"),
        ]
        assert [a.status_code for a in attempts] == [403] * 5
        assert (await cli.get("/api/tokens")).status_code == 200
        assert (await cli.delete(f"/api/tokens/{first['id']}")).status_code == 204
        assert (await cli.get("/api/tokens")).status_code == 401
    async with bearer(server, second["token"]) as cli:
        assert (await cli.get("/api/auth/me")).status_code == 200


async def test_admins_list_and_revoke_anyones_tokens(server: Server) -> None:
    """The admin sees every user's tokens and revokes one; a plain user gets 403 on both."""
    async with server.client() as admin, server.client() as user:
        await register(admin, "root")
        await register(user, "henry")
        theirs = await new_token(user, name="henrys")
        listed = await admin.get("/api/admin/tokens")
        assert [(t["username"], t["name"]) for t in listed.json()] == [("henry", "henrys")]
        assert (await user.get("/api/admin/tokens")).status_code == 403
        assert (await user.delete(f"/api/admin/tokens/{theirs['id']}")).status_code == 403
        assert (await admin.delete(f"/api/admin/tokens/{theirs['id']}")).status_code == 204
        assert (await user.get("/api/tokens")).json()[0]["state"] == "revoked"


async def test_guessed_tokens_are_throttled_per_address(server: Server) -> None:
    """Unknown tokens count as failed sign-ins: after five a minute the address gets 429."""
    statuses = []
    for n in range(6):
        async with bearer(server, f"ast_guess{n}") as cli:
            statuses.append((await cli.get("/api/auth/me")).status_code)
    assert statuses == [401] * 5 + [429]


async def test_browser_approved_cli_login_hands_out_one_token_once(server: Server) -> None:
    """The command line starts a sign-in and polls (202); the signed-in person sees what is
    asked and approves; the next poll receives a working token, the one after 404. A token
    cannot approve, and a denied sign-in polls 404."""
    async with server.client() as browser, httpx.AsyncClient(base_url=server.url) as cli:
        await register(browser, "iris")
        started = await cli.post("/api/cli-login", json={"name": "laptop", "scope": "read"})
        assert started.status_code == 201, started.text
        login = started.json()
        approve_url = urlsplit(login["approveUrl"])
        assert approve_url.path == "/cli-login"
        assert (
            await cli.post("/api/cli-login/poll", json={"request": login["request"]})
        ).status_code == 202
        pending = await browser.get(f"/api/cli-login/pending?{approve_url.query}")
        assert pending.json()["name"] == "laptop"
        assert pending.json()["scope"] == "read"
        helper = await new_token(browser)
        async with bearer(server, helper["token"]) as other:
            by_token = await other.post("/api/cli-login/approve", json={"code": login["code"]})
        assert by_token.status_code == 403
        approved = await browser.post("/api/cli-login/approve", json={"code": login["code"]})
        assert approved.status_code == 200, approved.text
        polled = await cli.post("/api/cli-login/poll", json={"request": login["request"]})
        assert polled.status_code == 200, polled.text
        assert polled.json()["scope"] == "read"
        again = await cli.post("/api/cli-login/poll", json={"request": login["request"]})
        assert again.status_code == 404
        async with bearer(server, polled.json()["token"]) as fresh:
            assert (await fresh.get("/api/auth/me")).json()["username"] == "iris"

        denied = (await cli.post("/api/cli-login", json={"name": "nope"})).json()
        no = await browser.post(
            "/api/cli-login/approve", json={"code": denied["code"], "approve": False}
        )
        assert no.json() == {"status": "denied"}
        assert (
            await cli.post("/api/cli-login/poll", json={"request": denied["request"]})
        ).status_code == 404


async def test_a_launch_link_opens_the_sandbox_once_for_its_user_only(world: World) -> None:
    """`POST …/launch` with a token gives a link; in the user's signed-in browser it leads on
    to the sandbox host once; the second visit is refused, and another user's browser is
    refused too. A token itself cannot use /open."""
    sid = await world.sandbox()
    token = (await new_token(world.owner))["token"]
    async with bearer(world.server, token) as cli:
        assert (await cli.get(f"/api/sandboxes/{sid}/open")).status_code == 403
        first = (await cli.post(f"/api/sandboxes/{sid}/launch")).json()["url"]
        second = (await cli.post(f"/api/sandboxes/{sid}/launch")).json()["url"]
    link = urlsplit(first)
    opened = await world.owner.get(f"{link.path}?{link.query}")
    assert opened.status_code == 302, opened.text
    assert urlsplit(opened.headers["location"]).netloc == world.host(sid)
    replay = await world.owner.get(f"{link.path}?{link.query}")
    assert replay.status_code == 400
    other = urlsplit(second)
    stranger = await world.member("stranger", "owner")
    try:
        assert (await stranger.get(f"{other.path}?{other.query}")).status_code == 403
    finally:
        await stranger.aclose()


async def test_tokens_never_work_on_a_sandbox_host_and_are_not_forwarded(world: World) -> None:
    """On the sandbox's subdomain a bearer token signs nobody in, and with a sandbox cookie
    the upstream never sees the token."""
    sid = await world.sandbox()
    token = (await new_token(world.owner))["token"]
    async with world.sub(sid, Cookie="", Authorization=f"Bearer {token}") as sub:
        refused = await sub.get("/json", headers={"Accept": "application/json"})
    assert refused.status_code == 401
    assert world.upstream.requests == []
    cookie = await world.open(sid)
    async with world.sub(sid, cookie, Authorization=f"Bearer {token}") as sub:
        assert (await sub.get("/json")).status_code == 200
    assert world.upstream.requests
    for seen in world.upstream.requests:
        assert token not in str(seen.headers)


async def test_revoking_a_token_ends_the_event_stream_it_opened(server: Server) -> None:
    """An event stream opened with a token ends when the token is revoked (a stream the owner
    opened in the browser meanwhile goes on)."""
    async with server.client() as browser:
        _, workspace = await owner_of_workspace(browser)
        created = await new_token(browser, name="watcher", scope="read")
        events = f"/api/workspaces/{workspace['id']}/events"
        timeout = httpx.Timeout(30, read=None)
        async with (
            bearer(server, created["token"]) as cli,
            cli.stream("GET", events, timeout=timeout) as by_token,
            browser.stream("GET", events, timeout=timeout) as by_browser,
        ):
            assert by_token.status_code == 200
            assert by_browser.status_code == 200
            token_lines = by_token.aiter_lines()
            assert await anext(token_lines) == ": connected"
            browser_lines = by_browser.aiter_lines()
            assert await anext(browser_lines) == ": connected"
            revoked = await browser.delete(f"/api/tokens/{created['id']}")
            assert revoked.status_code == 204
            with trio.fail_after(20):  # heartbeats come every 15 s: an end is an end
                async for _ in token_lines:
                    pass
            # The browser's stream is still open: a change still reaches it.
            made = await browser.post(
                f"/api/workspaces/{workspace['id']}/sandboxes", json={"name": "after"}
            )
            assert made.status_code in (201, 202), made.text
            with trio.fail_after(20):
                async for line in browser_lines:
                    if '"after"' in line:
                        break

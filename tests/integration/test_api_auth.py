"""Password accounts over real HTTP: register, sign in, sign out, cookies, throttling, CSRF."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import psycopg
import trio

from agentserver.auth.sessions import SESSION_COOKIE
from tests.conftest import Server, make_settings, register, start_server


def set_cookie_of(response: httpx.Response) -> str:
    """The raw Set-Cookie header for the session cookie."""
    headers = [
        v
        for v in response.headers.get_list("set-cookie")
        if v.startswith((SESSION_COOKIE, "__Host-" + SESSION_COOKIE))
    ]
    assert len(headers) == 1, response.headers
    return headers[0]


def attributes(set_cookie: str) -> dict[str, str]:
    parts = [p.strip() for p in set_cookie.split(";")][1:]
    return {k.lower(): v for k, _, v in (p.partition("=") for p in parts)}


async def test_register_signs_in_and_the_first_user_is_admin(server: Server) -> None:
    """Registering answers 201 with the user and a session; the first account is the admin."""
    async with server.client() as first, server.client() as second:
        response = await first.post(
            "/api/auth/register",
            json={"username": "alice", "password": "correct-horse", "email": "alice@example.com"},
        )
        assert response.status_code == 201
        user = response.json()["user"]
        assert user["username"] == "alice"
        assert user["email"] == "alice@example.com"
        assert user["role"] == "admin"
        assert user["createdAt"].endswith("Z")
        me = await first.get("/api/auth/me")
        assert me.status_code == 200
        assert me.json()["id"] == user["id"]
        bob = await register(second, "bob")
        assert bob["role"] == "user"
        assert bob["email"] is None


async def test_session_cookie_attributes(server: Server) -> None:
    """The cookie is host-only, HttpOnly, SameSite=Lax, path /, 7 days, not Secure over http."""
    async with server.client() as client:
        response = await client.post(
            "/api/auth/register", json={"username": "alice", "password": "correct-horse"}
        )
        attrs = attributes(set_cookie_of(response))
        assert "httponly" in attrs
        assert attrs["samesite"].lower() == "lax"
        assert attrs["path"] == "/"
        assert attrs["max-age"] == str(7 * 24 * 3600)
        assert "domain" not in attrs
        assert "secure" not in attrs


async def test_cookie_is_secure_when_the_scheme_is_https(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """With --base-scheme https the session cookie carries Secure and the `__Host-` prefix
    (so a sandbox subdomain cannot plant one), and that cookie is the one the server reads."""
    srv = await start_server(nursery, make_settings(db_url, tmp_path, base_scheme="https"))
    try:
        async with srv.client() as client:
            response = await client.post(
                "/api/auth/register", json={"username": "alice", "password": "correct-horse"}
            )
            assert response.status_code == 201
            set_cookie = set_cookie_of(response)
            assert set_cookie.startswith("__Host-agentserver_session=")
            assert "secure" in attributes(set_cookie)
            assert "domain" not in attributes(set_cookie)
            token = set_cookie.split(";", 1)[0].split("=", 1)[1]
        async with srv.client() as plain:  # httpx keeps Secure cookies from plain http
            plain.headers["Cookie"] = f"__Host-agentserver_session={token}"
            assert (await plain.get("/api/auth/me")).json()["username"] == "alice"
            plain.headers["Cookie"] = f"agentserver_session={token}"
            assert (await plain.get("/api/auth/me")).status_code == 401
    finally:
        srv.shutdown.set()


async def test_login_by_username_or_email(server: Server) -> None:
    """Login takes the username (any case) or the email, answers 200 and sets a cookie."""
    async with server.client() as client:
        await register(client, "alice", email="alice@example.com")
    for login in ("alice", "ALICE", "alice@example.com"):
        async with server.client() as client:
            response = await client.post(
                "/api/auth/login", json={"username": login, "password": "correct-horse"}
            )
            assert response.status_code == 200, response.text
            assert response.json()["user"]["username"] == "alice"
            set_cookie_of(response)
            assert (await client.get("/api/auth/me")).status_code == 200


async def test_wrong_password_and_unknown_user_get_the_same_401(server: Server) -> None:
    """A wrong password and a nonexistent user are indistinguishable."""
    async with server.client() as client:
        await register(client, "alice")
    async with server.client() as client:
        wrong = await client.post(
            "/api/auth/login", json={"username": "alice", "password": "nope-nope"}
        )
        unknown = await client.post(
            "/api/auth/login", json={"username": "zed", "password": "nope-nope"}
        )
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()
        assert wrong.json()["error"]["code"] == "unauthenticated"
        assert "set-cookie" not in wrong.headers


async def test_me_without_a_session_is_401(server: Server) -> None:
    """No cookie, or a made-up one, is 401."""
    async with server.client() as client:
        assert (await client.get("/api/auth/me")).status_code == 401
        client.cookies.set(SESSION_COOKIE, "made-up-token")
        response = await client.get("/api/auth/me")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"


async def test_logout_revokes_the_session_on_the_server(server: Server) -> None:
    """After logout the old cookie value no longer works, even if a client kept it."""
    async with server.client() as client:
        await register(client, "alice")
        token = client.cookies[SESSION_COOKIE]
        response = await client.post("/api/auth/logout")
        assert response.status_code == 200
        assert attributes(set_cookie_of(response))["max-age"] == "0"
    async with server.client(cookies={SESSION_COOKIE: token}) as replay:
        assert (await replay.get("/api/auth/me")).status_code == 401


async def test_logout_without_a_session_is_harmless(server: Server) -> None:
    """Signing out when not signed in still answers 200."""
    async with server.client() as client:
        assert (await client.post("/api/auth/logout")).status_code == 200


async def test_tokens_and_passwords_are_stored_only_as_hashes(server: Server, db_url: str) -> None:
    """The sessions table holds SHA-256 of the token; users hold an argon2id hash."""
    async with server.client() as client:
        await register(client, "alice", password="correct-horse")
        token = client.cookies[SESSION_COOKIE]
    with psycopg.connect(db_url) as conn:
        hashes = [r[0] for r in conn.execute("SELECT token_hash FROM sessions")]
        password_hash = conn.execute("SELECT password_hash FROM users").fetchone()
    assert hashes == [hashlib.sha256(token.encode()).hexdigest()]
    assert password_hash is not None
    assert password_hash[0].startswith("$argon2id$")
    assert "correct-horse" not in password_hash[0]


async def test_username_and_password_rules_have_clear_messages(server: Server) -> None:
    """Bad usernames, short passwords and bad emails are 400s naming the field and the rule."""
    cases = [
        ({"username": "al", "password": "correct-horse"}, "username", "3-32 characters"),
        ({"username": "al ice", "password": "correct-horse"}, "username", "letters, digits"),
        ({"username": "-alice", "password": "correct-horse"}, "username", "starting and ending"),
        ({"username": "a" * 40, "password": "correct-horse"}, "username", "3-32"),
        ({"username": "alice", "password": "short"}, "password", "at least 8 characters"),
        ({"username": "alice", "password": "x" * 300}, "password", "at most 256"),
        (
            {"username": "alice", "password": "correct-horse", "email": "not-an-email"},
            "email",
            "not a valid",
        ),
    ]
    async with server.client() as client:
        for body, field, words in cases:
            response = await client.post("/api/auth/register", json=body)
            assert response.status_code == 400, (body, response.text)
            error = response.json()["error"]
            assert error["field"] == field, body
            assert words in error["message"], (body, error)


async def test_usernames_and_emails_are_unique_ignoring_case(server: Server) -> None:
    """A taken username or email (in any case) is a 409 naming the field."""
    async with server.client() as client:
        await register(client, "alice", email="alice@example.com")
    async with server.client() as client:
        taken = await client.post(
            "/api/auth/register", json={"username": "Alice", "password": "correct-horse"}
        )
        assert taken.status_code == 409
        assert taken.json()["error"]["field"] == "username"
        email = await client.post(
            "/api/auth/register",
            json={"username": "bob", "password": "correct-horse", "email": "ALICE@example.com"},
        )
        assert email.status_code == 409
        assert email.json()["error"]["field"] == "email"


async def test_closed_registration_still_admits_the_first_user(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """With --no-allow-registration the first account may register, later ones get 403."""
    srv = await start_server(nursery, make_settings(db_url, tmp_path, allow_registration="false"))
    try:
        async with srv.client() as client:
            assert (await register(client, "admin"))["role"] == "admin"
        async with srv.client() as client:
            response = await client.post(
                "/api/auth/register", json={"username": "bob", "password": "correct-horse"}
            )
            assert response.status_code == 403
            assert "registration is closed" in response.json()["error"]["message"]
    finally:
        srv.shutdown.set()


async def test_failed_logins_are_limited_per_client_address(server: Server) -> None:
    """Failures spread over many usernames from one address also lead to 429."""
    async with server.client() as client:
        statuses = [
            (
                await client.post(
                    "/api/auth/login", json={"username": f"user{i}", "password": "wrong-wrong"}
                )
            ).status_code
            for i in range(6)
        ]
    assert statuses == [401] * 5 + [429]


async def test_cookie_mutations_from_another_origin_are_refused(server: Server) -> None:
    """A cookie-carrying POST whose Origin or Referer is another site is 403; same origin works."""
    async with server.client() as client:
        await register(client, "alice")
        cookies = {SESSION_COOKIE: client.cookies[SESSION_COOKIE]}
    for headers in (
        {"Origin": "https://evil.example"},
        {"Referer": "https://evil.example/x"},
        {"Origin": "null"},
    ):
        async with httpx.AsyncClient(base_url=server.url, cookies=cookies, headers=headers) as evil:
            response = await evil.post("/api/workspaces", json={"name": "pwned"})
            assert response.status_code == 403, headers
            assert response.json()["error"]["code"] == "forbidden"
    async with server.client(cookies=cookies) as same:
        assert (await same.post("/api/workspaces", json={"name": "mine"})).status_code == 201
    async with server.client(cookies=cookies) as same:
        listed = await same.get("/api/workspaces", headers={"Origin": "https://evil.example"})
        assert listed.status_code == 200  # reads are not mutations
        assert [w["name"] for w in listed.json()] == ["mine"]


async def test_signing_in_sweeps_expired_sessions(server: Server, db_url: str) -> None:
    """An expired session is refused, and the next sign-in deletes it from the table."""
    async with server.client() as client:
        await register(client, "alice")
        token = client.cookies[SESSION_COOKIE]
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
    async with server.client(cookies={SESSION_COOKIE: token}) as stale:
        assert (await stale.get("/api/auth/me")).status_code == 401
    async with server.client() as client:
        login = await client.post(
            "/api/auth/login", json={"username": "alice", "password": "correct-horse"}
        )
        assert login.status_code == 200
    with psycopg.connect(db_url) as conn:
        hashes = [r[0] for r in conn.execute("SELECT token_hash FROM sessions")]
    assert hashes == [hashlib.sha256(client.cookies[SESSION_COOKIE].encode()).hexdigest()]


async def test_concurrent_first_registrations_make_exactly_one_admin(server: Server) -> None:
    """Several accounts registering at once on an empty server yield exactly one admin."""
    roles: list[str] = []

    async def one(name: str) -> None:
        async with server.client() as client:
            roles.append((await register(client, name))["role"])

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(one, f"user{i}")
    assert sorted(roles) == ["admin", "user", "user", "user", "user"]


async def test_the_first_admin_cannot_pick_a_common_password(server: Server) -> None:
    """Registering (even as the first user, the admin) with `password` is a 400 naming the field."""
    async with server.client() as client:
        response = await client.post(
            "/api/auth/register", json={"username": "admin", "password": "password"}
        )
        assert response.status_code == 400
        assert response.json()["error"]["field"] == "password"
        assert "common" in response.json()["error"]["message"]
        assert (await client.get("/api/auth/me")).status_code == 401


async def test_admins_are_told_when_the_server_has_no_anthropic_credentials(
    server: Server, nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """Without a key the admin's config carries a warning (a banner in the UI); other users do
    not get it, and with a key configured the admin does not either."""
    async with server.client() as admin, server.client() as user:
        await register(admin, "admin")
        await register(user, "bob")
        (warning,) = (await admin.get("/api/auth/config")).json()["warnings"]
        assert "no Anthropic credentials" in warning
        assert (await user.get("/api/auth/config")).json()["warnings"] == []
    keyed = await start_server(
        nursery, make_settings(db_url, tmp_path / "keyed", anthropic_api_key="sk-test")
    )
    try:
        async with keyed.client() as admin:
            await admin.post(
                "/api/auth/login", json={"username": "admin", "password": "correct-horse"}
            )
            assert (await admin.get("/api/auth/config")).json()["warnings"] == []
    finally:
        keyed.shutdown.set()

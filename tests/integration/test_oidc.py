"""Sign-in with a real OpenID provider on loopback: full redirect flows, linking rules, failures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from tests.conftest import Server, make_settings, register, start_server
from tests.support.oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    Knobs,
    OpenIDProvider,
    loopback_socket,
    open_provider,
)

# What our server believes its external URL is; the test plays DNS and sends it to the server.
EXTERNAL = "http://agentserver.test"
CALLBACK = f"{EXTERNAL}/api/auth/oidc/generic/callback"


@pytest.fixture
async def idp(nursery: trio.Nursery) -> OpenIDProvider:
    provider = await open_provider(nursery, CALLBACK)
    provider.add_user(
        "alice",
        email="alice@example.com",
        email_verified=True,
        preferred_username="alice",
        name="Alice Liddell",
    )
    return provider


async def start(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, issuer: str, **overrides: str
) -> Server:
    settings = make_settings(
        db_url,
        tmp_path / "data",
        oidc_redirect_base_url=EXTERNAL,
        oidc_issuer_url=issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        **overrides,
    )
    return await start_server(nursery, settings)


async def to_provider(
    browser: httpx.AsyncClient, login_as: str | None = "alice", **extra: str
) -> str:
    """Start a sign-in and play the person at the provider; returns the callback URL path."""
    started = await browser.get("/api/auth/oidc/generic")
    assert started.status_code == 302, started.text
    params = {"login_as": login_as} if login_as else {}
    async with httpx.AsyncClient() as person:
        url = httpx.URL(started.headers["location"]).copy_merge_params({**params, **extra})
        answer = await person.get(url)
    assert answer.status_code == 302, answer.text
    back = answer.headers["location"]
    assert back.startswith(CALLBACK + "?")
    return back[len(EXTERNAL) :]


async def sign_in(
    server: Server, login_as: str = "alice", **headers: str
) -> tuple[httpx.Response, dict[str, Any] | None]:
    """A whole sign-in in a fresh browser: the callback's answer and who that browser is now."""
    async with server.client(headers=headers) as browser:
        path = await to_provider(browser, login_as)
        response = await browser.get(path)
        return response, await me(browser)


async def count_identities(db_url: str) -> int:
    def count() -> int:
        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT count(*) FROM oidc_identities").fetchone()
            assert row is not None
            return int(row[0])

    return await trio.to_thread.run_sync(count)


async def me(browser: httpx.AsyncClient) -> dict[str, Any] | None:
    response = await browser.get("/api/auth/me")
    return dict(response.json()) if response.status_code == 200 else None


def assert_refused(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert words in response.text, response.text
    assert "agentserver_session" not in response.headers.get("set-cookie", "")


async def test_new_user_gets_an_account(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """A first sign-in creates an account named after the provider's username, with no password."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    response, user = await sign_in(server)
    assert response.status_code == 302
    assert response.headers["location"] == "/"
    assert user is not None
    assert (user["username"], user["email"], user["role"]) == (
        "alice",
        "alice@example.com",
        "admin",
    )
    async with server.client() as other:
        login = await other.post(
            "/api/auth/login", json={"username": "alice", "password": "x" * 12}
        )
    assert login.status_code == 401


async def test_returning_user_keeps_account_when_email_changes(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """A returning identity signs into the same account even after its email changed at the IdP."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    first, before = await sign_in(server)
    assert first.status_code == 302
    assert before is not None
    idp.users["alice"].update(email="alice@elsewhere.org", preferred_username="somebody-else")
    again, after = await sign_in(server)
    assert again.status_code == 302
    assert after is not None
    assert after["id"] == before["id"]
    assert after["username"] == "alice"


async def test_links_by_email_to_an_account_a_provider_vouched_for(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """A new identity whose verified email belongs to an account created by an earlier verified
    sign-in joins that account."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    first, existing = await sign_in(server)
    assert first.status_code == 302
    assert existing is not None
    idp.add_user("alice-again", email="Alice@Example.com", email_verified=True)
    response, user = await sign_in(server, "alice-again")
    assert response.status_code == 302
    assert user is not None
    assert user["id"] == existing["id"]


async def test_a_typed_in_email_never_captures_a_sign_in(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """Someone who registers with another person's address does not get that person's later
    SSO sign-in linked to their account: it is refused, and the account stays unlinked."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    async with server.client() as squatter:
        await register(squatter, "squatter", email="alice@example.com")
    for _ in range(2):
        response, user = await sign_in(server)
        assert_refused(response, 409, "was never confirmed")
        assert user is None
    assert await server.deps.db.scalar("count_users") == 1
    assert await count_identities(db_url) == 0


async def test_refuses_linking_without_boolean_verification(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """email_verified as "true", absent, false or 1 never links: a refusal page, no session."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    async with server.client() as owner:
        await register(owner, "victim", email="victim@example.com")
    variants: dict[str, dict[str, Any]] = {
        "string": {"email_verified": "true"},
        "absent": {},
        "false": {"email_verified": False},
        "one": {"email_verified": 1},
    }
    for key, extra in variants.items():
        idp.add_user(key, email="victim@example.com", **extra)
        response, user = await sign_in(server, key)
        assert_refused(response, 409, "did not confirm that this address is verified")
        assert user is None, key
    assert await server.deps.db.scalar("count_users") == 1


async def test_unverified_email_is_not_stored_on_a_new_account(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """A new account from an unverified email gets no email, so it cannot capture the address."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    idp.users["alice"]["email_verified"] = "true"
    response, user = await sign_in(server)
    assert response.status_code == 302
    assert user is not None
    assert user["email"] is None


async def test_no_linking_when_disabled(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """With linking by email off, a taken verified email is refused instead of linked."""
    server = await start(nursery, db_url, tmp_path, idp.url, oidc_link_by_email="false")
    first, _ = await sign_in(server)
    assert first.status_code == 302
    idp.add_user("alice-again", email="alice@example.com", email_verified=True)
    response, user = await sign_in(server, "alice-again")
    assert_refused(response, 409, "does not link sign-in providers")
    assert user is None


async def test_username_collision_gets_a_number(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """A provider username already taken by someone else becomes `name-2`."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    async with server.client() as owner:
        await register(owner, "alice", email="other@example.org")
    idp.add_user("alice2", email="a2@example.com", email_verified=True, preferred_username="Alice")
    response, user = await sign_in(server, "alice2")
    assert response.status_code == 302
    assert user is not None
    assert user["username"] == "alice-2"


async def test_tampered_state_is_refused(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """A callback whose state was changed, or that arrives in another browser, signs nobody in."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    async with server.client() as browser, server.client() as elsewhere:
        url = httpx.URL(await to_provider(browser))
        tampered = url.copy_set_param("state", url.params["state"][:-2] + "xx")
        assert_refused(await browser.get(str(tampered)), 400, "already used or has expired")
        other_path = await to_provider(browser)
        assert_refused(await elsewhere.get(other_path), 400, "another browser")
        missing = await browser.get("/api/auth/oidc/generic/callback?code=abc")
        assert_refused(missing, 400, "no sign-in state")
    assert await server.deps.db.scalar("count_users") == 0


async def test_replayed_callback_and_code_are_refused(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """A callback URL works once, even with its cookie; its code in a fresh flow is rejected too."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    async with server.client() as browser, server.client() as attacker:
        path = await to_provider(browser)
        cookie = browser.cookies["agentserver_oauth"]
        assert (await browser.get(path)).status_code == 302
        attacker.cookies.set("agentserver_oauth", cookie)
        assert_refused(await attacker.get(path), 400, "already used")
        attacker.cookies.clear()
        used_code = httpx.URL(path).params["code"]
        fresh = httpx.URL(await to_provider(attacker)).copy_set_param("code", used_code)
        assert_refused(await attacker.get(str(fresh)), 400, "already used")
        assert await me(attacker) is None


async def test_bad_id_tokens_are_rejected(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """ID tokens with a wrong nonce, another audience or past expiry sign nobody in."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    cases: list[tuple[str, object, str]] = [
        ("nonce", "not-the-nonce-we-sent", "nonce"),
        ("audience", "some-other-client", "aud claim"),
        ("expired", True, "expired"),
    ]
    for knob, value, words in cases:
        idp.knobs = Knobs(**{knob: value})  # type: ignore[arg-type]
        response, user = await sign_in(server)
        assert_refused(response, 401, words)
        assert user is None
    assert await server.deps.db.scalar("count_users") == 0
    idp.knobs = Knobs()
    response, user = await sign_in(server)
    assert response.status_code == 302
    assert user is not None


async def test_email_domain_allow_list_is_exact(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """Only a verified email whose whole domain is on the list gets in (no look-alikes)."""
    server = await start(nursery, db_url, tmp_path, idp.url, oidc_allowed_domains="example.com")
    refused = {
        "lookalike": ("alice@evil-example.com", True),
        "suffix": ("alice@example.com.evil.org", True),
        "subdomain": ("alice@sub.example.com", True),
        "unverified": ("alice@example.com", "true"),
        "two-ats": ("alice@example.com@evil.org", True),
    }
    for key, (email, verified) in refused.items():
        idp.add_user(key, email=email, email_verified=verified)
        response, user = await sign_in(server, key)
        assert_refused(response, 403, "email domain is not allowed")
        assert user is None, key
    assert await server.deps.db.scalar("count_users") == 0
    idp.add_user("ok", email="bob@EXAMPLE.com", email_verified=True)
    response, user = await sign_in(server, "ok")
    assert response.status_code == 302
    assert user is not None


async def test_denied_consent_is_a_readable_page(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """Declining at the provider (error=access_denied) ends on a page saying so."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    async with server.client() as browser:
        path = await to_provider(browser, login_as=None, deny="1")
        assert "error=access_denied" in path
        assert_refused(await browser.get(path), 403, "You declined")


async def test_failures_answer_json_when_asked(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """An API client asking for JSON gets the error object instead of a page."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    idp.knobs.nonce = "wrong"
    response, _ = await sign_in(server, Accept="application/json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "id_token_invalid"


async def test_token_endpoint_trouble_is_a_502_page(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """A provider whose token endpoint fails gives a 502 page, never a 500 or a session."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    idp.knobs.token_status = 503
    response, user = await sign_in(server)
    assert_refused(response, 502, "HTTP 503")
    assert user is None


async def test_provider_down_at_start_then_back(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """The server starts while the provider is down, answers 502 pages, and recovers lazily."""
    sock = loopback_socket()  # bound, not listening: connections are refused
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = await start(nursery, db_url, tmp_path, issuer)
    async with server.client() as browser:
        down = await browser.get("/api/auth/oidc/generic")
    assert_refused(down, 502, "Could not reach SSO")
    idp = await open_provider(nursery, CALLBACK, sock)
    idp.add_user("alice", email="alice@example.com", email_verified=True)
    response, user = await sign_in(server)
    assert response.status_code == 302
    assert user is not None


async def test_unconfigured_provider_is_404(server: Server) -> None:
    """Without configuration the provider routes answer 404 and no provider is listed."""
    async with server.client() as browser:
        for path in (
            "/api/auth/oidc/generic",
            "/api/auth/oidc/generic/callback?state=x&code=y",
            "/api/auth/oidc/github",
            "/api/auth/oidc/nope",
        ):
            assert (await browser.get(path)).status_code == 404, path
        assert (await browser.get("/api/auth/providers")).json() == []
        assert (await browser.get("/api/auth/config")).json()["providers"] == []


async def test_providers_lists_what_is_configured_without_secrets(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """/api/auth/providers and /api/auth/config list the SSO provider and no secret."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    async with server.client() as browser:
        listed = await browser.get("/api/auth/providers")
        config = await browser.get("/api/auth/config")
    expected = [{"id": "generic", "name": "SSO", "loginUrl": "/api/auth/oidc/generic"}]
    assert listed.json() == expected
    assert config.json()["providers"] == expected
    assert CLIENT_SECRET not in listed.text + config.text


async def test_no_secret_reaches_the_logs(
    nursery: trio.Nursery,
    db_url: str,
    tmp_path: Path,
    idp: OpenIDProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Codes, state, the flow cookie, tokens and the client secret never appear in any log line."""
    caplog.set_level(logging.DEBUG)
    server = await start(nursery, db_url, tmp_path, idp.url)
    async with server.client() as browser:
        path = await to_provider(browser)
        flow_secret = browser.cookies["agentserver_oauth"]
        response = await browser.get(path)
        assert response.status_code == 302
        session = browser.cookies["agentserver_session"]
    params = httpx.URL(path).params
    (token,) = idp.issued
    secrets = [
        params["code"],
        params["state"],
        flow_secret,
        session,
        CLIENT_SECRET,
        token["access_token"],
        token["id_token"],
    ]
    # The server's own loggers, and its HTTP client's calls to the provider (the test's browser
    # and person calls carry codes in URLs by design of the protocol, and are left out).
    # (authlib's grant modules log on the provider's side only, tokens included.)
    ours = (
        "agentserver",
        "authlib.integrations",
        "authlib.oauth2.client",
        "authlib.oauth2.auth",
        "joserfc",
        "hypercorn",
        "quart",
    )
    logged = "\n".join(
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(ours)
        or (r.name == "httpx" and idp.url in r.getMessage() and "/authorize" not in r.getMessage())
    )
    assert "POST " + idp.url + "/token" in logged
    assert "signed in with generic" in logged  # the log was captured at all
    for secret in secrets:
        assert secret not in logged


async def test_sso_sign_in_ends_the_previous_session(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """Signing in with SSO in a browser that had a session revokes that old session."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    async with server.client() as browser:
        await register(browser, "someone", email="someone@example.org")
        old = browser.cookies["agentserver_session"]
        response = await browser.get(await to_provider(browser))
        assert response.status_code == 302
        user = await me(browser)
        assert user is not None
        assert user["username"] == "alice"
    async with server.client() as replay:
        replay.cookies.set("agentserver_session", old)
        assert await me(replay) is None


async def test_an_account_made_by_sso_is_audited_as_a_registration_once(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, idp: OpenIDProvider
) -> None:
    """The first SSO sign-in creates the account: `auth.registered` (method oidc) and a
    sign-in; signing in again is a sign-in only."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    for _ in range(2):
        response, _user = await sign_in(server)
        assert response.status_code == 302

    def actions() -> list[tuple[str, str | None]]:
        with psycopg.connect(db_url) as conn:
            rows = conn.execute(
                "SELECT action, details->>'method' FROM audit_log"
                " WHERE action IN ('auth.registered', 'auth.sign_in') ORDER BY at, id"
            ).fetchall()
        return [(str(a), m) for a, m in rows]

    await server.deps.audit.flush()
    assert await trio.to_thread.run_sync(actions) == [
        ("auth.registered", "oidc"),
        ("auth.sign_in", "oidc"),
        ("auth.sign_in", "oidc"),
    ]

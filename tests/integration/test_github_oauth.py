"""Sign-in with GitHub against a local stand-in speaking GitHub's OAuth and REST formats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from agentserver.errors import ConfigError
from tests.conftest import Server, make_settings, register, start_server
from tests.support.github import CLIENT_ID, CLIENT_SECRET, GitHub, open_github
from tests.support.oidc_provider import CLIENT_ID as OIDC_CLIENT_ID
from tests.support.oidc_provider import CLIENT_SECRET as OIDC_CLIENT_SECRET
from tests.support.oidc_provider import open_provider

EXTERNAL = "http://agentserver.test"
CALLBACK = f"{EXTERNAL}/api/auth/oidc/github/callback"


@pytest.fixture
async def github(nursery: trio.Nursery) -> GitHub:
    stand_in = await open_github(nursery, CALLBACK)
    stand_in.add("octocat", "octo@example.com", name="The Octocat")
    return stand_in


async def start(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, github: GitHub, **overrides: str
) -> Server:
    settings = make_settings(
        db_url,
        tmp_path / "data",
        oidc_redirect_base_url=EXTERNAL,
        github_client_id=CLIENT_ID,
        github_client_secret=CLIENT_SECRET,
        github_oauth_url=github.url,
        github_api_url=github.api_url,
        **overrides,
    )
    return await start_server(nursery, settings)


async def to_github(
    browser: httpx.AsyncClient, login_as: str | None = "octocat", **extra: str
) -> str:
    """Start a sign-in and play the person at GitHub; returns the callback URL path."""
    started = await browser.get("/api/auth/oidc/github")
    assert started.status_code == 302, started.text
    authorize = httpx.URL(started.headers["location"])
    assert authorize.params["code_challenge_method"] == "S256"
    params = {"login_as": login_as} if login_as else {}
    async with httpx.AsyncClient() as person:
        answer = await person.get(authorize.copy_merge_params({**params, **extra}))
    assert answer.status_code == 302, answer.text
    back = answer.headers["location"]
    assert back.startswith(CALLBACK + "?")
    return back[len(EXTERNAL) :]


async def me(browser: httpx.AsyncClient) -> dict[str, Any] | None:
    response = await browser.get("/api/auth/me")
    return dict(response.json()) if response.status_code == 200 else None


async def sign_in(
    server: Server, login_as: str = "octocat"
) -> tuple[httpx.Response, dict[str, Any] | None]:
    """A whole sign-in in a fresh browser: the callback's answer and who that browser is now."""
    async with server.client() as browser:
        response = await browser.get(await to_github(browser, login_as))
        return response, await me(browser)


def assert_refused(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert words in response.text, response.text
    assert "agentserver_session" not in response.headers.get("set-cookie", "")


async def test_new_github_user_gets_an_account(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, github: GitHub
) -> None:
    """A first GitHub sign-in creates an account named after the login, with the primary email."""
    server = await start(nursery, db_url, tmp_path, github)
    response, user = await sign_in(server)
    assert response.status_code == 302
    assert response.headers["location"] == "/"
    assert user is not None
    assert (user["username"], user["email"]) == ("octocat", "octo@example.com")


async def test_returning_github_user_keeps_account(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, github: GitHub
) -> None:
    """The GitHub account id, not the email or login, decides which account signs in."""
    server = await start(nursery, db_url, tmp_path, github)
    _, before = await sign_in(server)
    github.accounts["octocat"].emails[0]["email"] = "moved@example.net"
    github.accounts["octocat"].login = "renamed-cat"
    response, after = await sign_in(server)
    assert response.status_code == 302
    assert before is not None
    assert after is not None
    assert after["id"] == before["id"]


async def test_links_by_verified_primary_email(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, github: GitHub
) -> None:
    """GitHub's verified primary email links to the account a verified sign-in created with it;
    a password account that merely typed the address in is refused instead."""
    server = await start(nursery, db_url, tmp_path, github)
    first, existing = await sign_in(server)
    assert first.status_code == 302
    assert existing is not None
    github.add("octo-second", "octo@example.com")
    response, user = await sign_in(server, "octo-second")
    assert response.status_code == 302
    assert user is not None
    assert user["id"] == existing["id"]
    async with server.client() as squatter:
        await register(squatter, "squatter", email="hubot@example.com")
    github.add("hubot", "hubot@example.com")
    refused, nobody = await sign_in(server, "hubot")
    assert_refused(refused, 409, "was never confirmed")
    assert nobody is None


async def test_unverified_primary_email_never_links(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, github: GitHub
) -> None:
    """An unverified primary email is ignored: no link to its owner, and it is not stored."""
    server = await start(nursery, db_url, tmp_path, github)
    async with server.client() as owner:
        victim = await register(owner, "victim", email="victim@example.com")
    github.add("mallory", "victim@example.com", verified=False)
    response, user = await sign_in(server, "mallory")
    assert response.status_code == 302
    assert user is not None
    assert user["id"] != victim["id"]
    assert user["email"] is None


async def test_org_allow_list(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, github: GitHub
) -> None:
    """Only members of an allowed organisation get in, found across pages of /user/orgs."""
    server = await start(nursery, db_url, tmp_path, github, github_allowed_orgs="Acme")
    github.page_size = 2
    github.add("outsider", "out@example.com", orgs=["other", "more", "elsewhere"])
    github.add("member", "member@example.com", orgs=["one", "two", "three", "acme"])
    response, user = await sign_in(server, "outsider")
    assert_refused(response, 403, "not a member of an organisation allowed")
    assert user is None
    response, user = await sign_in(server, "member")
    assert response.status_code == 302
    assert user is not None


async def test_closed_registration_needs_an_allow_list(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, github: GitHub
) -> None:
    """With registration closed the first GitHub user becomes admin; later strangers are refused."""
    server = await start(nursery, db_url, tmp_path, github, allow_registration="false")
    response, first = await sign_in(server)
    assert response.status_code == 302
    assert first is not None
    assert first["role"] == "admin"
    github.add("stranger", "stranger@example.com")
    response, user = await sign_in(server, "stranger")
    assert_refused(response, 403, "does not create new accounts")
    assert user is None


async def test_github_failures_are_readable(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, github: GitHub
) -> None:
    """Denied consent, a reused code and a failing API each end on a page, never a session."""
    server = await start(nursery, db_url, tmp_path, github)
    async with server.client() as browser:
        denied = await browser.get(await to_github(browser, None, deny="1"))
        assert_refused(denied, 403, "You declined the sign-in at GitHub")
        path = await to_github(browser)
        assert (await browser.get(path)).status_code == 302
        browser.cookies.clear()
        used_code = httpx.URL(path).params["code"]
        fresh = httpx.URL(await to_github(browser)).copy_set_param("code", used_code)
        assert_refused(await browser.get(str(fresh)), 400, "already used")
        assert await me(browser) is None
    github.api_status = 500
    response, user = await sign_in(server)
    assert_refused(response, 502, "GitHub answered with an error (HTTP 500)")
    assert user is None


async def test_providers_list_both_when_configured(
    nursery: trio.Nursery, db_url: str, tmp_path: Path, github: GitHub
) -> None:
    """With GitHub and OIDC configured, both are listed, GitHub first, with no secrets."""
    idp = await open_provider(nursery, f"{EXTERNAL}/api/auth/oidc/generic/callback")
    server = await start(
        nursery,
        db_url,
        tmp_path,
        github,
        oidc_issuer_url=idp.url,
        oidc_client_id=OIDC_CLIENT_ID,
        oidc_client_secret=OIDC_CLIENT_SECRET,
    )
    async with server.client() as browser:
        listed = await browser.get("/api/auth/providers")
    assert listed.json() == [
        {"id": "github", "name": "GitHub", "loginUrl": "/api/auth/oidc/github"},
        {"id": "generic", "name": "SSO", "loginUrl": "/api/auth/oidc/generic"},
    ]
    assert CLIENT_SECRET not in listed.text
    assert OIDC_CLIENT_SECRET not in listed.text


async def test_server_refuses_to_start_without_redirect_base_url(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """GitHub configured without OIDC_REDIRECT_BASE_URL stops the start with a message naming it."""
    settings = make_settings(
        db_url, tmp_path / "data", github_client_id=CLIENT_ID, github_client_secret=CLIENT_SECRET
    )
    with pytest.raises(BaseException) as caught:  # maybe inside an ExceptionGroup
        await start_server(nursery, settings)
    errors = list(leaves(caught.value))
    assert any(isinstance(e, ConfigError) and "OIDC_REDIRECT_BASE_URL" in e.message for e in errors)


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]

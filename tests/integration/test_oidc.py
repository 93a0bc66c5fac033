"""Sign-in with a real OpenID provider on loopback: full redirect flows, linking rules, failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import Server, make_settings, register, start_server
from tests.support.oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
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
    provider.add_user("alice", email="alice@example.com", email_verified=True,
                      preferred_username="alice", name="Alice Liddell")
    return provider


async def start(nursery: trio.Nursery, db_url: str, tmp_path: Path, issuer: str,
                **overrides: str) -> Server:
    settings = make_settings(db_url, tmp_path / "data", oidc_redirect_base_url=EXTERNAL,
                             oidc_issuer_url=issuer, oidc_client_id=CLIENT_ID,
                             oidc_client_secret=CLIENT_SECRET, **overrides)
    return await start_server(nursery, settings)


async def to_provider(browser: httpx.AsyncClient, login_as: str | None = "alice",
                      **extra: str) -> str:
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
    return back[len(EXTERNAL):]


async def sign_in(server: Server, login_as: str = "alice",
                  **headers: str) -> tuple[httpx.Response, httpx.AsyncClient]:
    browser = server.client(headers=headers)
    path = await to_provider(browser, login_as)
    return await browser.get(path), browser


async def me(browser: httpx.AsyncClient) -> dict[str, Any] | None:
    response = await browser.get("/api/auth/me")
    return dict(response.json()) if response.status_code == 200 else None


def assert_refused(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert words in response.text
    assert "agentserver_session" not in response.headers.get("set-cookie", "")


async def test_new_user_gets_an_account(nursery: trio.Nursery, db_url: str, tmp_path: Path,
                                        idp: OpenIDProvider) -> None:
    """A first sign-in creates an account named after the provider's username, with no password."""
    server = await start(nursery, db_url, tmp_path, idp.url)
    response, browser = await sign_in(server)
    assert response.status_code == 302 and response.headers["location"] == "/"
    user = await me(browser)
    assert user is not None
    assert (user["username"], user["email"], user["role"]) == ("alice", "alice@example.com", "admin")
    async with server.client() as other:
        login = await other.post("/api/auth/login", json={"username": "alice", "password": "x" * 12})
    assert login.status_code == 401

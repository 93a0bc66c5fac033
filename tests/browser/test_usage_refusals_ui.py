"""The Usage page shows the LLM calls the proxy refused, apart from successful usage."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import psycopg
import pytest
from playwright.sync_api import expect

from agentserver.auth.tokens import hash_token, new_id, new_token
from tests.browser.conftest import LiveServer, Tour
from tests.browser.test_web_ui import api_workspace, sign_in

VIEWPORT = {"width": 1280, "height": 800}
MESSAGES = "/proxy/anthropic/v1/messages"
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []}


@pytest.mark.browser
def test_usage_page_shows_refused_calls(
    live_server_factory: Callable[..., LiveServer],
    tour_factory: Callable[..., Tour],
    db_url: str,
) -> None:
    """Three calls refused for want of Anthropic credentials show as one line for the sandbox,
    with the reason, the count and the time of the last one."""
    server = live_server_factory(anthropic_api_key="")
    owner = server.register("rita")
    wid = api_workspace(owner, "Refusals")
    user_id = owner.get("/api/auth/me").json()["id"]
    sandbox_id, token = new_id(), new_token()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sandboxes (id, workspace_id, name, type, status, created_by,"
            " agent_secret, proxy_token_hash) VALUES (%s, %s, 'looping-box', 'opencode',"
            " 'running', %s, 'x', %s)",
            (sandbox_id, wid, user_id, hash_token(token)),
        )
    with httpx.Client(base_url=server.url, headers={"x-api-key": token}, timeout=30) as sandbox:
        for _ in range(3):
            assert sandbox.post(MESSAGES, json=BODY).status_code == 503

    tour = tour_factory(server.url, label="usage-refused", viewport=VIEWPORT)
    sign_in(tour, "rita")
    page = tour.page
    page.goto(f"{server.url}/w/{wid}/usage")
    refused = page.get_by_role("region", name="Refused calls")
    entry = refused.locator("li", has_text="looping-box")
    expect(entry).to_contain_text(
        re.compile("refused: 3 \u00d7 no Anthropic credentials on the server, last \\d\\d:\\d\\d")
    )
    expect(page.get_by_text("No LLM calls yet", exact=False)).to_be_visible()  # no tokens used
    tour.shot("usage-refused")

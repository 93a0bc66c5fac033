"""Real opencode (1.18.33) through the subdomain proxy: a guest sees neither the LLM proxy
token nor the opencode password through any GET route known to echo them, while a developer
still uses the agent's UI and API."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json

import httpx
import psycopg
import pytest
import trio

from tests.conftest import Server, register
from tests.support.sandbox_login import sandbox_client
from tests.support.sandboxes import open_events, owner_with_workspace

pytestmark = pytest.mark.opencode

# Every GET that echoed the config or the agent's environment in opencode 1.18.33 (probed by
# hand against `opencode serve`, whose /doc lists its routes), plus spellings its router
# treats as the same route, plus routes that must stay readable.
PROBES: list[tuple[str, dict[str, str]]] = [
    ("/config", {}),
    ("/config/providers", {}),
    ("/provider", {}),
    ("/global/config", {}),
    ("/api/provider/anthropic", {}),
    ("/experimental/console", {}),
    ("/CONFIG", {}),
    ("/%63onfig", {}),
    ("/config;a", {}),
    ("/config/providers/", {}),
    ("/file/content?path=environ&directory=/proc/self", {}),
    ("/file/content?path=environ&%64irectory=/proc/self", {}),
    ("/file/content?path=environ", {"x-opencode-directory": "/proc/self"}),
    ("/file/content?path=/proc/self/environ", {}),
    ("/file/content?path=../../../../../proc/self/environ", {}),
    ("/api/fs/read/environ?location%5Bdirectory%5D=/proc/self", {}),
    ("/file?path=.&directory=/proc/self", {}),
    ("/path", {}),
    ("/project", {}),
    ("/session", {}),
    ("/agent", {}),
    ("/api/model", {}),
]


def revealed(body: bytes, secrets: list[str]) -> list[str]:
    """Which secrets a response shows, as text or inside a base64 file `content`."""
    texts = [body.decode("utf-8", "replace")]
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("content"), str):
        with contextlib.suppress(binascii.Error, ValueError):
            texts.append(base64.b64decode(parsed["content"]).decode("utf-8", "replace"))
    return [s for s in secrets if any(s in t for t in texts)]


async def agent_secret(db_url: str, sandbox_id: str) -> str:
    def read() -> str:
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT agent_secret FROM sandboxes WHERE id = %s", (sandbox_id,)
            ).fetchone()
        assert row is not None
        return str(row[0])

    return await trio.to_thread.run_sync(read)


async def subdomain_client(
    server: Server, main: httpx.AsyncClient, sandbox_id: str
) -> httpx.AsyncClient:
    return await sandbox_client(server.url, main, sandbox_id, timeout=120)


async def test_a_guest_sees_no_secret_of_a_real_opencode(
    sandbox_server: Server, nursery: trio.Nursery, db_url: str
) -> None:
    """Through every probed GET route a guest gets neither the proxy token nor the opencode
    password (the secret-bearing ones answer 403), while a developer reads /config (with the
    token), the UI and sessions."""
    owner, wid = await owner_with_workspace(sandbox_server)
    events = await open_events(nursery, owner, wid)
    created = await owner.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "oc"})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    assert (await events.until(sid, "running", "failed"))["status"] == "running"
    events.close()
    clients = {}
    for role in ("developer", "guest"):
        clients[role] = sandbox_server.client()
        await register(clients[role], role)
        added = await owner.post(
            f"/api/workspaces/{wid}/members", json={"username": role, "role": role}
        )
        assert added.status_code == 201, added.text
    dev = await subdomain_client(sandbox_server, clients["developer"], sid)
    guest = await subdomain_client(sandbox_server, clients["guest"], sid)
    try:
        config = await dev.get("/config")
        assert config.status_code == 200, config.text
        proxy_token = config.json()["provider"]["anthropic"]["options"]["apiKey"]
        secrets = [proxy_token, await agent_secret(db_url, sid)]
        assert all(len(s) >= 16 for s in secrets)
        page = await dev.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert "<html" in page.text.lower()
        assert (await dev.get("/session")).status_code == 200

        leaks = []
        for path, headers in PROBES:
            response = await guest.get(path, headers=headers)
            shown = revealed(response.content, secrets)
            if shown:
                leaks.append(f"{path} {headers}: {response.status_code}")
        assert not leaks, leaks
        assert (await guest.get("/config")).status_code == 403
        assert (await guest.get("/provider")).status_code == 403
        assert (await guest.get("/session")).status_code == 200
        guest_page = await guest.get("/", headers={"Accept": "text/html"})
        assert guest_page.status_code == 200
    finally:
        for client in (dev, guest, owner, *clients.values()):
            await client.aclose()

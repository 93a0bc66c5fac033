"""Real opencode through the subdomain proxy: web UI, JSON API, event stream and terminal."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio_websocket

from tests.conftest import Server
from tests.support.sandbox_login import sandbox_client
from tests.support.sandboxes import open_events, owner_with_workspace

pytestmark = pytest.mark.opencode


async def test_opencode_through_the_subdomain_proxy(
    sandbox_server: Server, nursery: trio.Nursery
) -> None:
    """A sandbox created through the API reaches running; through its subdomain `/` is
    opencode's HTML, `/session` is JSON, `/event` delivers an event and a terminal WebSocket
    echoes a command's output; once paused, the next page load wakes it."""
    client, wid = await owner_with_workspace(sandbox_server)
    events = await open_events(nursery, client, wid)
    created = await client.post(f"/api/workspaces/{wid}/sandboxes", json={"name": "oc"})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    running = await events.until(sid, "running", "failed")
    assert running["status"] == "running", running
    events.close()

    async with await sandbox_client(sandbox_server.url, client, sid, timeout=60) as sub:
        host, cookie = sub.headers["Host"], sub.headers["Cookie"]
        origin = f"http://{host}"

        page = await sub.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "<html" in page.text.lower()

        sessions = await sub.get("/session")
        assert sessions.status_code == 200
        assert isinstance(sessions.json(), list)

        async with sub.stream("GET", "/event") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            with trio.fail_after(30):
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        assert json.loads(line[5:])["type"]
                        break

        pty = await sub.post("/pty", json={"command": "/bin/sh"}, headers={"Origin": origin})
        assert pty.status_code == 200, pty.text
        pty_id = pty.json()["id"]

    stream = await trio.open_tcp_stream("127.0.0.1", sandbox_server.port)
    ws = await trio_websocket.wrap_client_stream(
        nursery,
        stream,
        host,
        f"/pty/{pty_id}/connect",
        extra_headers=[(b"origin", origin.encode()), (b"cookie", cookie.encode())],
    )
    await ws.send_message("echo proxied-$((6*7))\n")
    output = ""
    with trio.fail_after(30):
        while "proxied-42" not in output:
            message = await ws.get_message()
            output += message if isinstance(message, str) else message.decode(errors="replace")
    await ws.aclose()

    # Paused: a page load through the proxy wakes it, and opencode answers again.
    events = await open_events(nursery, client, wid)
    assert (await client.post(f"/api/sandboxes/{sid}/pause")).status_code == 200
    assert (await events.until(sid, "paused", "failed"))["status"] == "paused"
    async with httpx.AsyncClient(
        base_url=sandbox_server.url, headers={"Host": host, "Cookie": cookie}, timeout=60
    ) as sub:
        woken_at = len(events.seen)
        waking = await sub.get("/", headers={"Accept": "text/html"})
        assert waking.status_code == 503
        assert "Waking up" in waking.text
        awake = await events.until(sid, "running", "failed", after=woken_at)
        assert awake["status"] == "running", awake
        page = await sub.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200, page.text
    events.close()

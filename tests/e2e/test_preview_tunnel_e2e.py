"""Previews of a local agent's ports, end to end: a real server, a real `agent connect` sharing
ports with `--allow-port`, and dev servers on this machine. The agent forwards only the ports
it shares and refuses any other itself."""

from __future__ import annotations

import base64
import json

import httpx
import trio
import trio_websocket

from agentserver.kinds import NOT_SHARED, PREVIEW_REFUSED_HEADER
from tests.support.sandbox_login import sandbox_client
from tests.support.tunnel_world import TunnelWorld, free_port
from tests.support.upstream import HTML, RecordingUpstream, serve_upstream
from tests.support.workspace_events import watch_statuses


def preview_host(world: TunnelWorld, sandbox_id: str, port: int) -> str:
    return f"p{port}-{sandbox_id}.localhost:{world.server.port}"


async def preview_client(world: TunnelWorld, sandbox_id: str, port: int) -> httpx.AsyncClient:
    """The owner's browser on the preview's host, signed in through /open and the ticket."""
    host = preview_host(world, sandbox_id, port)
    return await sandbox_client(world.server.url, world.owner, sandbox_id, host=host)


async def test_a_shared_port_is_previewed_through_the_tunnel(
    world: TunnelWorld, nursery: trio.Nursery
) -> None:
    """A dev server on a port the agent shares answers at its preview host (a page, an event
    stream, a WebSocket echo); the list shows the shared port; the choice is saved with the
    agent's credentials."""
    opencode: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    app: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    agent = await world.start_agent(
        nursery, f"http://127.0.0.1:{opencode.port}", allow_ports=[app.port]
    )
    sid = agent.sandbox_id
    assert agent.session is not None
    assert agent.session.config.allowedPorts == (app.port,)
    saved = json.loads(next(world.tmp.glob("agent-*.json")).read_text())
    assert saved["allowedPorts"] == [app.port]
    async with watch_statuses(world.owner, world.workspace_id) as watch:
        await watch.until(sid, "running")
    listed = (await world.owner.get(f"/api/sandboxes/{sid}/previews")).json()
    assert [p["port"] for p in listed["previews"]] == [app.port]

    async with await preview_client(world, sid, app.port) as sub:
        page = await sub.get("/")
        assert page.status_code == 200
        assert page.content == HTML
        assert app.sse_send is not None
        async with sub.stream("GET", "/sse") as response:
            lines = response.aiter_lines()
            for n in range(2):
                await app.sse_send.send(f"hot-{n}")
                line = await anext(lines)
                while not line.startswith("data:"):
                    line = await anext(lines)
                assert json.loads(line[5:])["payload"] == f"hot-{n}"
            await app.sse_send.send("")
        cookie = sub.headers["Cookie"]
    host = preview_host(world, sid, app.port)
    stream = await trio.open_tcp_stream("127.0.0.1", world.server.port)
    ws = await trio_websocket.wrap_client_stream(
        nursery,
        stream,
        host,
        "/ws",
        extra_headers=[(b"cookie", cookie.encode()), (b"origin", f"http://{host}".encode())],
    )
    await ws.send_message("reload?")
    assert await ws.get_message() == "echo:reload?"
    await ws.aclose()
    assert opencode.requests == [r for r in opencode.requests if r.target == "/global/health"]
    for seen in app.requests:
        assert "agentserver" not in json.dumps(seen.headers)


async def test_a_port_the_agent_does_not_share_is_refused(
    world: TunnelWorld, nursery: trio.Nursery
) -> None:
    """The server refuses a port the agent did not share with a page; asked anyway over the
    tunnel, the agent refuses it itself and never connects to it."""
    opencode: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    app: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    shared = free_port()
    agent = await world.start_agent(
        nursery, f"http://127.0.0.1:{opencode.port}", allow_ports=[shared]
    )
    sid = agent.sandbox_id
    async with await preview_client(world, sid, app.port) as sub:
        page = await sub.get("/", headers={"Accept": "text/html"})
        api = await sub.get("/", headers={"Accept": "application/json"})
    assert page.status_code == 403
    assert "does not share this port" in page.text
    assert api.json()["error"]["code"] == "preview_port_not_allowed"

    tunnel = world.server.deps.hub.get(sid)
    assert tunnel is not None
    stream = await tunnel.open_request("GET", "/", [], body=False, port=app.port)
    with trio.fail_after(10):
        status, headers = await stream.receive_response_head()
    await stream.aclose()
    assert status == 403
    assert (PREVIEW_REFUSED_HEADER, NOT_SHARED) in headers
    assert app.requests == []
    assert any(f"refused a preview of port {app.port}" in line for line in agent.lines)


async def test_a_shared_port_nothing_listens_on_gets_the_clear_page(
    world: TunnelWorld, nursery: trio.Nursery
) -> None:
    """A shared port with no dev server yet: the page says nothing is listening there."""
    opencode: RecordingUpstream = await nursery.start(serve_upstream, RecordingUpstream())
    idle = free_port()
    agent = await world.start_agent(
        nursery, f"http://127.0.0.1:{opencode.port}", allow_ports=[idle]
    )
    async with await preview_client(world, agent.sandbox_id, idle) as sub:
        page = await sub.get("/", headers={"Accept": "text/html"})
        upgrade = await sub.get(
            "/ws",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
                "Origin": f"http://{preview_host(world, agent.sandbox_id, idle)}",
            },
        )
    assert page.status_code == 502
    assert f"Nothing is listening on port {idle} in this sandbox yet" in page.text
    assert upgrade.status_code != 101

"""Previews through the subdomain proxy, driven by the fake backend: `p{port}-{id}` reaches a
dev server in a sandbox (HTTP, event streams, WebSockets) on both server paths, with the
sandbox's own sign-in, and refuses what is never a preview with a page in words."""

from __future__ import annotations

import json

import pytest
import trio

from agentserver.sandboxes.base import Endpoint
from tests.support.preview_world import Previews
from tests.support.proxy_world import AGENT_SECRET
from tests.support.server_paths import Path
from tests.support.upstream import HTML

JSON = {"Accept": "application/json"}
PAGE = {"Accept": "text/html"}


def agent_endpoint(previews: Previews) -> Endpoint:
    """Where the world's sandboxes' agent listens (the recording upstream)."""
    return Endpoint("127.0.0.1", previews.world.upstream.port)


async def test_a_member_opens_a_preview_and_nothing_of_ours_reaches_the_app(
    previews: Previews, server_path: Path
) -> None:
    """/open?port= leads through the ticket to the preview host's own cookie; the dev server
    gets the request with none of our cookies or credentials, and its answer comes back."""
    world = previews.world
    sid = await world.sandbox()
    app = await previews.dev_server(sid, 5173)
    opened = await world.owner.get(f"/api/sandboxes/{sid}/open?port=5173")
    assert opened.status_code == 302
    assert opened.headers["location"].startswith(f"{previews.origin(sid, 5173)}/_agentserver/auth")
    cookie = await previews.open(sid, 5173)
    main_session = world.owner.cookies["agentserver_session"]
    crumbs = f"agentserver_sandbox={cookie}; agentserver_session={main_session}; app=1"
    async with previews.client(sid, 5173, Cookie=crumbs, Authorization="Bearer app") as sub:
        page = await sub.get("/")
        posted = await sub.post(
            "/echo", content=b"hello", headers={"Origin": previews.origin(sid, 5173)}
        )
    assert page.status_code == 200
    assert page.content == HTML
    assert posted.content == b"hello"
    for seen in app.requests:
        flat = json.dumps(seen.headers)
        assert cookie not in flat
        assert main_session not in flat
        assert AGENT_SECRET not in flat
        assert seen.header("cookie") == ["app=1"]
        assert seen.header("authorization") == ["Bearer app"]  # the app's own
        assert seen.header("x-forwarded-host") == [previews.host(sid, 5173)]
    assert world.upstream.requests == []  # the agent itself saw nothing
    assert sid in world.service.active  # preview traffic is activity


async def test_an_event_stream_arrives_event_by_event(
    previews: Previews, server_path: Path
) -> None:
    """Each event of a dev server's stream reaches the browser before the next is produced."""
    sid = await previews.world.sandbox()
    app = await previews.dev_server(sid, 3000)
    cookie = await previews.open(sid, 3000)
    assert app.sse_send is not None
    async with previews.client(sid, 3000, cookie) as sub, sub.stream("GET", "/sse") as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = response.aiter_lines()
        for n in range(3):
            await app.sse_send.send(f"reload-{n}")
            line = await anext(lines)
            while not line.startswith("data:"):
                line = await anext(lines)
            assert json.loads(line[5:])["payload"] == f"reload-{n}"
        await app.sse_send.send("")


async def test_a_websocket_echoes_through_a_preview(previews: Previews) -> None:
    """A dev server's WebSocket (hot reload) is relayed both ways, with our cookie stripped;
    another site's Origin is refused before it reaches the app."""
    sid = await previews.world.sandbox()
    app = await previews.dev_server(sid, 5173)
    cookie = await previews.open(sid, 5173)
    ws = await previews.websocket(sid, 5173, cookie, previews.origin(sid, 5173))
    await ws.send_message("ping")
    assert await ws.get_message() == "echo:ping"
    await ws.send_message(b"\x00\x01")
    assert await ws.get_message() == b"\x00\x01"
    await ws.aclose()
    assert cookie not in json.dumps(app.websockets[0].headers)
    for origin in ("http://evil.example", f"http://{previews.world.host(sid)}", None):
        assert await previews.ws_refusal(sid, 5173, cookie, origin) == 403
    assert len(app.websockets) == 1


async def test_two_sandboxes_on_the_same_port_are_different_previews(
    previews: Previews, server_path: Path
) -> None:
    """Port 3000 of one sandbox and port 3000 of another reach their own dev servers, and one
    sandbox's cookie does not open the other's preview."""
    world = previews.world
    first, second = await world.sandbox(), await world.sandbox()
    app1, app2 = await previews.dev_server(first, 3000), await previews.dev_server(second, 3000)
    cookie1, cookie2 = await previews.open(first, 3000), await previews.open(second, 3000)
    async with previews.client(first, 3000, cookie1) as sub:
        assert (await sub.get("/json?from=first")).status_code == 200
    async with previews.client(second, 3000, cookie2) as sub:
        assert (await sub.get("/json?from=second")).status_code == 200
    async with previews.client(second, 3000, cookie1, **JSON) as sub:
        assert (await sub.get("/json?from=crossed")).status_code == 401
    assert [r.target for r in app1.requests] == ["/json?from=first"]
    assert [r.target for r in app2.requests] == ["/json?from=second"]


async def test_a_port_nothing_listens_on_gets_a_clear_page(
    previews: Previews, server_path: Path
) -> None:
    """Not a 502 stack: a page saying nothing listens on that port yet, reloading itself."""
    sid = await previews.world.sandbox()
    cookie = await previews.open(sid, 5173)  # the fake has no server on 5173
    async with previews.client(sid, 5173, cookie, **PAGE) as sub:
        page = await sub.get("/")
    async with previews.client(sid, 5173, cookie, **JSON) as sub:
        api = await sub.get("/")
    assert page.status_code == 502
    assert "Nothing is listening on port 5173 in this sandbox yet" in page.text
    assert "retry-after" in page.headers
    assert api.json()["error"]["code"] == "preview_not_listening"


@pytest.mark.parametrize(
    ("port", "status", "code"),
    [
        (4096, 403, "preview_port_reserved"),  # opencode's own port
        (18789, 403, "preview_port_reserved"),  # OpenClaw's
        (80, 404, "preview_port_invalid"),
        (1023, 404, "preview_port_invalid"),
        (65536, 404, "preview_port_invalid"),
        (99999, 404, "preview_port_invalid"),
    ],
)
async def test_the_agents_port_and_ports_out_of_range_are_refused(
    previews: Previews, port: int, status: int, code: str
) -> None:
    """Whoever asks, signed in or not, never reaches these ports; /open refuses them too."""
    world = previews.world
    sid = await world.sandbox()
    # Were it not refused, the request would reach the sandbox's agent (the recording upstream).
    previews.backend.listen(sid, port, agent_endpoint(previews))
    async with previews.client(sid, port, **JSON) as sub:
        response = await sub.get("/")
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    opened = await world.owner.get(f"/api/sandboxes/{sid}/open?port={port}")
    assert opened.status_code == 400
    assert world.upstream.requests == []


async def test_the_sandboxs_own_agent_port_is_refused_as_a_preview(previews: Previews) -> None:
    """The port the sandbox's agent listens on (wherever its backend put it) is no preview."""
    world = previews.world
    sid = await world.sandbox()
    cookie = await previews.open(sid, 5173)
    agent_port = world.upstream.port
    async with previews.client(sid, agent_port, cookie, **JSON) as sub:
        response = await sub.get("/")
    assert response.status_code in (403, 404)
    assert world.upstream.requests == []


async def test_a_backend_without_previews_refuses_them_with_a_page(previews: Previews) -> None:
    """Where the backend cannot reach a sandbox's ports, the preview says so, and the list
    says previews are not available."""
    sid = await previews.world.sandbox()
    cookie = await previews.open(sid, 5173)
    previews.backend.previews = False
    async with previews.client(sid, 5173, cookie, **JSON) as sub:
        response = await sub.get("/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "previews_unavailable"
    listed = await previews.world.owner.get(f"/api/sandboxes/{sid}/previews")
    assert listed.json() == {"available": False, "previews": []}


async def test_a_paused_sandboxs_preview_wakes_it_on_a_page_load(previews: Previews) -> None:
    """A browser loading a preview of a paused sandbox wakes it (as opencode's page does); a
    script's fetch does not."""
    world = previews.world
    sid = await world.sandbox()
    cookie = await previews.open(sid, 5173)
    await world.sql("UPDATE sandboxes SET status = 'paused' WHERE id = %s", sid)
    world.server.deps.access.forget(sid)
    async with previews.client(sid, 5173, cookie, **JSON) as sub:
        fetched = await sub.get("/")
    assert fetched.json()["error"]["code"] == "sandbox_paused"
    assert world.service.woken == []
    async with previews.client(sid, 5173, cookie, **PAGE) as sub:
        page = await sub.get("/")
    assert page.status_code == 503
    assert world.service.woken == [sid]


async def test_the_previews_list_and_its_events(previews: Previews) -> None:
    """The list shows what the sandbox serves (not its agent's port) and what is public, with
    URLs; making a port public is published on the workspace's event stream."""
    world = previews.world
    sid = await world.sandbox()
    await previews.dev_server(sid, 5173)
    previews.backend.listen(sid, 4096, agent_endpoint(previews))
    events = world.server.deps.events
    with events.subscribe(world.workspace_id) as sub:
        made = await world.owner.put(f"/api/sandboxes/{sid}/previews/8000/public")
        assert made.status_code == 200, made.text
        with trio.fail_after(5):
            event = await sub.inbox.receive()
    assert event == {"type": "previews", "previews": {"sandboxId": sid}}
    listed = (await world.owner.get(f"/api/sandboxes/{sid}/previews")).json()
    assert listed["available"] is True
    assert [(p["port"], p["public"]) for p in listed["previews"]] == [(5173, False), (8000, True)]
    first = listed["previews"][0]
    assert first["url"] == f"http://p5173-{sid}.localhost:{world.server.port}/"
    assert first["openUrl"] == f"/api/sandboxes/{sid}/open?port=5173"
    assert listed["previews"][1]["changedBy"] == made.json()["changedBy"] is not None
    bad = await world.owner.put(f"/api/sandboxes/{sid}/previews/4096/public")
    assert bad.status_code == 400

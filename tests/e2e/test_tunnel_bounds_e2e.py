"""What an agent can make the real server hold through its tunnel: ping floods, too many
streams, oversize messages, and how the agent refuses oversize messages from a server."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio
import trio_websocket
import wsproto
import wsproto.events

from agentserver.agent.connect import AGENT_SETTINGS, AgentConfig, Session, describe
from agentserver.agent.forward import Forwarder
from agentserver.sandboxes.tunnel_session import TUNNEL_SETTINGS, TunnelSessions
from agentserver.settings import Settings
from agentserver.tunnel import Tunnel
from agentserver.tunnel.frames import VERSION, Hello, Ping, Pong, encode, max_message_size
from agentserver.tunnel.websocket import WebSocket
from tests.support.bulk_upstream import BulkUpstream
from tests.support.tunnel_world import TunnelWorld
from tests.support.workspace_events import watch_statuses

MAX_STREAMS = 3
BUDGET = 1024 * 1024
RAW_HELLO = encode(Hello(VERSION, 256 * 1024, 16 * 1024 * 1024, 20.0))


@pytest.fixture
def server_settings(server_settings: Settings) -> Settings:
    """The usual test server, with room for only a few streams per tunnel, a 1 MiB receive budget
    and a 1 s wait for an agent's credit."""
    return replace(
        server_settings,
        tunnel_max_streams=MAX_STREAMS,
        tunnel_send_timeout=1.0,
        tunnel_receive_budget=BUDGET,
    )


async def _register(world: TunnelWorld) -> tuple[str, str]:
    """A new local sandbox: (its id, its tunnel token), as `agent connect` gets them."""
    response = await world.owner.post(
        "/api/agent/register", json={"code": await world.code(), "name": "raw"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return str(body["sandboxId"]), str(body["tunnelToken"])


@asynccontextmanager
async def raw_agent(
    world: TunnelWorld, sandbox_id: str, token: str
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A hand-driven agent whose socket takes in little: once its one-message queue is full it
    reads nothing more, so what the server sends it backs up on the server."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    await sock.connect(("127.0.0.1", world.server.port))
    async with trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(
            nursery,
            trio.SocketStream(sock),
            f"127.0.0.1:{world.server.port}",
            f"/api/tunnel/{sandbox_id}",
            extra_headers=[(b"authorization", f"Bearer {token}".encode())],
            message_queue_size=1,
        )
        try:
            yield ws
        finally:
            nursery.cancel_scope.cancel()


async def test_a_ping_flood_from_an_agent_that_does_not_read_queues_one_pong(
    world: TunnelWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20,000 pings from an agent that reads nothing leave at most one Pong (and no more than the
    control bound of frames) waiting on the server."""
    pings = 20_000
    seen, all_seen = 0, trio.Event()
    get_message = WebSocket.get_message  # the server's end of an agent's tunnel

    async def counted(link: WebSocket) -> bytes:
        nonlocal seen
        message = await get_message(link)
        seen += 1
        if seen == pings + 1:  # the Hello, then every ping
            all_seen.set()
        return message

    monkeypatch.setattr(WebSocket, "get_message", counted)
    sandbox_id, token = await _register(world)
    async with raw_agent(world, sandbox_id, token) as ws:
        await ws.send_message(RAW_HELLO)
        for opaque in range(1, pings + 1):
            await ws.send_message(encode(Ping(opaque)))
        with trio.fail_after(120):
            await all_seen.wait()
        tunnel = world.server.deps.hub.get(sandbox_id)
        assert isinstance(tunnel, Tunnel)
        waiting = tunnel._conn._outbox
        assert sum(type(frame) is Pong for frame in waiting) <= 1
        assert len(waiting) <= TUNNEL_SETTINGS.max_queued_control
        # Nothing else ended it (on a very slow run, the 20 s write-stall check may have).
        assert not tunnel.closed or "read nothing" in tunnel.close_reason


async def test_requests_beyond_the_stream_cap_get_503_and_the_tunnel_stays_up(
    world: TunnelWorld, bulk: BulkUpstream, nursery: trio.Nursery
) -> None:
    """With `--tunnel-max-streams 3` and three endless streams open, a fourth request gets a 503
    `sandbox_busy` answer; once one stream ends, requests go through on the same tunnel."""
    agent = await world.start_agent(nursery, f"http://127.0.0.1:{bulk.port}")
    async with watch_statuses(world.owner, world.workspace_id) as watch:
        await watch.until(agent.sandbox_id, "running")  # the server registered the tunnel
    tunnel = world.server.deps.hub.get(agent.sandbox_id)
    assert isinstance(tunnel, Tunnel)
    async with await world.browser(agent.sandbox_id) as browser, trio.open_nursery() as streams:
        stop = [trio.Event() for _ in range(MAX_STREAMS)]
        opened = trio.Semaphore(0)

        async def endless(done: trio.Event) -> None:
            async with browser.stream("GET", "/forever") as response:
                assert response.status_code == 200
                lines = response.aiter_lines()  # kept: closing it would close the response
                assert (await anext(lines)).startswith(":")
                opened.release()
                await done.wait()

        for done in stop:
            streams.start_soon(endless, done)
        for _ in stop:
            await opened.acquire()
        busy = await browser.get("/small", headers={"accept": "application/json"})
        assert busy.status_code == 503
        assert busy.json()["error"]["code"] == "sandbox_busy"
        assert tunnel._conn._open_counts[True] == MAX_STREAMS
        stop[0].set()
        with trio.fail_after(30):
            await bulk.forever_closed.wait()  # after the server dropped that stream
        assert (await browser.get("/small")).status_code == 200
        for done in stop:
            done.set()
    assert not tunnel.closed
    assert agent.session is not None
    assert agent.session.connections == 1


async def test_unread_downloads_hold_no_more_than_the_receive_budget_allows(
    world: TunnelWorld, bulk: BulkUpstream, nursery: trio.Nursery
) -> None:
    """Three 64 MiB downloads nobody reads: the agent is never allowed more in flight than the
    budget plus the initial window of each other stream, and the server holds no more."""
    agent = await world.start_agent(nursery, f"http://127.0.0.1:{bulk.port}")
    async with watch_statuses(world.owner, world.workspace_id) as watch:
        await watch.until(agent.sandbox_id, "running")
    tunnel = world.server.deps.hub.get(agent.sandbox_id)
    assert isinstance(tunnel, Tunnel)
    bound = BUDGET + (MAX_STREAMS - 1) * TUNNEL_SETTINGS.initial_window
    async with await world.browser(agent.sandbox_id) as browser, trio.open_nursery() as readers:
        started, release = trio.Semaphore(0), trio.Event()

        async def unread() -> None:
            async with browser.stream("GET", "/bytes?size=67108864") as response:
                assert response.status_code == 200
                started.release()
                await release.wait()

        for _ in range(MAX_STREAMS):
            readers.start_soon(unread)
        for _ in range(MAX_STREAMS):
            await started.acquire()
        streams = tunnel._conn._streams.values()
        assert sum(stream.recv_window for stream in streams) == bound
        held = sum(len(chunk.data) for s in tunnel._streams.values() for chunk in s._chunks)
        assert held <= bound
        release.set()


async def test_an_upload_to_an_agent_that_grants_no_credit_ends_in_an_error(
    world: TunnelWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A browser's upload to an agent that never grants credit gets a 502 once the send timeout
    passed; the server forgets the stream and the tunnel stays up."""
    # This hand-driven agent answers no request: the server's health probe would hold a stream.
    monkeypatch.setattr(TunnelSessions, "probe_health", False)
    sandbox_id, token = await _register(world)
    stingy = encode(Hello(VERSION, 256 * 1024, 1024, 20.0))  # 1 KiB per stream, never more
    async with raw_agent(world, sandbox_id, token) as ws:
        await ws.send_message(stingy)
        async with watch_statuses(world.owner, world.workspace_id) as watch:
            await watch.until(sandbox_id, "running")
        async with await world.browser(sandbox_id) as browser:
            with trio.fail_after(60):
                answer = await browser.post(
                    "/upload", content=b"u" * (1 << 20), headers={"accept": "application/json"}
                )
        assert answer.status_code == 502
        tunnel = world.server.deps.hub.get(sandbox_id)
        assert isinstance(tunnel, Tunnel)
        assert tunnel._streams == {}
        assert not tunnel.closed


async def test_an_oversize_message_is_refused_before_the_server_holds_it_whole(
    world: TunnelWorld,
) -> None:
    """A 64 MiB tunnel message gets a 1009 close while only 1 MiB of it was sent, the tunnel
    ends at once and the sandbox goes offline."""
    sandbox_id, token = await _register(world)
    stream = await trio.open_tcp_stream("127.0.0.1", world.server.port)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    request = wsproto.events.Request(
        host=f"127.0.0.1:{world.server.port}",
        target=f"/api/tunnel/{sandbox_id}",
        extra_headers=[(b"authorization", f"Bearer {token}".encode())],
    )
    events: list[wsproto.events.Event] = []

    async def receive_until(kind: type) -> wsproto.events.Event:
        with trio.fail_after(60):
            while not any(isinstance(e, kind) for e in events):
                data = await stream.receive_some(65536)
                client.receive_data(data or None)
                events.extend(client.events())
                if not data:
                    break
        return next(e for e in events if isinstance(e, kind))

    async with watch_statuses(world.owner, world.workspace_id) as watch, stream:
        await stream.send_all(client.send(request))
        await receive_until(wsproto.events.AcceptConnection)
        await stream.send_all(client.send(wsproto.events.BytesMessage(RAW_HELLO)))
        await watch.until(sandbox_id, "running")
        announced = 64 * 1024 * 1024  # one masked binary frame; mask 0 keeps the bytes as they are
        await stream.send_all(b"\x82\xff" + announced.to_bytes(8, "big") + b"\0\0\0\0")
        sent = 0
        try:
            while sent < 1024 * 1024:  # of the 64 MiB announced
                await stream.send_all(b"\0" * 65536)
                sent += 65536
        except trio.BrokenResourceError:
            pass  # the server may drop the connection before we are through
        close = await receive_until(wsproto.events.CloseConnection)
        assert isinstance(close, wsproto.events.CloseConnection)
        assert close.code == 1009
        assert sent > max_message_size(TUNNEL_SETTINGS.max_frame_payload)
        await watch.until(sandbox_id, "offline")
    assert world.server.deps.hub.get(sandbox_id) is None


async def test_the_tunnel_refuses_websocket_compression(world: TunnelWorld) -> None:
    """An agent offering permessage-deflate is refused before the upgrade: compressed messages
    could inflate past the cap before anything sees them."""
    sandbox_id, token = await _register(world)
    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{world.server.port}/api/tunnel/{sandbox_id}",
            extra_headers=[
                (b"authorization", f"Bearer {token}".encode()),
                (b"sec-websocket-extensions", b"permessage-deflate"),
            ],
        ):
            pass
    assert rejected.value.status_code == 400


async def test_the_agent_closes_with_1009_on_a_message_over_what_it_announced(
    nursery: trio.Nursery,
) -> None:
    """A server sending the agent a message larger than the agent's own frame limit allows gets
    a 1009 close from the agent, which holds no more of it."""
    limit = max_message_size(AGENT_SETTINGS.max_frame_payload)
    closed: list[trio_websocket.CloseReason | None] = []
    done = trio.Event()

    async def server(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.send_message(RAW_HELLO)
            await ws.get_message()  # the agent's Hello
            await ws.send_message(b"\0" * (limit + 1))
            while True:  # the agent's pings, until its close
                await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            closed.append(exc.reason)
        finally:
            done.set()

    listeners = await nursery.start(trio_websocket.serve_websocket, server, "127.0.0.1", 0, None)
    port = listeners.port
    config = AgentConfig(f"http://127.0.0.1:{port}", "sbx", "token", "ws", "laptop")
    async with Forwarder("http://127.0.0.1:9", None, lambda _: None) as forwarder:
        session = Session(config, forwarder, lambda _: None)
        with pytest.raises(Exception) as failed:  # a group, or the error itself
            await session.connect_once()
    assert "MESSAGE_TOO_BIG" in describe(failed.value)
    with trio.fail_after(30):
        await done.wait()
    assert [reason.code if reason else None for reason in closed] == [1009]

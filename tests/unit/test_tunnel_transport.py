"""Tests for the trio tunnel transport over in-memory links, in virtual time where time matters."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from agentserver.tunnel import (
    RequestHandler,
    StreamLink,
    StreamResetError,
    Tunnel,
    TunnelClosed,
    TunnelStream,
)
from agentserver.tunnel.connection import ErrorCode, RequestReceived, Role, Settings

SMALL = Settings(max_frame_payload=4096, initial_window=16384, ping_interval=10.0)


@dataclass
class Wire:
    """Shared by both ends of a link pair; cutting it makes the link silently drop everything."""

    cut: bool = False


class ChannelLink:
    """One end of an in-memory message link built from two bounded memory channels."""

    def __init__(
        self,
        send: trio.MemorySendChannel[bytes],
        receive: trio.MemoryReceiveChannel[bytes],
        wire: Wire,
    ) -> None:
        self._send, self._receive, self._wire = send, receive, wire

    async def send_message(self, message: bytes) -> None:
        if self._wire.cut:
            await trio.lowlevel.checkpoint()
            return
        await self._send.send(message)

    async def get_message(self) -> bytes:
        while True:
            message = await self._receive.receive()
            if not self._wire.cut:
                return message

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def link_pair(wire: Wire, buffer: int = 8) -> tuple[ChannelLink, ChannelLink]:
    a_send, b_receive = trio.open_memory_channel[bytes](buffer)
    b_send, a_receive = trio.open_memory_channel[bytes](buffer)
    return ChannelLink(a_send, a_receive, wire), ChannelLink(b_send, b_receive, wire)


@dataclass
class Pair:
    server: Tunnel
    client: Tunnel
    wire: Wire
    failures: list[TunnelClosed] = field(default_factory=list)
    finished: trio.Event = field(default_factory=trio.Event)


async def _run(
    tunnel: Tunnel, pair: Pair, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    try:
        await tunnel.run(task_status=task_status)
    except TunnelClosed as exc:
        pair.failures.append(exc)
    finally:
        pair.finished.set()


@asynccontextmanager
async def tunnel_pair(
    handler: RequestHandler | None = None, settings: Settings = SMALL, **options: float
) -> AsyncIterator[Pair]:
    """A running server tunnel and agent tunnel joined by an in-memory link."""
    wire = Wire()
    server_link, client_link = link_pair(wire)
    server = Tunnel(server_link, role=Role.SERVER, settings=settings, **options)  # type: ignore[arg-type]
    client = Tunnel(client_link, role=Role.CLIENT, settings=settings, handler=handler)
    pair = Pair(server, client, wire)
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as starter:
            starter.start_soon(nursery.start, _run, server, pair)
            starter.start_soon(nursery.start, _run, client, pair)
        yield pair
        await server.aclose()
        await client.aclose()


async def echo(request: RequestReceived, stream: TunnelStream) -> None:
    """Answers 200 with the request body, upper-cased."""
    body = bytearray()
    while chunk := await stream.receive_some():
        body += chunk
    await stream.send_response_head(200, [("content-type", "text/plain"), ("x-n", "1")])
    await stream.send_all(bytes(body).upper())
    await stream.send_eof()


async def read_all(stream: TunnelStream) -> bytes:
    body = bytearray()
    while chunk := await stream.receive_some():
        body += chunk
    return bytes(body)


async def test_request_with_streamed_body_gets_streamed_response() -> None:
    """A request body streamed to the agent comes back as a streamed response with its head."""
    async with tunnel_pair(echo) as pair:
        stream = await pair.server.open_request("POST", "/echo?x=1", [("a", "1"), ("a", "2")])
        for _ in range(10):
            await stream.send_all(b"abc" * 5000)
        await stream.send_eof()
        status, headers = await stream.receive_response_head()
        assert (status, headers) == (200, (("content-type", "text/plain"), ("x-n", "1")))
        assert await read_all(stream) == b"ABC" * 50000


async def test_tunnel_runs_over_a_byte_stream_link() -> None:
    """StreamLink carries the tunnel over any trio byte stream, e.g. a memory stream pair."""
    left, right = trio.testing.memory_stream_pair()
    server = Tunnel(StreamLink(left), role=Role.SERVER)
    client = Tunnel(StreamLink(right), role=Role.CLIENT, handler=echo)
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as starter:
            starter.start_soon(nursery.start, server.run)
            starter.start_soon(nursery.start, client.run)
        stream = await server.open_request("PUT", "/", [])
        await stream.send_all(b"hello")
        await stream.send_eof()
        assert await stream.receive_response_head() == (
            200,
            (("content-type", "text/plain"), ("x-n", "1")),
        )
        assert await read_all(stream) == b"HELLO"
        await server.aclose()


async def test_tunnel_stream_passes_trio_half_closeable_stream_checks() -> None:
    """TunnelStream behaves as a trio HalfCloseableStream, including clogged-window cases."""
    streams: trio.MemorySendChannel[TunnelStream]
    streams, incoming = trio.open_memory_channel[TunnelStream](0)

    async def hand_over(request: RequestReceived, stream: TunnelStream) -> None:
        await streams.send(stream)
        await trio.sleep_forever()  # keep the stream alive until it is reset or the test ends

    async with tunnel_pair(hand_over) as pair:

        async def make() -> tuple[TunnelStream, TunnelStream]:
            hub_side = await pair.server.open_request("GET", "/pty")
            agent_side = await incoming.receive()
            await agent_side.send_response_head(200)
            await hub_side.receive_response_head()
            return hub_side, agent_side

        async def make_clogged() -> tuple[TunnelStream, TunnelStream]:
            hub_side, agent_side = await make()
            for side in (hub_side, agent_side):  # both ways, as the flipped checks need it too
                await side.send_all(b"x" * SMALL.initial_window)  # all the credit there is
            return hub_side, agent_side

        await trio.testing.check_half_closeable_stream(make, make_clogged)


async def test_a_stalled_stream_does_not_stall_the_others() -> None:
    """A response nobody reads fills only its own window; other streams keep flowing."""
    blocked = trio.Event()

    async def big_or_small(request: RequestReceived, stream: TunnelStream) -> None:
        await stream.send_response_head(200)
        if request.target == "/big":
            await stream.send_all(b"b" * (4 * SMALL.initial_window))
            blocked.set()  # never reached while the hub does not read
        await stream.send_all(b"small")
        await stream.send_eof()

    async with tunnel_pair(big_or_small) as pair:
        big = await pair.server.open_request("GET", "/big", body=False)
        await big.receive_response_head()
        await trio.testing.wait_all_tasks_blocked()
        small = await pair.server.open_request("GET", "/small", body=False)
        await small.receive_response_head()
        assert await read_all(small) == b"small"
        await trio.testing.wait_all_tasks_blocked()
        assert not blocked.is_set()
        assert sum(len(c.data) for c in big._chunks) == SMALL.initial_window
        assert len(await read_all(big)) == 4 * SMALL.initial_window + len(b"small")


async def test_cancelling_a_stream_resets_it_and_cancels_the_agent_handler() -> None:
    """Closing a stream mid-transfer resets it; the agent's handler is cancelled, no task left."""
    handler_cancelled = trio.Event()

    async def endless(request: RequestReceived, stream: TunnelStream) -> None:
        await stream.send_response_head(200, [("content-type", "text/event-stream")])
        try:
            while True:
                await stream.send_all(b"data: tick\n\n" * 100)
        except trio.Cancelled:
            handler_cancelled.set()
            raise

    async with tunnel_pair(endless) as pair:
        stream = await pair.server.open_request("GET", "/event", body=False)
        await stream.receive_response_head()
        assert await stream.receive_some(10)
        await stream.aclose()
        await handler_cancelled.wait()
        await trio.testing.wait_all_tasks_blocked()
        for tunnel in (pair.server, pair.client):
            assert tunnel._streams == {}
            assert not tunnel._conn.is_open(stream.stream_id)
            assert tunnel._nursery is not None
            assert len(tunnel._nursery.child_tasks) == 3  # reader, writer, heartbeat only
        with pytest.raises(trio.ClosedResourceError):
            await stream.receive_some()


async def test_handler_failure_resets_the_stream_with_internal_error() -> None:
    """An exception in the agent's handler reaches the hub as a reset, not a hang."""

    async def broken(request: RequestReceived, stream: TunnelStream) -> None:
        raise RuntimeError("boom")

    async with tunnel_pair(broken) as pair:
        stream = await pair.server.open_request("GET", "/", body=False)
        with pytest.raises(StreamResetError) as caught:
            await stream.receive_response_head()
        assert caught.value.code == ErrorCode.INTERNAL
        assert caught.value.remote


async def test_requests_without_a_handler_are_refused() -> None:
    """A side without a handler refuses requests with a reset instead of leaving them hanging."""
    async with tunnel_pair(None) as pair:
        stream = await pair.client.open_request("GET", "/")
        with pytest.raises(StreamResetError) as caught:
            await stream.receive_response_head()
        assert caught.value.code == ErrorCode.REFUSED


async def test_websocket_messages_keep_boundaries_kinds_and_close_code() -> None:
    """Relayed WebSocket messages arrive whole (even when fragmented) with kind and close code."""

    async def ws_echo(request: RequestReceived, stream: TunnelStream) -> None:
        assert request.websocket
        assert request.subprotocols == ("tty", "json")
        await stream.send_response_head(101, [("sec-websocket-protocol", "tty")])
        while True:
            try:
                message = await stream.receive_message()
            except trio.EndOfChannel:
                await stream.send_close(stream.close_code or 1000, stream.close_reason)
                return
            await stream.send_message(message)

    async with tunnel_pair(ws_echo) as pair:
        stream = await pair.server.open_request(
            "GET", "/pty", websocket=True, subprotocols=["tty", "json"]
        )
        assert await stream.receive_response_head() == (101, (("sec-websocket-protocol", "tty"),))
        big = bytes(range(256)) * 200  # 51 KiB: many frames, more than the window
        for message in (big, "héllo", b"", ""):
            await stream.send_message(message)
            assert await stream.receive_message() == message
        await stream.send_close(4000, "bye")
        with pytest.raises(trio.EndOfChannel):
            await stream.receive_message()
        assert (stream.close_code, stream.close_reason) == (4000, "bye")


async def test_ping_timeout_closes_a_silently_dead_tunnel_within_two_intervals(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the link silently drops everything, the tunnel closes within two ping intervals."""
    waiting = trio.Event()

    async def wait_forever(request: RequestReceived, stream: TunnelStream) -> None:
        waiting.set()
        await trio.sleep_forever()

    async with tunnel_pair(wait_forever) as pair:
        stream = await pair.server.open_request("GET", "/event", body=False)
        await waiting.wait()
        # Healthy first: several intervals of idle virtual time do not close it.
        await trio.sleep_until(trio.current_time() + 5 * SMALL.ping_interval)
        assert not pair.server.closed
        cut_at = trio.current_time()
        pair.wire.cut = True
        with pytest.raises(TunnelClosed, match="no answer"):
            await stream.receive_response_head()
        assert trio.current_time() - cut_at <= 2 * SMALL.ping_interval
        await pair.finished.wait()
        assert pair.failures


async def test_tunnel_death_fails_every_stream_and_cancels_handlers() -> None:
    """When the link closes, hub streams raise TunnelClosed and agent handlers all end."""
    handlers_done: list[str] = []

    async def read_forever(request: RequestReceived, stream: TunnelStream) -> None:
        try:
            await stream.receive_some()
        except (trio.Cancelled, TunnelClosed) as exc:
            handlers_done.append(type(exc).__name__)
            raise

    async with tunnel_pair(read_forever) as pair:
        streams = [await pair.server.open_request("POST", f"/{n}") for n in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        await pair.client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert len(handlers_done) == 3
        for stream in streams:
            with pytest.raises(TunnelClosed):
                await stream.receive_response_head()
        with pytest.raises(TunnelClosed):
            await pair.server.open_request("GET", "/")
        assert pair.failures == []  # a clean close by the peer is not a failure


async def test_garbage_from_the_peer_closes_the_tunnel_as_a_failure() -> None:
    """A malformed frame is a protocol error: the tunnel closes and run() raises TunnelClosed."""
    server_link, peer = link_pair(Wire())
    tunnel = Tunnel(server_link, role=Role.SERVER)
    await peer.send_message(b"\x00\x00\x00\x02{}")  # buffered: the link holds 8 messages
    with pytest.raises(TunnelClosed, match="protocol error"):
        await tunnel.run()


async def test_missing_hello_fails_start(autojump_clock: trio.testing.MockClock) -> None:
    """A peer that never says Hello makes nursery.start fail after the hello timeout."""
    server_link, _silent_peer = link_pair(Wire(), buffer=100)
    tunnel = Tunnel(server_link, role=Role.SERVER, hello_timeout=5)
    async with trio.open_nursery() as nursery:
        with pytest.raises(TunnelClosed, match="no hello"):
            await nursery.start(tunnel.run)


async def test_ten_megabytes_flow_with_bounded_memory() -> None:
    """A 10 MB response crosses the tunnel with buffers bounded by the windows, not the size."""
    total, block = 10 * 1024 * 1024, b"z" * 65536

    async def produce(request: RequestReceived, stream: TunnelStream) -> None:
        await stream.send_response_head(200)
        for _ in range(total // len(block)):
            await stream.send_all(block)
        await stream.send_eof()

    settings = Settings(max_frame_payload=16384, initial_window=256 * 1024, ping_interval=10.0)
    async with tunnel_pair(produce, settings) as pair:
        tracemalloc.start()
        try:
            stream = await pair.server.open_request("GET", "/big", body=False)
            await stream.receive_response_head()
            received = peak_buffered = 0
            while chunk := await stream.receive_some():
                received += len(chunk)
                peak_buffered = max(peak_buffered, sum(len(c.data) for c in stream._chunks))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert received == total
        assert peak_buffered <= settings.initial_window
        assert peak < 4 * 1024 * 1024


async def test_send_nowait_queues_what_the_credit_allows_and_nothing_beyond() -> None:
    """`send_nowait` queues a piece that fits the peer's credit and frame limit at once, and
    refuses one that does not, queuing none of it: the agent receives exactly the accepted."""
    async with tunnel_pair(echo) as pair:
        stream = await pair.server.open_request("POST", "/echo", [])
        assert not stream.send_nowait(b"x" * (SMALL.max_frame_payload + 1))
        for _ in range(SMALL.initial_window // SMALL.max_frame_payload):  # the whole window
            assert stream.send_nowait(b"a" * SMALL.max_frame_payload)
        assert not stream.send_nowait(b"b")  # no credit left until the agent reads
        await stream.send_eof()
        await stream.receive_response_head()
        assert await read_all(stream) == b"A" * SMALL.initial_window

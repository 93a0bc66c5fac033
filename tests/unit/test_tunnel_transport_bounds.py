"""Tests for the tunnel transport's bounds over in-memory links: ping floods, request floods,
the stream cap and sends that get no credit, in virtual time where time matters."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypercorn.protocol.ws_stream import FrameTooLargeError
from wsproto.events import BytesMessage

from agentserver.api.tunnel_link import CappedBuffer
from agentserver.tunnel import (
    StreamLimitReached,
    StreamResetError,
    Tunnel,
    TunnelClosed,
    TunnelStream,
)
from agentserver.tunnel.connection import ErrorCode, RequestReceived, Role, Settings
from agentserver.tunnel.frames import VERSION, Hello, Ping, Pong, RequestOpen, encode
from tests.unit.test_tunnel_transport import SMALL, Wire, link_pair, read_all, tunnel_pair

PEER_HELLO = encode(Hello(VERSION, 4096, 16384, 10.0))


async def test_a_ping_flood_from_a_peer_that_does_not_read_queues_one_pong() -> None:
    """A peer sending pings but reading nothing leaves at most one Pong waiting, not one each."""
    server_link, peer = link_pair(Wire(), buffer=4)
    tunnel = Tunnel(server_link, role=Role.SERVER, settings=SMALL)
    await peer.send_message(PEER_HELLO)
    async with trio.open_nursery() as nursery:
        await nursery.start(tunnel.run)
        for opaque in range(1, 5001):
            await peer.send_message(encode(Ping(opaque)))
        await trio.testing.wait_all_tasks_blocked()
        waiting = tunnel._conn._outbox
        assert [type(frame) for frame in waiting] == [Pong]
        assert waiting[0] == Pong(5000)
        assert not tunnel.closed
        await tunnel.aclose()


async def test_a_request_flood_from_a_peer_that_does_not_read_closes_the_tunnel() -> None:
    """Refusals piling up for a peer that never reads them end the tunnel as a protocol error."""
    server_link, peer = link_pair(Wire(), buffer=4)
    tunnel = Tunnel(server_link, role=Role.SERVER, settings=SMALL)
    await peer.send_message(PEER_HELLO)

    async def flood() -> None:
        try:
            for n in range(1, 5001):
                await peer.send_message(encode(RequestOpen(2 * n, "GET", "/", body=False)))
        except trio.BrokenResourceError:  # the tunnel closed its end
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        with pytest.raises(TunnelClosed, match="control frames"):
            await tunnel.run()
    assert len(tunnel._conn._outbox) <= SMALL.max_queued_control + 1


async def test_streams_beyond_the_cap_are_refused_and_the_tunnel_stays_up() -> None:
    """Opening more than `max_streams` streams raises StreamLimitReached; the others keep working
    and a place frees up when one finishes."""
    release = trio.Event()

    async def held(request: RequestReceived, stream: TunnelStream) -> None:
        await release.wait()
        await stream.send_response_head(200)
        await stream.send_all(request.target.encode())
        await stream.send_eof()

    capped = Settings(4096, 16384, 10.0, max_streams=2)
    async with tunnel_pair(held, capped) as pair:
        first = await pair.server.open_request("GET", "/1", body=False)
        second = await pair.server.open_request("GET", "/2", body=False)
        with pytest.raises(StreamLimitReached):
            await pair.server.open_request("GET", "/3", body=False)
        release.set()
        for stream, target in ((first, b"/1"), (second, b"/2")):
            assert (await stream.receive_response_head())[0] == 200
            assert await read_all(stream) == target
        third = await pair.server.open_request("GET", "/3", body=False)
        assert (await third.receive_response_head())[0] == 200
        assert await read_all(third) == b"/3"
        assert not pair.server.closed


async def test_an_upload_the_peer_grants_no_credit_for_is_reset_after_the_send_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request body to an agent that never reads it fails with a reset after `send_timeout`,
    and the agent's handler is cancelled."""
    handler_cancelled = trio.Event()

    async def never_reads(request: RequestReceived, stream: TunnelStream) -> None:
        try:
            await trio.sleep_forever()
        finally:
            handler_cancelled.set()

    async with tunnel_pair(never_reads, send_timeout=30.0) as pair:
        stream = await pair.server.open_request("POST", "/upload")
        started = trio.current_time()
        with pytest.raises(StreamResetError) as caught:
            await stream.send_all(b"u" * (4 * SMALL.initial_window))
        assert caught.value.code == ErrorCode.TIMEOUT
        assert trio.current_time() - started >= 30.0
        await handler_cancelled.wait()
        assert pair.server._streams == {}
        assert not pair.server.closed


async def test_an_upload_that_keeps_moving_is_never_timed_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A slow reader that grants credit now and then (half a window every 20 s, timeout 30 s)
    gets the whole body, though the upload takes far longer than the timeout."""

    async def slow_reader(request: RequestReceived, stream: TunnelStream) -> None:
        received = 0
        while chunk := await stream.receive_some(4096):
            received += len(chunk)
            await trio.sleep(10.0)  # a slow consumer, not a wait for something
        await stream.send_response_head(200)
        await stream.send_all(str(received).encode())
        await stream.send_eof()

    async with tunnel_pair(slow_reader, send_timeout=30.0) as pair:
        stream = await pair.server.open_request("POST", "/upload")
        started = trio.current_time()
        await stream.send_all(b"u" * (4 * SMALL.initial_window))
        await stream.send_eof()
        assert await stream.receive_response_head() == (200, ())
        assert await read_all(stream) == str(4 * SMALL.initial_window).encode()
        assert trio.current_time() - started > 30.0


def test_hypercorns_buffer_refuses_a_message_before_storing_past_the_cap() -> None:
    """The tunnel's message buffer stores nothing beyond its cap, reports it once, and refuses
    every later piece of that message without storing it either."""
    overflows: list[int] = []
    buffer = CappedBuffer(10, lambda: overflows.append(1))
    buffer.extend(BytesMessage(b"x" * 8, frame_finished=False, message_finished=False))
    with pytest.raises(FrameTooLargeError):
        buffer.extend(BytesMessage(b"y" * 3, frame_finished=False, message_finished=False))
    with pytest.raises(FrameTooLargeError):
        buffer.extend(BytesMessage(b"z", frame_finished=False, message_finished=True))
    assert buffer.length == 8
    assert buffer.value is not None
    assert buffer.value.getvalue() == b"x" * 8
    assert overflows == [1]


async def test_a_peer_that_pings_but_never_reads_is_closed_within_two_intervals(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Pings keep proving the peer alive, but a peer that reads nothing is closed once a send
    has been blocked from one of our pings to its timeout."""
    server_link, peer = link_pair(Wire(), buffer=4)
    tunnel = Tunnel(server_link, role=Role.SERVER, settings=SMALL)
    await peer.send_message(PEER_HELLO)

    async def pinger() -> None:
        try:
            for opaque in range(1, 1000):
                await peer.send_message(encode(Ping(opaque)))
                await trio.sleep(SMALL.ping_interval / 4)  # a busy peer, not a wait
        except trio.BrokenResourceError:  # the tunnel closed its end
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pinger)
        with pytest.raises(TunnelClosed, match="read nothing"):
            await tunnel.run()
    # The link held 4 messages; the writer blocked within 2 intervals and was seen within 2 more.
    assert trio.current_time() <= 4 * SMALL.ping_interval

"""Direct sends: the queueing task writes on the link itself; order, partial writes, counts."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from agentserver.tunnel import StreamLink, Tunnel, TunnelStream
from agentserver.tunnel.connection import RequestReceived, Role, Settings, TunnelConnection
from agentserver.tunnel.frames import Data, End, Frame, RequestOpen, ResponseHead
from agentserver.tunnel.messages import BATCH_MARK, MessageBuffer, frame_message, unpack
from agentserver.tunnel.writer import TunnelWriter


def socket_streams(*, small: bool = False) -> tuple[trio.SocketStream, trio.SocketStream]:
    """A connected pair of real sockets (`small`: kernel buffers of a few KiB)."""
    a, b = trio.socket.socketpair()
    if small:
        for sock in (a, b):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return trio.SocketStream(a), trio.SocketStream(b)


class SpyLink(StreamLink):
    """A StreamLink that records every message it is given and what `try_send` held back."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        super().__init__(stream)
        self.messages: list[bytes] = []
        self.held_back: list[int] = []

    def try_send(self, message: bytes) -> int:
        self.messages.append(message)
        held = super().try_send(message)
        self.held_back.append(held)
        return held

    async def send_message(self, message: bytes) -> None:
        self.messages.append(message)
        await super().send_message(message)


class PlainLink:
    """A link with no `try_send`, as links were before direct sends: the writer sends all."""

    def __init__(self, link: StreamLink) -> None:
        self._link = link
        self.messages: list[bytes] = []

    async def send_message(self, message: bytes) -> None:
        self.messages.append(message)
        await self._link.send_message(message)

    async def get_message(self) -> bytes:
        return await self._link.get_message()

    async def aclose(self) -> None:
        await self._link.aclose()


async def answer_hi(request: RequestReceived, stream: TunnelStream) -> None:
    await stream.send_response(200, [("content-type", "text/plain")], b"hi", end=True)


@asynccontextmanager
async def tunnels(
    server_link: object, client_link: object, handler: object, client: Settings | None = None
) -> AsyncIterator[Tunnel]:
    """A server tunnel (yielded) and a client tunnel answering with `handler`, both running."""
    server = Tunnel(server_link, role=Role.SERVER)  # type: ignore[arg-type]
    agent = Tunnel(client_link, role=Role.CLIENT, settings=client, handler=handler)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run)
        await nursery.start(server.run)
        yield server
        await server.aclose()
        await agent.aclose()


async def read_all(stream: TunnelStream) -> bytes:
    body = b""
    while chunk := await stream.receive_some():
        body += chunk
    return body


async def small_exchange(server: Tunnel) -> bytes:
    stream = await server.open_request("GET", "/small", [("host", "x")], body=False)
    assert await stream.receive_response_head() == (200, (("content-type", "text/plain"),))
    body = await read_all(stream)
    await stream.aclose()
    return body


def frames_of(messages: list[bytes]) -> list[list[Frame]]:
    return [unpack(message) for message in messages]


async def test_a_small_exchange_is_one_message_each_way() -> None:
    """A bodiless request and its complete response cost one link message each way, sent by
    the task that queued them (no writer round)."""
    a, b = socket_streams()
    server_link, client_link = SpyLink(a), SpyLink(b)
    async with tunnels(server_link, client_link, answer_hi) as server:
        await small_exchange(server)  # the first request may meet a pong or a late Hello
        await trio.testing.wait_all_tasks_blocked()
        sent = (len(server_link.messages), len(client_link.messages))
        for _ in range(3):
            assert await small_exchange(server) == b"hi"
        await trio.testing.wait_all_tasks_blocked()
        assert len(server_link.messages) - sent[0] == 3
        assert len(client_link.messages) - sent[1] == 3
        response = frames_of(client_link.messages[-1:])[0]
        assert [type(f) for f in response] == [ResponseHead, Data, End]
        assert server_link.held_back[-3:] == [0, 0, 0]


async def test_a_head_and_its_body_queued_in_one_step_share_a_message() -> None:
    """A request head and body queued with no checkpoint between still leave in one message."""
    a, b = socket_streams()
    server_link = SpyLink(a)
    bodies: list[bytes] = []

    async def echo(request: RequestReceived, stream: TunnelStream) -> None:
        bodies.append(await read_all(stream))
        await stream.send_response(200, [("content-type", "text/plain")], b"hi", end=True)

    async with tunnels(server_link, StreamLink(b), echo) as server:
        await small_exchange_with_body(server)
        await trio.testing.wait_all_tasks_blocked()
        first = len(server_link.messages)
        await small_exchange_with_body(server)
        request = frames_of(server_link.messages[first : first + 1])[0]
        assert [type(f) for f in request][:2] == [RequestOpen, Data]
    assert bodies == [b"payload", b"payload"]


async def small_exchange_with_body(server: Tunnel) -> None:
    stream = await server.open_request("POST", "/echo", [("host", "x")])
    assert stream.send_nowait(b"payload")
    await stream.send_eof()
    assert (await stream.receive_response_head())[0] == 200
    assert await read_all(stream) == b"hi"
    await stream.aclose()


async def test_a_partial_direct_send_is_finished_first_and_whole() -> None:
    """When the kernel takes only part of a direct send, its rest goes out before anything
    queued later, even though the sending handler was cancelled meanwhile: both responses
    arrive whole."""
    a, b = socket_streams(small=True)
    client_link = SpyLink(b)
    big = bytes(range(256)) * 400  # ~100 KiB: far more than the socket buffers take
    cancelled: list[bool] = []

    async def answer(request: RequestReceived, stream: TunnelStream) -> None:
        if request.target == "/big":
            with trio.CancelScope() as scope:
                await stream.send_response(200, [], big, end=True)
                scope.cancel()  # the sender goes; the rest of its message is the writer's
                await trio.sleep_forever()
            cancelled.append(scope.cancelled_caught)
        else:
            await stream.send_response(200, [], b"small", end=True)

    async with tunnels(StreamLink(a), client_link, answer) as server:
        first = await server.open_request("GET", "/big", body=False)
        status, _ = await first.receive_response_head()  # the head left with the first bytes
        second = await server.open_request("GET", "/small", body=False)
        assert await read_all(first) == big
        assert (await second.receive_response_head())[0] == 200
        assert await read_all(second) == b"small"
    assert status == 200
    assert cancelled == [True]
    assert any(held > 0 for held in client_link.held_back)


async def test_a_peer_without_batches_gets_single_frames_from_direct_sends() -> None:
    """An agent whose Hello does not announce batches (an older peer) still gets one frame
    per message from direct sends, and the exchange works."""
    a, b = socket_streams()
    server_link = SpyLink(a)
    old = Settings(batch=False)
    async with tunnels(server_link, StreamLink(b), answer_hi, client=old) as server:
        for _ in range(3):
            assert await small_exchange_with_body_old(server) == b"hi"
    assert server_link.messages
    assert not any(message.startswith(BATCH_MARK) for message in server_link.messages)


async def small_exchange_with_body_old(server: Tunnel) -> bytes:
    stream = await server.open_request("POST", "/x", [("host", "x")])
    await stream.send_all(b"body")
    await stream.send_eof()
    await stream.receive_response_head()
    body = await read_all(stream)
    await stream.aclose()
    return body


async def test_a_link_without_try_send_keeps_the_writer_path() -> None:
    """Against a link without `try_send` (the writer sends everything) the exchange works and
    still costs one message each way."""
    a, b = socket_streams()
    server_link, client_link = PlainLink(StreamLink(a)), SpyLink(b)
    async with tunnels(server_link, client_link, answer_hi) as server:
        await small_exchange(server)
        await trio.testing.wait_all_tasks_blocked()
        sent = (len(server_link.messages), len(client_link.messages))
        assert await small_exchange(server) == b"hi"
        await trio.testing.wait_all_tasks_blocked()
        assert len(server_link.messages) - sent[0] == 1
        assert len(client_link.messages) - sent[1] == 1


# ---------------------------------------------------------------- the writer alone


class TrickleLink:
    """A direct link whose kernel takes `take` bytes of a `try_send`; the rest leaves only
    once `drain` is set. `wire` is every byte written, in order."""

    def __init__(self, take: int) -> None:
        self.take = take
        self.wire = bytearray()
        self.held = b""
        self.drain = trio.Event()

    def try_send(self, message: bytes) -> int:
        data = frame_message(message)
        if self.held:
            self.held += data
            return len(self.held)
        self.wire += data[: self.take]
        self.held = data[self.take :]
        return len(self.held)

    async def flush(self) -> None:
        await self.drain.wait()
        self.wire += self.held
        self.held = b""

    async def send_message(self, message: bytes) -> None:
        await self.flush()
        self.wire += frame_message(message)

    async def get_message(self) -> bytes:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def connected() -> TunnelConnection:
    """A server connection past the Hello exchange, with nothing queued."""
    server, client = TunnelConnection(Role.SERVER), TunnelConnection(Role.CLIENT)
    for frame in server.frames_to_send():
        client.receive_frame(frame)
    for frame in client.frames_to_send():
        server.receive_frame(frame)
    return server


def wire_frames(wire: bytes) -> list[Frame]:
    buffer, frames = MessageBuffer(), []
    buffer.feed(wire)
    while (message := buffer.next_message()) is not None:
        frames += unpack(message)
    assert buffer.pending == 0
    return frames


async def test_what_is_queued_after_a_partial_send_waits_for_its_rest() -> None:
    """After a direct send the link took only part of, nothing else is written until its rest
    is; then the rest and the later frames follow in the order queued, and the backlog counts
    the data until it is written."""
    conn, link = connected(), TrickleLink(take=10)
    broken: list[BaseException] = []
    writer = TunnelWriter(link, conn, max_backlog=1 << 20, broken=broken.append, drained=print)
    first = conn.open_request("POST", "/a", (("host", "x"),))
    conn.send_data(first, b"d" * 1000)
    writer.backlog += 1000
    writer.send_now()
    assert len(link.wire) == 10
    second = conn.open_request("GET", "/b", (("host", "x"),), body=False)
    writer.send_now()  # the link holds a rest: this waits for the writer
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        assert len(link.wire) == 10
        assert writer.backlog == 1000
        assert writer.writing_since is not None  # the heartbeat sees the send under way
        link.drain.set()
        await trio.testing.wait_all_tasks_blocked()
        assert writer.backlog == 0
        assert writer.writing_since is None
        nursery.cancel_scope.cancel()
    frames = wire_frames(bytes(link.wire))
    assert [(type(f), f.stream_id) for f in frames] == [
        (RequestOpen, first),
        (Data, first),
        (RequestOpen, second),
    ]
    assert broken == []


async def test_a_direct_send_that_the_link_takes_whole_needs_no_writer() -> None:
    """When the kernel takes the whole message, it is written at once, the backlog is back to
    zero and the writer task is not involved (it is not even running here)."""
    conn, link = connected(), TrickleLink(take=1 << 20)
    writer = TunnelWriter(link, conn, max_backlog=1 << 20, broken=print, drained=print)
    stream = conn.open_request("POST", "/a", (("host", "x"),))
    conn.send_data(stream, b"d" * 100)
    writer.backlog += 100
    conn.end_stream(stream)
    writer.send_now()
    assert writer.backlog == 0
    assert not conn.has_frames_to_send
    assert [type(f) for f in wire_frames(bytes(link.wire))] == [RequestOpen, Data, End]
    await trio.lowlevel.checkpoint()


async def test_frames_queued_while_holding_leave_together_at_its_end_without_the_writer() -> None:
    """Inside `holding`, a wake-up (a head) and direct sends (a body piece, an end) write
    nothing and leave the writer parked; at its end all of it goes out in one message from
    the holding task: the writer task never runs for it (a complete response cost a wasted
    writer round per request before)."""
    conn, link = connected(), TrickleLink(take=1 << 20)
    writer = TunnelWriter(link, conn, max_backlog=1 << 20, broken=print, drained=print)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        stream = conn.open_request("POST", "/a", (("host", "x"),))
        with writer.holding():
            writer.wake()  # what queueing a head does
            conn.send_data(stream, b"d" * 100)
            writer.backlog += 100
            with writer.holding():  # nested: only the outermost sends
                conn.end_stream(stream)
                writer.send_now()
            assert link.wire == b""
        assert writer._lot.statistics().tasks_waiting == 1  # the writer was never woken
        assert writer.backlog == 0
        messages = MessageBuffer()
        messages.feed(bytes(link.wire))
        message = messages.next_message()
        assert message is not None
        assert [type(f) for f in unpack(message)] == [RequestOpen, Data, End]
        assert messages.next_message() is None
        nursery.cancel_scope.cancel()

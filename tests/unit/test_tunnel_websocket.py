"""The tunnel's own WebSocket against wsproto as the peer: interop both ways, and every refusal."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)

from agentserver.tunnel import ProtocolError
from agentserver.tunnel.websocket import ConnectionClosed, WebSocket

CAP = 300_000
SIZES = (0, 1, 125, 126, 65_535, 65_536, 200_000)


class Peer:
    """wsproto's connection (after the handshake) driven over one end of a stream pair."""

    def __init__(self, stream: trio.abc.Stream, kind: ConnectionType) -> None:
        self.stream = stream
        self.conn = Connection(kind)
        self.pending: list[Event] = []

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.conn.send(event))

    async def next_event(self) -> Event:
        while not self.pending:
            data = await self.stream.receive_some(1 << 20)
            self.conn.receive_data(data or None)
            self.pending.extend(self.conn.events())
        return self.pending.pop(0)

    async def message(self) -> bytes:
        """One whole binary message (wsproto may hand it over in pieces)."""
        parts: list[bytes] = []
        while True:
            event = await self.next_event()
            assert isinstance(event, BytesMessage), event
            parts.append(bytes(event.data))
            if event.message_finished:
                return b"".join(parts)


@asynccontextmanager
async def pair(*, client: bool, lockstep: bool = False) -> AsyncIterator[tuple[WebSocket, Peer]]:
    """Our link (`client`: as the client) and wsproto as the other end."""
    ours, theirs = (
        trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    )
    kind = ConnectionType.SERVER if client else ConnectionType.CLIENT
    yield WebSocket(ours, client=client, max_message=CAP), Peer(theirs, kind)


def raw(first: int, payload: bytes, *, masked: bool = True, length: int | None = None) -> bytes:
    """A frame written by hand: `first` is FIN/RSV/opcode; masked with the zero key."""
    size = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = struct.pack("!BB", first, mask_bit | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    return head + (b"\0\0\0\0" if masked else b"") + payload


async def refused_with(link: WebSocket, peer: Peer, code: int) -> None:
    """The next receive fails with `code`, and the peer is sent a close with it."""
    with pytest.raises(ConnectionClosed) as failed:
        await link.get_message()
    assert failed.value.code == code
    event = await peer.next_event()
    assert isinstance(event, CloseConnection)
    assert event.code == code


@pytest.mark.parametrize("size", SIZES)
async def test_the_server_side_reads_wsproto_clients_masked_messages(size: int) -> None:
    """Binary messages a wsproto client sends (masked) arrive whole and unmasked."""
    async with pair(client=False) as (link, peer):
        message = os.urandom(size)
        await peer.send(BytesMessage(message))
        await peer.send(BytesMessage(b"next"))
        assert await link.get_message() == message
        assert await link.get_message() == b"next"


@pytest.mark.parametrize("size", SIZES)
async def test_wsproto_reads_the_client_sides_masked_messages(size: int) -> None:
    """A wsproto server (which refuses unmasked client frames) reads what our client sends."""
    async with pair(client=True) as (link, peer):
        message = os.urandom(size)
        await link.send_message(message)
        assert await peer.message() == message


@pytest.mark.parametrize("size", SIZES)
async def test_wsproto_reads_the_server_sides_messages(size: int) -> None:
    """A wsproto client (which refuses masked server frames) reads what our server sends."""
    async with pair(client=False) as (link, peer):
        message = os.urandom(size)
        await link.send_message(message)
        assert await peer.message() == message


@pytest.mark.parametrize("size", SIZES)
async def test_the_client_side_reads_wsproto_servers_messages(size: int) -> None:
    """What a wsproto server sends (unmasked) arrives whole at our client."""
    async with pair(client=True) as (link, peer):
        message = os.urandom(size)
        await peer.send(BytesMessage(message))
        assert await link.get_message() == message


async def test_each_client_frame_has_a_fresh_mask_key() -> None:
    """The same message sent twice goes out with two different mask keys."""
    ours, theirs = trio.testing.memory_stream_pair()
    link = WebSocket(ours, client=True, max_message=CAP)
    await link.send_message(b"same message")
    first = await theirs.receive_some()
    await link.send_message(b"same message")
    second = await theirs.receive_some()
    assert first[1] & 0x80
    assert second[1] & 0x80
    assert first[2:6] != second[2:6]


async def test_messages_split_across_reads_arrive_whole() -> None:
    """A stream of frames delivered a few bytes at a time gives the same messages."""
    ours, theirs = trio.testing.memory_stream_pair()
    link = WebSocket(ours, client=False, max_message=CAP)
    peer = Connection(ConnectionType.CLIENT)
    messages = [os.urandom(n) for n in (3, 130, 70_000, 0)]
    wire = b"".join(peer.send(BytesMessage(m)) for m in messages)
    async with trio.open_nursery() as nursery:

        async def trickle() -> None:
            for start in range(0, len(wire), 7777):
                await theirs.send_all(wire[start : start + 7777])

        nursery.start_soon(trickle)
        assert [await link.get_message() for _ in messages] == messages


async def test_a_fragmented_message_is_reassembled() -> None:
    """A message sent in three fragments arrives as one."""
    async with pair(client=False) as (link, peer):
        await peer.send(BytesMessage(b"one ", message_finished=False))
        await peer.send(Ping(b"between"))  # control frames may come between fragments
        await peer.send(BytesMessage(b"two ", message_finished=False))
        await peer.send(BytesMessage(b"three"))
        assert await link.get_message() == b"one two three"
        assert isinstance(await peer.next_event(), Pong)


async def test_the_server_refuses_an_unmasked_client_frame() -> None:
    """An unmasked frame from a client closes with 1002."""
    async with pair(client=False) as (link, peer):
        await peer.stream.send_all(raw(0x82, b"abc", masked=False))
        await refused_with(link, peer, 1002)


async def test_the_client_refuses_a_masked_server_frame() -> None:
    """A masked frame from a server closes with 1002."""
    async with pair(client=True) as (link, peer):
        await peer.stream.send_all(raw(0x82, b"abc", masked=True))
        await refused_with(link, peer, 1002)


@pytest.mark.parametrize(
    "frame",
    [
        raw(0x82 | 0x40, b"x"),  # RSV1 (compression) without an agreed extension
        raw(0x82 | 0x10, b"x"),  # RSV3
        raw(0x83, b"x"),  # a reserved data opcode
        raw(0x8B, b"x"),  # a reserved control opcode
        raw(0x80, b"x"),  # a continuation with no message begun
        raw(0x09, b"x"),  # a ping split in fragments
        raw(0x89, b"p" * 126),  # a ping longer than 125 bytes
        raw(0x88, b"\x03"),  # a close payload of one byte
        raw(0x88, struct.pack("!H", 1005)),  # a close code no peer may send
        raw(0x82, b"", length=1 << 63),  # a length with its top bit set
    ],
)
async def test_frames_rfc_6455_forbids_close_with_1002(frame: bytes) -> None:
    """Each malformed frame closes the connection with 1002 and fails the link."""
    async with pair(client=False) as (link, peer):
        await peer.stream.send_all(frame)
        await refused_with(link, peer, 1002)
        with pytest.raises(ConnectionClosed):  # and stays failed
            await link.get_message()


async def test_a_new_message_inside_a_fragmented_one_is_refused() -> None:
    """A binary frame starting a message while another is unfinished closes with 1002."""
    async with pair(client=False) as (link, peer):
        await peer.stream.send_all(raw(0x02, b"first part") + raw(0x82, b"another"))
        await refused_with(link, peer, 1002)


async def test_a_frame_over_the_cap_is_refused_from_its_header() -> None:
    """A frame announcing more than the cap gets 1009 before any of its payload arrived."""
    async with pair(client=False) as (link, peer):
        await peer.stream.send_all(raw(0x82, b"", length=CAP + 1))  # the header alone
        await refused_with(link, peer, 1009)


async def test_fragments_adding_up_past_the_cap_are_refused() -> None:
    """Fragments are counted together: the one that would pass the cap gets 1009 unstored."""
    async with pair(client=False) as (link, peer):
        await peer.send(BytesMessage(b"x" * (CAP - 10), message_finished=False))
        await peer.stream.send_all(raw(0x00, b"", length=11))  # its header only
        await refused_with(link, peer, 1009)
        assert link._fragments == [] or sum(map(len, link._fragments)) == CAP - 10


async def test_a_message_exactly_at_the_cap_is_taken() -> None:
    """The cap is inclusive: a message of exactly `max_message` bytes arrives."""
    async with pair(client=False) as (link, peer):
        await peer.send(BytesMessage(b"y" * CAP))
        assert len(await link.get_message()) == CAP


async def test_a_text_message_is_a_protocol_error() -> None:
    """The tunnel carries binary messages only: text raises the tunnel's ProtocolError."""
    async with pair(client=False) as (link, peer):
        await peer.send(TextMessage("hello"))
        with pytest.raises(ProtocolError):
            await link.get_message()


async def test_a_ping_is_answered_with_its_pong() -> None:
    """A ping gets a pong with the same payload, and the next message still arrives."""
    async with pair(client=True) as (link, peer):
        await peer.send(Ping(b"are you there"))
        await peer.send(BytesMessage(b"after"))
        assert await link.get_message() == b"after"
        pong = await peer.next_event()
        assert isinstance(pong, Pong)
        assert pong.payload == b"are you there"


async def test_a_ping_flood_while_sending_keeps_one_pong() -> None:
    """Pings arriving while a message is being sent to a peer that does not read leave one
    pong waiting (the latest), which follows the message."""
    async with pair(client=False, lockstep=True) as (link, peer), trio.open_nursery() as nursery:
        message = b"m" * 100_000
        nursery.start_soon(link.send_message, message)
        received: list[bytes] = []

        async def read() -> None:
            received.append(await link.get_message())

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        for n in range(1000):
            await peer.send(Ping(b"%d" % n))
        await trio.testing.wait_all_tasks_blocked()
        assert link._pong is not None
        assert link._pong.endswith(b"999")
        assert await peer.message() == message
        pong = await peer.next_event()
        assert isinstance(pong, Pong)
        assert pong.payload == b"999"
        await peer.send(BytesMessage(b"done"))
    assert received == [b"done"]
    assert peer.pending == []


@pytest.mark.parametrize("code", [1000, 1001])
async def test_a_normal_close_ends_the_link_and_is_answered(code: int) -> None:
    """A close with 1000 or 1001 raises EndOfChannel (again on the next receive) and gets
    the closing handshake's answer."""
    async with pair(client=True) as (link, peer):
        await peer.send(CloseConnection(code))
        with pytest.raises(trio.EndOfChannel):
            await link.get_message()
        with pytest.raises(trio.EndOfChannel):
            await link.get_message()
        answer = await peer.next_event()
        assert isinstance(answer, CloseConnection)
        assert answer.code == code
        with pytest.raises(trio.BrokenResourceError):
            await link.send_message(b"too late")


async def test_any_other_close_breaks_the_link() -> None:
    """A close with another code raises BrokenResourceError naming it."""
    async with pair(client=False) as (link, peer):
        await peer.send(CloseConnection(4000, "bye"))
        with pytest.raises(trio.BrokenResourceError) as broken:
            await link.get_message()
        assert isinstance(broken.value, ConnectionClosed)
        assert broken.value.code == 4000
        assert "bye" in str(broken.value)


async def test_the_connection_ending_without_a_close_breaks_the_link() -> None:
    """A peer that just goes away mid-frame raises BrokenResourceError (1006)."""
    async with pair(client=False) as (link, peer):
        await peer.stream.send_all(raw(0x82, b"partial", length=100))
        await peer.stream.aclose()
        with pytest.raises(ConnectionClosed) as broken:
            await link.get_message()
        assert broken.value.code == 1006


async def test_aclose_sends_a_normal_close_and_closes_the_stream() -> None:
    """Closing the link sends close 1000 (which wsproto reads) and then closes the stream;
    the link refuses use afterwards."""
    async with pair(client=True) as (link, peer):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.aclose)
            event = await peer.next_event()
            assert isinstance(event, CloseConnection)
            assert event.code == 1000
            await peer.stream.send_all(peer.conn.send(event.response()))
            await peer.stream.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await link.send_message(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await link.get_message()


async def test_a_cancelled_receive_loses_no_message() -> None:
    """A receive cancelled while a message is half in keeps what arrived for the next one."""
    async with pair(client=False) as (link, peer):
        wire = Connection(ConnectionType.CLIENT).send(BytesMessage(b"z" * 1000))
        await peer.stream.send_all(wire[:500])
        with trio.move_on_after(1) as waited:
            await link.get_message()
        assert waited.cancelled_caught
        await peer.stream.send_all(wire[500:])
        assert await link.get_message() == b"z" * 1000


async def test_try_send_holds_what_the_kernel_did_not_take_and_sends_it_first() -> None:
    """On a real socket that takes only part of a message, `try_send` holds the rest; the rest
    leaves before the next message (and a pong), and the peer reads every message whole."""
    ours, theirs = trio.socket.socketpair()
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    link = WebSocket(trio.SocketStream(ours), client=True, max_message=CAP)
    peer = Peer(trio.SocketStream(theirs), ConnectionType.SERVER)
    big = os.urandom(200_000)
    held = link.try_send(big)
    assert 0 < held < len(big)
    assert link.held == held
    assert link.try_send(b"next") > held  # held whole behind the rest: never interleaved
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.flush)
        assert await peer.message() == big
        assert await peer.message() == b"next"
    assert link.held == 0
    assert link.try_send(b"at once") == 0  # an idle socket takes a small message whole
    assert await peer.message() == b"at once"


async def test_try_send_on_a_stream_without_a_socket_holds_the_message_for_flush() -> None:
    """Over a stream that is no plain socket (TLS, memory), `try_send` writes nothing and
    `flush` sends the message."""
    async with pair(client=True) as (link, peer):
        assert link.try_send(b"later") > 0
        await link.flush()
        assert await peer.message() == b"later"
        assert link.held == 0

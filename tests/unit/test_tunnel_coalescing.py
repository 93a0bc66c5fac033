"""Tests for how the tunnel sizes its frames: body bytes waiting in the outbox join into frames
no larger than the peer announced, WebSocket messages never join, and a peer announcing the
default 16 KiB (an older agent or server) only ever gets frames of 16 KiB."""

from __future__ import annotations

import trio
from hypothesis import given
from hypothesis import strategies as st

from agentserver.tunnel import Tunnel
from agentserver.tunnel.connection import Role, Settings, TunnelConnection
from agentserver.tunnel.frames import DEFAULT_MAX_PAYLOAD, Data, End, Frame, Window, decode, encode
from agentserver.tunnel.messages import unpack
from tests.unit.test_tunnel_connection import ConnectionPair
from tests.unit.test_tunnel_transport import Wire, echo, link_pair, read_all

LIMIT = 1024
SETTINGS = Settings(max_frame_payload=LIMIT, initial_window=64 * 1024, ping_interval=5.0)


def data_frames(frames: list[Frame]) -> list[Data]:
    return [frame for frame in frames if isinstance(frame, Data)]


def test_queued_body_bytes_join_into_frames_up_to_the_peers_limit() -> None:
    """Body pieces sent before the writer collects them leave as frames filled to the limit."""
    pair = ConnectionPair(SETTINGS, SETTINGS)
    stream_id = pair.open()
    for piece in (b"a" * 300, b"b" * 300, b"c" * 300, b"d" * 300):
        pair.server.send_data(stream_id, piece)
    frames = pair.server.frames_to_send()
    assert [len(f.payload) for f in data_frames(frames)] == [900, 300]
    assert b"".join(f.payload for f in data_frames(frames)) == b"a" * 300 + b"b" * 300 + (
        b"c" * 300 + b"d" * 300
    )
    assert pair.server.send_capacity(stream_id) == LIMIT  # credit was charged for all 1200


def test_collected_frames_are_not_reopened() -> None:
    """Once the writer took a frame, later bytes start a new one (nothing waits for company)."""
    pair = ConnectionPair(SETTINGS, SETTINGS)
    stream_id = pair.open()
    pair.server.send_data(stream_id, b"first")
    assert data_frames(pair.server.frames_to_send()) == [Data(stream_id, b"first")]
    pair.server.send_data(stream_id, b"second")
    assert data_frames(pair.server.frames_to_send()) == [Data(stream_id, b"second")]


def test_frames_in_between_keep_their_order() -> None:
    """Data never jumps over another frame: another stream's data or an End ends the join."""
    pair = ConnectionPair(SETTINGS, SETTINGS)
    first, second = pair.open(), pair.open()
    pair.server.send_data(first, b"x" * 10)
    pair.server.send_data(second, b"y" * 10)
    pair.server.send_data(first, b"z" * 10)
    pair.server.end_stream(first)
    pair.server.send_data(second, b"w")
    assert pair.server.frames_to_send() == [
        Data(first, b"x" * 10),
        Data(second, b"y" * 10),
        Data(first, b"z" * 10),
        End(first),
        Data(second, b"w"),
    ]


def test_a_window_frame_between_two_pieces_is_not_skipped() -> None:
    """A Window queued between two pieces of body stays between them."""
    pair = ConnectionPair(SETTINGS, SETTINGS)
    stream_id = pair.open()
    pair.client.send_data(stream_id, b"q" * LIMIT)
    pair.shuttle()
    for _ in range(32):  # half the 64 KiB window, so the last acknowledge queues a Window
        pair.client.send_data(stream_id, b"q" * LIMIT)
        pair.shuttle()
    pair.server.send_data(stream_id, b"1")
    pair.server.acknowledge(stream_id, 33 * LIMIT)
    pair.server.send_data(stream_id, b"2")
    frames = pair.server.frames_to_send()
    assert frames == [Data(stream_id, b"1"), Window(stream_id, 33 * LIMIT), Data(stream_id, b"2")]


def test_websocket_messages_never_join() -> None:
    """On a relayed WebSocket each Data frame is a message (or fragment): none are merged."""
    pair = ConnectionPair(SETTINGS, SETTINGS)
    stream_id = pair.server.open_request("GET", "/pty", websocket=True)
    pair.shuttle()
    pair.client.send_response(stream_id, 101)
    pair.shuttle()
    for message in (b"one", b"two"):
        pair.server.send_data(stream_id, message)
        pair.client.send_data(stream_id, message)
    pair.server.send_data(stream_id, b"par", more=True)
    pair.server.send_data(stream_id, b"t", text=True)
    assert data_frames(pair.server.frames_to_send()) == [
        Data(stream_id, b"one"),
        Data(stream_id, b"two"),
        Data(stream_id, b"par", more=True),
        Data(stream_id, b"t", text=True),
    ]
    assert len(data_frames(pair.client.frames_to_send())) == 2


@given(
    st.lists(
        st.one_of(st.integers(1, LIMIT), st.just(0)),  # 0: the writer collects the outbox
        max_size=40,
    )
)
def test_joined_frames_carry_the_same_bytes_within_the_limit(steps: list[int]) -> None:
    """Whatever the sizes and collection times, the peer receives exactly the bytes sent, in
    order, in frames it accepts, and the sender's credit accounting is unchanged."""
    sender = TunnelConnection(Role.SERVER, SETTINGS)
    receiver = TunnelConnection(Role.CLIENT, SETTINGS)
    for frame in sender.frames_to_send():
        receiver.receive_frame(frame)
    for frame in receiver.frames_to_send():
        sender.receive_frame(frame)
    stream_id = sender.open_request("POST", "/upload")
    sent, received, counter = bytearray(), bytearray(), 0

    def collect() -> None:
        for frame in sender.frames_to_send():
            message = encode(frame)
            for event in receiver.receive_frame(decode(message, max_payload=LIMIT)):
                received.extend(getattr(event, "data", b""))

    for size in steps:
        if size == 0 or size > sender.send_capacity(stream_id):
            collect()
            continue
        counter += 1
        piece = bytes([counter % 256]) * size
        sender.send_data(stream_id, piece)
        sent += piece
    collect()
    assert received == sent
    assert sender.send_capacity(stream_id) == min(LIMIT, SETTINGS.initial_window - len(sent))


class RecordingLink:
    """Wraps a link and records the payload size of every Data frame sent through it."""

    def __init__(self, link: object, sizes: list[int]) -> None:
        self._link, self._sizes = link, sizes

    async def send_message(self, message: bytes) -> None:
        for frame in unpack(message, max_payload=2**24):
            if isinstance(frame, Data):
                self._sizes.append(len(frame.payload))
        await self._link.send_message(message)  # type: ignore[attr-defined]

    async def get_message(self) -> bytes:
        return await self._link.get_message()  # type: ignore[attr-defined, no-any-return]

    async def aclose(self) -> None:
        await self._link.aclose()  # type: ignore[attr-defined]


async def test_a_peer_with_default_limits_gets_default_sized_frames() -> None:
    """An agent announcing 256 KiB frames sends a server that announced the default (an older
    server) frames of at most 16 KiB, while the server may use the agent's larger limit."""
    big = Settings(max_frame_payload=256 * 1024, initial_window=2 * 1024 * 1024)
    server_sizes: list[int] = []
    client_sizes: list[int] = []
    server_link, client_link = link_pair(Wire())
    server = Tunnel(RecordingLink(server_link, server_sizes), role=Role.SERVER)
    client = Tunnel(
        RecordingLink(client_link, client_sizes), role=Role.CLIENT, settings=big, handler=echo
    )
    body = bytes(range(256)) * 4096  # 1 MiB
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as starter:  # each is ready once the other's Hello came
            starter.start_soon(nursery.start, server.run)
            starter.start_soon(nursery.start, client.run)
        stream = await server.open_request("POST", "/echo")
        await stream.send_all(body)
        await stream.send_eof()
        assert (await stream.receive_response_head())[0] == 200
        assert await read_all(stream) == body.upper()
        await server.aclose()
        await client.aclose()
    assert client_sizes
    assert max(client_sizes) <= DEFAULT_MAX_PAYLOAD
    assert server_sizes
    assert max(server_sizes) <= big.max_frame_payload
    assert sum(client_sizes) == len(body)

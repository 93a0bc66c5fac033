"""Tests for batches (several frames in one link message) and the head check without JSON.

A batch goes only to a peer whose Hello announced one; a single frame's message stays exactly
what older peers read; a complete response leaves in one message; unpacking refuses every
malformed batch; `check_head` refuses exactly what the peer's decoder would.
"""

from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from agentserver.tunnel import RequestReceived, Tunnel, TunnelStream
from agentserver.tunnel.connection import Role, Settings
from agentserver.tunnel.frames import (
    VERSION,
    Data,
    End,
    Frame,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    RequestOpen,
    ResponseHead,
    Window,
    check_head,
    decode,
    encode,
)
from agentserver.tunnel.messages import BATCH_MARK, pack, unpack
from tests.unit.test_tunnel_transport import Wire, link_pair, read_all

small_frames = st.lists(
    st.one_of(
        st.builds(Data, st.integers(1, 99), st.binary(max_size=300)),
        st.builds(End, st.integers(1, 99)),
        st.builds(Window, st.integers(1, 99), st.integers(1, 2**20)),
        st.builds(Ping, st.integers(0, 2**40)),
    ),
    min_size=1,
    max_size=30,
)


@given(small_frames, st.integers(64, 2048))
def test_packed_frames_unpack_to_the_same_frames_in_order_within_the_limit(
    frames: list[Frame], limit: int
) -> None:
    messages = list(pack(frames, batch=True, limit=limit))
    unpacked = [frame for message, _ in messages for frame in unpack(message, max_payload=4096)]
    assert unpacked == frames
    for message, data in messages:
        inside = unpack(message, max_payload=4096)
        assert len(inside) == 1 or len(message) <= limit  # a lone frame may exceed it
        assert data == sum(len(f.payload) for f in inside if isinstance(f, Data))


@given(small_frames)
def test_without_batches_every_message_is_one_frame_as_older_peers_read_it(
    frames: list[Frame],
) -> None:
    messages = [message for message, _ in pack(frames, batch=False, limit=2**20)]
    assert messages == [encode(frame) for frame in frames]


def test_a_single_frame_never_travels_as_a_batch() -> None:
    [(message, _)] = pack([End(1)], batch=True, limit=2**20)
    assert message == encode(End(1))
    assert not message.startswith(BATCH_MARK)


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        (BATCH_MARK, "empty batch"),
        (BATCH_MARK + b"\x00\x00", "middle of a frame's length"),
        (BATCH_MARK + (100).to_bytes(4, "big") + encode(End(1)), "beyond the end"),
        (BATCH_MARK + (4 + len(BATCH_MARK)).to_bytes(4, "big") + BATCH_MARK * 2, "JSON"),
    ],
)
def test_malformed_batches_are_protocol_errors(message: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        unpack(message)


def test_a_frame_in_a_batch_keeps_the_payload_limit() -> None:
    [(message, _)] = pack([End(1), Data(1, b"x" * 2000)], batch=True, limit=2**20)
    with pytest.raises(ProtocolError, match="exceeds"):
        unpack(message, max_payload=1024)


def test_the_hello_announces_batches_and_an_older_hello_does_not() -> None:
    assert decode(encode(Hello(VERSION, 1024, 4096, 5.0, batch=True))) == Hello(
        VERSION, 1024, 4096, 5.0, batch=True
    )
    assert b"batch" not in encode(Hello(VERSION, 1024, 4096, 5.0))
    bad = b'{"type":"hello","version":1,"max_payload":1024,"window":4096,"ping":5,"batch":1}'
    with pytest.raises(ProtocolError, match="batch"):
        decode(len(bad).to_bytes(4, "big") + bad)


class Recording:
    """A link that records the frames of every message it sends, message by message."""

    def __init__(self, link: object, messages: list[list[Frame]]) -> None:
        self._link, self._messages = link, messages

    async def send_message(self, message: bytes) -> None:
        self._messages.append(unpack(message, max_payload=2**24))
        await self._link.send_message(message)  # type: ignore[attr-defined]

    async def get_message(self) -> bytes:
        return await self._link.get_message()  # type: ignore[attr-defined, no-any-return]

    async def aclose(self) -> None:
        await self._link.aclose()  # type: ignore[attr-defined]


async def answer(request: RequestReceived, stream: TunnelStream) -> None:
    await stream.send_response(200, [("content-type", "text/plain")], b"small body", end=True)


async def _agent_messages(server_settings: Settings, requests: int) -> list[list[Frame]]:
    """What the agent sent while answering `requests` requests with `answer`."""
    sent: list[list[Frame]] = []
    server_link, client_link = link_pair(Wire())
    server = Tunnel(server_link, role=Role.SERVER, settings=server_settings)
    client = Tunnel(Recording(client_link, sent), role=Role.CLIENT, handler=answer)
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as starter:
            starter.start_soon(nursery.start, server.run)
            starter.start_soon(nursery.start, client.run)
        for _ in range(requests):
            stream = await server.open_request("GET", "/", body=False)
            assert await stream.receive_response_head() == (200, (("content-type", "text/plain"),))
            assert await read_all(stream) == b"small body"
            await stream.aclose()
        await server.aclose()
        await client.aclose()
    return sent


async def test_a_complete_small_response_leaves_in_one_message() -> None:
    sent = await _agent_messages(Settings(), requests=10)
    responses = [kinds for kinds in sent if any(isinstance(f, ResponseHead) for f in kinds)]
    # The answer to the server's first ping may ride in the same message: not the response's.
    kinds = [[type(f) for f in frames if not isinstance(f, Pong)] for frames in responses]
    assert kinds == [[ResponseHead, Data, End]] * 10


async def test_a_peer_that_announced_no_batches_gets_one_frame_per_message() -> None:
    sent = await _agent_messages(Settings(batch=False), requests=5)
    assert all(len(frames) == 1 for frames in sent)
    assert sum(isinstance(frames[0], ResponseHead) for frames in sent) == 5


async def test_send_response_with_a_body_beyond_the_credit_still_sends_it_all() -> None:
    body = bytes(range(256)) * 64  # 16 KiB against a 4 KiB window, 1 KiB frames

    async def big(request: RequestReceived, stream: TunnelStream) -> None:
        await stream.send_response(200, [], body, end=True)

    tight = Settings(max_frame_payload=1024, initial_window=4096, ping_interval=5.0)
    server_link, client_link = link_pair(Wire())
    server = Tunnel(server_link, role=Role.SERVER, settings=tight)
    client = Tunnel(client_link, role=Role.CLIENT, settings=tight, handler=big)
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as starter:
            starter.start_soon(nursery.start, server.run)
            starter.start_soon(nursery.start, client.run)
        stream = await server.open_request("GET", "/", body=False)
        assert (await stream.receive_response_head())[0] == 200
        assert await read_all(stream) == body
        await server.aclose()
        await client.aclose()


texts = st.text(st.characters(codec="latin-1"), max_size=12)


@given(
    st.lists(st.tuples(texts, texts), max_size=5),
    st.text(st.characters(codec="latin-1"), min_size=1, max_size=12),
)
def test_check_head_refuses_exactly_what_the_peers_decoder_refuses(
    headers: list[tuple[str, str]], target: str
) -> None:
    for frame in (
        RequestOpen(1, "GET", target, tuple(headers)),
        ResponseHead(1, 200, tuple(headers)),
    ):
        try:
            decode(encode(frame))
        except ProtocolError:
            with pytest.raises(ProtocolError):
                check_head(frame)
        else:
            check_head(frame)


def test_check_head_refuses_a_head_too_long_for_the_peer() -> None:
    frame = ResponseHead(1, 200, (("x-big", "\x01" * 20_000),))  # 6 bytes a character in JSON
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        check_head(frame)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(encode(frame))

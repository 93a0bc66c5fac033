"""Tests for the tunnel frame codec: round trips, rejection of malformed input, re-chunking."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentserver.tunnel import frames
from agentserver.tunnel.frames import (
    Data,
    End,
    GoAway,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    RequestOpen,
    Reset,
    ResponseHead,
    Window,
    decode,
    encode,
)
from agentserver.tunnel.messages import FrameDecoder, MessageBuffer, frame_message

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=20)
values = st.text(st.characters(blacklist_characters="\r\n\x00"), max_size=40)
headers = st.lists(st.tuples(tokens, values), max_size=6).map(tuple)
stream_ids = st.integers(1, frames.MAX_STREAM_ID)
targets = st.text(st.characters(blacklist_categories=("Z", "Cc", "Cs")), max_size=40).map(
    lambda path: "/" + path.lstrip("/")
)
messages = st.text(max_size=40)

all_frames = st.one_of(
    st.builds(
        Hello,
        version=st.integers(1, 10),
        max_frame_payload=st.integers(frames.MIN_MAX_PAYLOAD, frames.MAX_MAX_PAYLOAD),
        initial_window=st.integers(1, frames.MAX_WINDOW),
        ping_interval=st.floats(0.001, frames.MAX_PING_INTERVAL),
    ),
    st.builds(
        RequestOpen,
        stream_id=stream_ids,
        method=tokens,
        target=targets,
        headers=headers,
        body=st.booleans(),
        websocket=st.booleans(),
        subprotocols=st.lists(tokens, max_size=3).map(tuple),
        port=st.none() | st.integers(1, 65535),
    ),
    st.builds(ResponseHead, stream_id=stream_ids, status=st.integers(100, 599), headers=headers),
    st.builds(
        Data,
        stream_id=stream_ids,
        payload=st.binary(max_size=frames.DEFAULT_MAX_PAYLOAD),
        text=st.booleans(),
        more=st.booleans(),
    ),
    st.builds(End, stream_id=stream_ids, code=st.none() | st.integers(1000, 4999), reason=messages),
    st.builds(Window, stream_id=stream_ids, increment=st.integers(1, frames.MAX_WINDOW)),
    st.builds(Reset, stream_id=stream_ids, code=tokens, message=messages),
    st.builds(Ping, opaque=st.integers(0, frames.MAX_OPAQUE)),
    st.builds(Pong, opaque=st.integers(0, frames.MAX_OPAQUE)),
    st.builds(GoAway, code=tokens, message=messages),
)


def raw_message(header: bytes, payload: bytes = b"") -> bytes:
    return len(header).to_bytes(4, "big") + header + payload


def message_of(header: object, payload: bytes = b"") -> bytes:
    return raw_message(json.dumps(header).encode(), payload)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(all_frames)
def test_every_frame_round_trips(frame: frames.Frame) -> None:
    """decode(encode(frame)) gives back an equal frame for every frame type."""
    assert decode(encode(frame)) == frame


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(all_frames)
def test_a_header_is_written_as_json_dumps_writes_it(frame: frames.Frame) -> None:
    """The encoder made once writes the very bytes json.dumps would."""
    if isinstance(frame, Data) and not (frame.text or frame.more):
        return  # written by hand (test_a_plain_data_header_reads_as_json_would)
    expected = json.dumps(frames._header_of(frame), separators=(",", ":")).encode()
    assert frames.header_bytes(frame) == expected


json_texts = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
).map(json.dumps)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(
    st.one_of(
        json_texts,
        st.tuples(
            st.sampled_from(["", " ", "\n", "x", "{", "]"]),
            json_texts,
            st.sampled_from(["", " ", "\t", "x", "}", "1"]),
        ).map("".join),
        st.text(max_size=12),
    )
)
def test_a_header_is_read_as_json_loads_reads_it(text: str) -> None:
    """The scanner made once accepts exactly what json.loads accepts, with the same value."""
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            frames._loads(text)
    else:
        # Compared as written again: a NaN inside is never equal to itself.
        assert json.dumps(frames._loads(text)) == json.dumps(expected)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    """Arbitrary bytes either decode to a frame or raise ProtocolError, never anything else."""
    with contextlib.suppress(ProtocolError):
        decode(data)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(
    st.dictionaries(
        st.sampled_from(["type", "id", "inc", "status", "opaque", "ping"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=8),
            st.sampled_from(["data", "window", "hello"]),
        ),
    )
)
def test_arbitrary_json_headers_decode_or_raise_protocol_error(header: dict[str, object]) -> None:
    """Well-formed JSON with arbitrary fields either decodes or raises ProtocolError."""
    with contextlib.suppress(ProtocolError):
        decode(message_of(header))


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(all_frames, st.data())
def test_any_truncation_is_rejected_or_is_a_shorter_data_frame(
    frame: frames.Frame, data: st.DataObject
) -> None:
    """Cutting a message short raises ProtocolError unless only Data payload bytes were cut."""
    raw = encode(frame)
    cut = data.draw(st.integers(0, len(raw) - 1))
    header_end = 4 + int.from_bytes(raw[:4], "big")
    if cut >= header_end:
        assert isinstance(frame, Data)
        assert decode(raw[:cut]) == Data(
            frame.stream_id, frame.payload[: cut - header_end], frame.text, frame.more
        )
    else:
        with pytest.raises(ProtocolError):
            decode(raw[:cut])


MALFORMED = {
    "empty": b"",
    "short prefix": b"\x00\x00\x01",
    "header beyond message": b"\x00\x00\x00\x10{}",
    "header over limit": (frames.MAX_HEADER + 1).to_bytes(4, "big") + b"{}",
    "bad utf-8": b"\x00\x00\x00\x02\xff\xfe",
    "bad json": raw_message(b'{"type":"data",'),
    "not an object": message_of(["data"]),
    "unknown type": message_of({"type": "teleport", "id": 1}),
    "missing type": message_of({"id": 1}),
    "missing id": message_of({"type": "window", "inc": 5}),
    "bool as int": message_of({"type": "window", "id": True, "inc": 5}),
    "zero stream id": message_of({"type": "end", "id": 0}),
    "zero window increment": message_of({"type": "window", "id": 1, "inc": 0}),
    "oversized data payload": message_of({"type": "data", "id": 1}, b"x" * 16385),
    "payload on control frame": message_of({"type": "ping", "opaque": 1}, b"x"),
    "absolute target": message_of(
        {"type": "request", "id": 1, "method": "GET", "target": "http://evil/"}
    ),
    "authority target": message_of(
        {"type": "request", "id": 1, "method": "GET", "target": "//evil/x"}
    ),
    "header injection": message_of(
        {"type": "response", "id": 1, "status": 200, "headers": [["X-A", "a\r\nSet-Cookie: x"]]}
    ),
    "bad header shape": message_of(
        {"type": "response", "id": 1, "status": 200, "headers": [["X-A"]]}
    ),
    "status out of range": message_of({"type": "response", "id": 1, "status": 99}),
    "nan ping": raw_message(
        b'{"type":"hello","version":1,"max_payload":16384,"window":1,"ping":NaN}'
    ),
    "huge ping": message_of(
        {"type": "hello", "version": 1, "max_payload": 16384, "window": 1, "ping": 10**400}
    ),
    "deep nesting": raw_message(b"[" * 20000 + b"]" * 20000),
    "huge integer literal": raw_message(b'{"type":"window","id":1,"inc":' + b"9" * 5000 + b"}"),
    # What the plain Data header's fast path reads (frames.decode) follows JSON's rules too.
    "plain data id zero": raw_message(b'{"type":"data","id":0}'),
    "plain data id with a leading zero": raw_message(b'{"type":"data","id":07}'),
    "plain data id beyond the range": raw_message(b'{"type":"data","id":2147483648}'),
    "plain data id far beyond": raw_message(b'{"type":"data","id":' + b"9" * 40 + b"}"),
    "plain data id not a number": raw_message(b'{"type":"data","id":1e3}'),
    "plain data oversized payload": raw_message(b'{"type":"data","id":1}', b"x" * 16385),
    "plain end id zero": raw_message(b'{"type":"end","id":0}'),
    "plain end id too large": raw_message(b'{"type":"end","id":2147483648}'),
    "plain end with a payload": raw_message(b'{"type":"end","id":1}', b"x"),
    "plain window too large": raw_message(b'{"type":"window","id":1,"inc":2147483648}'),
    "plain window with a payload": raw_message(b'{"type":"window","id":1,"inc":1}', b"x"),
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_messages_raise_protocol_error(raw: bytes) -> None:
    """Each kind of malformed message is rejected with ProtocolError."""
    with pytest.raises(ProtocolError):
        decode(raw)


def test_payload_limit_follows_the_negotiated_maximum() -> None:
    """A Data payload is accepted up to the negotiated maximum and rejected one byte beyond."""
    raw = encode(Data(1, b"x" * 2048))
    assert decode(raw, max_payload=2048) == Data(1, b"x" * 2048)
    with pytest.raises(ProtocolError):
        decode(raw, max_payload=2047)


def test_a_plain_data_header_reads_as_json_would() -> None:
    """A Data header as `encode` writes it (decoded without json) gives the same frame as
    the same header written any other valid way (decoded with json)."""
    for stream_id in (1, 9, 10, 12345, frames.MAX_STREAM_ID):
        plain = encode(Data(stream_id, b"body"))
        spaced = raw_message(b'{"type": "data", "id": %d}' % stream_id, b"body")
        assert decode(plain) == decode(spaced) == Data(stream_id, b"body")


def test_a_plain_end_header_reads_as_json_would() -> None:
    """Likewise an End without code or reason, one per response."""
    for stream_id in (1, 10, frames.MAX_STREAM_ID):
        plain = encode(End(stream_id))
        spaced = raw_message(b'{"id": %d, "type": "end"}' % stream_id)
        assert decode(plain) == decode(spaced) == End(stream_id)


def test_a_plain_window_header_reads_as_json_would() -> None:
    for stream_id, increment in ((1, 1), (10, 65536), (frames.MAX_STREAM_ID, frames.MAX_WINDOW)):
        plain = encode(Window(stream_id, increment))
        spaced = raw_message(b'{"inc": %d, "id": %d, "type": "window"}' % (increment, stream_id))
        assert decode(plain) == decode(spaced) == Window(stream_id, increment)


def test_plain_data_end_and_window_headers_are_read_without_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The frames of every response body, and the credit of every request, are decoded
    without the JSON parser."""
    messages = [encode(Data(7, b"body")), encode(End(7)), encode(Window(7, 65536))]

    def no_json(text: str) -> object:
        raise AssertionError(f"parsed as JSON: {text}")

    monkeypatch.setattr(frames.json, "loads", no_json)
    assert [decode(m) for m in messages] == [Data(7, b"body"), End(7), Window(7, 65536)]


def test_data_header_stays_small() -> None:
    """A plain Data frame costs only a few dozen bytes of header."""
    assert len(encode(Data(12345, b""))) < 40


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(st.lists(all_frames, max_size=8), st.data())
def test_any_rechunking_of_a_byte_stream_yields_the_same_frames(
    sent: list[frames.Frame], data: st.DataObject
) -> None:
    """Feeding the length-prefixed stream in arbitrary chunks decodes exactly the frames sent."""
    stream = b"".join(frame_message(encode(frame)) for frame in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    received: list[frames.Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        received += decoder.feed(stream[start:end])
    assert received == sent


def test_message_buffer_rejects_an_oversized_length_prefix() -> None:
    """A byte stream announcing a message beyond the limit is a ProtocolError, not a huge buffer."""
    buffer = MessageBuffer(max_message=100)
    buffer.feed((101).to_bytes(4, "big"))
    with pytest.raises(ProtocolError):
        buffer.next_message()


def test_message_buffer_waits_for_a_complete_message() -> None:
    """A partial message yields nothing until its last byte arrives."""
    buffer = MessageBuffer()
    raw = frame_message(b"hello")
    buffer.feed(raw[:-1])
    assert buffer.next_message() is None
    buffer.feed(raw[-1:])
    assert buffer.next_message() == b"hello"
    assert buffer.pending == 0

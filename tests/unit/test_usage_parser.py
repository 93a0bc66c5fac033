"""The usage reader: any chunking of a recorded stream gives the same counts as the JSON body."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agentserver.llm.usage import MAX_EVENT_BYTES, StreamUsage, Usage, parse_message
from tests.support.anthropic import Reply, message_json, stream_bytes

REPLIES = [
    Reply(),
    Reply(
        input_tokens=3, output_tokens=250, cache_creation_input_tokens=0, cache_read_input_tokens=0
    ),
    Reply(
        input_tokens=1200,
        output_tokens=1,
        cache_creation_input_tokens=900,
        cache_read_input_tokens=40_000,
        start_input_tokens=1000,
    ),
    Reply(text="a " * 300, output_tokens=300),
]


def counts(usage: Usage) -> tuple[str | None, int, int, int, int]:
    return (
        usage.model,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_creation_input_tokens,
        usage.cache_read_input_tokens,
    )


def expected(reply: Reply) -> tuple[str | None, int, int, int, int]:
    return (
        "claude-sonnet-4-5",
        reply.input_tokens,
        reply.output_tokens,
        reply.cache_creation_input_tokens,
        reply.cache_read_input_tokens,
    )


def read_stream(data: bytes, cuts: list[int]) -> StreamUsage:
    reader = StreamUsage()
    previous = 0
    for cut in sorted(set(cuts)):
        reader.feed(data[previous:cut])
        previous = cut
    reader.feed(data[previous:])
    return reader


def with_line_ends(data: bytes, eol: bytes) -> bytes:
    return data.replace(b"\n", eol)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(REPLIES),
    st.lists(st.integers(min_value=0, max_value=20_000), max_size=40),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
def test_any_chunking_gives_the_reply_usage(reply: Reply, cuts: list[int], eol: bytes) -> None:
    """However the stream is cut (and whatever line ends it uses), the counts equal the reply's."""
    data = with_line_ends(stream_bytes(reply), eol)
    assert counts(read_stream(data, cuts).usage) == expected(reply)


@given(st.sampled_from(REPLIES))
def test_streaming_and_non_streaming_agree(reply: Reply) -> None:
    """The streamed answer and the JSON answer for one reply give identical usage."""
    body = json.dumps(message_json(reply)).encode()
    assert counts(parse_message(body)) == counts(read_stream(stream_bytes(reply), []).usage)


def test_byte_by_byte_counts_every_event() -> None:
    """Feeding one byte at a time still sees every event and the final delta's output tokens."""
    reply = Reply(text="one two three")
    data = stream_bytes(reply)
    reader = read_stream(data, list(range(len(data))))
    assert reader.events == data.count(b"\n\n")
    assert reader.usage.output_tokens == reply.output_tokens


def test_later_delta_replaces_start_counts() -> None:
    """Input counts updated in the final message_delta win over message_start's (server tools)."""
    reply = Reply(input_tokens=500, start_input_tokens=100)
    assert read_stream(stream_bytes(reply), []).usage.input_tokens == 500


def test_large_uninteresting_events_are_not_buffered() -> None:
    """A huge text delta is skipped without being kept, and usage after it is still read."""
    reply = Reply(text="x" * (3 * MAX_EVENT_BYTES))
    data = stream_bytes(reply)
    reader = StreamUsage()
    biggest = 0
    for start in range(0, len(data), 4096):
        reader.feed(data[start : start + 4096])
        biggest = max(biggest, len(reader._line), sum(len(d) for d in reader._data))
    assert biggest < 8192
    assert counts(reader.usage) == expected(reply)


def test_error_event_and_garbage_do_not_raise() -> None:
    """An error event is noted; malformed data lines and comments are ignored."""
    reader = StreamUsage()
    reader.feed(b": keep-alive\n\ndata: {not json\n\nevent: error\n")
    reader.feed(b'data: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n')
    assert reader.usage.error_type == "overloaded_error"
    assert reader.usage.total_tokens == 0


def test_event_type_from_data_without_event_line() -> None:
    """A message_start sent without an `event:` line is still read from its JSON type."""
    reader = StreamUsage()
    start = {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 9}}}
    reader.feed(b"data: " + json.dumps(start).encode() + b"\n\n")
    assert (reader.usage.model, reader.usage.input_tokens) == ("m", 9)


def test_non_streaming_error_and_junk_bodies() -> None:
    """Error bodies give their type and no tokens; non-JSON bodies give empty usage."""
    error = parse_message(b'{"type":"error","error":{"type":"rate_limit_error","message":"x"}}')
    assert (error.error_type, error.total_tokens) == ("rate_limit_error", 0)
    assert counts(parse_message(b"\xff\xfe")) == (None, 0, 0, 0, 0)
    assert (
        parse_message(b'{"usage": {"input_tokens": -4, "output_tokens": true}}').total_tokens == 0
    )

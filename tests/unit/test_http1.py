"""HTTP/1.1 heads and chunked bodies for the proxy's fast path and the agent (http1.py, pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentserver.http1 import (
    MAX_HEAD,
    ChunkedBody,
    ProtocolError,
    chunk,
    head_end,
    parse_request_head,
    parse_response_head,
    request_head,
    response_head,
)

GET = b"GET /a/b%20c?x=1 HTTP/1.1\r\nHost: oc-abc.localhost:8080\r\nAccept: */*\r\n"


def test_plain_request_is_parsed_with_lower_case_names_in_order() -> None:
    """A plain GET comes out with its method, target, host and headers, repeats kept."""
    head = parse_request_head(GET + b"Cookie: a=1\r\nCOOKIE: b=2\r\n\r\n")
    assert head is not None
    assert (head.method, head.target, head.host) == (
        b"GET",
        b"/a/b%20c?x=1",
        b"oc-abc.localhost:8080",
    )
    assert head.headers == [
        (b"host", b"oc-abc.localhost:8080"),
        (b"accept", b"*/*"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
    ]
    assert (head.path, head.query, head.decoded_path()) == (b"/a/b%20c", b"x=1", "/a/b c")
    assert head.content_length == 0
    assert head.keep_alive


def test_content_length_and_connection_close_are_read() -> None:
    """A sized body's length and `Connection: close` shape how the exchange is framed."""
    head = parse_request_head(
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\nConnection: Close\r\n\r\n"
    )
    assert head is not None
    assert head.content_length == 12
    assert not head.keep_alive


def test_surrounding_whitespace_is_not_part_of_a_value() -> None:
    """Optional whitespace around a field value is dropped, inner spaces kept."""
    head = parse_request_head(b"GET / HTTP/1.1\r\nHost:  h \r\nX-A:\ta b\t\r\nX-E:\r\n\r\n")
    assert head is not None
    assert head.headers == [(b"host", b"h"), (b"x-a", b"a b"), (b"x-e", b"")]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",  # HTTP/1.0
        b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two hosts
        b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",  # no host
        b"GET / HTTP/1.1\r\nHost: \r\n\r\n",  # empty host
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",  # obsolete line folding
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\nY: b\r\n\r\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",  # bare CR
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",  # NUL
        b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX : v\r\n\r\n",  # space before the colon
        b"GET / HTTP/1.1\r\nHost: h\r\nno-colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1e3\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 9999999999999999999\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",  # space in the target
        b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",  # absolute form
        b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",  # not a token
        b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",  # leading blank line
        b"GET / HTTP/1.1\r\nHost: h\r\n",  # unterminated
        b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n",  # too large
    ],
)
def test_anything_unusual_is_left_to_hypercorn(raw: bytes) -> None:
    """Requests the fast path does not serve (or that are malformed) are not parsed."""
    assert parse_request_head(raw) is None


def test_head_end_finds_a_terminator_split_across_reads() -> None:
    """The blank line is found even when the previous search stopped inside it."""
    buffer = b"GET / HTTP/1.1\r\nHost: h\r\n\r"
    assert head_end(buffer) == -1
    buffer += b"\nnext"
    assert head_end(buffer, len(buffer) - 5) == len(buffer) - 4


def test_response_head_sets_our_framing() -> None:
    """Framing and Connection are ours: theirs are dropped, chunked replaces a length."""
    head = response_head(
        200,
        [(b"content-length", b"5"), (b"connection", b"x"), (b"x-a", b"1")],
        chunked=True,
        close=True,
    )
    assert head == (
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )


def test_request_head_serializes_in_order() -> None:
    """The upstream request head carries the headers in the order given."""
    assert request_head(b"GET", b"/x?y", [(b"host", b"h"), (b"a", b"1")]) == (
        b"GET /x?y HTTP/1.1\r\nhost: h\r\na: 1\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("raw", "method", "length", "chunked", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"GET", 5, False, True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET", None, True, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD", 0, False, True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"GET", 0, False, True),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", b"GET", 0, False, True),
        (b"HTTP/1.1 200 OK\r\n\r\n", b"GET", None, False, False),  # until close
        (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", b"GET", 5, False, False),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n",
            b"GET",
            5,
            False,
            True,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
            b"GET",
            5,
            False,
            False,
        ),
        # Both framings: chunked wins and the connection is never reused.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET",
            None,
            True,
            False,
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", b"GET", None, False, False),
    ],
)
def test_response_framing_follows_rfc_9112(
    raw: bytes, method: bytes, length: int | None, chunked: bool, reusable: bool
) -> None:
    """How a response body ends, and whether its connection may be reused, per RFC 9112 §6.3."""
    head = parse_response_head(raw, method)
    assert (head.length, head.chunked, head.reusable) == (length, chunked, reusable)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n",
        b"garbage\r\n\r\n",
    ],
)
def test_broken_responses_are_protocol_errors(raw: bytes) -> None:
    """A malformed response head from a sandbox is an error, never a guess."""
    with pytest.raises(ProtocolError):
        parse_response_head(raw, b"GET")


def _encode(pieces: list[bytes], extension: bool, trailers: bool) -> bytes:
    out = b""
    for piece in pieces:
        size = b"%x" % len(piece) + (b";name=value" if extension else b"")
        out += size + b"\r\n" + piece + b"\r\n"
    return out + b"0\r\n" + (b"Trailer-A: 1\r\n" if trailers else b"") + b"\r\n"


@given(
    pieces=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=50),
    extension=st.booleans(),
    trailers=st.booleans(),
)
def test_chunked_bodies_decode_the_same_whatever_the_reads(
    pieces: list[bytes], cuts: list[int], extension: bool, trailers: bool
) -> None:
    """Any re-chunking of the byte stream yields the same body and ends it exactly once."""
    encoded = _encode(pieces, extension, trailers) + b"NEXT"
    body = ChunkedBody()
    out = b""
    position, turn = 0, 0
    while not body.done:
        assert position < len(encoded), "the decoder never finished"
        step = cuts[turn % len(cuts)]
        body.feed(encoded[position : position + step])
        position, turn = position + step, turn + 1
        out += body.data()
    assert out == b"".join(pieces)
    # What followed the body stays unread, for the check that decides on reuse.
    assert bytes(body.buffer) + encoded[position:] == b"NEXT"


def test_chunk_helper_round_trips() -> None:
    """`chunk` frames data the decoder reads back."""
    body = ChunkedBody()
    body.feed(chunk(b"hello") + chunk(b" world") + b"0\r\n\r\n")
    assert body.data() == b"hello world"
    assert body.done


@pytest.mark.parametrize(
    "raw",
    [
        b"zz\r\nab\r\n",  # not hex
        b"2\r\nabc\r\n",  # longer than its size
        b"-1\r\n",
        b"1" * 20 + b"\r\n",  # absurd size
        b"2\r\nab" + b"x" * 10,  # data not followed by CRLF
    ],
)
def test_malformed_chunked_bodies_are_protocol_errors(raw: bytes) -> None:
    """A broken chunked body from a sandbox raises instead of passing garbage on."""
    body = ChunkedBody()
    body.feed(raw)
    with pytest.raises(ProtocolError):
        body.data()


def test_an_endless_size_line_is_refused() -> None:
    """A size line that never ends is cut off instead of buffering without bound."""
    body = ChunkedBody()
    body.feed(b"1" + b";x" * 4096)
    with pytest.raises(ProtocolError):
        body.data()


_names = st.sampled_from(
    [b"Host", b"host", b"Accept", b"Cookie", b"X-A", b"Content-Length", b"Connection", b"Expect"]
)
_values = st.sampled_from([b"h", b"", b" a b ", b"\tx", b"close", b"keep-alive, Upgrade", b"7"])
_junk = st.sampled_from([b"", b"", b"", b"\r", b"\n", b" ", b":", b"\x00", b"a\r\n b"])


@given(st.lists(st.tuples(_names, _values, _junk), max_size=6))
def test_a_head_parsed_here_reads_the_same_to_h11(fields: list[tuple[bytes, bytes, bytes]]) -> None:
    """Whatever the fast path accepts, hypercorn's parser (h11) reads alike: same method,
    target and fields, the same body length and keep-alive; none of it is framed otherwise."""
    import h11

    raw = b"GET /p?q HTTP/1.1\r\n" + b"".join(n + b":" + v + j + b"\r\n" for n, v, j in fields)
    raw += b"\r\n"
    head = parse_request_head(raw)
    if head is None:
        return
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    assert (event.method, event.target) == (head.method, head.target)
    assert list(event.headers) == head.headers
    assert head.host == dict(head.headers)[b"host"]
    assert head.content_length == int(dict(head.headers).get(b"content-length", b"0"))
    closes = any(b"close" in v.lower() for n, v in head.headers if n == b"connection")
    assert head.keep_alive is not closes


def test_a_valid_head_is_never_left_to_hypercorn_for_its_shape() -> None:
    """Many well-formed fields, repeats and odd spacing included, all parse here."""
    fields = [b"X-A:  a  b ", b"Cookie: a=1", b"cookie:b=2", b"Accept:\t*/*\t"] * 20
    head = parse_request_head(
        b"GET / HTTP/1.1\r\n" + b"\r\n".join([b"Host: h", *fields]) + b"\r\n\r\n"
    )
    assert head is not None
    assert len(head.headers) == 81
    assert head.headers[1:3] == [(b"x-a", b"a  b"), (b"cookie", b"a=1")]

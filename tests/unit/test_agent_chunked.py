"""Tests for the agent's strict chunked-body decoder (agent/chunked.py): h11's encoding decoded
whole however the bytes are split, extensions and trailers skipped, bytes after the end kept
apart, and malformed framing refused."""

from __future__ import annotations

from collections.abc import Sequence

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentserver.agent.chunked import MAX_SIZE_LINE, MAX_TRAILERS, ChunkedDecoder, ChunkError


def h11_chunked(pieces: list[bytes], trailers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """The body as h11 writes it: one chunk per piece, then the last chunk and `trailers`."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    conn.next_event()
    conn.next_event()
    conn.send(h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")]))
    out = b"".join(conn.send(h11.Data(data=piece)) or b"" for piece in pieces)
    return out + (conn.send(h11.EndOfMessage(headers=list(trailers))) or b"")


def decode(parts: list[bytes]) -> tuple[bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder()
    out = b"".join(piece for part in parts for piece in decoder.feed(part))
    return out, decoder


PIECES = [b"id: 1\ndata: hello\n\n", b"x" * 300, b"\r\n0\r\n\r\n", b"last"]


def test_every_split_of_an_h11_chunked_body_decodes_to_its_bytes() -> None:
    """Split in two at every byte (a chunk-size line, its CRLF, the data, the end), the body
    decodes to the same bytes, ends, and leaves nothing over."""
    wire = h11_chunked(PIECES, [(b"x-checksum", b"abc")])
    for at in range(len(wire) + 1):
        body, decoder = decode([wire[:at], wire[at:]])
        assert body == b"".join(PIECES), at
        assert decoder.done, at
        assert decoder.rest == b"", at


def test_a_body_fed_byte_by_byte_decodes_to_its_bytes() -> None:
    """One byte at a time, every state is entered from a partial line or CRLF and completed."""
    wire = h11_chunked(PIECES)
    body, decoder = decode([wire[i : i + 1] for i in range(len(wire))])
    assert body == b"".join(PIECES)
    assert decoder.done


@given(st.lists(st.binary(min_size=1, max_size=200), max_size=8), st.data())
def test_any_rechunking_decodes_to_the_same_bytes(pieces: list[bytes], data: st.DataObject) -> None:
    """However the wire is cut into reads, the decoded bytes are the pieces h11 encoded."""
    wire = h11_chunked(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    parts = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    body, decoder = decode(parts)
    assert body == b"".join(pieces)
    assert decoder.done


def test_a_read_holding_one_whole_chunk_is_handed_out_as_one_piece() -> None:
    """An SSE event that arrives as one chunk in one read is one piece, not several."""
    decoder = ChunkedDecoder()
    event = b"id: 1\ndata: hello\n\n"
    assert decoder.feed(b"%x\r\n%s\r\n" % (len(event), event)) == [event]
    assert not decoder.done


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.booleans())
def test_reads_of_one_whole_chunk_each_decode_as_any_other_split(
    pieces: list[bytes], upper: bool
) -> None:
    """A stream read one whole chunk at a time (the usual SSE read, taken by a shortcut) gives
    each chunk's data as one piece, and the body ends as it would otherwise."""
    decoder = ChunkedDecoder()
    for piece in pieces:
        size = (b"%X" if upper else b"%x") % len(piece)
        assert decoder.feed(size + b"\r\n" + piece + b"\r\n") == [piece]
        assert not decoder.done
    assert decoder.feed(b"0\r\n\r\n") == []
    assert decoder.done


def test_extensions_are_ignored_and_trailers_dropped() -> None:
    """Chunk extensions and trailer fields never reach the body."""
    body, decoder = decode([b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0;end\r\nx-t: 1\r\n\r\n"])
    assert body == b"hello world"
    assert decoder.done


def test_bytes_after_the_end_are_kept_apart_not_taken_as_body() -> None:
    """What follows the last chunk's empty line is not the body's: it is kept in `rest`."""
    decoder = ChunkedDecoder()
    assert decoder.feed(b"2\r\nok\r\n0\r\n\r\nHTTP/1.1 200") == [b"ok"]
    assert decoder.done
    assert decoder.feed(b" OK") == []
    assert decoder.rest == b"HTTP/1.1 200 OK"


@pytest.mark.parametrize(
    "wire",
    [
        b"zz\r\n",  # not hex
        b"\r\n",  # no size at all
        b"-5\r\nhello\r\n",  # a sign
        b"0x5\r\nhello\r\n",  # a prefix
        b"5 x\r\nhello\r\n",  # junk after the size that is not an extension
        b"1" + b"0" * 16 + b"\r\n",  # more than 16 hex digits
        b"5\nhello\r\n",  # a bare LF ends no line here
        b"5\x00\r\nhello\r\n",  # a NUL in the size line
        b"5\r\nhelloXX",  # data not followed by CRLF
        b"5\r\nhello\rX",  # half a CRLF
        b"5;" + b"a" * MAX_SIZE_LINE + b"\r\n",  # a size line past its bound
        b"0\r\nno colon\r\n\r\n",  # a trailer that is no field
        b"0\r\n continued: x\r\n\r\n",  # an obsolete line folding
        b"0\r\nx: " + b"a" * MAX_TRAILERS + b"\r\n\r\n",  # trailers past their bound
    ],
)
def test_malformed_framing_is_refused(wire: bytes) -> None:
    """Framing h11 (or RFC 9112) would refuse raises ChunkError, fed whole or byte by byte."""
    with pytest.raises(ChunkError):
        ChunkedDecoder().feed(wire)
    with pytest.raises(ChunkError):
        decode([wire[i : i + 1] for i in range(len(wire))])

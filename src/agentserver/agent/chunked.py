"""A strict decoder of an HTTP/1.1 chunked body (RFC 9112 §7.1): bytes in, body pieces out.

The agent reads opencode's streamed answers (SSE) straight from the socket and hands each
read's data on as one piece: h11 would produce the same bytes through an event object, a
buffer copy and a regex per chunk, about a fifth of the agent's work per streamed event.
Chunk extensions are ignored and trailers read and dropped, as h11 does; anything it would
refuse (a size that is not hex, a missing CRLF, a size line or trailer section too long)
raises `ChunkError`, and the caller breaks the response off.
"""

from __future__ import annotations

import re

MAX_SIZE_LINE = 4096  # a chunk-size line with its extensions
MAX_TRAILERS = 64 * 1024  # the trailer section (h11's bound on an incomplete event)
_MAX_DIGITS = 16  # a chunk of up to 2**64 - 1 bytes
_HEX = frozenset(b"0123456789abcdefABCDEF")
_FORBIDDEN = frozenset(b"\r\n\x00")
_ONE_CHUNK = re.compile(rb"([0-9a-fA-F]{1,16})\r\n")  # a size line without extensions

# The decoder's states: where the next byte belongs.
SIZE = "size"  # a chunk-size line
DATA = "data"  # a chunk's data (`left` bytes of it to come)
DATA_END = "data-end"  # the CRLF after a chunk's data
TRAILERS = "trailers"  # trailer fields after the last chunk, up to an empty line
DONE = "done"  # the body ended: anything after it is not the body's


class ChunkError(ValueError):
    """The body is not validly chunked."""


def _size(line: bytes) -> int:
    """The chunk size on a size line (without its CRLF); its extensions are ignored."""
    if _FORBIDDEN.intersection(line):
        raise ChunkError("a control character in a chunk-size line")
    digits = 0
    while digits < len(line) and line[digits] in _HEX:
        digits += 1
    if not 0 < digits <= _MAX_DIGITS:
        raise ChunkError(f"not a chunk size: {line[:40]!r}")
    rest = line[digits:].lstrip(b" \t")
    if rest and rest[:1] != b";":
        raise ChunkError(f"not a chunk size: {line[:40]!r}")
    return int(line[:digits], 16)


class ChunkedDecoder:
    """Feed it what the socket gives; it returns the body's bytes in it, as few pieces as the
    framing allows (one per chunk in `data`; an SSE event is usually one chunk, one read)."""

    __slots__ = ("_line", "_trailers", "left", "rest", "state")

    def __init__(self) -> None:
        self.state = SIZE
        self.left = 0  # data bytes of the current chunk still to come
        self.rest = b""  # bytes that arrived after the end of the body
        self._line = b""  # an incomplete size or trailer line (or the partial CRLF after data)
        self._trailers = 0  # bytes of trailer section seen

    @property
    def done(self) -> bool:
        """Whether the last chunk and the trailer section have been read."""
        return self.state is DONE

    def feed(self, data: bytes) -> list[bytes]:
        """The body bytes in `data`, in order (no empty pieces)."""
        if self.state is SIZE and not self._line and (one := _ONE_CHUNK.match(data)):
            # The usual read of a stream: exactly one whole chunk (an SSE event), taken as the
            # loop below would take it, in a few C calls instead of its dozens of lines.
            start, size = one.end(), int(one[1], 16)
            if size and len(data) == start + size + 2 and data.endswith(b"\r\n"):
                return [data[start:-2]]
        pieces: list[bytes] = []
        if self.state is DONE:
            self.rest += data
            return pieces
        if self._line:
            data, self._line = self._line + data, b""
        at, end = 0, len(data)
        while at < end:
            state = self.state
            if state is DATA:
                take = min(self.left, end - at)
                pieces.append(data if take == end and at == 0 else data[at : at + take])
                at += take
                self.left -= take
                if not self.left:
                    self.state = DATA_END
            elif state is DATA_END:
                if end - at < 2:
                    if data[at:] != b"\r":
                        raise ChunkError("a chunk's data is not followed by CRLF")
                    self._line = b"\r"
                    break
                if data[at : at + 2] != b"\r\n":
                    raise ChunkError("a chunk's data is not followed by CRLF")
                at += 2
                self.state = SIZE
            elif state is DONE:
                self.rest = data[at:]
                break
            else:
                at = self._line_at(data, at)
                if at < 0:
                    break
        return pieces

    def _line_at(self, data: bytes, at: int) -> int:
        """Take one size or trailer line starting at `at`; the position after it, or -1 when
        it is incomplete (kept for the next feed)."""
        bound = MAX_SIZE_LINE if self.state is SIZE else MAX_TRAILERS - self._trailers
        crlf = data.find(b"\r\n", at, at + bound + 2)
        if crlf < 0:
            if len(data) - at > bound + 1:
                raise ChunkError(f"a chunk {self.state} line longer than {bound} bytes")
            self._line = data[at:]
            return -1
        line = data[at:crlf]
        if self.state is SIZE:
            size = _size(line)
            self.left = size
            self.state = DATA if size else TRAILERS
        elif not line:
            self.state = DONE
        elif b"\n" in line or b"\r" in line or b":" not in line or line[:1] in b" \t":
            raise ChunkError("a malformed trailer field")
        else:
            self._trailers += len(line) + 2
        return crlf + 2

"""HTTP/1.1 heads and chunked bodies for the proxy's fast path and the agent's client (pure).

The fast path serves only plain requests: HTTP/1.1, no Transfer-Encoding, at most one
Content-Length, no Upgrade, no Expect, exactly one Host, no obsolete line folding. Anything
else returns None here and the connection continues on hypercorn, whose h11 parser answers
(or rejects) it. A request is never forwarded as the bytes that came in: the proxy rebuilds
the head, so an upstream cannot frame a message differently from us.

The agent's client to the local opencode (agent/local_http.py) writes its requests with
`request_head` and reads the answers' heads with `parse_response_head`, as the proxy does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote

Headers = list[tuple[bytes, bytes]]

MAX_HEAD = 64 * 1024
# RFC 9110 §5.6.2 token; a target of visible ASCII; a field value without controls (HTAB and
# obs-text allowed), its surrounding whitespace not part of it.
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/1\.1")
FIELD = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*"
    rb"((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)[ \t]*"
)
# Requests these headers describe need more than the fast path does (chunked bodies, 100
# Continue, protocol switches): hypercorn takes them.
_HAND_OVER = frozenset({b"transfer-encoding", b"upgrade", b"expect"})
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_NO_BODY = frozenset({204, 304})
_FRAMING = frozenset({b"transfer-encoding", b"connection"})


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A plain HTTP/1.1 request head the fast path can serve."""

    method: bytes
    target: bytes
    headers: Headers  # lower-case names, in order, repeats kept
    host: bytes
    content_length: int
    keep_alive: bool

    @property
    def path(self) -> bytes:
        return self.target.partition(b"?")[0]

    @property
    def query(self) -> bytes:
        return self.target.partition(b"?")[2]

    def decoded_path(self) -> str:
        return unquote(self.path.decode("ascii"))


def head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """The index just past the blank line ending a head in `buffer`, or -1 (searching from
    `start`, minus the few bytes a split terminator may straddle)."""
    found = buffer.find(b"\r\n\r\n", max(0, start - 3))
    return -1 if found < 0 else found + 4


def has_bare_lf(buffer: bytes | bytearray, end: int, start: int = 0) -> bool:
    """Whether `buffer[start:end]` (part of a head) ends a line with LF alone; `start` lets a
    head that arrives in pieces be searched once, not again with every piece.

    RFC 9112 §2.2 lets a server accept those; we answer 400 instead, so that no part of the
    server frames a request differently from another (h11 would accept what we skip), and a
    client that never sends CRLF gets an answer rather than a wait for a blank line."""
    return buffer.count(b"\n", start, end) != buffer.count(b"\r\n", max(0, start - 1), end)


def parse_request_head(head: bytes) -> RequestHead | None:
    """The request in `head` (up to and including its blank line), or None when it is not
    one the fast path serves — malformed ones included, for hypercorn to reject properly."""
    if len(head) > MAX_HEAD or not head.endswith(b"\r\n\r\n"):
        return None
    lines = head[:-4].split(b"\r\n")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None or not request_line[2].startswith(b"/"):
        return None
    headers: Headers = []
    host: bytes | None = None
    lengths: set[bytes] = set()
    close = False
    for line in lines[1:]:
        field = FIELD.fullmatch(line)
        if field is None:  # also obs-fold, bare CR/LF and empty names
            return None
        name, value = field[1].lower(), field[2]
        if name in _HAND_OVER:
            return None
        if name == b"host":
            if host is not None:
                return None
            host = value
        elif name == b"content-length":
            lengths.add(value)
        elif name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"upgrade" in tokens:
                return None
            close = close or b"close" in tokens
        headers.append((name, value))
    if not host or len(lengths) > 1:
        return None
    length = lengths.pop() if lengths else b"0"
    if not length.isdigit() or len(length) > 18:
        return None
    return RequestHead(
        request_line[1], request_line[2], headers, host, int(length), keep_alive=not close
    )


def body_allowed(method: bytes, status: int) -> bool:
    """Whether a response may carry a body (RFC 9110 §6.4.1)."""
    return method != b"HEAD" and status not in _NO_BODY and status >= 200


def response_head(status: int, headers: Headers, *, chunked: bool, close: bool) -> bytes:
    """A serialized status line and header block; framing and Connection are ours to set."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    for name, value in headers:
        if name in _FRAMING or (chunked and name == b"content-length"):
            continue
        parts.append(b"%s: %s\r\n" % (name, value))
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def content_length(headers: Headers) -> int | None:
    """The response's declared Content-Length, if exactly one valid one is given."""
    values = {v.strip() for n, v in headers if n == b"content-length"}
    if len(values) != 1:
        return None
    value = values.pop()
    return int(value) if value.isdigit() else None


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never the empty, terminating one)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


# -- the upstream side: a sandbox's responses -------------------------------------------------

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: [\x09\x20-\x7e\x80-\xff]*)?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[\x09\x20-\x7e\x80-\xff]*)?")
MAX_CHUNK_LINE = 4096


class ProtocolError(Exception):
    """The sandbox sent something that is not HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A response head from an agent, with how its body is framed."""

    status: int
    headers: Headers  # lower-case names, in order, repeats kept
    length: int | None  # Content-Length framing; None with chunked or read-until-close
    chunked: bool
    reusable: bool  # the connection may carry another request afterwards


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """A serialized request head (headers already checked: parsed by us or hypercorn, or ours)."""
    lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    lines += [b"%s: %s\r\n" % pair for pair in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


def parse_response_head(head: bytes, method: bytes) -> ResponseHead:
    """The response in `head` (ending with its blank line), framed per RFC 9112 §6.3."""
    lines = head[:-4].split(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None or not head.endswith(b"\r\n\r\n"):
        raise ProtocolError("malformed status line")
    status, minor = int(status_line[2]), status_line[1]
    headers: Headers = []
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    close = minor == b"0"
    for line in lines[1:]:
        field = FIELD.fullmatch(line)
        if field is None:
            raise ProtocolError("malformed header line")
        name, value = field[1].lower(), field[2]
        if name == b"content-length":
            lengths.add(value)
        elif name == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",")]
        elif name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            close = (close and b"keep-alive" not in tokens) or b"close" in tokens
        headers.append((name, value))
    if method == b"HEAD" or status in _NO_BODY or status < 200:
        return ResponseHead(status, headers, 0, chunked=False, reusable=not close)
    if codings:
        chunked = codings[-1] == b"chunked"
        # With both framings the message is suspect (RFC 9112 §6.3): use it, never reuse.
        reusable = chunked and not lengths and not close
        return ResponseHead(status, headers, None, chunked=chunked, reusable=reusable)
    if len(lengths) > 1:
        raise ProtocolError("conflicting Content-Length values")
    if lengths:
        value = lengths.pop()
        if not value.isdigit() or len(value) > 18:
            raise ProtocolError("invalid Content-Length")
        return ResponseHead(status, headers, int(value), chunked=False, reusable=not close)
    return ResponseHead(status, headers, None, chunked=False, reusable=False)


class ChunkedBody:
    """Decodes a chunked body fed in pieces of any size; data comes out as soon as it is in."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self._left = 0  # data bytes still to come in the current chunk
        self._crlf = False  # a chunk's data is done and its CRLF is due
        self.done = False

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def data(self) -> bytes:
        """The body bytes decodable from what was fed (b"" when more input is needed);
        `done` turns true after the last chunk and its trailers."""
        out: list[bytes] = []
        buffer = self.buffer
        while not self.done:
            if self._left:
                take = bytes(buffer[: self._left])
                del buffer[: len(take)]
                self._left -= len(take)
                out.append(take)
                if self._left:
                    break
                self._crlf = True
            if self._crlf:
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise ProtocolError("chunk data longer than its size")
                del buffer[:2]
                self._crlf = False
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > MAX_CHUNK_LINE:
                    raise ProtocolError("chunk size line too long")
                break
            size = _CHUNK_SIZE.fullmatch(buffer[:end])
            if size is None:
                raise ProtocolError("malformed chunk size")
            self._left = int(size[1], 16)
            if self._left:
                del buffer[: end + 2]
            elif not self._trailers(end):
                self._left = 0
                break
        return b"".join(out)

    def _trailers(self, start: int) -> bool:
        """After the last chunk: skip the trailer section (True once it is complete)."""
        # `start` is the CRLF ending the "0" line; a blank line ends the (maybe empty) trailers.
        end = self.buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                raise ProtocolError("trailers too long")
            return False
        del self.buffer[: end + 4]
        self.done = True
        return True

"""The agent's HTTP/1.1 client to the local opencode: kept-alive connections, no httpx or h11.

httpx cost about 0.55 ms of CPU per request on the machines the benchmark runs on, a third of
everything the agent did for a small request (bench/bench_tunnel.py prints the breakdown); h11,
which httpx runs on, then still took ~44 µs per small request for its heads alone, where the
pure parser the proxy uses (`agentserver.http1`) takes a few. What the agent needs is narrow:
one origin, requests whose head and body come from the tunnel, responses streamed back.

- Connections are kept alive and reused last-in first-out (at most `max_idle` idle ones); one
  that the peer closed while idle is dropped when taken, and a request without a body that
  finds its reused connection dead before any answer is sent again once on a new connection.
- A request's head is checked before anything is sent (`local_request.py`): a method,
  target, header name or value that HTTP/1.1 cannot carry is `Unreachable("the request
  cannot be sent: …")`, as h11 and httpx refused them.
- A request body is sent whole before the response is read, framed by the length given (more
  or fewer bytes are refused) or chunked; the server's framing fields never pass.
- The response head is read by buffering reads up to its blank line (at most
  `http1.MAX_HEAD` bytes), informational (1xx) heads skipped, and parsed by
  `http1.parse_response_head`: a malformed status or header line, conflicting Content-Length
  values, a line ended by LF alone or an oversize head are `Unreachable`.
- Bodies are read straight from the socket: by Content-Length (one of at most `SMALL_BODY`
  bytes collected whole), chunked (opencode's event streams) decoded by
  `chunked.ChunkedDecoder`, each read's data handed on as one piece, or up to the close.
- A response's connection goes back to the pool only when the request allowed it, the head
  keeps it alive (`ResponseHead.reusable`) and the body ended cleanly with nothing unasked
  after it; a body read to the close, a response closed early, a failure or a cancel closes it.
- `Unreachable` is every failure before a response head (connect, send, a peer that closed, a
  malformed head); `Broken` every failure after it.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from urllib.parse import urlsplit

import trio

from agentserver.agent.chunked import ChunkedDecoder, ChunkError
from agentserver.agent.local_connection import READ_SIZE, Connection, NoAnswer
from agentserver.agent.local_request import LengthMismatch, Request, send_body
from agentserver.http1 import ProtocolError, ResponseHead, body_allowed

CONNECT_TIMEOUT = 10.0
MAX_IDLE = 32
SMALL_BODY = 64 * 1024
_FAILURES = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    ProtocolError,
    NoAnswer,
    LengthMismatch,
)


class Unreachable(Exception):
    """No answer from the local opencode: it refused the connection, or closed it unanswered."""


class Broken(Exception):
    """The local opencode broke off a response after its head."""


class Response:
    """A response head, with the body still arriving; `aclose` it (it frees the connection).

    The body is read straight from the socket, never through a parser's buffer: by its
    Content-Length (each read one piece for the tunnel, up to a frame), chunked and decoded
    here, or up to the close. A body of at most `SMALL_BODY` bytes by its length is collected
    whole by `buffered`, so a small answer leaves in one tunnel message.
    """

    def __init__(
        self,
        client: LocalClient,
        conn: Connection,
        head: ResponseHead,
        early: bytes,
        method: bytes,
        keep_alive: bool,
    ) -> None:
        self.status = head.status
        self.headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers]
        self._client, self._conn = client, conn
        self._reusable = keep_alive and head.reusable
        self._early = early  # body bytes read with the head, not yet handed out
        self._left: int | None = None  # bytes of a body framed by its length still to read
        self._small = False
        self._chunked: ChunkedDecoder | None = None
        self._until_close = False  # the body ends when the connection does
        self._done = False
        self._extra = False  # bytes nobody asked for arrived after the body's end
        if method == b"CONNECT" or not body_allowed(method, head.status):
            self._reusable = self._reusable and method != b"CONNECT"  # a tunnel, if anything
            self._done, self._extra, self._early = True, bool(early), b""
        elif head.chunked:
            self._chunked = ChunkedDecoder()  # `early` is decoded when handed out
        elif head.length is not None:
            length = head.length
            self._small = length <= SMALL_BODY
            self._extra = len(early) > length
            self._early = early[:length] if self._extra else early
            self._left = length - len(self._early)
            self._done = not self._left
        else:
            self._until_close, self._reusable = True, False

    async def buffered(self) -> tuple[bytes, bool]:
        """The body bytes that have arrived already, and whether they are the whole body.

        Nothing is waited for, except the rest of a body of at most `SMALL_BODY` bytes by its
        Content-Length (no one can use its head without it): such an answer then leaves whole,
        head, body and end in one message, however opencode wrote it."""
        if self._chunked is not None:
            return await self._chunked_now()
        parts = [self._early]
        self._early = b""
        if self._small:
            while self._left:  # the rest is on its way: worth the wait
                parts.append(await self._receive(self._left))
        elif self._until_close:
            await self._until_close_now(parts)
        await trio.lowlevel.checkpoint_if_cancelled()
        return b"".join(parts), self._done

    @property
    def done(self) -> bool:
        """Whether the whole body has been handed out."""
        return self._done

    async def chunks(self) -> AsyncIterator[bytes]:
        """The rest of the body as it arrives (`Broken` if the connection breaks off)."""
        if self._chunked is not None:
            async for piece in self._chunked_pieces():
                yield piece
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._early:  # not handed out by `buffered`
            early, self._early = self._early, b""
            yield early
        while not self._done:
            if data := await self._receive(READ_SIZE if self._left is None else self._left):
                yield data
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _receive(self, wanted: int) -> bytes:
        """The next read of an unchunked body, all that has arrived up to `wanted` and
        READ_SIZE (one full tunnel frame), never past the body's end."""
        try:
            data = await self._conn.receive(min(READ_SIZE, wanted))
        except _FAILURES as exc:
            raise Broken(str(exc) or type(exc).__name__) from None
        if self._left is None:  # read up to the close: the close is its end
            self._done = not data
        elif not data:
            raise Broken("the connection closed before the end of the body")
        else:
            self._left -= len(data)
            self._done = not self._left
        return data

    async def _until_close_now(self, parts: list[bytes]) -> None:
        """Add what else of a body read up to the close has arrived, up to READ_SIZE, waiting
        for nothing: a slow body is never held."""
        size = len(parts[0])
        while not self._done and size < READ_SIZE:
            try:
                data = await self._conn.receive_now(READ_SIZE - size)
            except _FAILURES as exc:
                raise Broken(str(exc) or type(exc).__name__) from None
            if data is None:
                break
            self._done = not data
            parts.append(data)
            size += len(data)
        await trio.lowlevel.checkpoint_if_cancelled()

    def _decode(self, decoder: ChunkedDecoder, data: bytes) -> bytes:
        """The body bytes in `data` of a chunked body (`Broken` if it is not validly chunked)."""
        try:
            piece = b"".join(decoder.feed(data))  # usually one piece: itself, not a copy
        except ChunkError as exc:
            raise Broken(str(exc)) from None
        self._done = decoder.done
        return piece

    async def _chunked_now(self) -> tuple[bytes, bool]:
        """What a chunked body has brought so far, up to READ_SIZE, waiting for nothing."""
        assert self._chunked is not None
        early, self._early = self._early, b""
        parts = [self._decode(self._chunked, early)] if early else []
        size = sum(map(len, parts))
        while not self._done and size < READ_SIZE:
            try:
                data = await self._conn.receive_now(READ_SIZE)
            except _FAILURES as exc:
                raise Broken(str(exc) or type(exc).__name__) from None
            if data is None:
                break
            if not data:
                raise Broken("the connection closed before the end of the body")
            parts.append(self._decode(self._chunked, data))
            size += len(parts[-1])
        await trio.lowlevel.checkpoint_if_cancelled()
        return b"".join(parts), self._done

    async def _chunked_pieces(self) -> AsyncIterator[bytes]:
        """A chunked body, each read's data as one piece as soon as it arrives: the read is
        the wait, so nothing else stands between it and the tunnel."""
        assert self._chunked is not None
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._early:  # not handed out by `buffered`
            early, self._early = self._early, b""
            if piece := self._decode(self._chunked, early):
                yield piece
        while not self._done:
            try:
                data = await self._conn.receive(READ_SIZE)
            except _FAILURES as exc:
                raise Broken(str(exc) or type(exc).__name__) from None
            if not data:
                raise Broken("the connection closed before the end of the body")
            if piece := self._decode(self._chunked, data):
                yield piece
        await trio.lowlevel.checkpoint_if_cancelled()

    def aclose_now(self) -> None:
        """Give the connection back when the exchange ended cleanly, else close it."""
        extra = self._extra or (self._chunked is not None and bool(self._chunked.rest))
        if self._done and self._reusable and not extra:
            self._client.give_back(self._conn)
        else:
            self._conn.close()


class LocalClient:
    """Requests to one origin (`base_url`: http or https, host and port), kept alive."""

    def __init__(self, base_url: str, *, max_idle: int = MAX_IDLE) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self.authority = parts.netloc.rsplit("@", 1)[-1]  # the Host header, as httpx sent it
        self._idle: list[Connection] = []
        self._max_idle = max_idle

    async def _connect(self) -> Connection:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream: trio.abc.Stream = await trio.open_tcp_stream(self._host, self._port)
                if self._tls is not None:
                    tls = trio.SSLStream(stream, self._tls, server_hostname=self._host)
                    await tls.do_handshake()
                    stream = tls
        except trio.TooSlowError:
            raise Unreachable(f"no connection within {CONNECT_TIMEOUT:g} s") from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from None
        return Connection(stream)

    def _take_idle(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.readable():
                return conn
            conn.close()  # closed by the peer while idle (or sent something unasked)
        return None

    def give_back(self, conn: Connection) -> None:
        if len(self._idle) >= self._max_idle:
            conn.close()
        else:
            self._idle.append(conn)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: AsyncIterable[bytes] | None = None,
        length: int | None = None,
    ) -> Response:
        """Send the request (and its whole body), then return once the response head is in.

        `headers` carry no Host or framing; `length` frames the body (None: chunked).
        """
        fields = [("host", self.authority), *headers]
        if body is not None:
            fields.append(("content-length", str(length)) if length is not None else _CHUNKED)
        try:
            request = Request(method, target, fields, length if body is not None else None)
        except ValueError as exc:  # a field HTTP/1.1 cannot carry (as h11 and httpx refused)
            raise Unreachable(f"the request cannot be sent: {exc}") from None
        conn = self._take_idle()
        if conn is not None and body is None:
            try:
                return await self._exchange(conn, request, None)
            except Unreachable:
                pass  # a kept-alive connection the peer had just closed: once more, anew
        return await self._exchange(conn or await self._connect(), request, body)

    async def _exchange(
        self, conn: Connection, request: Request, body: AsyncIterable[bytes] | None
    ) -> Response:
        ok = False
        try:
            try:
                await conn.send(request.head)
                if body is not None:
                    await send_body(conn, body, request.length)
                head, early = await conn.receive_head(request.method)
            except _FAILURES as exc:
                raise Unreachable(str(exc) or type(exc).__name__) from None
            response = Response(self, conn, head, early, request.method, request.keep_alive)
            ok = True
            return response
        finally:
            if not ok:
                conn.close()


_CHUNKED = ("transfer-encoding", "chunked")

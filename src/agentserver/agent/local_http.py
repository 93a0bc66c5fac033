"""The agent's HTTP/1.1 client to the local opencode: kept-alive connections and h11, no httpx.

httpx cost about 0.55 ms of CPU per request on the machines the benchmark runs on, a third of
everything the agent did for a small request (bench/bench_tunnel.py prints the breakdown); h11
alone, which httpx runs on, does the same framing for a third of that. What the agent needs is
narrow: one origin, requests whose head and body come from the tunnel, responses streamed back.

- Connections are kept alive and reused last-in first-out (at most `max_idle` idle ones); one
  that the peer closed while idle is dropped when taken, and a request without a body that
  finds its reused connection dead before any answer is sent again once on a new connection.
- A request body is sent whole before the response is read, framed by the length given
  (h11 refuses more or fewer bytes) or chunked; the server's framing fields never pass.
- A chunked response body (opencode's event streams) is decoded from raw reads by
  `chunked.ChunkedDecoder`, each read's data handed on as one piece; h11 reads heads only.
- A response's connection goes back to the pool only when both messages ended cleanly (for a
  chunked body: its last chunk and trailers read, nothing after them); a response closed
  early, a failure or a cancel closes it.
- `Unreachable` is every failure before a response head (connect, send, a peer that closed).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from urllib.parse import urlsplit

import h11
import trio

from agentserver.agent.chunked import ChunkedDecoder, ChunkError
from agentserver.agent.local_connection import READ_SIZE, Connection, new_h11

CONNECT_TIMEOUT = 10.0
MAX_IDLE = 32
SMALL_BODY = 64 * 1024
_FAILURES = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)


class Unreachable(Exception):
    """No answer from the local opencode: it refused the connection, or closed it unanswered."""


class Broken(Exception):
    """The local opencode broke off a response after its head."""


class Response:
    """A response head, with the body still arriving; `aclose` it (it frees the connection).

    A body of more than `SMALL_BODY` bytes framed by its Content-Length alone is read straight
    from the socket once h11 has read the head: h11 would only count it, buffering and copying
    every piece twice on the way, and each read is one piece for the tunnel (up to a frame).
    A chunked body is read the same way and decoded here (h11's event, buffer and regex per
    chunk were a fifth of the agent's work per streamed event).
    """

    def __init__(
        self, client: LocalClient, conn: Connection, head: h11.Response, request: h11.Request
    ) -> None:
        self.status = head.status_code
        self.headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers]
        self._client, self._conn = client, conn
        self._done = False
        lengths = {v for n, v in head.headers if n == b"content-length"}  # h11 checked them
        length = int(lengths.pop()) if len(lengths) == 1 else None
        self._small = length is not None and length <= SMALL_BODY
        self._left: int | None = None  # bytes of a raw body still to read (None: h11 reads)
        self._early = b""  # of a raw body: bytes read with the head, not yet handed out
        self._reusable = False
        # A chunked body (a stream: SSE) is decoded here from raw reads, h11 seeing the head only.
        self._chunked: ChunkedDecoder | None = None
        if not _has_body(request, head):
            pass
        elif length is not None and not self._small and not _coded(head):
            early = conn.h11.trailing_data[0]  # body bytes read with the head
            if len(early) <= length:
                self._left, self._early = length - len(early), early
                self._done = self._left == 0
                self._reusable = _keeps_alive(request) and _keeps_alive(head)
        elif _coded(head):  # h11 accepts no coding but chunked
            self._chunked = ChunkedDecoder()
            self._early = conn.h11.trailing_data[0]  # decoded when handed out
            self._reusable = _keeps_alive(request) and _keeps_alive(head)

    async def buffered(self) -> tuple[bytes, bool]:
        """The body bytes that have arrived already, and whether they are the whole body.

        Nothing is waited for, except the rest of a body of at most `SMALL_BODY` bytes by its
        Content-Length (no one can use its head without it): such an answer then leaves whole,
        head, body and end in one message, however opencode wrote it."""
        if self._left is not None:
            early, self._early = self._early, b""
            await trio.lowlevel.checkpoint_if_cancelled()
            return early, self._done
        if self._chunked is not None:
            return await self._chunked_now()
        parts: list[bytes] = []
        try:
            await self._more_now(parts)
            while self._small and not self._done:  # the rest is on its way: worth the wait
                self._take(await self._conn.next_event(), parts)
        except _FAILURES as exc:  # a malformed body (bad chunk framing), a broken connection
            raise Broken(str(exc) or type(exc).__name__) from None
        return b"".join(parts), self._done

    @property
    def done(self) -> bool:
        """Whether the whole body has been handed out."""
        return self._done

    async def chunks(self) -> AsyncIterator[bytes]:
        """The rest of the body as it arrives (`Broken` if the connection breaks off)."""
        if self._left is not None:
            async for chunk in self._raw_chunks():
                yield chunk
        elif self._chunked is not None:
            async for chunk in self._chunked_pieces():
                yield chunk
        while not self._done:
            parts: list[bytes] = []
            try:
                self._take(await self._conn.next_event(), parts)
                await self._more_now(parts)
            except _FAILURES as exc:
                raise Broken(str(exc) or type(exc).__name__) from None
            if chunk := b"".join(parts):
                yield chunk
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _raw_chunks(self) -> AsyncIterator[bytes]:
        """A body framed by its length, each piece as one read gives it: all that has arrived,
        up to READ_SIZE (one full tunnel frame), never past the body's end."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._early:  # not handed out by `buffered`
            early, self._early = self._early, b""
            yield early
        while self._left:
            try:
                data = await self._conn.receive(min(READ_SIZE, self._left))
            except _FAILURES as exc:
                raise Broken(str(exc) or type(exc).__name__) from None
            if not data:
                raise Broken("the connection closed before the end of the body")
            self._left -= len(data)
            self._done = not self._left
            yield data
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

    async def _more_now(self, parts: list[bytes]) -> None:
        """Add what else has arrived already, up to READ_SIZE, waiting for nothing: a body
        that opencode sends faster than it is forwarded leaves in fewer, larger frames (each
        frame costs both ends the same, whatever its size), and a slow one is never held."""
        size = sum(len(part) for part in parts)
        conn = self._conn
        while not self._done and size < READ_SIZE:
            event = conn.h11.next_event()
            if event is h11.NEED_DATA:
                data = await conn.receive_now(READ_SIZE - size)
                if data is None:
                    break
                conn.h11.receive_data(data)  # b"": the peer closed (h11 then says so)
                continue
            before = len(parts)
            self._take(event, parts)
            size += sum(len(part) for part in parts[before:])
        await trio.lowlevel.checkpoint_if_cancelled()

    def _take(self, event: object, parts: list[bytes]) -> None:
        if type(event) is h11.Data:
            parts.append(bytes(event.data))
        elif type(event) is h11.EndOfMessage:
            self._done = True
        elif type(event) is h11.ConnectionClosed:
            raise Broken("the connection closed before the end of the body")

    def aclose_now(self) -> None:
        """Give the connection back when the exchange ended cleanly, else close it."""
        conn = self._conn
        if self._chunked is not None:  # decoded here: h11 saw the head only
            clean = self._chunked.done and not self._chunked.rest  # nothing unasked after it
            if clean and self._reusable and conn.h11.our_state is h11.DONE:
                conn.h11 = new_h11()
                self._client.give_back(conn)
            else:
                conn.close()
        elif self._left is not None:  # read raw: h11 saw the head only, so a new one takes over
            if self._left == 0 and self._reusable and conn.h11.our_state is h11.DONE:
                conn.h11 = new_h11()
                self._client.give_back(conn)
            else:
                conn.close()
        elif self._done and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            self._client.give_back(conn)
        else:
            conn.close()


def _has_body(request: h11.Request, head: h11.Response) -> bool:
    """Whether the response has a body framed by its length or chunks (RFC 9112 §6.3)."""
    return request.method not in (b"HEAD", b"CONNECT") and head.status_code not in (204, 304)


def _coded(head: h11.Response) -> bool:
    """Whether the body has a Transfer-Encoding (which takes precedence over a length); h11
    accepted only `chunked`."""
    return any(name == b"transfer-encoding" for name, _ in head.headers)


def _keeps_alive(message: h11.Request | h11.Response) -> bool:
    """h11's rule for whether a connection may carry another exchange after `message`."""
    if message.http_version < b"1.1":
        return False
    return not any(
        name == b"connection" and b"close" in value.lower() for name, value in message.headers
    )


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
        head = [("host", self.authority), *headers]
        if body is not None:
            head.append(("content-length", str(length)) if length is not None else _CHUNKED)
        try:
            request = h11.Request(
                method=method,
                target=target.encode("latin-1"),
                headers=[(n.encode("latin-1"), v.encode("latin-1")) for n, v in head],
            )
        except h11.LocalProtocolError as exc:  # a header HTTP/1.1 cannot carry (as httpx did)
            raise Unreachable(f"the request cannot be sent: {exc}") from None
        conn = self._take_idle()
        if conn is not None and body is None:
            try:
                return await self._exchange(conn, request, None)
            except Unreachable:
                pass  # a kept-alive connection the peer had just closed: once more, anew
        return await self._exchange(conn or await self._connect(), request, body)

    async def _exchange(
        self, conn: Connection, request: h11.Request, body: AsyncIterable[bytes] | None
    ) -> Response:
        ok = False
        try:
            try:
                data = conn.h11.send(request) or b""
                if body is None:
                    await conn.send(data + (conn.h11.send(h11.EndOfMessage()) or b""))
                else:
                    await conn.send(data)
                    async for chunk in body:
                        if chunk:
                            await conn.send(conn.h11.send(h11.Data(data=chunk)) or b"")
                    await conn.send(conn.h11.send(h11.EndOfMessage()) or b"")
                while True:
                    event = await conn.next_event()
                    if type(event) is h11.Response:
                        ok = True
                        return Response(self, conn, event, request)
                    if type(event) is not h11.InformationalResponse:  # 1xx: the real one follows
                        raise Unreachable("the connection closed before an answer")
            except _FAILURES as exc:
                raise Unreachable(str(exc) or type(exc).__name__) from None
        finally:
            if not ok:
                conn.close()


_CHUNKED = ("transfer-encoding", "chunked")

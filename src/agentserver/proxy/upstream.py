"""Reaching a sandbox's agent: the `Upstream` protocol and its TCP implementation.

The TCP side is a small HTTP/1.1 connection pool per (host, port), its message heads and
chunked bodies read by agentserver/http1.py (h11 took over a third of the proxy's CPU). httpx's
pool scan was the proxy's bottleneck (shared/reference/proxy-bench.md), so this one is a LIFO
stack of idle connections with time-based expiry and one retry when a reused connection turns
out to be stale before any response byte arrives — for idempotent requests only (RFC 9110
§9.2.2), whose body, if any, is still held whole: the agent may have acted on a POST before
the connection broke, so a POST is never sent twice. It goes on a pooled connection only after
a cheap check that the agent has not closed it already. Reads are 256 KiB: bulk throughput is
set by the per-chunk overhead, not by bytes copied."""

from __future__ import annotations

import os
import select
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import trio
import trio_websocket

from agentserver.errors import SandboxUnreachable
from agentserver.framing import exactly
from agentserver.http1 import (
    LAST_CHUNK,
    MAX_HEAD,
    ChunkedBody,
    ProtocolError,
    ResponseHead,
    chunk,
    head_end,
    parse_response_head,
    request_head,
)
from agentserver.http_headers import FRAMING
from agentserver.proxy import splice
from agentserver.proxy.headers import Headers, framing_headers
from agentserver.proxy.upstream_socket import TcpSocket, UpstreamSocket

READ_SIZE = 256 * 1024
# Reuse an idle connection only this long: agents close idle keep-alives after some seconds
# (Bun: 10 s), and a time check costs nothing where a readability probe costs a syscall.
IDLE_EXPIRY = 4.0
MAX_IDLE = 256
# Sandboxes whose last endpoint the pool remembers (one entry per sandbox reached).
MAX_ENDPOINTS = 65536
HEADER_TIMEOUT = 60.0  # --proxy-timeout sets the server's
CONNECT_TIMEOUT = 10.0
# Request bodies up to this size are kept so a stale-connection retry can send them again.
REPLAY_LIMIT = 1 << 20
WS_MAX_MESSAGE = 16 << 20
# Methods a retry cannot do twice (RFC 9110 §9.2.2); anything else is never replayed.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class UpstreamTimeout(SandboxUnreachable):
    """The agent accepted the request but sent no response headers in time (504)."""

    status = 504
    code = "sandbox_timeout"


class NotListening(SandboxUnreachable):
    """Nothing accepts connections on the port (connection refused): for a preview, a dev
    server not started yet."""


def connection_refused(exc: BaseException) -> bool:
    """Whether a failed connect was refused at every address it tried (trio's
    `open_tcp_stream` reports them as the cause of one OSError)."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return all(isinstance(e, ConnectionRefusedError) for e in cause.exceptions)
    return False


# Set by the writer of a request, from what it sends (never passed through from a client).
_WRITER_SETS = FRAMING | {b"connection"}


@dataclass(slots=True)
class UpstreamResponse:
    """A response whose body is still streaming; `aclose` ends it early and frees its link."""

    status: int
    headers: Headers
    body: AsyncIterator[bytes]
    aclose: Callable[[], Awaitable[None]]
    # For a sized body straight off a TCP agent: send the rest of it to a browser socket
    # with splice(2) (returns the bytes moved); None when the body must be read as chunks.
    splice: Callable[[trio.SocketStream], Awaitable[int]] | None = None
    # For a body that streams in pieces (a tunnel's): hand the pieces that arrive while the
    # body's reader waits to a DIRECT_BODY writer (proxy/http.py); None when it cannot.
    direct: Callable[[Callable[[bytes], int]], None] | None = None


# Offered a whole response (status, headers, complete body) where it arrives, before the
# request's task runs again: True when it was sent on (the response's body is then empty).
Answer = Callable[[int, Headers, bytes], bool]


class Upstream(Protocol):
    """How the proxy reaches one sandbox's agent: TCP here, a tunnel for local sandboxes."""

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: AsyncIterable[bytes],
        *,
        length: int | None,
        answer: Answer | None = None,
    ) -> UpstreamResponse:
        """Send a request and return once the response headers arrived (SandboxUnreachable
        when the agent cannot be reached, UpstreamTimeout when it does not answer).

        The body is framed by the upstream itself: `length` bytes (BodyMismatch when it turns
        out longer or shorter), or, with `length=None`, chunked. Framing fields in `headers`
        are ignored. An upstream that has a whole response in hand at once may offer it to
        `answer` (the tunnel does; TCP reads it in the request's own task anyway)."""
        ...

    def websocket(
        self, target: str, headers: Headers, subprotocols: Sequence[str]
    ) -> AbstractAsyncContextManager[UpstreamSocket]:
        """Open a WebSocket to `target`; closed when the context exits."""
        ...


async def send_all(stream: trio.SocketStream, data: bytes) -> None:
    """`stream.send_all` without its scheduler trip when the kernel takes the bytes at once
    (nearly always for a small response): a cancellation check instead, then writes that
    wait only while the socket buffer is full."""
    await trio.lowlevel.checkpoint_if_cancelled()
    sock = stream.socket
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(sock.fileno(), view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
    except OSError as exc:
        raise trio.BrokenResourceError(f"the connection broke: {exc.strerror}") from None


async def receive_reply(stream: trio.SocketStream, size: int) -> bytes:
    """`stream.receive_some` for bytes that are not there yet (a reply to what we just sent,
    the next request on a kept-alive connection): wait for readiness, then one read. This
    skips the failed read attempt and the extra scheduler trip of the general path."""
    sock = stream.socket
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return os.read(sock.fileno(), size)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(f"the connection broke: {exc.strerror}") from None


class _Stale(Exception):
    """A connection failed before any response byte arrived (safe to retry if reused)."""


class _Connection:
    """One HTTP/1.1 connection to an agent and the bytes read from it but not yet used."""

    __slots__ = ("buffer", "idle_since", "received", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.idle_since = 0.0
        self.received = False

    async def fill(self) -> None:
        data = await receive_reply(self.stream, READ_SIZE)
        if not data:
            raise trio.BrokenResourceError("the agent closed the connection")
        self.received = True
        self.buffer += data

    async def read_head(self, method: bytes) -> ResponseHead:
        """The next final response head (1xx answers are skipped)."""
        searched = 0
        while True:
            end = head_end(self.buffer, searched)
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    raise ProtocolError("response head too large")
                searched = len(self.buffer)
                await self.fill()
                continue
            head = parse_response_head(bytes(self.buffer[:end]), method)
            del self.buffer[:end]
            if head.status >= 200:
                await trio.lowlevel.checkpoint_if_cancelled()
                return head
            searched = 0

    def close(self) -> None:
        # Synchronous on purpose: it must work inside a cancelled scope, without a checkpoint.
        self.stream.socket.close()

    def peer_done(self) -> bool:
        """Whether the agent already closed this idle connection (or sent something unasked):
        one poll(2) without waiting, so a request that must not be retried avoids it."""
        poller = select.poll()
        poller.register(self.stream.socket.fileno(), select.POLLIN | select.POLLRDHUP)
        return bool(poller.poll(0))


class _Replay:
    """The request body, remembering what it read so one retry can send it again."""

    def __init__(self, body: AsyncIterable[bytes]) -> None:
        self._source = aiter(body)
        self._kept: list[bytes] | None = []
        self._size = 0
        self._exhausted = False

    @property
    def replayable(self) -> bool:
        return self._kept is not None

    def rewind(self) -> list[bytes]:
        """Chunks already read, to send first on a retry."""
        return list(self._kept or ())

    async def next(self) -> bytes | None:
        """The next unread chunk, or None at the end."""
        if self._exhausted:
            await trio.lowlevel.checkpoint_if_cancelled()
            return None
        try:
            chunk = await anext(self._source)
        except StopAsyncIteration:
            self._exhausted = True
            await trio.lowlevel.checkpoint_if_cancelled()
            return None
        if self._kept is not None:
            self._size += len(chunk)
            if self._size > REPLAY_LIMIT:
                self._kept = None
            else:
                self._kept.append(chunk)
        return chunk


class _Body:
    """The response body of one exchange; returns the connection to the pool when complete.

    Framed by Content-Length (read straight from the socket), chunked (SSE: each piece comes
    out as soon as it arrives) or by the agent closing the connection.
    """

    def __init__(
        self, pool: Pool, key: tuple[str, int], conn: _Connection, head: ResponseHead
    ) -> None:
        self._pool, self._key, self._conn = pool, key, conn
        self._remaining = head.length
        self._chunks = ChunkedBody() if head.chunked else None
        self._reusable = head.reusable
        self._done = False
        if self._chunks is not None:
            self._chunks.feed(bytes(conn.buffer))
            conn.buffer.clear()

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._chunks is not None:
                return await self._next_chunked(self._chunks)
            if self._remaining is not None:
                return await self._next_sized(self._remaining)
            return await self._next_until_close()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
            self.abort()
            raise SandboxUnreachable("the sandbox closed the response early") from None

    async def _next_sized(self, remaining: int) -> bytes:
        if remaining == 0:
            self._finish(reusable=not self._conn.buffer)
            raise StopAsyncIteration
        buffer = self._conn.buffer
        if buffer:
            chunk = bytes(buffer[:remaining])
            del buffer[:remaining]
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            chunk = await self._conn.stream.receive_some(READ_SIZE)
            if not chunk:
                raise trio.BrokenResourceError
            if len(chunk) > remaining:  # bytes beyond the body: this connection is spoiled
                chunk, self._reusable = chunk[:remaining], False
        self._remaining = remaining - len(chunk)
        return chunk

    async def _next_chunked(self, chunks: ChunkedBody) -> bytes:
        while True:
            data = chunks.data()
            if data:
                await trio.lowlevel.checkpoint_if_cancelled()
                return data
            if chunks.done:
                self._finish(reusable=not chunks.buffer)
                raise StopAsyncIteration
            chunk = await receive_reply(self._conn.stream, READ_SIZE)  # SSE: the next event
            if not chunk:
                raise trio.BrokenResourceError
            chunks.feed(chunk)

    async def _next_until_close(self) -> bytes:
        buffer = self._conn.buffer
        if buffer:
            chunk = bytes(buffer)
            buffer.clear()
            await trio.lowlevel.checkpoint_if_cancelled()
            return chunk
        chunk = await self._conn.stream.receive_some(READ_SIZE)
        if not chunk:
            self._finish(reusable=False)
            raise StopAsyncIteration
        return chunk

    async def splice_into(self, sink: trio.SocketStream) -> int:
        """Send the rest of a sized body to `sink` without reading it into Python."""
        remaining = self._remaining
        assert remaining is not None
        assert not self._done
        moved = 0
        try:
            buffer = self._conn.buffer
            if buffer:
                first = bytes(buffer[:remaining])
                del buffer[:remaining]
                await send_all(sink, first)
                moved = len(first)
            await splice.splice(self._conn.stream, sink, remaining - moved)
        except BaseException:
            self.abort()  # the link's state is unknown: never reuse it
            raise
        self._remaining = 0
        self._finish(reusable=not self._conn.buffer)
        return remaining

    def _finish(self, *, reusable: bool) -> None:
        self._done = True
        if reusable and self._reusable:
            self._pool.release(self._key, self._conn)
        else:
            self._conn.close()

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._conn.close()

    async def aclose(self) -> None:
        self.abort()  # synchronous first, so it happens even in a cancelled scope
        await trio.lowlevel.checkpoint_if_cancelled()


class Pool:
    """Idle HTTP/1.1 connections per (host, port), reused newest first.

    A sandbox's agent moves (a new port or address after every resume) and goes away (pause,
    delete): the pool remembers which endpoint each sandbox was last reached at, and
    `forget_sandbox` (told by the lifecycle's events) closes that endpoint's idle connections.
    Whatever is left behind anyway (an endpoint nobody asks for again) is swept once expired.
    """

    def __init__(
        self,
        *,
        idle_expiry: float = IDLE_EXPIRY,
        max_idle: int = MAX_IDLE,
        header_timeout: float = HEADER_TIMEOUT,
    ) -> None:
        self.idle_expiry = idle_expiry
        self.max_idle = max_idle
        self.header_timeout = header_timeout
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._endpoints: dict[str, tuple[str, int]] = {}  # sandbox id → where it was reached
        self._next_sweep = 0.0

    def upstream(self, host: str, port: int, sandbox_id: str | None = None) -> TcpUpstream:
        """The agent at (host, port); with `sandbox_id`, a move of that sandbox from another
        endpoint drops the old endpoint's idle connections."""
        if sandbox_id is not None:
            key = (host, port)
            known = self._endpoints.get(sandbox_id)
            if known != key:
                if known is not None:
                    self.forget(known)
                elif len(self._endpoints) >= MAX_ENDPOINTS:
                    self._endpoints.clear()  # only a hint: the sweep still closes what expires
                self._endpoints[sandbox_id] = key
        return TcpUpstream(self, host, port)

    def forget_sandbox(self, sandbox_id: str) -> None:
        """The sandbox paused, moved or was deleted: close its idle connections."""
        key = self._endpoints.pop(sandbox_id, None)
        if key is not None:
            self.forget(key)

    def forget(self, key: tuple[str, int]) -> None:
        """Close every idle connection to (host, port)."""
        for conn in self._idle.pop(key, ()):
            conn.close()

    def sweep(self, now: float) -> None:
        """Close the idle connections that expired (LIFO: each stack's oldest come first)."""
        for key, stack in list(self._idle.items()):
            fresh = 0
            while fresh < len(stack) and now - stack[fresh].idle_since >= self.idle_expiry:
                stack[fresh].close()
                fresh += 1
            if fresh == len(stack):
                del self._idle[key]
            elif fresh:
                del stack[:fresh]

    def take(self, key: tuple[str, int], *, checked: bool = False) -> _Connection | None:
        """The most recently used idle connection that has not expired, if any; `checked`
        also skips (and closes) connections the agent has closed already."""
        stack = self._idle.get(key)
        while stack:
            conn = stack.pop()
            if trio.current_time() - conn.idle_since >= self.idle_expiry:
                # LIFO: everything below the top is older still.
                conn.close()
                for old in stack:
                    old.close()
                stack.clear()
                return None
            if not checked or not conn.peer_done():
                return conn
            conn.close()
        return None

    def release(self, key: tuple[str, int], conn: _Connection) -> None:
        now = trio.current_time()
        if now >= self._next_sweep:
            self._next_sweep = now + self.idle_expiry
            self.sweep(now)
        stack = self._idle.setdefault(key, [])
        if len(stack) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = now
        conn.received = False
        stack.append(conn)

    def idle_count(self, key: tuple[str, int] | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(s) for s in self._idle.values())

    async def connect(self, key: tuple[str, int]) -> _Connection:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(*key)
        except (OSError, trio.TooSlowError) as exc:
            if connection_refused(exc):
                raise NotListening("nothing accepts connections on that port") from None
            raise SandboxUnreachable("the sandbox's agent does not accept connections") from None
        return _Connection(stream)

    def close(self) -> None:
        """Close every idle connection (server shutdown)."""
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()
        self._endpoints.clear()


def _framed(method: bytes, headers: Headers, length: int | None) -> Headers:
    """`headers` with the framing of the body we are about to send, and nothing of any other."""
    kept = [(n, v) for n, v in headers if n not in _WRITER_SETS]
    return kept + framing_headers(method, length)


class TcpUpstream:
    """An agent listening on (host, port), reached over the shared pool."""

    def __init__(self, pool: Pool, host: str, port: int) -> None:
        self._pool = pool
        self._key = (host, port)

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: AsyncIterable[bytes],
        *,
        length: int | None,
        answer: Answer | None = None,  # a TCP response is read by the request's task anyway
    ) -> UpstreamResponse:
        replay = _Replay(exactly(body, length))
        head = request_head(method, target, _framed(method, headers, length))
        retryable = method in IDEMPOTENT
        conn = self._pool.take(self._key, checked=not retryable)
        if conn is not None:
            try:
                return await self._exchange(conn, method, head, length, replay)
            except _Stale:
                # The agent may have acted on it: only a request safe to repeat goes again.
                if not (retryable and replay.replayable):
                    raise SandboxUnreachable("the connection to the sandbox broke") from None
        conn = await self._pool.connect(self._key)
        try:
            return await self._exchange(conn, method, head, length, replay)
        except _Stale:
            raise SandboxUnreachable("the sandbox closed the connection") from None

    async def _exchange(
        self, conn: _Connection, method: bytes, request: bytes, length: int | None, replay: _Replay
    ) -> UpstreamResponse:
        ok = False
        try:
            await self._send_request(conn, request, length, replay)
            with trio.move_on_after(self._pool.header_timeout) as waited:
                head = await conn.read_head(method)
            if waited.cancelled_caught:
                raise UpstreamTimeout("the sandbox did not answer in time")
            body = _Body(self._pool, self._key, conn, head)
            ok = True
            spliceable = splice.available and bool(head.length) and not head.chunked
            return UpstreamResponse(
                head.status,
                head.headers,
                body,
                body.aclose,
                body.splice_into if spliceable else None,
            )
        except ProtocolError:
            raise SandboxUnreachable("the sandbox sent a broken response") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            if conn.received:
                raise SandboxUnreachable("the sandbox sent a broken response") from None
            raise _Stale from None
        finally:
            if not ok:
                conn.close()

    @staticmethod
    async def _send_request(
        conn: _Connection, head: bytes, length: int | None, replay: _Replay
    ) -> None:
        # The head, any body already read (a retry) and the first chunk go out in one write.
        # A body of unknown length (the browser sent it chunked) goes on chunked; a sized one
        # comes through `exactly`, whose BodyMismatch closes this connection (the agent may
        # hold a partial request on it that the next request must never complete).
        frame = chunk if length is None else bytes
        pending = [head]
        pending += [frame(c) for c in replay.rewind() if c]  # an empty chunk would end a body
        while (piece := await replay.next()) is not None:
            if piece:
                pending.append(frame(piece))
                await send_all(conn.stream, b"".join(pending))
                pending = []
        if length is None:
            pending.append(LAST_CHUNK)
        if pending:
            await send_all(conn.stream, b"".join(pending))

    @asynccontextmanager
    async def websocket(
        self, target: str, headers: Headers, subprotocols: Sequence[str]
    ) -> AsyncIterator[UpstreamSocket]:
        host, port = self._key
        opened = trio_websocket.open_websocket(
            host,
            port,
            target,
            use_ssl=False,
            subprotocols=list(subprotocols),
            extra_headers=headers,
            max_message_size=WS_MAX_MESSAGE,
            receive_buffer_size=READ_SIZE,
            connect_timeout=self._pool.header_timeout,
            disconnect_timeout=5.0,
        )
        async with AsyncExitStack() as stack:
            try:
                ws = await stack.enter_async_context(opened)
            except trio_websocket.HandshakeError as exc:
                raise SandboxUnreachable(f"the sandbox refused the WebSocket: {exc!r}") from None
            except OSError as exc:
                if connection_refused(exc):
                    raise NotListening("nothing accepts connections on that port") from None
                raise SandboxUnreachable(f"the sandbox is not reachable: {exc}") from None
            yield TcpSocket(ws)

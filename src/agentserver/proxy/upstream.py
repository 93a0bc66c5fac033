"""Reaching a sandbox's agent: the `Upstream` protocol and its TCP implementation.

The TCP side is a small h11 connection pool per (host, port). httpx's pool scan was the proxy's
bottleneck (shared/reference/proxy-bench.md), so this one is a LIFO stack of idle connections
with time-based expiry (no socket probe) and one retry when a reused connection turns out to
be stale before any response byte arrives. Reads are 256 KiB: bulk throughput is set by the
per-chunk overhead, not by bytes copied.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import h11
import trio
import trio_websocket

from agentserver.errors import SandboxUnreachable
from agentserver.proxy.headers import Headers

READ_SIZE = 256 * 1024
# Reuse an idle connection only this long: agents close idle keep-alives after some seconds
# (Bun: 10 s), and a time check costs nothing where a readability probe costs a syscall.
IDLE_EXPIRY = 4.0
MAX_IDLE = 256
HEADER_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
# Request bodies up to this size are kept so a stale-connection retry can send them again.
REPLAY_LIMIT = 1 << 20
WS_MAX_MESSAGE = 16 << 20


class UpstreamTimeout(SandboxUnreachable):
    """The agent accepted the request but sent no response headers in time (504)."""

    status = 504
    code = "sandbox_timeout"


@dataclass(slots=True)
class UpstreamResponse:
    """A response whose body is still streaming; `aclose` ends it early and frees its link."""

    status: int
    headers: Headers
    body: AsyncIterator[bytes]
    aclose: Callable[[], Awaitable[None]]


class UpstreamSocket(Protocol):
    """An open WebSocket to the agent (trio_websocket.WebSocketConnection satisfies it).

    `get_message` raises `trio_websocket.ConnectionClosed` (with `.reason.code`) once closed.
    """

    @property
    def subprotocol(self) -> str | None: ...

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes) -> None: ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


class Upstream(Protocol):
    """How the proxy reaches one sandbox's agent: TCP here, a tunnel for local sandboxes."""

    async def request(
        self, method: bytes, target: bytes, headers: Headers, body: AsyncIterable[bytes]
    ) -> UpstreamResponse:
        """Send a request and return once the response headers arrived (SandboxUnreachable
        when the agent cannot be reached, UpstreamTimeout when it does not answer)."""
        ...

    def websocket(
        self, target: str, headers: Headers, subprotocols: Sequence[str]
    ) -> AbstractAsyncContextManager[UpstreamSocket]:
        """Open a WebSocket to `target`; closed when the context exits."""
        ...


class _Stale(Exception):
    """A connection failed before any response byte arrived (safe to retry if reused)."""


class _Connection:
    """One HTTP/1.1 connection to an agent and its h11 state."""

    __slots__ = ("h11", "idle_since", "received", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0
        self.received = False

    async def send(self, *events: h11.Event) -> None:
        await self.stream.send_all(b"".join(self.h11.send(e) or b"" for e in events))

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                # A buffered event: only a cheap cancellation check, no trip to the scheduler.
                await trio.lowlevel.checkpoint_if_cancelled()
                return event  # type: ignore[return-value]
            data = await self.stream.receive_some(READ_SIZE)
            if data:
                self.received = True
            self.h11.receive_data(data)

    def close(self) -> None:
        # Synchronous on purpose: it must work inside a cancelled scope, without a checkpoint.
        self.stream.socket.close()


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

    A body framed by Content-Length is read straight from the socket once h11 has parsed the
    head: h11's receive buffer copies every chunk several times, which capped bulk transfers
    far below what the socket gives. Chunked bodies (SSE) go through h11.
    """

    def __init__(
        self, pool: Pool, key: tuple[str, int], conn: _Connection, length: int | None
    ) -> None:
        self._pool, self._key, self._conn = pool, key, conn
        self._done = False
        self._remaining = length
        self._pending = b""
        self._reusable = True
        if length is not None:
            self._pending, _ = conn.h11.trailing_data

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._remaining is not None:
                return await self._next_raw()
            while True:
                event = await self._conn.next_event()
                if isinstance(event, h11.Data):
                    return bytes(event.data)
                if isinstance(event, h11.EndOfMessage):
                    self._finish()
                    raise StopAsyncIteration
                raise SandboxUnreachable("the sandbox closed the response early")
        except (
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            h11.RemoteProtocolError,
        ):
            self.abort()
            raise SandboxUnreachable("the sandbox closed the response early") from None

    async def _next_raw(self) -> bytes:
        remaining = self._remaining
        assert remaining is not None
        if remaining == 0:
            self._finish_raw()
            raise StopAsyncIteration
        if self._pending:
            chunk, self._pending = self._pending, b""
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            chunk = await self._conn.stream.receive_some(READ_SIZE)
            if not chunk:
                raise trio.BrokenResourceError
        if len(chunk) > remaining:  # bytes beyond the body: this connection is not reusable
            chunk, self._reusable = chunk[:remaining], False
        self._remaining = remaining - len(chunk)
        return chunk

    def _finish_raw(self) -> None:
        self._done = True
        conn = self._conn
        if self._reusable and conn.h11.our_state is h11.DONE:
            conn.h11 = h11.Connection(h11.CLIENT)  # h11 never saw the body: start afresh
            self._pool.release(self._key, conn)
        else:
            conn.close()

    def _finish(self) -> None:
        self._done = True
        conn = self._conn
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            self._pool.release(self._key, conn)
        else:
            conn.close()

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._conn.close()

    async def aclose(self) -> None:
        self.abort()  # synchronous first, so it happens even in a cancelled scope
        await trio.lowlevel.checkpoint_if_cancelled()


def _raw_length(method: bytes, response: h11.Response) -> int | None:
    """The Content-Length of a response body we may read past h11, or None to let h11 frame it."""
    if method == b"HEAD" or response.status_code in (204, 304):
        return None
    lengths = {v for n, v in response.headers.raw_items() if n.lower() == b"content-length"}
    if len(lengths) != 1 or any(
        n.lower() == b"transfer-encoding" for n, _ in response.headers.raw_items()
    ):
        return None
    value = lengths.pop().strip()
    return int(value) if value.isdigit() else None


class Pool:
    """Idle HTTP/1.1 connections per (host, port), reused newest first."""

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

    def upstream(self, host: str, port: int) -> TcpUpstream:
        return TcpUpstream(self, host, port)

    def take(self, key: tuple[str, int]) -> _Connection | None:
        """The most recently used idle connection that has not expired, if any."""
        stack = self._idle.get(key)
        if not stack:
            return None
        conn = stack.pop()
        if trio.current_time() - conn.idle_since < self.idle_expiry:
            return conn
        # LIFO: everything below the top is older still.
        conn.close()
        for old in stack:
            old.close()
        stack.clear()
        return None

    def release(self, key: tuple[str, int], conn: _Connection) -> None:
        stack = self._idle.setdefault(key, [])
        if len(stack) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = trio.current_time()
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
        except (OSError, trio.TooSlowError):
            raise SandboxUnreachable("the sandbox's agent does not accept connections") from None
        return _Connection(stream)

    def close(self) -> None:
        """Close every idle connection (server shutdown)."""
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()


class TcpUpstream:
    """An agent listening on (host, port), reached over the shared pool."""

    def __init__(self, pool: Pool, host: str, port: int) -> None:
        self._pool = pool
        self._key = (host, port)

    async def request(
        self, method: bytes, target: bytes, headers: Headers, body: AsyncIterable[bytes]
    ) -> UpstreamResponse:
        replay = _Replay(body)
        conn = self._pool.take(self._key)
        if conn is not None:
            try:
                return await self._exchange(conn, method, target, headers, replay)
            except _Stale:
                if not replay.replayable:
                    raise SandboxUnreachable("the connection to the sandbox broke") from None
        conn = await self._pool.connect(self._key)
        try:
            return await self._exchange(conn, method, target, headers, replay)
        except _Stale:
            raise SandboxUnreachable("the sandbox closed the connection") from None

    async def _exchange(
        self, conn: _Connection, method: bytes, target: bytes, headers: Headers, replay: _Replay
    ) -> UpstreamResponse:
        ok = False
        try:
            await self._send_request(conn, method, target, headers, replay)
            with trio.move_on_after(self._pool.header_timeout) as waited:
                response = await self._response_head(conn)
            if waited.cancelled_caught:
                raise UpstreamTimeout("the sandbox did not answer in time")
            body = _Body(self._pool, self._key, conn, _raw_length(method, response))
            ok = True
            return UpstreamResponse(
                response.status_code, list(response.headers.raw_items()), body, body.aclose
            )
        except (
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            h11.RemoteProtocolError,
        ):
            if conn.received:
                raise SandboxUnreachable("the sandbox sent a broken response") from None
            raise _Stale from None
        finally:
            if not ok:
                conn.close()

    @staticmethod
    async def _send_request(
        conn: _Connection, method: bytes, target: bytes, headers: Headers, replay: _Replay
    ) -> None:
        # The head, any body already read (a retry) and the first chunk go out in one write.
        # `_parsed`: skip h11's per-header regex checks. Every header either came through the
        # server's own h11 parse or was built by us, and the method and target likewise.
        head = h11.Request(method=method, target=target, headers=headers, _parsed=True)
        pending: list[h11.Event] = [head]
        pending += [h11.Data(data=c) for c in replay.rewind() if c]
        while (chunk := await replay.next()) is not None:
            if chunk:
                pending.append(h11.Data(data=chunk))
                await conn.send(*pending)
                pending = []
        pending.append(h11.EndOfMessage())
        await conn.send(*pending)

    @staticmethod
    async def _response_head(conn: _Connection) -> h11.Response:
        while True:
            event = await conn.next_event()
            if isinstance(event, h11.Response):
                return event
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and friends: the final answer follows
            raise h11.RemoteProtocolError("connection closed before a response")

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
            yield ws

"""The tunnel over a live link: reader, writer and heartbeat tasks, and one TunnelStream per stream.

The same code serves both ends. The server's hub opens streams; the agent answers them::

    tunnel = Tunnel(WebSocketLink(ws), role=Role.SERVER)
    await nursery.start(tunnel.run)              # returns once the Hello exchange is done
    stream = await tunnel.open_request("POST", "/session", [("content-type", "application/json")])
    await stream.send_all(body); await stream.send_eof()
    status, headers = await stream.receive_response_head()
    while chunk := await stream.receive_some(): ...
    await stream.aclose()                        # before the end: Reset, the agent stops working

    async def handle(request: RequestReceived, stream: TunnelStream) -> None:   # agent side
        body = await stream.receive_some()  ...
        await stream.send_response_head(200, [("content-type", "text/plain")])
        await stream.send_all(b"hi"); await stream.send_eof()
    tunnel = Tunnel(WebSocketLink(ws), role=Role.CLIENT, handler=handle)

WebSocket relaying: `open_request(..., websocket=True, subprotocols=[...])`; the agent answers
with status 101 (chosen subprotocol in a ``sec-websocket-protocol`` header), then both sides use
`send_message(bytes | str)` / `receive_message()` (`trio.EndOfChannel` once the peer closed,
with `close_code`/`close_reason` set) and `send_close(code, reason)`.

Guarantees: the reader never blocks on a stream (credit windows bound every stream's buffer);
one writer task owns the link; a handler task is cancelled when its stream is reset or the
tunnel closes; when the tunnel dies every stream operation raises `TunnelClosed`; a link that
delivers nothing within `ping_timeout` of a ping (default: the ping interval) closes the tunnel,
and so does one whose peer reads nothing (a single send blocked from a ping to its timeout),
however busily that peer sends.
With `send_timeout`, a send that can put out nothing for that long (no credit from the peer, or
a link the peer does not read) resets its stream (code "timeout") and raises `StreamResetError`.
Beyond `Settings.max_streams` open streams, `open_request` raises `StreamLimitReached` and the
tunnel stays up.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import trio
import trio_websocket

from .connection import (
    DataReceived,
    ErrorCode,
    Event,
    GoAwayReceived,
    HelloReceived,
    RequestReceived,
    ResponseReceived,
    Role,
    Settings,
    StreamEnded,
    StreamLimitReached,
    StreamReset,
    TunnelConnection,
    WindowUpdated,
)
from .frames import Data, GoAway, MessageBuffer, ProtocolError, decode, encode
from .frames import frame_message as _length_prefixed
from .stream import StreamResetError, TunnelClosed, TunnelStream

__all__ = [
    "ErrorCode",
    "MessageLink",
    "RequestHandler",
    "RequestReceived",
    "Role",
    "Settings",
    "StreamLimitReached",
    "StreamLink",
    "StreamResetError",
    "Tunnel",
    "TunnelClosed",
    "TunnelStream",
    "WebSocketLink",
]

logger = logging.getLogger(__name__)

_LINK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


class MessageLink(Protocol):
    """A message-oriented link. `get_message` raises `trio.EndOfChannel` on a clean close and
    `trio.BrokenResourceError` when the link fails."""

    async def send_message(self, message: bytes) -> None: ...
    async def get_message(self) -> bytes: ...
    async def aclose(self) -> None: ...


class WebSocketLink:
    """A trio-websocket connection as a `MessageLink`."""

    def __init__(self, ws: Any) -> None:  # trio_websocket ships no type information
        self._ws = ws

    async def send_message(self, message: bytes) -> None:
        try:
            await self._ws.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            raise trio.BrokenResourceError(f"websocket closed: {exc.reason}") from exc

    async def get_message(self) -> bytes:
        try:
            message = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            if exc.reason is not None and exc.reason.code in (1000, 1001):
                raise trio.EndOfChannel from exc
            raise trio.BrokenResourceError(f"websocket closed: {exc.reason}") from exc
        if not isinstance(message, bytes):
            raise ProtocolError("text message on the tunnel")
        return message

    async def aclose(self) -> None:
        await self._ws.aclose()


class StreamLink:
    """A byte stream as a `MessageLink`: each message travels with a u32 length prefix."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._buffer = MessageBuffer()

    async def send_message(self, message: bytes) -> None:
        await self._stream.send_all(_length_prefixed(message))

    async def get_message(self) -> bytes:
        # Before taking a message, never after: a cancel then would lose one already buffered.
        await trio.lowlevel.checkpoint()
        while (message := self._buffer.next_message()) is None:
            data = await self._stream.receive_some(256 * 1024)
            if not data:
                if self._buffer.pending:
                    raise trio.BrokenResourceError("stream ended in the middle of a message")
                raise trio.EndOfChannel
            self._buffer.feed(data)
        return message

    async def aclose(self) -> None:
        await self._stream.aclose()


RequestHandler = Callable[[RequestReceived, TunnelStream], Awaitable[None]]


class Tunnel:
    """One end of a tunnel over `link`. Start it with ``await nursery.start(tunnel.run)``.

    `handler` runs once per request the peer opens, as a task of the tunnel; without one, peer
    requests are refused. `ping_timeout` defaults to the ping interval so a silently dead link
    is noticed within two intervals.
    """

    def __init__(
        self,
        link: MessageLink,
        *,
        role: Role,
        settings: Settings | None = None,
        handler: RequestHandler | None = None,
        ping_timeout: float | None = None,
        hello_timeout: float = 10.0,
        close_timeout: float = 2.0,
        max_backlog: int = 1024 * 1024,
        send_timeout: float | None = None,
    ) -> None:
        self._link = link
        self._conn = TunnelConnection(role, settings)
        self.settings = self._conn.settings
        self._handler = handler
        self._ping_timeout = ping_timeout or self.settings.ping_interval
        self._hello_timeout = hello_timeout
        self._close_timeout = close_timeout
        self._max_backlog = max_backlog
        self._send_timeout = send_timeout
        self._streams: dict[int, TunnelStream] = {}
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._hello = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._last_received = -math.inf
        self._writing_since: float | None = None  # when the send under way started
        self._backlog = 0  # Data payload bytes queued for the link, not yet written
        self._backlog_waiting = False
        self.closed = False
        self.close_reason = ""
        self._failure: BaseException | None = None  # why, when the close was a failure
        self._failed = False
        self._peer_closed = False

    @property
    def peer_settings(self) -> Settings | None:
        return self._conn.peer_settings

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until the tunnel closes; ready once the peer's Hello arrived.

        Returns after a clean close (ours or the peer's); raises `TunnelClosed` when the tunnel
        failed (broken link, protocol error, ping timeout, no Hello).
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.closed:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._read_loop)
                with trio.move_on_after(self._hello_timeout):
                    await self._hello.wait()
                if not self._hello.is_set():
                    self._close(f"no hello from the peer within {self._hello_timeout:g} s")
                else:
                    nursery.start_soon(self._heartbeat)
                    task_status.started()
        finally:
            self._close("the tunnel was stopped", failed=False)
            await self._close_link()
        if self._failed:
            raise TunnelClosed(self.close_reason) from self._failure

    async def aclose(self) -> None:
        """Close the tunnel: streams fail with `TunnelClosed`, `run` returns."""
        self._close("closed locally", failed=False)
        await trio.lowlevel.checkpoint()

    async def open_request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        body: bool = True,
        websocket: bool = False,
        subprotocols: Iterable[str] = (),
    ) -> TunnelStream:
        """Open a stream carrying a request to the peer. `body=False`: no request body follows."""
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise TunnelClosed(self.close_reason)
        if self._conn.peer_going_away:
            raise TunnelClosed("the peer is going away")
        head = tuple((name, value) for name, value in headers)
        stream_id = self._conn.open_request(
            method, target, head, body=body, websocket=websocket, subprotocols=tuple(subprotocols)
        )
        stream = TunnelStream(self, stream_id, None)
        stream._sent_eof = not body
        self._streams[stream_id] = stream
        self._wake_writer()
        return stream

    def _close(
        self, reason: str, *, error: BaseException | None = None, failed: bool = True
    ) -> None:
        if self.closed:
            return
        self.closed, self.close_reason = True, reason
        self._failed, self._failure = failed, error
        log = logger.warning if failed else logger.debug
        log("tunnel closed: %s", reason)
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._wake()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # Cleanup in run()'s `finally`, shielded, so its checkpoints are schedule points only: one
    # outside the shield could replace the exception in flight with Cancelled.
    async def _close_link(self) -> None:
        with trio.move_on_after(self._close_timeout) as scope:
            scope.shield = True
            try:
                if not self._peer_closed:
                    code = ErrorCode.PROTOCOL if self._failed else ErrorCode.NORMAL
                    await self._link.send_message(encode(GoAway(code, self.close_reason)))
            except (*_LINK_ERRORS, ProtocolError):
                pass
        # Its own deadline: a GoAway that a peer never reads must not leave the link open.
        with trio.move_on_after(self._close_timeout) as scope:
            scope.shield = True
            try:
                await self._link.aclose()
            except _LINK_ERRORS:  # already broken, maybe before awaiting anything
                await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------ tasks

    async def _read_loop(self) -> None:
        await trio.lowlevel.checkpoint()  # the link may fail at once, before awaiting anything
        max_payload = self.settings.max_frame_payload
        while True:
            try:
                message = await self._link.get_message()
                self._last_received = trio.current_time()
                events = self._conn.receive_frame(decode(message, max_payload=max_payload))
            except trio.EndOfChannel:
                self._peer_closed = True
                self._close("the peer closed the tunnel", failed=not self._hello.is_set())
                return
            except _LINK_ERRORS as exc:
                self._peer_closed = True
                self._close(f"the tunnel link broke: {exc}", error=exc)
                return
            except ProtocolError as exc:
                self._close(f"protocol error from the peer: {exc}", error=exc)
                return
            for event in events:
                self._dispatch(event)
            self._wake_writer()

    async def _write_loop(self) -> None:
        try:
            while True:
                frames = self._conn.frames_to_send()
                if not frames:
                    await self._writer_lot.park()
                    continue
                for frame in frames:
                    self._writing_since = trio.current_time()
                    await self._link.send_message(encode(frame))
                    self._writing_since = None
                    if type(frame) is Data:
                        self._backlog -= len(frame.payload)
                del frames, frame  # a parked writer keeps no frame (up to 256 KiB) alive
                if self._backlog_waiting and self._backlog < self._max_backlog:
                    self._backlog_waiting = False
                    for stream in self._streams.values():
                        stream._send_lot.unpark_all()
        except _LINK_ERRORS as exc:
            self._peer_closed = True
            self._close(f"the tunnel link broke: {exc}", error=exc)
            await trio.lowlevel.checkpoint()  # the link may fail before awaiting anything

    async def _heartbeat(self) -> None:
        # Any frame proves the link alive, so a pong queued behind bulk data still counts.
        interval, timeout = self.settings.ping_interval, self._ping_timeout
        opaque = 0
        while True:
            sent_at = trio.current_time()
            opaque += 1
            self._conn.ping(opaque)
            self._wake_writer()
            await trio.sleep_until(sent_at + timeout)
            if self._last_received < sent_at:
                self._close(f"no answer from the peer within {timeout:g} s of a ping")
                return
            stuck = self._writing_since
            if stuck is not None and stuck <= sent_at:  # one send, blocked for the whole wait
                self._close(f"the peer has read nothing for {timeout:g} s")
                return
            await trio.sleep_until(sent_at + max(interval, timeout))

    async def _serve_request(self, stream: TunnelStream) -> None:
        assert self._handler is not None
        assert stream.request is not None
        with trio.CancelScope() as scope:
            stream._handler_scope = scope
            if stream._reset is not None:
                scope.cancel()
            try:
                await self._handler(stream.request, stream)
            except* (StreamResetError, TunnelClosed):
                pass
            except* Exception:
                logger.exception("tunnel request handler failed for %s", stream.request.target)
                stream._reset_now(ErrorCode.INTERNAL, "the request handler failed")
            finally:
                stream._abandon()
        await trio.lowlevel.checkpoint()  # a stream reset before it started awaits nothing

    # ------------------------------------------------------------ events

    def _dispatch(self, event: Event) -> None:
        match event:
            case DataReceived():
                if stream := self._streams.get(event.stream_id):
                    stream._chunks.append(event)
                    stream._lot.unpark_all()
            case WindowUpdated():
                if stream := self._streams.get(event.stream_id):
                    stream._send_lot.unpark_all()
            case ResponseReceived():
                if stream := self._streams.get(event.stream_id):
                    stream._response = (event.status, event.headers)
                    stream._lot.unpark_all()
            case StreamEnded():
                if stream := self._streams.get(event.stream_id):
                    stream._eof, stream.close_code = True, event.code
                    stream.close_reason = event.reason
                    stream._wake()
                    self._forget_if_finished(event.stream_id)
            case StreamReset():
                if stream := self._streams.pop(event.stream_id, None):
                    stream._reset = StreamResetError(event.code, event.message, remote=event.remote)
                    if stream._handler_scope is not None:
                        stream._handler_scope.cancel()
                    stream._wake()
            case RequestReceived():
                if self._handler is None or self._nursery is None or self.closed:
                    self._conn.reset_stream(event.stream_id, ErrorCode.REFUSED, "no handler")
                    return
                stream = TunnelStream(self, event.stream_id, event)
                self._streams[event.stream_id] = stream
                self._nursery.start_soon(self._serve_request, stream)
            case HelloReceived():
                self._hello.set()
            case GoAwayReceived():
                logger.info("the peer is going away (%s): %s", event.code, event.message)
            case _:  # pings are answered inside the connection; pongs only prove liveness
                pass

    def _forget_if_finished(self, stream_id: int) -> None:
        if not self._conn.is_open(stream_id):
            self._streams.pop(stream_id, None)

    def _wake_writer(self) -> None:
        if self._conn.has_frames_to_send:  # a wake-up for nothing costs a task switch per frame
            self._writer_lot.unpark_all()

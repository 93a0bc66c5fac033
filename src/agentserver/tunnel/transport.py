"""The tunnel over a live link: reader, writer and heartbeat tasks, and one TunnelStream per stream.

The same code serves both ends, opened the same way by `open_tunnel`. The server opens streams;
the agent answers them::

    async with open_tunnel(link, role=Role.SERVER, settings=...) as tunnel:   # Hello exchanged
        stream = await tunnel.open_request("POST", "/session", [("content-type", "text/json")])
        await stream.send_all(body); await stream.send_eof()
        status, headers = await stream.receive_response_head()
        while chunk := await stream.receive_some(): ...
        await stream.aclose()                    # before the end: Reset, the agent stops working

    async def handle(request: RequestReceived, stream: TunnelStream) -> None:   # agent side
        body = await stream.receive_some()  ...
        await stream.send_response_head(200, [("content-type", "text/plain")])
        await stream.send_all(b"hi"); await stream.send_eof()
    async with open_tunnel(WebSocketLink(ws), role=Role.CLIENT, handler=handle) as tunnel: ...

WebSocket relaying: `open_request(..., websocket=True, subprotocols=[...])`; the agent answers
with status 101 (chosen subprotocol in a ``sec-websocket-protocol`` header), then both sides use
`send_message(bytes | str)` / `receive_message()` (`trio.EndOfChannel` once the peer closed,
with `close_code`/`close_reason` set) and `send_close(code, reason)`.

Guarantees: the reader never blocks on a stream (credit windows bound every stream's buffer);
what is queued together leaves as one message (a batch, to a peer whose Hello announced
batches; `messages.py`) in the order it was queued, sent by the task that queued it while the
writer task has nothing under way, else by the writer (`writer.py`); a handler task
is cancelled when its stream is reset or the tunnel closes; when the tunnel dies every stream
operation raises `TunnelClosed`; a link that delivers nothing within `ping_timeout` of a ping
(default: the ping interval) closes the tunnel, and so does one whose peer reads nothing (a
single send blocked from a ping to its timeout), however busily that peer sends.
With `send_timeout`, a send that can put out nothing for that long (no credit from the peer, or
a link the peer does not read) resets its stream (code "timeout") and raises `StreamResetError`.
Beyond `Settings.max_streams` open streams, `open_request` raises `StreamLimitReached` and the
tunnel stays up.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractContextManager, asynccontextmanager

import trio

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
    StreamReset,
    TunnelConnection,
    WindowUpdated,
)
from .errors import TunnelClosed
from .frames import GoAway, Headers, ProtocolError, encode
from .links import MessageLink
from .messages import unpack
from .stream import RequestHandler, TunnelStream
from .writer import LINK_ERRORS, TunnelWriter

__all__ = ["Tunnel", "open_tunnel"]

logger = logging.getLogger(__name__)


class Tunnel:
    """One end of a tunnel over `link`: `open_tunnel` runs one, or ``nursery.start(tunnel.run)``.

    `handler` runs once per request the peer opens, as a task of the tunnel; without one, peer
    requests are refused. `ping_timeout` defaults to the ping interval so a silently dead link
    is noticed within two intervals. Its `send_*`, `grant_credit` and `send_capacity` methods
    are what its streams call (`stream.StreamTransport`); use the streams' own methods instead.
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
        self.send_timeout = send_timeout
        self._streams: dict[int, TunnelStream] = {}
        self._writer = TunnelWriter(
            link,
            self._conn,
            max_backlog=max_backlog,
            broken=self._link_broke,
            drained=self._backlog_drained,
        )
        self._hello = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._last_received = -math.inf
        self.closed = False
        self.close_reason = ""
        self._failure: BaseException | None = None  # why, when the close was a failure
        self._failed = False
        self._peer_closed = False
        # The go-away message when the tunnel's task is cancelled (its owner is stopping).
        self.stop_reason = "the tunnel was stopped"
        # The peer's go-away message once it sent one (a server going away to restart), and
        # an event for whoever waits for it (an agent opening its next tunnel at once).
        self.peer_going_away: str | None = None
        self.peer_went_away = trio.Event()
        # Set (and replaced) whenever a stream is dropped: `wait_idle` watches it.
        self._stream_dropped = trio.Event()

    @property
    def peer_settings(self) -> Settings | None:
        return self._conn.peer_settings

    @property
    def going_away(self) -> bool:
        """True once we told the peer to go (`go_away`): no new streams either way."""
        return self._conn.going_away

    def go_away(self, message: str) -> None:
        """Tell the peer to go (it may connect again, elsewhere): neither side opens a new
        stream on this tunnel, the open ones finish; the tunnel stays up until one side closes
        it (an agent closes it once idle, `wait_idle`)."""
        if not self.closed:
            self._conn.go_away(ErrorCode.NORMAL, message)
            self._writer.wake()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def wait_idle(self) -> None:
        """Wait until no stream is open on the tunnel (or it closed)."""
        await trio.lowlevel.checkpoint()
        while self._streams and not self.closed:
            await self._stream_dropped.wait()

    def _dropped(self) -> None:
        self._stream_dropped.set()
        self._stream_dropped = trio.Event()

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
                nursery.start_soon(self._writer.run)
                nursery.start_soon(self._read_loop)
                with trio.move_on_after(self._hello_timeout):
                    await self._hello.wait()
                if not self._hello.is_set():
                    self._close(f"no hello from the peer within {self._hello_timeout:g} s")
                else:
                    nursery.start_soon(self._heartbeat)
                    task_status.started()
        finally:
            self._close(self.stop_reason, failed=False)
            await self._close_link()
        if self._failed:
            raise TunnelClosed(self.close_reason) from self._failure

    async def aclose(self, reason: str = "closed locally") -> None:
        """Close the tunnel: streams fail with `TunnelClosed`, `run` returns; the peer gets
        `reason` in the go-away."""
        self._close(reason, failed=False)
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
        port: int | None = None,
    ) -> TunnelStream:
        """Open a stream carrying a request to the peer. `body=False`: no request body follows;
        `port`: a preview's port on the peer's machine (None: its agent)."""
        await trio.lowlevel.checkpoint_if_cancelled()  # the caller then waits for the answer
        if self.closed:
            raise TunnelClosed(self.close_reason)
        if self._conn.peer_going_away:
            raise TunnelClosed("the peer is going away")
        if self._conn.going_away:
            raise TunnelClosed("the tunnel is going away")
        head = tuple((name, value) for name, value in headers)
        stream_id = self._conn.open_request(
            method,
            target,
            head,
            body=body,
            websocket=websocket,
            subprotocols=tuple(subprotocols),
            port=port,
        )
        stream = TunnelStream(self, stream_id, None, body=body)
        self._streams[stream_id] = stream
        if body:  # its body may follow at once and share the message: the writer's round
            self._writer.wake()
        else:  # complete: nothing follows on this stream
            self._writer.send_now()
        return stream

    def _close(
        self, reason: str, *, error: BaseException | None = None, failed: bool = True
    ) -> None:
        if self.closed:
            return
        self.closed, self.close_reason = True, reason
        self._writer.stopped = True
        self._failed, self._failure = failed, error
        log = logger.warning if failed else logger.debug
        log("tunnel closed: %s", reason)
        streams, self._streams = self._streams, {}
        self._dropped()
        for stream in streams.values():
            stream.tunnel_closed()
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
            except (*LINK_ERRORS, ProtocolError):
                pass
        # Its own deadline: a GoAway that a peer never reads must not leave the link open.
        with trio.move_on_after(self._close_timeout) as scope:
            scope.shield = True
            try:
                await self._link.aclose()
            except LINK_ERRORS:  # already broken, maybe before awaiting anything
                await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------ tasks

    async def _read_loop(self) -> None:
        await trio.lowlevel.checkpoint()  # the link may fail at once, before awaiting anything
        max_payload = self.settings.max_frame_payload
        while True:
            try:
                message = await self._link.get_message()
                self._last_received = trio.current_time()
                frames = unpack(message, max_payload=max_payload)
                del message  # a parked reader keeps no message (up to 256 KiB) alive
                for frame in frames:  # each frame's events before the next frame changes state
                    for event in self._conn.receive_frame(frame):
                        self._dispatch(event)
                del frames
            except trio.EndOfChannel:
                self._peer_closed = True
                self._close("the peer closed the tunnel", failed=not self._hello.is_set())
                return
            except LINK_ERRORS as exc:
                self._link_broke(exc)
                return
            except ProtocolError as exc:
                self._close(f"protocol error from the peer: {exc}", error=exc)
                return
            if self._conn.has_frames_to_send:  # credit, a pong, a refusal: no writer round
                self._writer.send_now()

    async def _heartbeat(self) -> None:
        # Any frame proves the link alive, so a pong queued behind bulk data still counts.
        interval, timeout = self.settings.ping_interval, self._ping_timeout
        opaque = 0
        while True:
            sent_at = trio.current_time()
            opaque += 1
            self._conn.ping(opaque)
            self._writer.wake()
            await trio.sleep_until(sent_at + timeout)
            if self._last_received < sent_at:
                self._close(f"no answer from the peer within {timeout:g} s of a ping")
                return
            stuck = self._writer.writing_since
            if stuck is not None and stuck <= sent_at:  # one send, blocked for the whole wait
                self._close(f"the peer has read nothing for {timeout:g} s")
                return
            await trio.sleep_until(sent_at + max(interval, timeout))

    # ------------------------------------------------------------ events

    def _dispatch(self, event: Event) -> None:
        match event:
            case DataReceived():
                if stream := self._streams.get(event.stream_id):
                    stream.data_received(event)
            case WindowUpdated():
                if stream := self._streams.get(event.stream_id):
                    stream.credit_granted()
            case ResponseReceived():
                if stream := self._streams.get(event.stream_id):
                    stream.response_received(event.status, event.headers)
            case StreamEnded():
                if stream := self._streams.get(event.stream_id):
                    stream.end_received(event.code, event.reason)
                    self._forget_if_finished(event.stream_id)
            case StreamReset():
                if stream := self._streams.pop(event.stream_id, None):
                    self._dropped()
                    stream.reset_received(event.code, event.message, remote=event.remote)
            case RequestReceived():
                if self._handler is None or self._nursery is None or self.closed:
                    self._conn.reset_stream(event.stream_id, ErrorCode.REFUSED, "no handler")
                    return
                stream = TunnelStream(self, event.stream_id, event)
                self._streams[event.stream_id] = stream
                self._nursery.start_soon(stream.serve, self._handler)
            case HelloReceived():
                self._hello.set()
            case GoAwayReceived():
                self.peer_going_away = event.message or event.code
                self.peer_went_away.set()
                logger.info("the peer is going away (%s): %s", event.code, event.message)
            case _:  # pings are answered inside the connection; pongs only prove liveness
                pass

    # ------------------------------------------------------------ for the streams (StreamTransport)

    def holding(self) -> AbstractContextManager[None]:
        return self._writer.holding()

    def send_capacity(self, stream_id: int) -> int:
        if self._writer.backlog_full:  # the streams are woken once the backlog drains
            return 0
        return self._conn.send_capacity(stream_id)

    def send_head(self, stream_id: int, status: int, headers: Headers) -> None:
        self._conn.send_response(stream_id, status, headers)
        self._writer.wake()

    def send_data(self, stream_id: int, data: bytes, *, text: bool, more: bool) -> None:
        self._conn.send_data(stream_id, data, text=text, more=more)
        self._writer.backlog += len(data)
        if self._conn.head_queued:  # its head's message; the writer takes its round for more
            self._writer.wake()
        else:
            self._writer.send_now()

    def send_end(self, stream_id: int, code: int | None, reason: str) -> None:
        self._conn.end_stream(stream_id, code=code, reason=reason)
        self._forget_if_finished(stream_id)
        self._writer.send_now()  # the stream's last frame: whatever it queued with it goes too

    def grant_credit(self, stream_id: int, size: int) -> None:
        self._conn.acknowledge(stream_id, size)
        if self._conn.has_frames_to_send:
            self._writer.send_now()

    def send_reset(self, stream_id: int, code: str, message: str) -> bool:
        if not self._conn.is_open(stream_id):
            return False
        self._conn.reset_stream(stream_id, code, message)
        if self._streams.pop(stream_id, None) is not None:
            self._dropped()
        self._writer.send_now()
        return True

    def _forget_if_finished(self, stream_id: int) -> None:
        if not self._conn.is_open(stream_id) and self._streams.pop(stream_id, None) is not None:
            self._dropped()

    def _link_broke(self, exc: BaseException) -> None:
        self._peer_closed = True
        self._close(f"the tunnel link broke: {exc}", error=exc)

    def _backlog_drained(self) -> None:
        for stream in self._streams.values():
            stream.credit_granted()


@asynccontextmanager
async def open_tunnel(
    link: MessageLink,
    *,
    role: Role,
    settings: Settings | None = None,
    handler: RequestHandler | None = None,
    send_timeout: float | None = None,
) -> AsyncIterator[Tunnel]:
    """Run a tunnel over `link`; the block is entered once the peer's Hello arrived.

    The block runs alongside the tunnel, like a nursery's: leaving it waits for the tunnel to
    end (`await tunnel.aclose()` ends it), and the tunnel's end cancels the block. A tunnel that
    fails raises `TunnelClosed` (in an exception group) out of the `async with`.
    """
    tunnel = Tunnel(link, role=role, settings=settings, handler=handler, send_timeout=send_timeout)
    async with trio.open_nursery() as nursery:
        await nursery.start(_run_until_closed, tunnel, nursery.cancel_scope)
        yield tunnel


async def _run_until_closed(
    tunnel: Tunnel, scope: trio.CancelScope, task_status: trio.TaskStatus[None]
) -> None:
    try:
        await tunnel.run(task_status=task_status)
    finally:
        scope.cancel()  # whatever runs alongside the tunnel ends with it

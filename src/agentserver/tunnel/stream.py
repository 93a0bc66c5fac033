"""TunnelStream: one request (or relayed WebSocket) over a tunnel, as a trio HalfCloseableStream.

The stream knows its tunnel only as a `StreamTransport`: the few calls that send on its behalf
and say whether the tunnel is still up. The tunnel hands it what arrives for it through the
stream's public `*_received` / `credit_granted` / `tunnel_closed` methods, and runs the handler
of a request the peer opened with `serve`.
"""

from __future__ import annotations

import logging
import operator
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from typing import Protocol

import trio

from .connection import DataReceived, ErrorCode, LocalProtocolError, RequestReceived
from .errors import StreamResetError, TunnelClosed
from .frames import Headers
from .websocket import YIELD_EVERY

MAX_WEBSOCKET_MESSAGE = 16 * 1024 * 1024

logger = logging.getLogger(__name__)


class StreamTransport(Protocol):
    """What a `TunnelStream` needs of its tunnel (`transport.Tunnel` is one).

    The `send_*` calls queue frames (the tunnel may write them at once) and never block;
    `send_capacity` says how many bytes of data may be queued now (0: wait for `credit_granted`).
    """

    @property
    def closed(self) -> bool: ...
    @property
    def close_reason(self) -> str: ...
    @property
    def send_timeout(self) -> float | None: ...

    def holding(self) -> AbstractContextManager[None]:
        """Frames queued within leave together at its end (one message where they fit)."""
        ...

    def send_capacity(self, stream_id: int) -> int: ...
    def send_head(self, stream_id: int, status: int, headers: Headers) -> None: ...
    def send_data(self, stream_id: int, data: bytes, *, text: bool, more: bool) -> None: ...
    def send_end(self, stream_id: int, code: int | None, reason: str) -> None: ...
    def grant_credit(self, stream_id: int, size: int) -> None: ...
    def send_reset(self, stream_id: int, code: str, message: str) -> bool:
        """Reset the stream unless it is already over; True when it was reset now."""
        ...


class _Busy:
    """Raises `trio.BusyResourceError` when two tasks use one side of a stream at once."""

    __slots__ = ("_held", "_what")

    def __init__(self, what: str) -> None:
        self._held, self._what = False, what

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(f"another task is already {self._what} on this stream")
        self._held = True

    def __exit__(self, *exc_info: object) -> None:
        self._held = False


class TunnelStream(trio.abc.HalfCloseableStream):
    """One request (or relayed WebSocket) over a tunnel, as a trio stream.

    `send_all` blocks while the peer's credit window is exhausted; `receive_some` grants credit
    back as it consumes; `send_eof` ends our direction; `aclose` ends our direction and resets
    the stream if it is not finished, so the peer stops working on it.
    """

    def __init__(
        self,
        transport: StreamTransport,
        stream_id: int,
        request: RequestReceived | None,
        *,
        body: bool = True,
    ) -> None:
        """`request`: the peer's request, on the answering side. `body=False`: a request we
        opened without a body, so our direction is already over."""
        self._transport = transport
        self.stream_id = stream_id
        self.request = request  # set on the side that answers the request
        self.close_code: int | None = None
        self.close_reason = ""
        self._chunks: deque[DataReceived] = deque()
        self._offset = 0
        self._message: list[bytes] = []  # WebSocket fragments received so far
        self._message_size = 0
        self._eof = False
        self._reset: StreamResetError | None = None
        self._closed = False
        self._sent_eof = not body
        self._head_sent = request is None
        self._response: tuple[int, Headers] | None = None
        self._lot = trio.lowlevel.ParkingLot()
        self._send_lot = trio.lowlevel.ParkingLot()
        self._sending = _Busy("sending")
        self._receiving = _Busy("receiving")
        self._handler_scope: trio.CancelScope | None = None
        self._stalled_until: float | None = None  # while a send waits: when it gives up
        # Takes data that arrives while a receiver waits with nothing queued (`deliver_directly`).
        self._direct: Callable[[bytes], bool] | None = None
        self._woken = False  # `wake_receiver` was called: `receive_or_wake` returns None
        # Offered the whole response if it is complete before its head was taken (`answer_whole`).
        self._whole: Callable[[int, Headers, bytes], bool] | None = None
        self._unyielded = 0  # bytes received since this stream's receiver last yielded

    # ------------------------------------------------------------ heads

    async def receive_response_head(self) -> tuple[int, Headers]:
        """Wait for the peer's response head: (status, headers)."""
        if self.request is not None:
            raise LocalProtocolError("the answering side sends the response head")
        with self._receiving:
            await trio.lowlevel.checkpoint_if_cancelled()  # arrived already: no scheduler trip
            while self._response is None:
                self._check_receivable()
                self._raise_if_broken()
                await self._lot.park()
            self._whole = None  # taken: the rest is read here
            return self._response

    def answer_whole(self, whole: Callable[[int, Headers, bytes], bool] | None) -> None:
        """Offer the response to `whole` (status, headers, body) from the tunnel's reader, as
        soon as all of it is here in one piece at most, if that is before
        `receive_response_head` took its head:
        so a small answer arriving in one message can go on before the task that waits for
        it runs again. Taken (True), its body was consumed there: the receiver then finds
        the head and an ended, empty body. Refused, nothing changed."""
        self._whole = whole

    async def send_response_head(
        self, status: int, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint()
            self._check_sendable(head=False)
            self._transport.send_head(self.stream_id, status, tuple(headers))
            self._head_sent = True

    async def send_response(
        self,
        status: int,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        end: bool = False,
    ) -> None:
        """The response head, then `body`, then with `end` the end of our direction.

        What the credit allows is queued in one go, with no checkpoint in between, so a small
        complete response leaves in one message; the rest is sent as by `send_all`.
        """
        with self._sending:
            await trio.lowlevel.checkpoint_if_cancelled()  # once a response: no scheduler trip
            self._check_sendable(head=False)
            with self._transport.holding():  # head, body and end: one message, no writer round
                self._transport.send_head(self.stream_id, status, tuple(headers))
                self._head_sent = True
                if self._queue_whole(body, end):
                    return
        if end:
            await self.send_last(body)
        else:
            await self.send_all(body)

    async def send_last(self, data: bytes) -> None:
        """`data`, then the end of our direction: queued together when the credit allows, so
        a body's last piece and its end leave in one message."""
        with self._sending:
            await trio.lowlevel.checkpoint()
            self._check_sendable()
            if self._queue_whole(data, True):
                return
        await self.send_all(data)
        await self.send_eof()

    def _queue_whole(self, data: bytes, end: bool) -> bool:
        """Queue `data` (and with `end`, the end) if all of it fits the credit; True if done."""
        if data and self._capacity() < len(data):
            return False
        if data and end:
            with self._transport.holding():  # one message for both
                self._send_data(data)
                self._end()
        elif data:
            self._send_data(data)
        elif end:
            self._end()
        return True

    # ------------------------------------------------------------ sending

    def send_nowait(self, data: bytes) -> bool:
        """Queue all of `data` if the credit allows it now, without a checkpoint (the caller's
        loop has its own, such as the read that produced `data`); False, with nothing queued,
        when it must wait: then `send_all` it. A streamed body's piece then costs no trip
        round the scheduler of its own (each one is a wake-up of the whole process).
        """
        with self._sending:
            if not data or self._capacity() < len(data):
                return False
            self._send_data(data)
            return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint()
            self._check_sendable()
            self._stalled_until = None
            view = memoryview(data).cast("B")
            position = 0
            while position < len(view):
                while (size := self._capacity()) <= 0:
                    await self._park_sender()
                if position == 0 and size >= len(view) and type(data) is bytes:
                    self._send_data(data)  # immutable and whole: no copy (the usual body chunk)
                else:
                    self._send_data(bytes(view[position : position + size]))
                position += size

    async def wait_send_all_might_not_block(self) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint()
            self._stalled_until = None
            while self._capacity() <= 0:
                await self._park_sender()

    async def send_eof(self) -> None:
        with self._sending:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            if not self._sent_eof:
                self._raise_if_broken()
                self._end()

    async def send_message(self, message: bytes | str) -> None:
        """Send one WebSocket message, fragmented to fit frames and credit."""
        text = isinstance(message, str)
        data = message.encode() if isinstance(message, str) else message
        with self._sending:
            await trio.lowlevel.checkpoint()
            self._check_sendable()
            self._stalled_until = None
            view, position = memoryview(data), 0
            while True:
                while (size := self._capacity()) <= 0:
                    await self._park_sender()
                chunk = bytes(view[position : position + size])
                position += len(chunk)
                self._send_data(chunk, text=text, more=position < len(view))
                if position >= len(view):
                    return

    async def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Close our direction of a relayed WebSocket with a close code."""
        with self._sending:
            await trio.lowlevel.checkpoint()
            self._check_sendable()
            self._end(code, reason)

    def _capacity(self) -> int:
        """Bytes that may go out now; none: park on `_send_lot`, then ask again.

        Not async, so that a send checkpoints once (on entry), not once per chunk.
        """
        self._check_sendable()
        return self._transport.send_capacity(self.stream_id)

    async def _park_sender(self) -> None:
        """Wait for capacity; past the tunnel's `send_timeout` without any, reset the stream.

        The clock runs from the first wait of this call since bytes last went out, so a slow
        peer that keeps granting credit is never cut, and one that grants none is cut after the
        timeout.
        """
        timeout = self._transport.send_timeout
        if timeout is None:
            await self._send_lot.park()
            return
        if self._stalled_until is None:
            self._stalled_until = trio.current_time() + timeout
        with trio.move_on_at(self._stalled_until) as waited:
            await self._send_lot.park()
        if waited.cancelled_caught:
            message = f"nothing could be sent for {timeout:g} s"
            self._reset_now(ErrorCode.TIMEOUT, message)
            self._raise_if_broken()
            raise StreamResetError(ErrorCode.TIMEOUT, message, remote=False)

    def _send_data(self, chunk: bytes, *, text: bool = False, more: bool = False) -> None:
        self._stalled_until = None
        self._transport.send_data(self.stream_id, chunk, text=text, more=more)

    def _end(self, code: int | None = None, reason: str = "") -> None:
        self._transport.send_end(self.stream_id, code, reason)
        self._sent_eof = True

    # ------------------------------------------------------------ receiving

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
        found = await self._receive(max_bytes, wakeable=False)
        assert found is not None
        return found

    async def receive_or_wake(self) -> bytes | None:
        """`receive_some()`, or None once `wake_receiver` was called (nothing arrived). Unlike
        `receive_some` (a trio stream's, always a schedule point), what is there already is
        taken with a cancellation check only, and a schedule point every YIELD_EVERY bytes."""
        return await self._receive(None, wakeable=True)

    async def _receive(self, max_bytes: int | None, *, wakeable: bool) -> bytes | None:
        with self._receiving:
            await self._first_wait(cheap=wakeable)
            while True:
                self._check_receivable()
                if self._chunks:
                    return self._take(max_bytes)
                if wakeable and self._woken:
                    self._woken = False
                    return None
                if self._eof:
                    return b""
                self._raise_if_broken()
                await self._lot.park()

    def deliver_directly(self, direct: Callable[[bytes], bool] | None) -> None:
        """Offer data that arrives while a receiver waits, with nothing queued before it, to
        `direct` first (None: stop): taken (True), it is consumed there and then (its credit
        goes back at once) and the receiver sleeps on; refused, it is queued as usual.

        The one receiver must have handled everything it took before it waits again (e.g. it
        writes each piece on before receiving the next): then a piece taken directly can
        never overtake one received earlier. `direct` never blocks; `wake_receiver` lets it
        have the receiver run (to finish what it could not do at once).
        """
        self._direct = direct

    def wake_receiver(self) -> None:
        """Make the waiting (or next) `receive_or_wake` return None."""
        self._woken = True
        self._lot.unpark_all()

    async def receive_message(self) -> bytes | str:
        """The next whole WebSocket message; `trio.EndOfChannel` once the peer closed."""
        with self._receiving:
            await trio.lowlevel.checkpoint()
            while True:
                self._check_receivable()
                if self._chunks:
                    first = self._chunks[0]
                    if self._message_size + len(first.data) > MAX_WEBSOCKET_MESSAGE:
                        self._reset_now(ErrorCode.PROTOCOL, "websocket message too large")
                        self._chunks.clear()
                        self._raise_if_broken()
                    part = self._take(None)
                    self._message.append(part)
                    self._message_size += len(part)
                    if not first.more:
                        return self._finish_message(first.text)
                    continue
                if self._eof:
                    raise trio.EndOfChannel
                self._raise_if_broken()
                await self._lot.park()

    async def _first_wait(self, *, cheap: bool = False) -> None:
        """The checkpoint a receive starts with: when nothing is there to take, the wait for it
        (parking is one), rather than a trip round the scheduler and then the wait; when
        something is and `cheap`, a cancellation check only, but a trip every YIELD_EVERY
        bytes taken so (a receiver that is never short of data does not starve the others)."""
        if (
            self._chunks
            or self._eof
            or self._closed
            or self._reset
            or self._woken
            or self._transport.closed
        ):
            if cheap and self._unyielded < YIELD_EVERY:
                await trio.lowlevel.checkpoint_if_cancelled()
            else:
                self._unyielded = 0
                await trio.lowlevel.checkpoint()
        else:
            self._unyielded = 0
            await self._lot.park()

    def _finish_message(self, text: bool) -> bytes | str:
        data = b"".join(self._message)
        self._message, self._message_size = [], 0
        if not text:
            return data
        try:
            return data.decode()
        except UnicodeDecodeError:
            message = "text message is not UTF-8"
            self._reset_now(ErrorCode.PROTOCOL, message)
            raise StreamResetError(ErrorCode.PROTOCOL, message, remote=False) from None

    def _take(self, max_bytes: int | None) -> bytes:
        chunk = self._chunks[0].data
        start = self._offset
        end = len(chunk) if max_bytes is None else min(len(chunk), start + max_bytes)
        if end == len(chunk):
            self._chunks.popleft()
            self._offset = 0
            piece = chunk if start == 0 else chunk[start:]
        else:
            self._offset = end
            piece = chunk[start:end]
        self._transport.grant_credit(self.stream_id, end - start)
        self._unyielded += len(piece)
        return piece

    # ------------------------------------------------------------ from the tunnel

    def data_received(self, event: DataReceived) -> None:
        direct = self._direct
        if direct is not None and self._lot and not self._chunks and direct(event.data):
            self._transport.grant_credit(self.stream_id, len(event.data))
            return
        self._chunks.append(event)
        if self._lot:  # an empty lot's unpark_all still costs a handful of calls
            self._lot.unpark_all()

    def credit_granted(self) -> None:
        """The peer granted credit, or the tunnel's backlog drained: a parked send may go on."""
        if self._send_lot:
            self._send_lot.unpark_all()

    def response_received(self, status: int, headers: Headers) -> None:
        self._response = (status, headers)
        if self._lot:
            self._lot.unpark_all()

    def end_received(self, code: int | None, reason: str) -> None:
        self._eof, self.close_code, self.close_reason = True, code, reason
        whole, self._whole = self._whole, None
        if whole is not None:
            self._offer_whole(whole)
        self._wake()

    def _offer_whole(self, whole: Callable[[int, Headers, bytes], bool]) -> None:
        """`answer_whole`'s offer, once the end arrived. A small answer is one message: its
        body one piece at most (none taken yet); with more pieces the receiver reads them
        (no joining copy here, however many came)."""
        chunks, response = self._chunks, self._response
        if response is None or self._closed or len(chunks) > 1:
            return
        body = chunks[0].data if chunks else b""
        try:
            taken = whole(*response, body)
        except Exception:  # the tunnel's reader runs this: a failure is this stream's only
            logger.exception("a whole response from the tunnel could not be answered")
            return
        if taken:
            chunks.clear()
            if body:
                self._transport.grant_credit(self.stream_id, len(body))

    def reset_received(self, code: str, message: str, *, remote: bool) -> None:
        """The stream was reset (by the peer, or by the connection for a broken rule)."""
        self._reset = StreamResetError(code, message, remote=remote)
        if self._handler_scope is not None:
            self._handler_scope.cancel()
        self._wake()

    def tunnel_closed(self) -> None:
        """The tunnel is gone: every waiting operation wakes up to raise `TunnelClosed`."""
        self._wake()

    async def serve(self, handler: RequestHandler) -> None:
        """Run `handler` on the peer's request (a task of the tunnel); cancelled on a reset.

        A handler that fails resets the stream ("internal"); when it returns, the stream is
        finished unless it already ended.
        """
        assert self.request is not None, "serve() runs on the answering side"
        with trio.CancelScope() as scope:
            self._handler_scope = scope
            if self._reset is not None:
                scope.cancel()
            try:
                await handler(self.request, self)
            except* (StreamResetError, TunnelClosed):
                pass
            except* Exception:
                logger.exception("tunnel request handler failed for %s", self.request.target)
                self._reset_now(ErrorCode.INTERNAL, "the request handler failed")
            finally:
                self._abandon()
        await trio.lowlevel.checkpoint_if_cancelled()  # a stream reset at once awaited nothing

    # ------------------------------------------------------------ closing

    async def aclose(self) -> None:
        self._close_now()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """`aclose` without its checkpoint (nothing here waits): for a caller that needs no
        schedule point, or runs in a cancelled scope."""
        self._close_now()

    async def reset(self, code: str = ErrorCode.CANCEL, message: str = "") -> None:
        """Abort the stream in both directions, telling the peer why."""
        self._reset_now(code, message)
        await trio.lowlevel.checkpoint()

    def _close_now(self) -> None:
        if self._closed:
            return
        if self._reset is None and not self._transport.closed:
            if self._head_sent and not self._sent_eof:
                self._end()
            self._reset_now(ErrorCode.CANCEL, "closed before the end")
        self._closed = True
        self._chunks.clear()
        self._direct = self._whole = None
        self._wake()

    def _reset_now(self, code: str, message: str) -> None:
        if self._reset is None and self._transport.send_reset(self.stream_id, code, message):
            self._reset = StreamResetError(code, message, remote=False)
        self._wake()

    def _abandon(self) -> None:
        """The handler is done: finish the stream unless it already ended or was reset."""
        if self._reset is None:
            self._close_now()

    def _wake(self) -> None:
        # Several per request, nearly always with no one parked: then nothing to call.
        if self._lot:
            self._lot.unpark_all()
        if self._send_lot:
            self._send_lot.unpark_all()

    def _check_sendable(self, *, head: bool = True) -> None:
        if self._closed or self._sent_eof:
            raise trio.ClosedResourceError("this direction of the stream was closed")
        self._raise_if_broken()
        if head and not self._head_sent:
            raise LocalProtocolError("send the response head first")

    def _check_receivable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")

    def _raise_if_broken(self) -> None:
        if (reset := self._reset) is not None:  # a fresh exception each time, fresh traceback
            raise StreamResetError(reset.code, reset.message, remote=reset.remote)
        if self._transport.closed:
            raise TunnelClosed(self._transport.close_reason)


RequestHandler = Callable[[RequestReceived, TunnelStream], Awaitable[None]]

"""The tunnel's own WebSocket (RFC 6455) over a trio stream: binary messages as a `MessageLink`.

Both ends use it once the opening handshake is done (tunnel/handshake.py): the server's front
door (proxy/front.py) and `agent connect`. It replaces, per message, hypercorn's WSStream and
quart's message task, queue and signal on the server, and trio-websocket's reader task on the
agent: a message is parsed in the task that asks for it, from one read buffer, and sent with
one `send_all` (header and payload joined; two writes only past `JOIN_LIMIT`, where a copy
would cost more than the extra system call).

What it refuses, as RFC 6455 says: a server refuses unmasked client frames and a client masked
server frames; RSV bits (no extension is ever negotiated); unknown opcodes; fragmented or long
(over 125 bytes) control frames; a continuation without a message, or a new message inside
one. Each is closed with 1002 and raises `ConnectionClosed`. A message longer than
`max_message` is refused as soon as a frame header says so, before any of it is stored (close
1009). A text message raises the tunnel's `ProtocolError`. Pings are answered with a pong; while
a message is being sent only the latest pong waits (it leaves right after), so a peer flooding
pings cannot grow what we hold. A close with 1000 or 1001 ends the link with
`trio.EndOfChannel`; any other, or the connection ending without one, with
`trio.BrokenResourceError`.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable
from typing import Final, cast

import trio
from wsproto.frame_protocol import CloseReason

from .frames import ProtocolError
from .masking import APPLY_MASK

__all__ = ["ConnectionClosed", "WebSocket", "frame"]

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA: Final = frozenset({CONT, TEXT, BINARY})
_CONTROL: Final = frozenset({CLOSE, PING, PONG})
NORMAL, GOING_AWAY, PROTOCOL_ERROR, BAD_DATA = 1000, 1001, 1002, 1007
NO_STATUS, ABNORMAL, TOO_BIG = 1005, 1006, 1009
_ENDS: Final = frozenset({NORMAL, GOING_AWAY})
# Close codes a peer may send (RFC 6455 §7.4): the registered ones, and 3000-4999.
_SENDABLE: Final = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
# A read asks for 64 KiB (or the rest of a larger frame at once): a 256 KiB buffer costs a
# small message's read ~15 µs more (glibc maps and unmaps allocations of 128 KiB and up).
READ_SIZE = 64 * 1024
YIELD_EVERY = 256 * 1024  # bytes taken without waiting before a schedule point all the same
MESSAGE_COST = 4096  # so a schedule point comes at least every 64 messages
JOIN_LIMIT = 64 * 1024
CLOSE_WAIT = 1.0  # for our close frame to leave, and the peer's end after it
_SHORT, _MEDIUM, _LONG = struct.Struct("!BB"), struct.Struct("!BBH"), struct.Struct("!BBQ")


def _python_mask(data: bytes | memoryview, key: bytes) -> bytes:  # pragma: no cover - fallback
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


# websockets' C masker takes any buffer (a memoryview into our read buffer: no copy first).
_mask = cast(Callable[[bytes | memoryview, bytes], bytes], APPLY_MASK or _python_mask)


def frame(opcode: int, payload: bytes | memoryview, *, masked: bool) -> tuple[bytes, bytes]:
    """One final frame as (header, payload as sent): masked with a fresh random key if asked."""
    length = len(payload)
    second = 0x80 if masked else 0
    if length < 126:
        header = _SHORT.pack(0x80 | opcode, second | length)
    elif length < 65536:
        header = _MEDIUM.pack(0x80 | opcode, second | 126, length)
    else:
        header = _LONG.pack(0x80 | opcode, second | 127, length)
    if not masked:
        return header, bytes(payload) if isinstance(payload, memoryview) else payload
    key = os.urandom(4)
    return header + key, _mask(payload, key)


class ConnectionClosed(trio.BrokenResourceError):
    """The WebSocket ended other than normally: the peer's close `code`, ours for what it sent,
    or 1006 when the connection ended without a close."""

    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason
        try:
            self.name = CloseReason(code).name
        except ValueError:
            self.name = "UNKNOWN"
        why = f": {reason}" if reason else ""
        super().__init__(f"websocket closed ({code} {self.name}{why})")


class _Failed(Exception):
    """What the peer sent breaks the protocol: close with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class WebSocket:
    """One end of an open WebSocket (`client`: we mask, the peer must not) as a `MessageLink`.
    `buffered`: bytes read past the handshake. One task reads, one sends (pongs and closes go
    out between its messages)."""

    __slots__ = (
        "_buffer",
        "_client",
        "_close_sent",
        "_closed",
        "_drained",
        "_ended",
        "_fragments",
        "_fragments_size",
        "_held",
        "_max",
        "_peer_closed",
        "_pong",
        "_pos",
        "_reading",
        "_send_broken",
        "_sending",
        "_sock",
        "_stream",
        "_turn",
        "_unmask",
        "_unyielded",
    )

    def __init__(
        self, stream: trio.abc.Stream, *, client: bool, max_message: int, buffered: bytes = b""
    ) -> None:
        self._stream = stream
        # A plain socket is written (`try_send`) and read with os.write/os.read: trio's own
        # calls take a trip round the scheduler after each one that succeeds at once.
        self._sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._held: bytes | memoryview = b""  # what `try_send` left of its message, to go first
        self._unyielded = 0  # bytes read at once since the last schedule point
        self._client = client
        self._unmask = not client  # a server unmasks what clients send
        self._max = max_message
        self._buffer: bytes | bytearray = buffered
        self._pos = 0
        self._fragments: list[bytes] = []
        self._fragments_size = 0
        self._pong: bytes | None = None  # the latest pong, while a message is being sent
        self._sending = False
        self._turn = trio.lowlevel.ParkingLot()
        self._send_broken = False  # a send was cut off: the stream may hold half a frame
        self._close_sent = False
        self._ended: BaseException | None = None  # what every later receive raises
        self._peer_closed = False  # its close frame, or the end of the connection, arrived
        self._reading = False
        self._closed = False
        self._drained = False  # the last read returned less than asked for

    # -- receiving --------------------------------------------------------------------------

    async def get_message(self) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the tunnel link was closed")
        if self._ended is not None:
            raise self._ended
        self._reading = True
        try:
            message, _ = await self._message()
        except _Failed as failure:
            raise await self._fail(failure.code, failure.reason) from None
        except ConnectionClosed as exc:
            self._ended = exc
            raise
        finally:
            self._reading = False
        # A message already buffered, or read at once, is taken without a trip round the
        # scheduler (each is an epoll_wait), but not forever: a peer that keeps us busy does
        # not starve the other tasks (each message counts as at least `MESSAGE_COST` bytes).
        self._unyielded += max(len(message), MESSAGE_COST)
        if self._unyielded >= YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()  # never a cancel point: taken
        return message  # noqa: ASYNC910

    async def _message(self) -> tuple[bytes, bool]:
        """The next whole binary message, and whether it had to be waited for."""
        waited = False
        while True:
            view = memoryview(self._buffer)[self._pos :]
            header = _parse_header(view, self._unmask)
            if header is None:
                more = len(view) + 1
                del view  # a bytearray with a view on it cannot grow
                waited = True
                await self._fill(more)
                continue
            opcode, fin, size, start = header
            if opcode in _DATA:
                self._check_data(opcode, size)
            elif size > 125 or not fin:
                raise _Failed(PROTOCOL_ERROR, "a control frame longer than 125 bytes or split")
            if len(view) < start + size:
                del view
                waited = True
                await self._fill(start + size)
                continue
            if self._unmask:
                payload = _mask(view[start : start + size], view[start - 4 : start].tobytes())
            else:
                payload = view[start : start + size].tobytes()
            del view
            self._pos += start + size
            if self._pos == len(self._buffer):
                self._buffer, self._pos = b"", 0
            if opcode in _DATA:
                if fin and not self._fragments:
                    return payload, waited  # noqa: ASYNC910
                self._fragments.append(payload)
                self._fragments_size += size
                if fin:
                    message = b"".join(self._fragments)
                    self._fragments, self._fragments_size = [], 0
                    return message, waited  # noqa: ASYNC910
            else:
                waited = await self._control(opcode, payload) or waited

    def _check_data(self, opcode: int, size: int) -> None:
        """Refuse a data frame before storing any of it."""
        if opcode == TEXT:
            raise ProtocolError("text message on the tunnel")
        if (opcode == CONT) != bool(self._fragments):
            if opcode == CONT:
                raise _Failed(PROTOCOL_ERROR, "a continuation frame outside a message")
            raise _Failed(PROTOCOL_ERROR, "a new message inside a fragmented one")
        if self._fragments_size + size > self._max:
            raise _Failed(TOO_BIG, f"a message of more than {self._max} bytes")

    async def _fill(self, needed: int) -> None:
        """Read until `needed` bytes are buffered past the read position (one read usually)."""
        have = len(self._buffer) - self._pos
        if self._pos:  # keep only what is not parsed yet
            self._buffer = bytearray(memoryview(self._buffer)[self._pos :])
            self._pos = 0
        while True:  # called only when more is needed
            try:
                data = await self._read(max(READ_SIZE, needed - have))
            except (trio.BrokenResourceError, OSError) as exc:
                raise ConnectionClosed(ABNORMAL, f"the connection broke: {exc}") from exc
            if not data:
                self._peer_closed = True
                raise ConnectionClosed(ABNORMAL, "the connection ended without a close")
            if not self._buffer:
                self._buffer = data  # most often a whole message: no copy
            else:
                if not isinstance(self._buffer, bytearray):
                    self._buffer = bytearray(self._buffer)
                self._buffer += data
            have += len(data)
            if have >= needed:
                return

    async def _read(self, size: int) -> bytes:
        """What the peer sent, up to `size`: at once when the kernel has it (no schedule
        point then: `get_message` counts the bytes), else after waiting for it."""
        sock = self._sock
        if sock is None:
            self._unyielded = 0  # a stream's receive is a schedule point
            return bytes(await self._stream.receive_some(size))
        if self._drained:  # the last read took all there was: another would find nothing
            self._unyielded = 0
            await trio.lowlevel.wait_readable(sock)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data = os.read(sock.fileno(), size)  # asked each time: it may be closed
            except BlockingIOError:
                self._unyielded = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            self._drained = 0 < len(data) < size
            return data

    async def _control(self, opcode: int, payload: bytes) -> bool:
        """Act on a control frame; raises at a close. True if it awaited."""
        if opcode == PING:
            if self._close_sent or self._send_broken:
                return False  # noqa: ASYNC910
            pong = b"".join(frame(PONG, payload, masked=self._client))
            if self._sending:  # the sender writes it right after its message
                self._pong = pong
                return False  # noqa: ASYNC910
            await self._send(pong)
            return True
        if opcode == PONG:
            return False  # noqa: ASYNC910
        code, reason = _close_payload(payload)
        self._peer_closed = True
        ended = code in _ENDS
        self._ended = trio.EndOfChannel() if ended else ConnectionClosed(code, reason or "by peer")
        if not self._close_sent:  # the closing handshake's answer
            await self._send_close(NORMAL if code == NO_STATUS else code, "")
        raise self._ended

    async def _fail(self, code: int, reason: str) -> ConnectionClosed:
        """Close with `code` for what the peer sent; the error to raise."""
        failure = ConnectionClosed(code, f"the peer sent {reason}")
        self._ended = failure
        await self._send_close(code, reason)
        return failure

    # -- sending ----------------------------------------------------------------------------

    async def send_message(self, message: bytes) -> None:
        self._check_sendable()
        header, payload = frame(BINARY, message, masked=self._client)
        if len(payload) <= JOIN_LIMIT:
            await self._send(header + payload)
        else:
            await self._send(header, payload)

    def _check_sendable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the tunnel link was closed")
        if self._close_sent or self._send_broken:
            if isinstance(ended := self._ended, ConnectionClosed):  # why we are closing
                raise ConnectionClosed(ended.code, ended.reason)
            raise trio.BrokenResourceError("the websocket is closing")

    def try_send(self, message: bytes) -> int:
        """Send `message` now, as far as the kernel takes it without waiting; never blocks.

        Returns how many of its bytes on the wire are still held (0: all sent). Held bytes
        (the rest of a partial write, or all of it while another send is under way or on a
        stream other than a plain socket) go out first with the next send, or `flush`: so
        frames are never interleaved, and a caller cancelled afterwards leaves no half frame.
        Call it again only once nothing is held.
        """
        self._check_sendable()
        header, payload = frame(BINARY, message, masked=self._client)
        if self._sock is None or self._sending or self._held:
            self._held = b"".join((self._held, header, payload))
            return len(self._held)
        try:  # header and payload in one system call, without joining them (a bulk copy)
            sent = os.writev(self._sock.fileno(), (header, payload))
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._send_broken = True
            raise trio.BrokenResourceError(f"websocket send failed: {exc}") from exc
        if sent < len(header):
            self._held = header[sent:] + payload
        elif sent < len(header) + len(payload):
            self._held = memoryview(payload)[sent - len(header) :]
        return len(self._held)

    @property
    def held(self) -> int:
        """Bytes `try_send` left to send (they go first with the next send, or `flush`)."""
        return len(self._held)

    async def flush(self) -> None:
        """Send what `try_send` left, if anything."""
        if not self._held:
            await trio.lowlevel.checkpoint()
            return
        if self._close_sent or self._send_broken:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("the websocket is closing")
        await self._send(b"")

    async def _send(self, data: bytes, more: bytes | None = None) -> None:
        """Write what `try_send` held, `data` (and `more`) as the only sender, then a pong
        that waited meanwhile."""
        while self._sending:
            await self._turn.park()
        if self._send_broken:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("an earlier send was cut off")
        self._sending = True
        try:
            if self._held:
                held, self._held = self._held, b""
                await self._stream.send_all(held)
                if data:
                    await self._stream.send_all(data)
            else:
                await self._stream.send_all(data)
            if more is not None:
                await self._stream.send_all(more)
            if self._pong is not None:
                pong, self._pong = self._pong, None
                await self._stream.send_all(pong)
        except trio.Cancelled:
            self._send_broken = True
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._send_broken = True
            raise trio.BrokenResourceError(f"websocket send failed: {exc}") from exc
        finally:
            self._sending = False
            self._turn.unpark()

    async def _send_close(self, code: int, reason: str) -> None:
        """Our close frame, best effort and bounded (the peer may read nothing)."""
        self._close_sent = True
        payload = code.to_bytes(2, "big") + reason.encode()[:123]
        with trio.move_on_after(CLOSE_WAIT):
            with contextlib.suppress(trio.BrokenResourceError):
                await self._send(b"".join(frame(CLOSE, payload, masked=self._client)))
        await trio.lowlevel.checkpoint_if_cancelled()

    async def aclose(self) -> None:
        """Close: our close frame (unless one went out), then the peer's end of the
        connection awaited (bounded; unless it closed first) so that nothing of ours is lost to
        a reset, then the stream."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if not self._close_sent and not self._send_broken:
                await self._send_close(NORMAL, "")
            if not self._peer_closed and not self._reading:
                with trio.move_on_after(CLOSE_WAIT):
                    while await self._stream.receive_some(READ_SIZE):
                        pass  # what the peer sent before its close: nobody reads it now
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._buffer, self._fragments, self._held = b"", [], b""
            await self._stream.aclose()


def _parse_header(view: memoryview, masked: bool) -> tuple[int, bool, int, int] | None:
    """(opcode, fin, payload length, payload offset) of the frame starting `view`, None while
    incomplete; `_Failed` for what RFC 6455 refuses (`masked`: whether frames must be)."""
    if len(view) < 2:
        return None
    first, second = view[0], view[1]
    if first & 0x70:
        raise _Failed(PROTOCOL_ERROR, "a frame with RSV bits set (no extension was agreed)")
    opcode = first & 0x0F
    if opcode not in _DATA and opcode not in _CONTROL:
        raise _Failed(PROTOCOL_ERROR, f"a frame with the unknown opcode {opcode}")
    if bool(second & 0x80) != masked:
        raise _Failed(PROTOCOL_ERROR, "a masked frame" if not masked else "an unmasked frame")
    size, start = second & 0x7F, 2
    if size == 126:
        if len(view) < 4:
            return None
        size, start = (view[2] << 8) | view[3], 4
    elif size == 127:
        if len(view) < 10:
            return None
        size, start = int.from_bytes(view[2:10], "big"), 10
        if size >> 63:
            raise _Failed(PROTOCOL_ERROR, "a frame length with its top bit set")
    if masked:
        start += 4
        if len(view) < start:
            return None
    return opcode, bool(first & 0x80), size, start


def _close_payload(payload: bytes) -> tuple[int, str]:
    """A close frame's code and reason (1005 when it has none); `_Failed` when malformed."""
    if not payload:
        return NO_STATUS, ""
    code = int.from_bytes(payload[:2], "big")
    if len(payload) == 1 or not (code in _SENDABLE or 3000 <= code <= 4999):
        raise _Failed(PROTOCOL_ERROR, "a malformed close frame")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise _Failed(BAD_DATA, "a close reason that is not UTF-8") from None

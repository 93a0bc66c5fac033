"""The links a tunnel runs over: a WebSocket, or any byte stream with length-prefixed messages."""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import trio
import trio_websocket

from .frames import ProtocolError
from .messages import MessageBuffer
from .messages import frame_message as _length_prefixed

__all__ = ["DirectLink", "MessageLink", "StreamLink", "WebSocketLink"]


class MessageLink(Protocol):
    """A message-oriented link. `get_message` raises `trio.EndOfChannel` on a clean close and
    `trio.BrokenResourceError` when the link fails."""

    async def send_message(self, message: bytes) -> None: ...
    async def get_message(self) -> bytes: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class DirectLink(MessageLink, Protocol):
    """A link that can also send without waiting (`websocket.WebSocket`, `StreamLink`).

    `try_send(message)` writes what the kernel takes now and returns how many bytes it holds
    back (0: all sent); held bytes go out first with the next `send_message`, or `flush`.
    """

    def try_send(self, message: bytes) -> int: ...
    async def flush(self) -> None: ...


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
    """A byte stream as a `MessageLink`: each message travels with a u32 length prefix.

    On a plain socket, `try_send` writes what the kernel takes at once (os.write); on any other
    stream it holds the whole message for the next send (or `flush`), as a WebSocket does.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._buffer = MessageBuffer()
        self._sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._held: bytes | memoryview = b""  # what `try_send` left, to go first

    def try_send(self, message: bytes) -> int:
        """Send `message` now as far as the kernel takes it; the bytes still held (0: all
        sent), which go out first with the next `send_message` or `flush`. Never blocks."""
        data = _length_prefixed(message)
        if self._sock is None or self._held:
            self._held = bytes(self._held) + data if self._held else data
            return len(self._held)
        try:
            sent = os.write(self._sock.fileno(), data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(f"send failed: {exc}") from exc
        if sent < len(data):
            self._held = memoryview(data)[sent:]
        return len(data) - sent

    @property
    def held(self) -> int:
        return len(self._held)

    async def flush(self) -> None:
        """Send what `try_send` left, if anything."""
        if not self._held:
            await trio.lowlevel.checkpoint()
            return
        held, self._held = self._held, b""
        await self._stream.send_all(held)

    async def send_message(self, message: bytes) -> None:
        if self._held:
            await self.flush()
        await self._stream.send_all(_length_prefixed(message))

    async def get_message(self) -> bytes:
        # Before taking a message, never after: a cancel then would lose one already buffered.
        # No schedule point for a buffered one: the read that buffered it was one.
        await trio.lowlevel.checkpoint_if_cancelled()
        while (message := self._buffer.next_message()) is None:
            data = await self._stream.receive_some(256 * 1024)
            if not data:
                if self._buffer.pending:
                    raise trio.BrokenResourceError("stream ended in the middle of a message")
                raise trio.EndOfChannel
            self._buffer.feed(data)
        return message  # noqa: ASYNC910

    async def aclose(self) -> None:
        self._held = b""
        await self._stream.aclose()

"""The links a tunnel runs over: a WebSocket, or any byte stream with length-prefixed messages."""

from __future__ import annotations

from typing import Any, Protocol

import trio
import trio_websocket

from .frames import ProtocolError
from .messages import MessageBuffer
from .messages import frame_message as _length_prefixed

__all__ = ["MessageLink", "StreamLink", "WebSocketLink"]


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

"""The server's end of an agent's tunnel link: quart's WebSocket as a `MessageLink`, with a cap
on what hypercorn buffers of one incoming message.

Hypercorn assembles each incoming WebSocket message whole before the application sees it, up to
its `websocket_max_message_size` (16 MiB: one setting for every WebSocket it serves, the sandbox
terminals' included), and once over it keeps writing what follows of that message into the same
buffer until the peer answers the close. A tunnel message is never larger than
`frames.max_message_size` of what the server announced, so the tunnel's connection gets a buffer
that refuses more *before* storing it, stores nothing more of that message, closes the WebSocket
with 1009 (message too big) and ends the tunnel at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.protocol.ws_stream import FrameTooLargeError, WebsocketBuffer, WSStream
from wsproto.events import Message

from agentserver.tunnel import ProtocolError

log = logging.getLogger(__name__)

NORMAL_CLOSE = 1000  # ends the tunnel normally (the agent stopped, or the server shuts down)


class CappedBuffer(WebsocketBuffer):
    """hypercorn's message buffer, refusing any byte past `max_length` before storing it."""

    def __init__(self, max_length: int, on_overflow: Callable[[], None]) -> None:
        super().__init__(max_length)
        self._on_overflow = on_overflow
        self.overflowed = False

    def extend(self, event: Message) -> None:  # type: ignore[type-arg]
        if self.overflowed or self.length + len(event.data) > self.max_length:
            if not self.overflowed:
                self.overflowed = True
                self._on_overflow()
            raise FrameTooLargeError  # hypercorn answers with a 1009 close
        super().extend(event)


def hypercorn_stream(ws: Any) -> WSStream | None:
    """The hypercorn stream behind a quart-trio WebSocket, or None if it is not reachable.

    quart keeps the ASGI `send` as the first argument of its `_send` partial, and hypercorn's
    `send` is its `WSStream.app_send`; the middlewares pass it through unwrapped.
    """
    send = getattr(getattr(ws, "_send", None), "args", (None,))[0]
    stream = getattr(send, "__self__", None)
    return stream if isinstance(stream, WSStream) else None


class QuartLink:
    """Quart's (quart-trio) server-side WebSocket, accepted, as the tunnel's `MessageLink`.

    Quart ends the handler by cancelling it when the client disconnects, so `get_message`
    rarely sees an end of its own; the session's cleanup runs in shielded `finally` blocks.
    With `max_message`, a longer incoming message ends the link (`trio.BrokenResourceError`)
    as soon as its first byte over the limit arrives.
    """

    def __init__(self, ws: Any, max_message: int | None = None) -> None:
        self._ws = ws  # quart.wrappers.Websocket (untyped under quart-trio)
        self._closed = False
        self._receiving: trio.CancelScope | None = None
        self.too_large: str | None = None
        if max_message is not None:
            stream = hypercorn_stream(ws)
            if stream is None:
                log.warning("tunnel messages are not capped: hypercorn's stream is not reachable")
            else:
                stream.buffer = CappedBuffer(max_message, lambda: self._overflowed(max_message))

    def _overflowed(self, limit: int) -> None:
        self.too_large = f"the agent sent a message of more than {limit} bytes (closed with 1009)"
        if self._receiving is not None:
            self._receiving.cancel()

    async def send_message(self, message: bytes) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the tunnel link was closed")
        try:
            await self._ws.send(message)
        except (OSError, RuntimeError) as exc:  # the ASGI server refuses sends after a close
            raise trio.BrokenResourceError(f"websocket send failed: {exc}") from exc

    async def get_message(self) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the tunnel link was closed")
        if self.too_large is not None:
            await trio.lowlevel.checkpoint()  # found before awaiting anything
            raise trio.BrokenResourceError(self.too_large)
        message: object = None
        with trio.CancelScope() as self._receiving:
            try:
                message = await self._ws.receive()
            except trio.EndOfChannel:
                raise trio.EndOfChannel from None
            except (OSError, RuntimeError, trio.ClosedResourceError) as exc:
                raise trio.BrokenResourceError(f"websocket receive failed: {exc}") from exc
        self._receiving = None
        if self.too_large is not None:  # found while receiving (the receive was cancelled)
            raise trio.BrokenResourceError(self.too_large)
        if not isinstance(message, bytes):
            raise ProtocolError("text message on the tunnel")
        return message

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            await self._ws.close(NORMAL_CLOSE)
        except (OSError, RuntimeError):  # already gone (maybe refused before awaiting)
            await trio.lowlevel.checkpoint()

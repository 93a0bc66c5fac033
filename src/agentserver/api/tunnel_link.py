"""Quart's (quart-trio) server-side WebSocket as the tunnel's `MessageLink`.

Quart ends the handler by cancelling it when the client disconnects, so `get_message` rarely
sees an end of its own; the session's cleanup runs in shielded `finally` blocks instead.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from agentserver.tunnel.frames import ProtocolError

# Close codes that end the tunnel normally (the agent stopped, or the server shuts down).
NORMAL_CLOSE = 1000


class QuartLink:
    """Binary messages over a Quart websocket (already accepted)."""

    def __init__(self, ws: Any) -> None:  # quart.wrappers.Websocket (untyped under quart-trio)
        self._ws = ws
        self._closed = False

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
        try:
            message = await self._ws.receive()
        except trio.EndOfChannel:
            raise trio.EndOfChannel from None
        except (OSError, RuntimeError, trio.ClosedResourceError) as exc:
            raise trio.BrokenResourceError(f"websocket receive failed: {exc}") from exc
        if not isinstance(message, bytes):
            raise ProtocolError("text message on the tunnel")
        return message

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, RuntimeError):  # already gone
            await self._ws.close(NORMAL_CLOSE)

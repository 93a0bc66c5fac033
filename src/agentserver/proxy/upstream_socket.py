"""A WebSocket to a sandbox's agent, as the proxy sees it: the `UpstreamSocket` protocol, its
closed-connection error, and the TCP implementation over trio-websocket.

Both implementations (this one and the tunnel's, proxy/tunnel_upstream.py) raise `UpstreamClosed`,
so the relay (proxy/websocket.py) never sees a library's own error.
"""

from __future__ import annotations

from typing import Protocol

import trio_websocket


class UpstreamClosed(Exception):
    """The WebSocket to the agent is closed: `code` as the agent sent it (1005: none, 1006: the
    connection broke) and its reason."""

    def __init__(self, code: int | None, reason: str | None = None) -> None:
        super().__init__(f"the agent's WebSocket closed ({code}): {reason or ''}")
        self.code, self.reason = code, reason


class UpstreamSocket(Protocol):
    """An open WebSocket to the agent.

    `get_message` and `send_message` raise `UpstreamClosed` once it is closed.
    """

    @property
    def subprotocol(self) -> str | None: ...

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes) -> None: ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


class TcpSocket:
    """A trio-websocket connection to the agent as an `UpstreamSocket` (its close as ours)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    @property
    def subprotocol(self) -> str | None:
        return self._ws.subprotocol

    async def get_message(self) -> str | bytes:
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            raise _closed(closed) from None

    async def send_message(self, message: str | bytes) -> None:
        try:
            await self._ws.send_message(message)
        except trio_websocket.ConnectionClosed as closed:
            raise _closed(closed) from None

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        await self._ws.aclose(code, reason)


def _closed(closed: trio_websocket.ConnectionClosed) -> UpstreamClosed:
    reason = closed.reason
    return UpstreamClosed(reason.code, reason.reason) if reason else UpstreamClosed(None)

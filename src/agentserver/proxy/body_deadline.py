"""The request body's idle deadline: a client that stops sending its body is cut off.

A body trickled a byte at a time would otherwise hold the proxy's connection (and the agent's)
for as long as the client likes. While a request body is incomplete, each ASGI message must
arrive within the deadline; if none does, the request reads as abandoned (`http.disconnect`,
so the upstream exchange ends and its connection closes) and `expired` is set so the proxy
can answer 408. Both server paths (proxy/exchange.py and hypercorn) go through it.
"""

from __future__ import annotations

from typing import Any

import trio

from agentserver.proxy.http import Receive


class BodyDeadline:
    """Wraps one request's ASGI `receive`: the body's next bytes must come within `seconds`."""

    __slots__ = ("_more", "_receive", "_seconds", "expired")

    def __init__(self, receive: Receive, seconds: float) -> None:
        self._receive = receive
        self._seconds = seconds
        self._more = True
        self.expired = False

    async def receive(self) -> dict[str, Any]:
        if not self._more:  # the body is complete: waiting for a disconnect has no deadline
            return await self._receive()
        with trio.move_on_after(self._seconds):
            message = await self._receive()
            self._more = message["type"] == "http.request" and bool(message.get("more_body"))
            return message
        self.expired = True
        self._more = False
        return {"type": "http.disconnect"}

"""A local origin for the agent's client tests (agent/local_http.py): it answers every request
head with a fixed answer, counting connections and requests; and reading a whole response."""

from __future__ import annotations

import contextlib

import trio

from agentserver.agent.local_http import Response


class Origin:
    """A local server answering every request head with `answer` (then closing if `close`),
    counting the connections it accepted and the requests it read."""

    def __init__(self, answer: bytes, *, close: bool = False) -> None:
        self.answer, self.close = answer, close
        self.connections = 0
        self.requests: list[bytes] = []

    async def serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        with contextlib.suppress(trio.BrokenResourceError):  # a client that broke off
            await self._answer(stream)

    async def _answer(self, stream: trio.SocketStream) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                more = await stream.receive_some(65536)
                if not more:
                    return
                data += more
            head, data = data.split(b"\r\n\r\n", 1)
            self.requests.append(head)
            await stream.send_all(self.answer)
            if self.close:
                await stream.aclose()
                return


async def read_body(response: Response) -> bytes:
    """The whole body of `response`, which is then closed."""
    body, done = await response.buffered()
    if not done:
        async for piece in response.chunks():
            body += piece
    response.aclose_now()
    return body

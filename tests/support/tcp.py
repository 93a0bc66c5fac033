"""Loopback TCP connections for tests that need real sockets on both ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """Two ends of one loopback TCP connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        connecting: list[trio.SocketStream] = []

        async def connect() -> None:
            connecting.append(await trio.open_tcp_stream("127.0.0.1", port))

        nursery.start_soon(connect)
        accepted = await listeners[0].accept()
    await listeners[0].aclose()
    async with connecting[0], accepted:
        yield connecting[0], accepted


async def read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, "stream ended early"
        data += chunk
    return data


async def serve_on_free_port(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
) -> None:
    """Serve `handler` on `host` at `port` (a free one by default; reported to the starter)
    until cancelled."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])

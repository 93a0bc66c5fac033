"""Connections handed to hypercorn: the bytes already read, idle tracking, and close fixes.

Hypercorn (0.18) ends each response from the app's own task: it closes the stream, which
hands the app an `http.disconnect`, and then, still in that task, either re-arms the
keep-alive timer (`Updated(idle=True)`) or closes the connection (after `Connection: close`, or
a response sent before its request's body arrived). Quart cancels its request's task as soon as
it sees that `http.disconnect`, so both were cut off at their first checkpoint: idle
keep-alive connections on the main host were never timed out, and a connection that had to
close stayed open with no stream, so its next request was never answered and it never closed.
`HandedOver` runs those two steps shielded (each is a few non-blocking calls). A response that
starts before its request body has all arrived is marked `Connection: close`
(`CloseUnlessBodyRead`), so the client knows the connection ends with it instead of sending its
next request into it. (Related upstream reports: pgjones/hypercorn#106, #210.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.events import Event, RawData, Updated
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState

HANDED_OVER_READ = 256 * 1024
CLOSE_DEADLINE = 1.0  # for a few non-blocking calls; bounds a shielded wait
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


class Replayed:
    """A socket stream that first yields bytes already read from it (for hypercorn).

    It deliberately has no `do_handshake`: hypercorn treats it as plain TCP and uses `.socket`.
    """

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        # Hypercorn asks for 64 KiB; tunnel uploads and downloads arrive here in bulk, and
        # fewer, larger reads cost less.
        return await self._stream.receive_some(max(max_bytes or 0, HANDED_OVER_READ))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


class ClientContext:
    """The worker context as one connection sees it: its sleeps (hypercorn's WebSocket ping
    loop, which checks whether its stream closed only between pings) end as soon as the
    client has gone, so a closed WebSocket's connection task ends then and not up to a ping
    interval (20 s) later; a drain waits for every connection's task."""

    def __init__(self, context: WorkerContext, gone: trio.Event) -> None:
        self._context = context
        self._gone = gone

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def sleep(self, wait: float) -> None:
        with trio.move_on_after(wait):
            await self._gone.wait()


class HandedOver(TCPServer):
    """Hypercorn's connection server, telling `on_idle` when it waits for a request."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: ConnectionState,
        stream: Replayed,
        on_idle: Callable[[bool], None],
    ) -> None:
        self._gone = trio.Event()
        per_client = cast(WorkerContext, ClientContext(context, self._gone))
        # hypercorn probes the stream for SSL by attribute; a Replayed is plain TCP to it.
        super().__init__(app, config, per_client, state, stream)  # type: ignore[arg-type]
        self._on_idle = on_idle

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):  # hypercorn shields the write itself
            await super().protocol_send(event)
            return
        if isinstance(event, Updated):
            self._on_idle(event.idle)
        # Arming the keep-alive timer and closing are short and must not be cut off by the
        # cancellation of the app task that asks for them (see the module docstring).
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_DEADLINE):
            await super().protocol_send(event)

    async def _close(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_DEADLINE):
            await super()._close()

    async def _read_data(self) -> None:
        await super()._read_data()
        self._gone.set()
        # The client is gone: the keep-alive timer has nothing left to time. Left running (it
        # ends only at the keep-alive limit or hypercorn's `terminated`), it kept this
        # connection's task alive for up to 30 s after the client left, and a drain waits for
        # every connection's task.
        await self.idle_task.stop()


def _may_have_body(scope: dict[str, Any]) -> bool:
    for name, value in scope.get("headers", ()):
        if name.lower() in _BODY_HEADERS and value.strip() not in (b"0", b""):
            return True
    return False


class CloseUnlessBodyRead:
    """ASGI wrapper (hypercorn's calling convention): a response that starts before its
    request's body has all been received says `Connection: close`, and the connection ends
    with it (hypercorn closes it: the unread rest of the body cannot be framed away)."""

    def __init__(self, app: AppWrapper) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Any,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        if scope["type"] != "http" or not _may_have_body(scope):
            await self.app(scope, receive, send, sync_spawn, call_soon)
            return
        received = False

        async def receive_tracked() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                received = True
            return message

        async def send_marked(message: Any) -> None:
            if message["type"] == "http.response.start" and not received:
                message = _closing(message)
            await send(message)

        await self.app(scope, receive_tracked, send_marked, sync_spawn, call_soon)


def _closing(message: Any) -> Any:
    kept = [(n, v) for n, v in message.get("headers", ()) if n.lower() != b"connection"]
    return {**message, "headers": [*kept, (b"connection", b"close")]}


class CloseWhileDraining:
    """ASGI wrapper (hypercorn's calling convention): while the server drains, every response
    says `Connection: close` and hypercorn ends the connection after it, so the client sends
    its next request on a new connection, which the load balancer gives another replica."""

    def __init__(self, app: AppWrapper, draining: Callable[[], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(
        self,
        scope: Any,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send, sync_spawn, call_soon)
            return

        async def send_marked(message: Any) -> None:
            if message["type"] == "http.response.start" and self.draining():
                message = _closing(message)
            await send(message)

        await self.app(scope, receive, send_marked, sync_spawn, call_soon)

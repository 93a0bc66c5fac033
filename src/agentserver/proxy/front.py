"""The listener: plain requests for sandbox hosts on a small HTTP/1.1 server, the rest on hypercorn.

Hypercorn spends about 1 ms of CPU per request on this class of machine (its h11 protocol,
task group and events; bench/bench_proxy.py prints that "floor" every run), more than the
proxying itself, and sandbox traffic is most of what the server carries. So every connection
starts here: the first request head is read and, when it is a plain HTTP/1.1 request for
`oc-…`/`claw-…` (proxy/http1.py), it is served by `exchange.Exchange`, which hands the
subdomain proxy an ASGI scope over the raw socket. Anything else (the main site, WebSocket
upgrades, chunked uploads, malformed heads) continues on hypercorn with the bytes already
read, for the rest of that connection's life.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState

from agentserver.proxy.exchange import Client, Exchange
from agentserver.proxy.http1 import MAX_HEAD, head_end, parse_request_head
from agentserver.proxy.routing import Target, route
from agentserver.proxy.subdomain import SubdomainProxy

log = logging.getLogger(__name__)
ROUTES_REMEMBERED = 4096
HANDED_OVER_READ = 256 * 1024


class _Replayed:
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


class Front:
    """Serves each accepted connection: the fast path while it can, then hypercorn."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: LifespanState,
        proxy: SubdomainProxy | None,
    ) -> None:
        self.app, self.config, self.context, self.state = app, config, context, state
        self.proxy = proxy
        self._idle: set[trio.CancelScope] = set()
        self._routes: dict[bytes, Target | None] = {}
        self._draining = False

    def drain(self) -> None:
        """Shutdown: connections waiting for their next request close now; others after it."""
        self._draining = True
        for scope in self._idle:
            scope.cancel()

    async def handle(self, stream: trio.SocketStream) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        handed_over = False
        try:
            client = Client(stream)
        except OSError:  # gone before we looked
            await stream.aclose()
            return
        try:
            # One scope for the connection's life: its deadline is the keep-alive limit while
            # it waits for a request, none while one is served (cheaper than a scope each).
            with trio.CancelScope() as idle:
                while not self._draining:
                    end = await self._next_head(client, idle)
                    if end is None:
                        return
                    request = parse_request_head(bytes(client.buffer[:end])) if end > 0 else None
                    target = self._route(request.host) if request is not None else None
                    if request is None or target is None or self.proxy is None:
                        handed_over = True
                        await self._hand_over(client)
                        return
                    del client.buffer[:end]
                    if not await Exchange(client, request, target, self.proxy).run():
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            if not handed_over:
                client.close()
                await trio.lowlevel.checkpoint_if_cancelled()

    def _route(self, host: bytes) -> Target | None:
        """The sandbox a Host names (remembered: a browser sends the same few hosts)."""
        if self.proxy is None:
            return None
        try:
            return self._routes[host]
        except KeyError:
            if len(self._routes) >= ROUTES_REMEMBERED:
                self._routes.clear()
            target = self._routes[host] = route(host, self.proxy.settings.domain)
            return target

    async def _next_head(self, client: Client, idle: trio.CancelScope) -> int | None:
        """Index past the next head in the buffer; 0 for "not ours to parse" (too large);
        None when the client left. Cancelled when idle too long or the server drains."""
        await trio.lowlevel.checkpoint_if_cancelled()
        end = head_end(client.buffer)
        if end >= 0:
            return end
        # The whole head must arrive within the keep-alive limit (no trickling a byte a minute).
        idle.deadline = trio.current_time() + self.config.keep_alive_timeout
        self._idle.add(idle)
        try:
            while end < 0:
                if len(client.buffer) > MAX_HEAD:
                    return 0
                searched = len(client.buffer)
                if not await client.fill():
                    return None
                end = head_end(client.buffer, searched)
            return end
        finally:
            self._idle.discard(idle)
            idle.deadline = math.inf

    async def _hand_over(self, client: Client) -> None:
        stream = _Replayed(client.stream, bytes(client.buffer))
        server = TCPServer(
            self.app,
            self.config,
            self.context,
            ConnectionState(self.state.copy()),
            stream,  # type: ignore[arg-type]  # hypercorn probes it for SSL by attribute
        )
        try:
            await server.run()
        except Exception as exc:
            # Hypercorn's h11 protocol can fail on what a client sends: bytes after a request
            # that ends its connection make it answer 400 while the app's answer or its own
            # close is being written (BusyResourceError). That ends this connection only.
            log.info("a handed-over connection from %s ended on an error: %r", client.peer, exc)
            client.close()


async def serve(
    app: AppWrapper,
    config: Config,
    sock: socket.socket,
    proxy: SubdomainProxy | None,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on the listening `sock` until `shutdown_trigger` returns, then drain
    (hypercorn's own worker loop, with `Front` in place of its connection handler)."""
    config.set_statsd_logger_class(StatsdLogger)
    state: LifespanState = {}
    lifespan = Lifespan(app, config, state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        front = Front(app, config, context, state, proxy)
        async with trio.open_nursery() as connections:
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            async with trio.open_nursery() as accepting:
                accepting.start_soon(
                    partial(trio.serve_listeners, handler_nursery=connections),
                    front.handle,
                    [listener],
                )
                task_status.started()
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            await context.terminated.set()
            front.drain()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()

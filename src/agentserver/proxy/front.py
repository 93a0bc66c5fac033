"""The listener: plain requests for sandbox hosts on a small HTTP/1.1 server, the rest on hypercorn.

Hypercorn spends about 1 ms of CPU per request on this class of machine (its h11 protocol,
task group and events; bench/bench_proxy.py prints that "floor" every run), more than the
proxying itself, and sandbox traffic is most of what the server carries. So every connection
starts here: the first request head is read and, when it is a plain HTTP/1.1 request for
`oc-…`/`claw-…` (agentserver/http1.py), it is served by `exchange.Exchange`, which hands the
subdomain proxy an ASGI scope over the raw socket. So is a plain request on the main host for
a path a `MainSite` claims (the LLM proxy's `/proxy/anthropic/*`, wired in serve.py: this
package does not import llm). So is an agent's tunnel upgrade on the main host, on our own
WebSocket (proxy/tunnel_door.py). Anything else (the rest of the main site, WebSocket upgrades,
chunked uploads, malformed heads) continues on hypercorn with the bytes already read, for the
rest of that connection's life (proxy/handover.py).

Both paths share one budget (proxy/connections.py): a cap on open connections, where the one
idle longest makes room for a newcomer, and one keep-alive limit for waiting for a request
and its whole head. A head with a bare LF is answered 400 here, before either path.

Shutdown is a drain (`serve`): the listener keeps accepting (a load balancer may still send a
few connections, and `/readyz` must answer 503), every response says `Connection: close`, a
connection waiting for its next request has `IDLE_LINGER` to send it, and serving ends when the
last connection closes or the grace period (`--shutdown-grace`) is over, whichever is first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState

from agentserver.http1 import (
    MAX_HEAD,
    RequestHead,
    has_bare_lf,
    head_end,
    parse_request_head,
)
from agentserver.proxy.connections import Connections, default_cap
from agentserver.proxy.exchange import Client, Exchange, Handler
from agentserver.proxy.handover import (
    CloseUnlessBodyRead,
    CloseWhileDraining,
    HandedOver,
    Replayed,
)
from agentserver.proxy.routing import Route, resolve, route
from agentserver.proxy.subdomain import SubdomainProxy
from agentserver.proxy.tunnel_door import TunnelDoor

log = logging.getLogger(__name__)
ROUTES_REMEMBERED = 4096
REFUSAL_WRITE = 1.0
# Draining: how long a connection waiting for its next request may still send one (answered
# with `Connection: close`) before it is closed. A client whose request is already on its way
# must not have it cut off; one that is merely keeping the connection warm goes elsewhere.
IDLE_LINGER = 1.0
SWEEP_EVERY = 1.0  # at most: a connection idle too long closes this much later at worst
_BUSY_BODY = b'{"error": {"code": "busy", "message": "too many open connections; retry shortly"}}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s"
    % (len(_BUSY_BODY), _BUSY_BODY)
)
_BARE_LF_BODY = b'{"error": {"code": "bad_request", "message": "lines must end with CRLF"}}'
BARE_LF = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BARE_LF_BODY), _BARE_LF_BODY)
)
MALFORMED = -1


@dataclass(frozen=True, slots=True)
class MainSite:
    """Requests on the main host that the front door serves itself: those whose decoded path
    (and Host) `claims` accepts go to `handler`, the rest of the main site to hypercorn.
    `handler` sends its first body bytes right after its head (the LLM proxy does), so a
    chunked answer's head waits for them and leaves in the same write, as on hypercorn."""

    claims: Callable[[str, bytes], bool]
    handler: Handler


# Who serves a request on the fast path, and whether its chunked head waits for its body.
Serving = tuple[Handler, bool]


class Front:
    """Serves each accepted connection: the fast path while it can, then hypercorn."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: LifespanState,
        proxy: SubdomainProxy | None,
        connections: Connections,
        main_site: MainSite | None = None,
    ) -> None:
        self.app, self.config, self.context, self.state = app, config, context, state
        self.handed_over_app = CloseUnlessBodyRead(CloseWhileDraining(app, self.draining))
        self.proxy = proxy
        self.main_site = main_site
        self.connections = connections
        self._routes: dict[bytes, Route | None] = {}
        # Agents' tunnel upgrades on the main host (proxy/tunnel_door.py).
        self.tunnel_door = None if proxy is None else TunnelDoor(proxy)
        self._draining = False
        # Set once draining and no connection is left open.
        self.drained = trio.Event()

    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """Shutdown begins: every response from now on says `Connection: close` and ends its
        connection; connections waiting for a request may still send one for `IDLE_LINGER`
        (`close_idle` ends them after)."""
        self._draining = True
        self._check_drained()

    def close_idle(self) -> None:
        """Draining, after the linger: connections still waiting for a request close now."""
        self.connections.close_idle()
        self._check_drained()

    async def sweep_idle(self) -> None:
        """Close the connections that waited for a request (or for the rest of its head)
        longer than the keep-alive limit: one task for all, looking a few times per limit."""
        limit = self.config.keep_alive_timeout
        while True:
            await trio.sleep(min(SWEEP_EVERY, limit / 4))
            if self.connections.close_idle_since(trio.current_time() - limit):
                self._check_drained()

    def _check_drained(self) -> None:
        if self._draining and self.connections.open == 0:
            self.drained.set()

    async def handle(self, stream: trio.SocketStream) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        key = self.connections.admit()
        if key is None:  # over the cap, every connection busy
            await _answer_and_close(stream, BUSY)
            return
        try:
            await self._serve(stream, key)
        finally:
            self.connections.release(key)
            self._check_drained()

    async def _serve(self, stream: trio.SocketStream, key: int) -> None:
        try:
            client = Client(stream)
        except OSError:  # gone before we looked
            await stream.aclose()
            return
        try:
            # One scope for the connection's life: its deadline is the keep-alive limit while
            # it waits for a request, none while one is served (cheaper than a scope each).
            # A connection accepted while draining is served too (its response ends it).
            with trio.CancelScope() as idle:
                while True:
                    end = await self._next_head(client, idle, key)
                    if end is None:
                        return
                    if end == MALFORMED:
                        await _answer_and_close(stream, BARE_LF)
                        return
                    request = parse_request_head(bytes(client.buffer[:end])) if end > 0 else None
                    if request is None and self.tunnel_door is not None and end > 0:
                        tunnel = self.tunnel_door.upgrade(bytes(client.buffer[:end]))
                        if tunnel is not None:  # an agent's tunnel: our own WebSocket
                            del client.buffer[:end]
                            await self.tunnel_door.serve(client, tunnel)
                            return
                    serving = self._serving(request) if request is not None else None
                    if request is None or serving is None:
                        await self._hand_over(client, key)
                        return
                    del client.buffer[:end]
                    handler, hold_head = serving
                    exchange = Exchange(
                        client,
                        request,
                        handler,
                        idle.cancel,
                        closing=self._draining,
                        hold_head=hold_head,
                    )
                    if not await exchange.run():
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            # Synchronous, so it also happens in a cancelled scope, whoever served the
            # connection (hypercorn's own close may have been cut short).
            client.close()
            await trio.lowlevel.checkpoint_if_cancelled()

    def _serving(self, request: RequestHead) -> Serving | None:
        """Who serves `request` here: the subdomain proxy (a sandbox host), the main site's
        handler (a path it claims), or nobody (None: hypercorn does)."""
        if self.proxy is None:
            return None
        target = self._route(request.host)
        if target is not None:
            return partial(self.proxy.handle, target), False
        handler = self._main_site(request)
        return None if handler is None else (handler, True)

    def _main_site(self, request: RequestHead) -> Handler | None:
        """The main site's handler for a path it claims on the main host (decided as the
        subdomain proxy decides it for hypercorn's requests: an unknown name under the base
        domain is a 404 there, never the main site)."""
        site, proxy = self.main_site, self.proxy
        if site is None or proxy is None or not site.claims(request.decoded_path(), request.host):
            return None
        if resolve(request.host, proxy.settings.domain, proxy.main_names) is not None:
            return None
        return site.handler

    def _route(self, host: bytes) -> Route | None:
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

    async def _next_head(self, client: Client, idle: trio.CancelScope, key: int) -> int | None:
        """Index past the next head in the buffer; 0 for "not ours to parse" (too large);
        MALFORMED for a line ended by a bare LF; None when the client left. Cancelled when
        idle too long, when the server drains or when its slot is needed for a newcomer."""
        await trio.lowlevel.checkpoint_if_cancelled()
        end = head_end(client.buffer)
        if end >= 0:
            return MALFORMED if has_bare_lf(client.buffer, end) else end
        if has_bare_lf(client.buffer, len(client.buffer)):  # the start of a pipelined head
            return MALFORMED
        # The whole head must arrive within the keep-alive limit (no trickling a byte a minute):
        # `sweep_idle` closes connections idle longer, so a request costs no deadline of its
        # own (setting one and lifting it was a tenth of a request's work here). While
        # draining, within the linger: a deadline then.
        if self._draining:
            idle.deadline = trio.current_time() + IDLE_LINGER
        self.connections.idle(key, idle.cancel, trio.current_time())
        try:
            while end < 0:
                if len(client.buffer) > MAX_HEAD:
                    return 0
                searched = len(client.buffer)
                if not await client.fill():
                    return None
                end = head_end(client.buffer, searched)
                if has_bare_lf(client.buffer, len(client.buffer) if end < 0 else end, searched):
                    return MALFORMED
            return end
        finally:
            self.connections.busy(key)
            if idle.deadline != math.inf:
                idle.deadline = math.inf

    async def _hand_over(self, client: Client, key: int) -> None:
        def on_idle(waiting: bool) -> None:
            if waiting:
                self.connections.idle(key, client.close, trio.current_time())
            else:
                self.connections.busy(key)

        server = HandedOver(
            self.handed_over_app,
            self.config,
            self.context,
            ConnectionState(self.state.copy()),
            Replayed(client.stream, bytes(client.buffer)),
            on_idle,
        )
        try:
            await server.run()
        except Exception as exc:
            # Hypercorn's h11 protocol can fail on what a client sends: bytes after a request
            # that ends its connection make it answer 400 while the app's answer or its own
            # close is being written (BusyResourceError). That ends this connection only.
            log.info("a handed-over connection from %s ended on an error: %r", client.peer, exc)
            client.close()
            await trio.lowlevel.checkpoint()


async def _answer_and_close(stream: trio.SocketStream, response: bytes) -> None:
    """A short canned response, then close without reading further."""
    with trio.move_on_after(REFUSAL_WRITE):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.send_all(response)
            await stream.send_eof()
    stream.socket.close()  # synchronous: also when cancelled
    await trio.lowlevel.checkpoint_if_cancelled()


async def serve(
    app: AppWrapper,
    config: Config,
    sock: socket.socket,
    proxy: SubdomainProxy | None,
    *,
    main_site: MainSite | None = None,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    max_connections: int = 0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on the listening `sock` until `shutdown_trigger` returns, then drain for
    at most `config.graceful_timeout` (see the module docstring; hypercorn's own worker loop,
    with `Front` in place of its connection handler). At most `max_connections` are open at
    once (0: sized from the open-files limit). `main_site` names the main host's requests
    served here too, as by `app`."""
    config.set_statsd_logger_class(StatsdLogger)
    state: LifespanState = {}
    lifespan = Lifespan(app, config, state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        cap = max_connections or default_cap()
        log.info("serving at most %d connections at once", cap)
        front = Front(app, config, context, state, proxy, Connections(cap), main_site)
        async with trio.open_nursery() as connections:
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            async with trio.open_nursery() as accepting:
                accepting.start_soon(
                    partial(trio.serve_listeners, handler_nursery=connections),
                    front.handle,
                    [listener],
                )
                accepting.start_soon(front.sweep_idle)
                task_status.started()
                await shutdown_trigger()
                front.drain()
                with trio.move_on_after(config.graceful_timeout):
                    with trio.move_on_after(IDLE_LINGER):
                        await front.drained.wait()
                    front.close_idle()
                    await front.drained.wait()
                accepting.cancel_scope.cancel()
            # Connections that arrive from now on are refused (the balancer tries another
            # replica) instead of waiting unanswered in the backlog until the process exits.
            await listener.aclose()
            await context.terminated.set()
            connections.cancel_scope.cancel()  # what is left when the grace period is over
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()

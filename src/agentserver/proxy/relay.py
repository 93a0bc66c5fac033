"""The relay between replicas: a local sandbox's requests on a replica that does not hold its
tunnel are streamed to the replica that does (its owner, cluster/owners.py).

On the first replica the request is checked as always (cookie, role, Origin, guest view) and
its outgoing headers made (ours stripped, the agent's credentials in); then, with no tunnel
here, the owner's relay address becomes just another upstream: the pool's plain HTTP/1.1 (a
sized download is spliced kernel to kernel on the way back) or a WebSocket, with one header
added, the relay credential (cluster/relay_auth.py): who asked and which owner and generation it
expects. The owner verifies it before anything else, strips it, and sends the request into the
agent's tunnel as if it had come from a browser of its own; it checks no cookie (the first
replica did) and refuses any request that carries our header without a valid credential.

An owner that no longer holds the tunnel (a newer one elsewhere, or it restarted) answers 421
with `x-agentserver-relay-stale` before reading the body, and an owner that is gone refuses the
connection: either way the first replica re-reads ownership and tries once more (a request
body is kept up to 1 MiB for that; a POST is sent twice only when the first owner provably never
forwarded it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import trio
import trio_websocket

from agentserver.cluster import Cluster
from agentserver.cluster.owners import Owner, Owners
from agentserver.cluster.relay_auth import (
    HEADER,
    STALE_HEADER,
    Nonces,
    Relayed,
    RelayRefused,
    carries_relay,
    sign,
    strip,
    verify,
)
from agentserver.errors import SandboxUnreachable
from agentserver.http_headers import HOP_BY_HOP
from agentserver.proxy import pages
from agentserver.proxy.headers import WEBSOCKET_HANDSHAKE, Headers, connection_tokens, header
from agentserver.proxy.http import Receive, Scope, Send, proxy_http, target_of
from agentserver.proxy.routing import Preview, Route
from agentserver.proxy.sign_in import respond
from agentserver.proxy.tunnel_upstream import PortNotShared, TunnelMoving, TunnelUpstream
from agentserver.proxy.upstream import (
    IDEMPOTENT,
    REPLAY_LIMIT,
    WS_MAX_MESSAGE,
    Answer,
    NotListening,
    Pool,
    Upstream,
    UpstreamResponse,
    UpstreamTimeout,
)
from agentserver.proxy.upstream_socket import TcpSocket, UpstreamSocket
from agentserver.proxy.websocket import proxy_websocket
from agentserver.tunnel import Hub, Tunnel

log = logging.getLogger(__name__)

__all__ = ["REFUSED", "STALE", "Relay", "RelayUpstream", "carries_relay"]

REFUSED = pages.Page(
    403,
    "relay_refused",
    "Not allowed",
    "This address takes relayed requests from the server's other replicas only.",
)
STALE = pages.Page(
    421,
    "relay_stale",
    "Not here",
    "This server no longer holds the sandbox's tunnel.",
)
_READS = frozenset({"GET", "HEAD"})
# How long a request waits for a moving tunnel's agent to connect again (a drain; agents
# reconnect at once, so this is only reached when one does not come back).
MOVE_WAIT = 10.0
_OWNER_DROPS = HOP_BY_HOP | {b"host"}


class _Retry(Exception):
    """The owner asked was the wrong one (stale, or gone before it saw the request)."""


class _Held:
    """The request body, kept (up to REPLAY_LIMIT) so one retry can send it again."""

    def __init__(self, body: AsyncIterable[bytes]) -> None:
        self._source = aiter(body)
        self._kept: list[bytes] | None = []
        self._size = 0

    @property
    def replayable(self) -> bool:
        return self._kept is not None

    def __aiter__(self) -> _Held:
        return self

    async def __anext__(self) -> bytes:
        chunk = await anext(self._source)
        if self._kept is not None:
            self._size += len(chunk)
            if self._size > REPLAY_LIMIT:
                self._kept = None
            else:
                self._kept.append(chunk)
        return chunk

    async def replay(self) -> AsyncIterator[bytes]:
        """What was read, then the rest."""
        for chunk in list(self._kept or ()):
            await trio.lowlevel.checkpoint()
            yield chunk
        async for chunk in self._source:
            yield chunk


def owner_headers(headers: Headers, websocket: bool) -> Headers:
    """What the owner forwards into the tunnel of a relayed request's headers: the first
    replica's (already rewritten for the agent) without ours, the Host, hop-by-hop fields and,
    for a WebSocket, the handshake's own (the tunnel makes its own framing either way)."""
    drop = _OWNER_DROPS | connection_tokens(headers)
    if websocket:
        drop |= WEBSOCKET_HANDSHAKE
    return [(n, v) for n, v in strip(headers) if n not in drop]


class Relay:
    """This replica's side of relaying: to other owners, and for them."""

    def __init__(self, cluster: Cluster, owners: Owners, hub: Hub, pool: Pool) -> None:
        self.replica_id = cluster.replica_id
        self.key = cluster.relay_secret
        self.owners = owners
        self.hub = hub
        self.pool = pool
        self.nonces = Nonces()
        self.relayed = 0  # requests this replica relayed to owners (tests, benchmarks)
        self.served = 0  # relayed requests this replica served as the owner

    # -- the first replica's side ------------------------------------------------------------

    async def upstream(
        self,
        sandbox_id: str,
        host: bytes,
        user_id: str | None,
        read_only: bool,
        port: int | None,
        *,
        fresh: bool = False,
        retry: bool = True,
    ) -> Upstream | None:
        """The way to the sandbox's tunnel on whichever replica holds it (here, if it is
        here now), or None when no live replica does."""
        tunnel = self.hub.get(sandbox_id)
        if tunnel is not None:
            await trio.lowlevel.checkpoint_if_cancelled()
            return self.local(tunnel, sandbox_id, host, user_id, read_only, port)
        owner = await self.owners.lookup(sandbox_id, fresh=fresh)
        if (
            owner is not None
            and (owner.alive or owner.draining)
            and self._moving(sandbox_id, owner)
        ):
            # Its owner is draining and the agent is connecting elsewhere: wait for that.
            generation = owner.generation
            with trio.move_on_after(MOVE_WAIT):
                owner = await self.owners.moved(sandbox_id, generation)
            if owner is not None and owner.generation == generation:  # it did not come back
                owner = await self.owners.lookup(sandbox_id, fresh=True)
        if owner is not None and owner.replica_id == self.replica_id:
            # Claimed here (maybe just now, by the agent that moved): the tunnel may be a
            # moment from being registered.
            with trio.move_on_after(MOVE_WAIT):
                await self.hub.claim_settled(sandbox_id)
            tunnel = self.hub.get(sandbox_id)
            if tunnel is not None:
                return self.local(tunnel, sandbox_id, host, user_id, read_only, port)
        if owner is None or not owner.alive or owner.replica_id == self.replica_id:
            return None
        who = Relayed(owner.replica_id, owner.generation, user_id, read_only)
        return RelayUpstream(self, owner, sandbox_id, host, who, port, retry=retry)

    def local(
        self,
        tunnel: Tunnel,
        sandbox_id: str,
        host: bytes,
        user_id: str | None,
        read_only: bool,
        port: int | None,
    ) -> Upstream:
        """The sandbox's tunnel here; a request it takes after a drain sent it away (a race
        of a moment) goes where the tunnel moved."""

        async def moved() -> Upstream:
            found = await self.upstream(sandbox_id, host, user_id, read_only, port, fresh=True)
            if found is None:
                raise SandboxUnreachable("the local agent's tunnel moved, and nowhere")
            return found

        return MovableUpstream(TunnelUpstream(tunnel, port=port), moved)

    def _moving(self, sandbox_id: str, owner: Owner) -> bool:
        """Whether the sandbox's tunnel is moving away from its owner (a drain)."""
        if owner.replica_id == self.replica_id:  # its old tunnel here may be gone already
            return self.hub.draining or self.hub.moving(sandbox_id)
        return owner.draining

    # -- the owner's side ----------------------------------------------------------------------

    async def serve(
        self,
        target: Route,
        scope: Scope,
        receive: Receive,
        send: Send,
        credential: bytes,
        page: Callable[[Scope, Send, pages.Page], Awaitable[None]],
    ) -> None:
        """Serve a request another replica relayed here (`credential`: its relay header)."""
        websocket = scope["type"] == "websocket"
        method = "WEBSOCKET" if websocket else str(scope["method"])
        host = next((v for n, v in scope["headers"] if n == b"host"), b"")
        now = time.time()
        try:
            relayed, nonce = verify(self.key, credential, method, host, target_of(scope), now)
            if not self.nonces.first_use(nonce, now):
                raise RelayRefused("replayed")
            if relayed.read_only and method not in _READS:
                raise RelayRefused("a read-only member's request that is not a read")
        except RelayRefused as exc:
            client = (scope.get("client") or ("?",))[0]
            log.warning("relayed request from %s refused: %s", client, exc)
            await page(scope, send, REFUSED)
            return
        sandbox_id = target.sandbox_id
        tunnel = self.hub.get(sandbox_id)
        if tunnel is None and relayed.replica_id == self.replica_id:
            # The relayer read our claim; its tunnel may be a moment from being registered.
            with trio.move_on_after(MOVE_WAIT):
                await self.hub.claim_settled(sandbox_id)
            tunnel = self.hub.get(sandbox_id)
        if (
            tunnel is None
            or relayed.replica_id != self.replica_id
            or self.hub.generation(sandbox_id) != relayed.generation
        ):
            await _stale(scope, send)
            return
        port = target.port if isinstance(target, Preview) else None
        if port is not None and port not in self.hub.shared_ports(sandbox_id):
            await page(scope, send, pages.PORT_NOT_ALLOWED)
            return
        self.served += 1
        upstream = TunnelUpstream(tunnel, port=port)
        headers = owner_headers(scope["headers"], websocket)
        if websocket:
            target_text = target_of(scope).decode("latin-1")
            await proxy_websocket(scope, receive, send, upstream, target_text, headers, _nothing)
            return

        async def unreachable(exc: SandboxUnreachable) -> None:
            if isinstance(exc, TunnelMoving):  # sent away meanwhile: the relayer asks again
                await _stale(scope, send)
                return
            await page(scope, send, _page_of(exc, port))

        await proxy_http(scope, receive, send, upstream, headers, _nothing, unreachable)


class MovableUpstream:
    """A tunnel here that may be sent away (a drain) between choosing it and opening the
    request on it: then (`TunnelMoving`, nothing read or sent yet) the request goes to `moved()`."""

    def __init__(self, here: TunnelUpstream, moved: Callable[[], Awaitable[Upstream]]) -> None:
        self._here = here
        self._moved = moved

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: AsyncIterable[bytes],
        *,
        length: int | None,
        answer: Answer | None = None,
    ) -> UpstreamResponse:
        try:
            return await self._here.request(
                method, target, headers, body, length=length, answer=answer
            )
        except TunnelMoving:
            pass
        upstream = await self._moved()
        return await upstream.request(method, target, headers, body, length=length, answer=answer)

    @asynccontextmanager
    async def websocket(
        self, target: str, headers: Headers, subprotocols: Sequence[str]
    ) -> AsyncIterator[UpstreamSocket]:
        async with AsyncExitStack() as stack:
            try:
                socket: UpstreamSocket = await stack.enter_async_context(
                    self._here.websocket(target, headers, subprotocols)
                )
            except TunnelMoving:
                upstream = await self._moved()
                socket = await stack.enter_async_context(
                    upstream.websocket(target, headers, subprotocols)
                )
            yield socket


def _nothing() -> None:
    """Activity: the first replica records it."""


def _page_of(exc: SandboxUnreachable, port: int | None) -> pages.Page:
    if port is not None and isinstance(exc, NotListening | PortNotShared):
        found = pages.not_listening(port) if isinstance(exc, NotListening) else None
        return found or pages.PORT_NOT_ALLOWED
    if exc.status == pages.BUSY.status:
        return pages.BUSY
    return pages.TIMEOUT if isinstance(exc, UpstreamTimeout) else pages.UNREACHABLE


async def _stale(scope: Scope, send: Send) -> None:
    """421 and our marker, before any byte of a body was read: ask the database again."""
    body = pages.render_json(STALE)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (STALE_HEADER, b"1"),
    ]
    if scope["type"] != "websocket":
        await respond(send, STALE.status, headers, body)
    elif "websocket.http.response" in scope.get("extensions", {}):
        start = {"type": "websocket.http.response.start", "status": STALE.status}
        await send({**start, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 1013})


class RelayUpstream:
    """A local sandbox's tunnel on another replica, reached through that replica's relay
    address (satisfies proxy.upstream.Upstream); one retry after a stale or gone owner."""

    def __init__(
        self,
        relay: Relay,
        owner: Owner,
        sandbox_id: str,
        host: bytes,
        relayed: Relayed,
        port: int | None,
        *,
        retry: bool = True,
    ) -> None:
        self._relay = relay
        self._owner = owner
        self._sandbox_id = sandbox_id
        self._host = host
        self._relayed = relayed
        self._port = port
        self._retry = retry

    def _headers(self, headers: Headers, method: str, target: bytes) -> Headers:
        credential = sign(self._relay.key, self._relayed, method, self._host, target, time.time())
        kept = [(n, v) for n, v in strip(headers) if n != b"host"]
        return [(b"host", self._host), *kept, (HEADER, credential)]

    async def _again(self) -> Upstream:
        """After a stale answer: whoever holds the tunnel now (never a third try)."""
        self._relay.owners.forget(self._sandbox_id)
        await trio.lowlevel.checkpoint_if_cancelled()
        found = None
        if self._retry:
            relayed = self._relayed
            found = await self._relay.upstream(
                self._sandbox_id,
                self._host,
                relayed.user_id,
                relayed.read_only,
                self._port,
                fresh=True,
                retry=False,
            )
        if found is None:
            raise SandboxUnreachable("no replica holds the local agent's tunnel any more")
        log.info("relay of sandbox %s retried: its tunnel moved", self._sandbox_id)
        return found

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: AsyncIterable[bytes],
        *,
        length: int | None,
        answer: Answer | None = None,  # relayed over TCP: read by the request's task anyway
    ) -> UpstreamResponse:
        held = _Held(body)
        try:
            return await self._request(method, target, headers, held, length)
        except _Retry:
            if not held.replayable:
                raise SandboxUnreachable("the sandbox's tunnel moved mid-request") from None
        upstream = await self._again()
        return await upstream.request(method, target, headers, held.replay(), length=length)

    async def _request(
        self, method: bytes, target: bytes, headers: Headers, held: _Held, length: int | None
    ) -> UpstreamResponse:
        tcp = self._relay.pool.upstream(*self._owner.address)
        outgoing = self._headers(headers, method.decode("latin-1"), target)
        self._relay.relayed += 1
        try:
            response = await tcp.request(method, target, outgoing, held, length=length)
        except UpstreamTimeout:
            raise
        except SandboxUnreachable as exc:
            # Refused: the owner never saw it. Otherwise only a request safe to repeat.
            if self._retryable(method, exc):
                raise _Retry from None
            raise
        if response.status == STALE.status and header(response.headers, STALE_HEADER):
            await response.aclose()
            raise _Retry
        response.headers = strip(response.headers)
        return response

    def _retryable(self, method: bytes, exc: SandboxUnreachable) -> bool:
        return isinstance(exc, NotListening) or method in IDEMPOTENT

    @asynccontextmanager
    async def websocket(
        self, target: str, headers: Headers, subprotocols: Sequence[str]
    ) -> AsyncIterator[UpstreamSocket]:
        async with AsyncExitStack() as stack:
            try:
                socket = await stack.enter_async_context(
                    self._owner_socket(target, headers, subprotocols)
                )
            except _Retry:
                upstream = await self._again()
                socket = await stack.enter_async_context(
                    upstream.websocket(target, headers, subprotocols)
                )
            yield socket

    @asynccontextmanager
    async def _owner_socket(
        self, target: str, headers: Headers, subprotocols: Sequence[str]
    ) -> AsyncIterator[UpstreamSocket]:
        """A WebSocket to the owner, for the sandbox's host (trio-websocket's own connect
        would send the relay address as the Host)."""
        timeout = self._relay.pool.header_timeout
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_tcp_stream(*self._owner.address)
        except (OSError, trio.TooSlowError):
            raise _Retry from None
        extra = self._headers(headers, "WEBSOCKET", target.encode("latin-1"))
        extra = [(n, v) for n, v in extra if n != b"host"]
        self._relay.relayed += 1
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    with trio.fail_after(timeout):
                        ws = await trio_websocket.wrap_client_stream(
                            nursery,
                            stream,
                            self._host.decode("latin-1"),
                            target,
                            subprotocols=list(subprotocols),
                            extra_headers=extra,
                            max_message_size=WS_MAX_MESSAGE,
                            receive_buffer_size=256 * 1024,
                        )
                except (trio_websocket.HandshakeError, OSError, trio.TooSlowError) as exc:
                    failure = exc
                    nursery.cancel_scope.cancel()
                else:
                    try:
                        yield TcpSocket(ws)
                    finally:
                        await ws.aclose()
        except* trio_websocket.HandshakeError as refused:
            # The connection's reader task is what fails on a refusal (the handshake's own
            # wait is then cancelled with the nursery).
            failure = failure or refused.exceptions[0]
        if failure is not None:
            await stream.aclose()
            raise _refusal(failure)


def _refusal(failure: BaseException) -> Exception:
    """What a failed WebSocket handshake with the owner means: stale (retry) or unreachable."""
    if isinstance(failure, trio_websocket.ConnectionRejected):
        stale = any(n.lower() == STALE_HEADER for n, _ in failure.headers or ())
        if failure.status_code == STALE.status and stale:
            return _Retry()
        return SandboxUnreachable(f"the owner refused the WebSocket ({failure.status_code})")
    return SandboxUnreachable(f"the owner's WebSocket failed: {failure!r}")

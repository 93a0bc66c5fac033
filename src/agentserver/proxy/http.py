"""Proxying one HTTP request: bodies stream chunk by chunk both ways, SSE event by event.

No buffering and no timeout on a running response: only the wait for the response headers is
bounded (in upstream.py). A long response (event stream, download) watches for the browser
going away and then closes the upstream exchange, so no task or connection outlives it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

import trio

from agentserver.errors import SandboxUnreachable
from agentserver.framing import BadFraming
from agentserver.proxy.headers import Headers, header, response_headers
from agentserver.proxy.upstream import Upstream, UpstreamResponse

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# Responses up to this size, with a known length, are relayed without a disconnect watcher:
# their end is near anyway, and skipping the watcher keeps small requests cheap.
SMALL_RESPONSE = 1 << 20
ACTIVITY_INTERVAL = 20.0
# An ASGI extension of our fast path (proxy/exchange.py): the server moves a sized body from
# the agent's socket to the browser's itself, with splice(2).
SPLICE = "agentserver.splice"
# Another: a callable that ends the whole client connection (cancelling the request on it).
# A request that must end when its access is revoked uses it instead of a scope of its own.
CANCEL_CONNECTION = "agentserver.cancel_connection"
# Another: `write(piece) -> REFUSED | WRITTEN | HELD`, which sends one piece of a streamed
# (chunked) body to the browser at once, from whichever task has it, when nothing else is being
# written: so an event that arrives through a tunnel goes out from the task that read it, without
# waking the request's own task. HELD: part of it is still to go, and the next body message
# (an empty one will do) sends it first. The caller must never have a piece in hand that it
# has not sent yet (`TunnelStream.deliver_directly` ensures it).
DIRECT_BODY = "agentserver.direct_body"
REFUSED, WRITTEN, HELD = 0, 1, 2
# Another: `respond(status, headers, body) -> bool`, which sends a whole response (head and
# complete body) at once from whichever task has it, when no response has begun: so a small
# answer that arrives through a tunnel in one message goes out from the task that read it,
# before the request's own task is even scheduled. False: nothing was done (send it as usual).
# What the socket does not take at once is sent by the exchange before it ends.
RESPOND_NOW = "agentserver.respond_now"
# `RESPOND_NOW` with the framing policy of the sandbox host applied (subdomain.GuardedSend).
RespondNow = Callable[[int, Headers, bytes], bool]


class ClientGone(Exception):
    """The browser disconnected before its request body was complete."""


class RequestBody:
    """The browser's request body as an async iterator over ASGI `http.request` messages
    (`first`: one already received)."""

    def __init__(self, receive: Receive, first: dict[str, Any] | None = None) -> None:
        self._receive = receive
        self._first = first
        self._more = True

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        if not self._more:
            raise StopAsyncIteration
        if self._first is not None:
            message, self._first = self._first, None
            await trio.lowlevel.checkpoint()
        else:
            message = await self._receive()
        if message["type"] == "http.disconnect":
            self._more = False
            raise ClientGone
        self._more = bool(message.get("more_body", False))
        return bytes(message.get("body", b""))


class _NoBody:
    """An empty request body."""

    def __aiter__(self) -> _NoBody:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        raise StopAsyncIteration


def declared_length(scope: Scope) -> int | None:
    """How many body bytes the server delimited the request by: its Content-Length, 0 for no
    body, None when the body has no length (chunked over HTTP/1.1; over HTTP/2 and 3 a body
    may simply run to the stream's end). BadFraming when parties on the way could delimit it
    differently: a Content-Length with a Transfer-Encoding, or lengths that are not one number."""
    length: bytes | None = None
    coded = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit() or (length is not None and value != length):
                raise BadFraming("the request's Content-Length is not one valid number")
            length = value
        elif name == b"transfer-encoding":
            coded = True
    if length is not None:
        if coded:
            raise BadFraming("the request has both a Content-Length and a Transfer-Encoding")
        return int(length)
    return None if coded or scope.get("http_version") in ("2", "3") else 0


async def request_body(scope: Scope, receive: Receive) -> tuple[AsyncIterable[bytes], int | None]:
    """The body to send upstream and its length (None: unknown, sent chunked). Nothing at all
    for a request that declares none (most of them: GETs), which saves reading the empty body
    message through every layer. An HTTP/2 request without a length is looked at first: an
    empty one is no body, one that arrived whole has the length it has."""
    length = declared_length(scope)
    if length == 0:
        await trio.lowlevel.checkpoint_if_cancelled()
        return _NoBody(), 0
    if length is not None or scope.get("http_version") not in ("2", "3"):
        await trio.lowlevel.checkpoint_if_cancelled()
        return RequestBody(receive), length
    first = await receive()
    if first["type"] == "http.disconnect":
        raise ClientGone
    if first.get("more_body", False):
        return RequestBody(receive, first), None
    data = bytes(first.get("body", b""))
    return (RequestBody(receive, first), len(data)) if data else (_NoBody(), 0)


async def refuse_framing(send: Send, message: str) -> None:
    """A 400 for a request we will not forward; the connection closes after it (its next
    bytes cannot be trusted to start a request)."""
    body = json.dumps({"error": {"code": "bad_framing", "message": message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-store"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def target_of(scope: Scope) -> bytes:
    """The request target as the browser sent it: raw path and query string."""
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    return path + b"?" + query if query else path


def _is_small(response: UpstreamResponse) -> bool:
    length = header(response.headers, b"content-length")
    return length is not None and length.isdigit() and int(length) <= SMALL_RESPONSE


async def proxy_http(
    scope: Scope,
    receive: Receive,
    send: Send,
    upstream: Upstream,
    headers: Headers,
    on_activity: Callable[[], None],
    on_unreachable: Callable[[SandboxUnreachable], Awaitable[None]],
    respond_now: RespondNow | None = None,
) -> None:
    """Relay one request to `upstream` and its response back, streaming both bodies.

    With `respond_now`, a small response whose body is complete where it arrives (a tunnel's
    in one message) may be answered from there, before this task runs again."""
    answered = False

    def answer(status: int, upstream_headers: Headers, body: bytes) -> bool:
        nonlocal answered
        length = header(upstream_headers, b"content-length")
        if respond_now is None or len(body) > SMALL_RESPONSE or length != b"%d" % len(body):
            return False  # not sized exactly as it came: the usual path frames it
        answered = respond_now(status, response_headers(upstream_headers), body)
        return answered

    try:
        content, length = await request_body(scope, receive)
        response = await upstream.request(
            scope["method"].encode(),
            target_of(scope),
            headers,
            content,
            length=length,
            answer=answer if respond_now is not None else None,
        )
    except ClientGone:
        await trio.lowlevel.checkpoint()
        return
    except BadFraming as exc:  # never forwarded, or (BodyMismatch) never completed upstream
        await refuse_framing(send, exc.message)
        return
    except SandboxUnreachable as exc:
        await on_unreachable(exc)
        return
    if answered:  # the whole response went out already
        await response.aclose()
        on_activity()
        return
    start = {
        "type": "http.response.start",
        "status": response.status,
        "headers": response_headers(response.headers),
    }
    try:
        if _is_small(response):
            # A small body is usually in hand already: one message instead of two halves, and
            # a broken upstream still gets an error page rather than a cut response.
            try:
                body = b"".join([chunk async for chunk in response.body])
            except SandboxUnreachable as exc:
                await on_unreachable(exc)
                return
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})
        else:
            await send(start)
            await _relay_watched(response, scope, receive, send, on_activity)
    finally:
        await response.aclose()
    on_activity()


async def _relay(response: UpstreamResponse, send: Send, scope: Scope) -> bool:
    """Copy the body; False when the upstream broke off (the browser sees a cut response)."""
    if response.splice is not None and SPLICE in scope.get("extensions", {}):
        try:
            await send({"type": SPLICE, "splice": response.splice})
        except SandboxUnreachable:
            await trio.lowlevel.checkpoint_if_cancelled()
            return False
        return True
    direct = scope.get("extensions", {}).get(DIRECT_BODY)
    if direct is not None and response.direct is not None:
        response.direct(direct)
    try:
        async for chunk in response.body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except SandboxUnreachable:
        await trio.lowlevel.checkpoint()
        return False  # ending without more_body=False makes the server drop the connection
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True


async def _relay_watched(
    response: UpstreamResponse,
    scope: Scope,
    receive: Receive,
    send: Send,
    on_activity: Callable[[], None],
) -> None:
    """Copy a long body while watching for the browser to leave and keeping the sandbox awake."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope)
        nursery.start_soon(_keep_awake, on_activity)
        await _relay(response, send, scope)
        nursery.cancel_scope.cancel()


async def _watch_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _keep_awake(on_activity: Callable[[], None]) -> None:
    """A stream that stays open is activity, even when no byte moves for a while."""
    while True:
        await trio.sleep(ACTIVITY_INTERVAL)
        on_activity()

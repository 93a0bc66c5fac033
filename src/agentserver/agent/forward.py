"""Serving the tunnel on the agent: each request the server opens goes to the local opencode,
or, for a preview (the stream names a port), to that port on this machine if its user shares
it (`--allow-port`); any other port is refused here, whatever the server asks.

Bodies stream both ways with no timeout once the response started (SSE lives as long as both
ends want). When the browser goes away the server resets the stream; the transport cancels the
handler, which closes the request to opencode. WebSocket upgrades (opencode's terminal) are
relayed message by message. Requests reach opencode over kept-alive connections
(`local_http.LocalClient`); a small complete answer goes back as one tunnel message.
"""

from __future__ import annotations

import functools
import html
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import trio
import trio_websocket

from agentserver.agent.local_http import Broken, LocalClient, Response, Unreachable
from agentserver.framing import BodyMismatch, exactly
from agentserver.http_headers import FRAMING_NAMES, HOP_BY_HOP_NAMES
from agentserver.kinds import (
    NOT_LISTENING,
    NOT_SHARED,
    OPENCODE,
    PREVIEW_REFUSED_HEADER,
)
from agentserver.tunnel import RequestReceived, TunnelStream

# Connection-specific fields never cross a hop (agentserver/http_headers.py); Host is the
# local opencode's. Framing is set for the request the agent writes, from the body it sends:
# never taken from the server's header list (a length declared there is checked against the
# bytes, `exactly`).
NOT_FORWARDED = HOP_BY_HOP_NAMES | {"host"}
WEBSOCKET_FIELDS = NOT_FORWARDED | {
    "sec-websocket-key",
    "sec-websocket-version",
    "origin",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "content-length",
}
_UNSENDABLE = {1005: 1000, 1006: 1011, 1015: 1011}
# On the 502 for an unreachable opencode: where the agent looked (sandboxes/agent_health.py
# reads it for the sandbox's status reason).
UNREACHABLE_HEADER = "x-agentserver-opencode-unreachable"
# Where a shared port's dev server is: this machine, by name (a dev server may listen on
# 127.0.0.1 or on ::1 only; the client tries both).
PREVIEW_HOST = "localhost"


def safe_target(target: str) -> str | None:
    """`target` if it is an origin-form path (`/…`), else None: no scheme, host or `//host`."""
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    if any(c in target for c in "\r\n\x00\t "):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def declared_length(headers: Sequence[tuple[str, str]]) -> int | None:
    """The body length the server declared (one valid Content-Length), else None: unknown,
    so the body goes to opencode chunked."""
    values = {v.strip() for n, v in headers if n.lower() == "content-length"}
    if len(values) != 1:
        return None
    value = values.pop()
    return int(value) if value.isascii() and value.isdigit() else None


@functools.lru_cache(maxsize=8)  # called with the module's few drop sets
def _always_dropped(drop: frozenset[str], ours: bool) -> frozenset[str]:
    """`drop` with the framing fields (and, for opencode, Authorization: ours replaces it)."""
    return drop | FRAMING_NAMES | ({"authorization"} if ours else frozenset())


def _dropped(
    headers: Sequence[tuple[str, str]], drop: frozenset[str], ours: bool
) -> frozenset[str]:
    """The names not to forward: `_always_dropped`, and those a Connection header lists (our
    server sends none, having dropped them itself; an older one might)."""
    listed = [v for n, v in headers if n.lower() == "connection"]
    always = _always_dropped(drop, ours)
    if not listed:
        return always
    tokens = {t.strip().lower() for value in listed for t in value.split(",")}
    return always | (tokens - FRAMING_NAMES - {"host"})


def _sendable(code: int | None) -> int:
    return 1000 if code is None else _UNSENDABLE.get(code, code)


# What to answer when the place a request goes does not answer (opencode's page, or a preview's).
OnUnreachable = Callable[[TunnelStream, Exception], Awaitable[None]]


def _refused(exc: BaseException | None) -> bool:
    """Whether a failed connection was refused (nothing listens there), however the client
    library wrapped the error."""
    while exc is not None:
        if isinstance(exc, ConnectionRefusedError):
            return True
        if isinstance(exc, BaseExceptionGroup):
            return all(_refused(e) for e in exc.exceptions)
        exc = exc.__cause__ or exc.__context__
    return False


class Forwarder:
    """The tunnel's request handler: forwards to `base_url` (the local opencode), and previews
    to the `shared_ports` of this machine."""

    def __init__(
        self,
        base_url: str,
        password: str | None,
        say: Callable[[str], None],
        shared_ports: Sequence[int] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--opencode-url must be an http(s) URL (got {base_url!r})")
        self._ws_base = ("wss" if parts.scheme == "https" else "ws") + "://" + parts.netloc
        self._auth = OPENCODE.credentials.header(password) if password else None
        self._say = say
        self._reachable: bool | None = None
        self.on_success: Callable[[], None] = lambda: None
        self._client = LocalClient(self.base_url)
        self.shared_ports = frozenset(shared_ports)
        # One kept-alive client per shared port, made on its first preview.
        self._previews: dict[int, LocalClient] = {}

    async def __aenter__(self) -> Forwarder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._client.close()
        for client in self._previews.values():
            client.close()
        await trio.lowlevel.checkpoint()

    def headers_for_opencode(
        self, headers: Sequence[tuple[str, str]], drop: frozenset[str] = NOT_FORWARDED
    ) -> list[tuple[str, str]]:
        """The request's headers with hop-by-hop fields and the server's Authorization replaced
        by ours (or removed when no --opencode-password was given)."""
        dropped = _dropped(headers, drop, ours=True)
        kept = [(n, v) for n, v in headers if n.lower() not in dropped]
        if self._auth:
            kept.append(("authorization", self._auth))
        return kept

    def headers_for_preview(
        self, headers: Sequence[tuple[str, str]], drop: frozenset[str] = NOT_FORWARDED
    ) -> list[tuple[str, str]]:
        """The request's headers for a dev server: hop-by-hop fields dropped, nothing of ours
        added (the server stripped its own cookies; an Authorization is the app's)."""
        dropped = _dropped(headers, drop, ours=False)
        return [(n, v) for n, v in headers if n.lower() not in dropped]

    # -- requests -------------------------------------------------------------------------

    async def handle(self, request: RequestReceived, stream: TunnelStream) -> None:
        target = safe_target(request.target)
        if target is None:
            await self._answer(stream, 400, "text/plain; charset=utf-8", b"invalid request path")
            return
        if request.port is not None:
            await self._preview(request, request.port, target, stream)
            return
        if request.websocket:
            headers = self.headers_for_opencode(request.headers, WEBSOCKET_FIELDS)
            await self._websocket(request, self._ws_base + target, headers, stream, self._down)
            return
        headers = self.headers_for_opencode(request.headers)
        await self._http(request, self._client, target, headers, stream)

    async def _preview(
        self, request: RequestReceived, port: int, target: str, stream: TunnelStream
    ) -> None:
        """A request for `port` on this machine: only a port the user shares."""
        if port not in self.shared_ports:
            self._say(f"refused a preview of port {port}: not shared (--allow-port)")
            body = f"port {port} is not shared by this agent (agent connect --allow-port)"
            refusal = [(PREVIEW_REFUSED_HEADER, NOT_SHARED)]
            await self._answer(stream, 403, "text/plain; charset=utf-8", body.encode(), refusal)
            return
        if request.websocket:
            headers = self.headers_for_preview(request.headers, WEBSOCKET_FIELDS)
            ws_url = f"ws://{PREVIEW_HOST}:{port}{target}"
            await self._websocket(request, ws_url, headers, stream, self._not_listening, app=True)
            return
        client = self._previews.get(port)
        if client is None:
            client = self._previews[port] = LocalClient(f"http://{PREVIEW_HOST}:{port}")
        headers = self.headers_for_preview(request.headers)
        await self._http(request, client, target, headers, stream, self._not_listening, app=True)

    async def _not_listening(self, stream: TunnelStream, exc: Exception) -> None:
        """A shared port's dev server did not answer: the server shows why on its own page."""
        why = NOT_LISTENING if _refused(exc) else "unreachable"
        body = f"nothing answers on that port here: {exc}".encode()
        refusal = [(PREVIEW_REFUSED_HEADER, why)]
        await self._answer(stream, 502, "text/plain; charset=utf-8", body, refusal)

    async def _down(self, stream: TunnelStream, exc: Exception) -> None:
        await self._unreachable(stream, exc)

    async def _http(
        self,
        request: RequestReceived,
        client: LocalClient,
        target: str,
        headers: list[tuple[str, str]],
        stream: TunnelStream,
        unreachable: OnUnreachable | None = None,
        *,
        app: bool = False,
    ) -> None:
        """Forward one request to `client` (opencode's, or a shared port's with `app`)."""
        content, length = None, None
        if request.body:
            # Framed by the Content-Length the server declared (the client refuses to send
            # more or fewer bytes than that, as `exactly` does), else chunked.
            length = declared_length(request.headers)
            content = exactly(_body(stream), length)
        try:
            response = await client.request(request.method, target, headers, content, length)
        except Unreachable as exc:
            await (unreachable or self._down)(stream, exc)
            return
        except BodyMismatch:
            await stream.reset()  # the connection closed with the partial request on it
            return
        try:
            await self._relay(response, stream, app=app)
            if not app:
                self.on_success()
        except Broken:
            await stream.reset()  # opencode broke off: the browser sees a cut response
        finally:
            response.aclose_now()

    async def _relay(self, response: Response, stream: TunnelStream, *, app: bool = False) -> None:
        """The response to the tunnel; a complete one (head, body, end) goes out at once."""
        if not app:
            self._seen_reachable()
        headers = [(n, v) for n, v in response.headers if n.lower() not in NOT_FORWARDED]
        body, complete = await response.buffered()
        await stream.send_response(response.status, headers, body, end=complete)
        ended = complete
        if not complete:
            async for chunk in response.chunks():
                if response.done:  # the last piece: it and the end leave together
                    await stream.send_last(chunk)
                    ended = True
                elif not stream.send_nowait(chunk):  # reading it was this piece's checkpoint
                    await stream.send_all(chunk)
        if not ended:
            await stream.send_eof()

    async def _answer(
        self,
        stream: TunnelStream,
        status: int,
        content_type: str,
        body: bytes,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        await stream.send_response_head(
            status,
            [
                ("content-type", content_type),
                ("content-length", str(len(body))),
                ("cache-control", "no-store"),
                *extra,
            ],
        )
        await stream.send_all(body)
        await stream.send_eof()

    async def _unreachable(self, stream: TunnelStream, exc: Exception) -> None:
        reason = str(exc) or type(exc).__name__
        if self._reachable is not False:
            self._reachable = False
            self._say(f"local opencode unreachable at {self.base_url}: {reason}")
        page = (
            "<!doctype html><meta charset=utf-8><title>Local opencode is not answering</title>"
            "<h1>Local opencode is not answering</h1>"
            f"<p>The agent is connected, but nothing answers at <code>{html.escape(self.base_url)}"
            f"</code> on its machine ({html.escape(reason)}).</p>"
            f"<p>Start opencode there (<code>opencode serve --port {OPENCODE.port}</code>) or run "
            "the agent with the right <code>--opencode-url</code>, then reload this page.</p>"
        ).encode()
        # The header tells the server's health probe where opencode was expected.
        unreachable = [(UNREACHABLE_HEADER, self.base_url)]
        await self._answer(stream, 502, "text/html; charset=utf-8", page, unreachable)

    def _seen_reachable(self) -> None:
        if self._reachable is False:
            self._say(f"local opencode at {self.base_url} answers again")
        self._reachable = True

    # -- WebSocket relay --------------------------------------------------------------------

    async def _websocket(
        self,
        request: RequestReceived,
        url: str,
        text_headers: list[tuple[str, str]],
        stream: TunnelStream,
        unreachable: OnUnreachable,
        *,
        app: bool = False,
    ) -> None:
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in text_headers]
        try:
            async with trio_websocket.open_websocket_url(
                url,
                subprotocols=list(request.subprotocols),
                extra_headers=headers,
                max_message_size=16 * 1024 * 1024,
                connect_timeout=30,
                disconnect_timeout=5,
            ) as ws:
                if not app:
                    self._seen_reachable()
                chosen = [("sec-websocket-protocol", ws.subprotocol)] if ws.subprotocol else []
                await stream.send_response_head(101, chosen)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_to_opencode, stream, ws, nursery.cancel_scope)
                    nursery.start_soon(_to_browser, ws, stream, nursery.cancel_scope)
        except trio_websocket.ConnectionRejected as exc:
            body = exc.body or b""
            await self._answer(stream, exc.status_code, "text/plain; charset=utf-8", body)
        except (trio_websocket.HandshakeError, OSError) as exc:
            await unreachable(stream, exc)


async def _body(stream: TunnelStream) -> AsyncIterator[bytes]:
    while True:
        chunk = await stream.receive_some()
        if not chunk:
            return
        yield chunk


async def _to_opencode(
    stream: TunnelStream, ws: trio_websocket.WebSocketConnection, done: trio.CancelScope
) -> None:
    try:
        while True:
            try:
                message = await stream.receive_message()
            except trio.EndOfChannel:
                await ws.aclose(_sendable(stream.close_code), stream.close_reason or None)
                return
            await ws.send_message(message)
    except trio_websocket.ConnectionClosed:
        await trio.lowlevel.checkpoint()  # a send can fail before it awaits anything
        return  # opencode closed; the other pump tells the browser
    finally:
        done.cancel()


async def _to_browser(
    ws: trio_websocket.WebSocketConnection, stream: TunnelStream, done: trio.CancelScope
) -> None:
    try:
        while True:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed as closed:
                code = closed.reason.code if closed.reason else None
                reason = (closed.reason.reason if closed.reason else None) or ""
                await stream.send_close(_sendable(code), reason)
                return
            await stream.send_message(message)
    finally:
        done.cancel()

"""One plain HTTP/1.1 exchange on a raw client socket, given to an ASGI handler.

`front.py` decides which requests come here (agentserver/http1.py says which are plain) and which
handler serves each: the subdomain proxy for a sandbox host, the LLM proxy for its paths on
the main host. A handler sees the same scope, receive and send it gets from hypercorn, so each
(the subdomain proxy's security model: tickets, cookies, roles, Origin, status pages, waking;
the LLM proxy's refusals, limits and usage) has one implementation for both paths. This
module owns only HTTP/1.1 framing: the request body by Content-Length, the response by its
Content-Length or chunked (or spliced kernel to kernel, proxy/splice.py), the browser leaving
(an `http.disconnect` while a long response runs, or `ClientLeft` raised from a failed write,
which unwinds the handler and closes its upstream), and whether the connection may carry another
request afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from agentserver.http1 import (
    LAST_CHUNK,
    MAX_HEAD,
    Headers,
    RequestHead,
    body_allowed,
    chunk,
    content_length,
    response_head,
)
from agentserver.proxy.exchange_states import (
    CHUNKED,
    ENDED,
    GONE,
    SENDING,
    SENT,
    SIZED,
    WAITING,
    browser_moves,
    keeps_connection,
    reply_ends,
    reply_moves,
)
from agentserver.proxy.headers import connection_tokens, header
from agentserver.proxy.http import (
    CANCEL_CONNECTION,
    DIRECT_BODY,
    HELD,
    REFUSED,
    RESPOND_NOW,
    SPLICE,
    WRITTEN,
    Receive,
    Scope,
    Send,
)
from agentserver.proxy.splice import available as splice_available
from agentserver.proxy.upstream import receive_reply, send_all

log = logging.getLogger(__name__)
READ_SIZE = 256 * 1024
# A chunk's data from this size on is written with its framing by writev, not copied into it.
LARGE_CHUNK = 16 * 1024
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)
# Whoever answers a request: an ASGI application (scope, receive, send).
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
_FAILED = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]


async def send_parts(stream: trio.SocketStream, *parts: bytes) -> None:
    """`send_all` of the parts joined, without joining them: one writev, more only while the
    socket buffer is full."""
    await trio.lowlevel.checkpoint_if_cancelled()
    sock = stream.socket
    views = [memoryview(part) for part in parts if part]
    try:
        while views:
            try:
                sent = os.writev(sock.fileno(), views)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if sent:
                views[0] = views[0][sent:]
    except OSError as exc:
        raise trio.BrokenResourceError(f"the connection broke: {exc.strerror}") from None


class ClientLeft(Exception):
    """The browser closed its connection while we were answering."""


def _client_left(exc: BaseException) -> bool:
    """Whether `exc` only says the browser left (maybe wrapped by the handler's nurseries)."""
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.split(ClientLeft)[1]
        return rest is None
    return isinstance(exc, ClientLeft)


class Client:
    """The browser's connection: its socket and the bytes read but not yet used."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        peer, local = stream.socket.getpeername(), stream.socket.getsockname()
        self.peer: tuple[str, int] = (peer[0], peer[1])
        self.local: tuple[str, int] = (local[0], local[1])

    async def fill(self, size: int = MAX_HEAD) -> bool:
        """Read more into the buffer; False at end of stream."""
        data = await receive_reply(self.stream, size)
        self.buffer += data
        return bool(data)

    async def read(self, most: int) -> bytes:
        """Up to `most` bytes, buffered ones first; b"" at end of stream."""
        if not self.buffer:
            return bytes(await self.stream.receive_some(min(most, READ_SIZE)))
        data = bytes(self.buffer[:most])
        del self.buffer[:most]
        await trio.lowlevel.checkpoint_if_cancelled()
        return data

    async def wait_gone(self) -> None:
        """Return when the browser closes; bytes it sends meanwhile (a pipelined request)
        are kept for later, up to one head's worth."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while len(self.buffer) <= MAX_HEAD:
            try:
                if not await self.fill():
                    return
            except _BROKEN:
                return
        await trio.sleep_forever()

    def close(self) -> None:
        # Synchronous: it must work in a cancelled scope.
        self.stream.socket.close()


class Exchange:
    """One request and its response; `run` says whether the connection stays open. Where each
    side stands is in `browser` and `reply` (proxy/exchange_states.py has their transitions)."""

    def __init__(
        self,
        client: Client,
        request: RequestHead,
        handler: Handler,
        cancel: Callable[[], None] | None = None,
        *,
        closing: bool = False,
        hold_head: bool = False,
    ) -> None:
        self.client, self.request, self.handler = client, request, handler
        # A chunked answer's head waits for its first body bytes (hypercorn's way) instead of
        # leaving at once: for handlers whose body follows its head at once (one write).
        self._hold_head = hold_head
        # Ends the connection this exchange runs on (its owner's cancel scope).
        self._extensions: dict[str, Any] = {SPLICE: {}} if splice_available else {}
        if cancel is not None:
            self._extensions[CANCEL_CONNECTION] = cancel
        self._extensions[DIRECT_BODY] = self.write_now
        self._extensions[RESPOND_NOW] = self.respond_now
        self.browser = SENDING
        self.reply = WAITING
        self._unread = request.content_length
        # The response says `Connection: close` (asked for, or the server drains).
        self._closing = closing or not request.keep_alive
        self._status = 0
        self._headers: Headers = []
        self._declared: int | None = None
        self._sent = 0
        self._writing = False  # a body write is under way (it may wait for the socket)
        self._held = b""  # the rest of a piece `write_now` could not send whole: goes first

    def scope(self) -> dict[str, Any]:
        request, client = self.request, self.client
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": "1.1",
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": request.decoded_path(),
            "raw_path": request.path,
            "query_string": request.query,
            "root_path": "",
            "headers": request.headers,
            "client": client.peer,
            "server": client.local,
            "extensions": self._extensions,
        }

    async def run(self) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            await self.handler(self.scope(), self.receive, self.send)
            if self._held and self.browser is not GONE:  # the rest of a `respond_now`
                await self._flush_held()
        except Exception as exc:
            if not _client_left(exc):
                log.exception("serving a request for %r failed", self.request.host)
                if self.reply is WAITING and self.browser is not GONE:
                    self._respond(500, _FAILED)
                    with contextlib.suppress(ClientLeft):
                        await self._write_body(b"internal server error", more=False)
        return keeps_connection(self.browser, self.reply, self._unread, self._closing)

    def _left(self) -> None:
        """The browser is gone (seen by a read or a failed write, maybe once each)."""
        if self.browser is not GONE:
            self.browser = browser_moves(self.browser, GONE)

    # -- ASGI receive ----------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.browser is SENDING:
            if self._unread == 0:
                self.browser = browser_moves(self.browser, SENT)
                return {"type": "http.request", "body": b"", "more_body": False}
            try:
                data = await self.client.read(self._unread)
            except _BROKEN:
                data = b""
            if not data:
                self._left()
                return {"type": "http.disconnect"}
            self._unread -= len(data)
            if self._unread == 0 and self.browser is SENDING:  # a failed write may have
                self.browser = browser_moves(self.browser, SENT)  # seen it go meanwhile
            return {"type": "http.request", "body": data, "more_body": self._unread > 0}
        if self.browser is SENT:
            await self.client.wait_gone()
            self._left()
        return {"type": "http.disconnect"}

    # -- ASGI send -------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._respond(int(message["status"]), list(message.get("headers", ())))
            if self._declared is None and not self._hold_head:
                # A stream (SSE) may wait long for its first bytes: the browser gets the head
                # now. A sized body follows at once and shares the head's write.
                await self._write_body(b"", more=True)
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
        elif kind == "http.response.body" and self.reply not in ENDED:
            await self._write_body(bytes(message.get("body", b"")), bool(message.get("more_body")))
        elif kind == SPLICE and self.reply not in ENDED:
            await self._splice(message["splice"])
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    def write_now(self, piece: bytes) -> int:
        """DIRECT_BODY (proxy/http.py): one piece of a chunked body, sent now without waiting,
        or REFUSED (the caller sends it as a body message then) when it cannot go at once:
        the reply is not a chunked stream under way, another write is, or the piece is large."""
        if (
            self.reply is not CHUNKED
            or self._writing
            or self._held
            or self.browser is GONE
            or not piece
            or len(piece) >= LARGE_CHUNK
        ):
            return REFUSED
        framed = chunk(piece)
        try:
            sent = os.write(self.client.stream.socket.fileno(), framed)
        except OSError:  # full, or the browser left: the request's task finds out
            return REFUSED
        if sent == len(framed):
            return WRITTEN
        self._held = framed[sent:]
        return HELD

    def respond_now(self, status: int, headers: Headers, body: bytes) -> bool:
        """RESPOND_NOW (proxy/http.py): the whole response, written now without waiting, or
        False (nothing done) when a response has begun, a write is under way or the browser
        left. What the socket does not take at once is held; `run` sends it at the end."""
        # A head given but not written yet (it waits for the body) counts as begun too.
        if self.reply is not WAITING or self._status or self._writing or self.browser is GONE:
            return False
        self._respond(status, headers)
        out, large, tail = self._framed(body, more=False)
        out = b"".join((out, large, tail)) if large else out
        try:
            sent = os.write(self.client.stream.socket.fileno(), out)
        except BlockingIOError:
            sent = 0
        except OSError:  # the browser left: the request's task finds out on its next read
            self._left()
            return True
        self._held = out[sent:]
        return True

    async def _flush_held(self) -> None:
        held, self._held = self._held, b""
        await self._send(held)

    def _framed(self, body: bytes, more: bool) -> tuple[bytes, bytes, bytes]:
        """What to write for this body message: the bytes, and a large chunk's data and what
        follows it (never copied into them); the reply moves on as it says."""
        out = self._head(body, more) if self.reply is WAITING else b""
        if self._held:  # only ever after the head
            out, self._held = self._held + out, b""
        allowed = body_allowed(self.request.method, self._status)
        large, tail = b"", b""  # a large chunk's data and what follows it, never copied
        if allowed:
            if self.reply is CHUNKED:
                end = b"" if more else LAST_CHUNK
                if len(body) >= LARGE_CHUNK:
                    out += b"%x\r\n" % len(body)
                    large, tail = body, b"\r\n" + end
                else:
                    out += (chunk(body) if body else b"") + end
            else:
                if self._declared is not None:
                    body = body[: self._declared - self._sent]  # never past what we declared
                out += body
                self._sent += len(body)
        if not more:
            self.reply = reply_ends(self.reply, self._declared, self._sent, allowed)
        return out, large, tail

    async def _write_body(self, body: bytes, more: bool) -> None:
        await self._send(*self._framed(body, more))

    async def _send(self, out: bytes, large: bytes = b"", tail: bytes = b"") -> None:
        self._writing = True
        try:
            if large:
                await send_parts(self.client.stream, out, large, tail)
            else:
                await send_all(self.client.stream, out)
        except _BROKEN:
            # The browser left: end the exchange (the handler's finally blocks close upstream).
            self._left()
            raise ClientLeft from None
        finally:
            self._writing = False

    async def _splice(self, move: Callable[[trio.SocketStream], Awaitable[int]]) -> None:
        """The rest of a sized body, kernel to kernel (proxy/splice.py)."""
        if self.reply is WAITING:
            await self._write_body(b"", more=True)
        if self.reply is not SIZED or self._declared is None:
            raise RuntimeError("splice needs a response framed by Content-Length")
        try:
            self._sent += await move(self.client.stream)
        except _BROKEN:
            self._left()
            raise ClientLeft from None
        allowed = body_allowed(self.request.method, self._status)
        self.reply = reply_ends(self.reply, self._declared, self._sent, allowed)

    def _respond(self, status: int, headers: Headers) -> None:
        """The response's status and headers (sent with its first body bytes)."""
        self._status, self._headers = status, headers
        self._declared = content_length(headers)
        connection = header(headers, b"connection")  # the handler may end the connection too,
        if connection is not None and b"close" in connection.lower():  # e.g. after a 400
            self._closing = self._closing or b"close" in connection_tokens(headers)

    def _head(self, body: bytes, more: bool) -> bytes:
        """The response head, sent with the first body bytes in one write."""
        headers = self._headers
        chunked = False
        if body_allowed(self.request.method, self._status) and self._declared is None:
            headers = [(n, v) for n, v in headers if n != b"content-length"]
            if more:
                chunked = True
            else:
                self._declared = len(body)
                headers.append((b"content-length", b"%d" % len(body)))
        self.reply = reply_moves(self.reply, CHUNKED if chunked else SIZED)
        # Answered before the request body came (an auth error, say): the connection cannot
        # be reused, and the client is told so.
        self._closing = self._closing or self._unread > 0
        return response_head(self._status, headers, chunked=chunked, close=self._closing)

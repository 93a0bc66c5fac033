"""The LLM proxy's HTTP/1.1 client to the Anthropic API: kept-alive connections and h11.

httpx cost about 0.43 ms of CPU per call on the machines the benchmark runs on (a small call to
the stand-in: 0.69 ms through httpx, 0.26 ms through h11 on a kept-alive socket), a third of
everything the proxy added to a call. What the proxy needs is narrow: one origin
(`ANTHROPIC_BASE_URL`), a request whose body is held whole, and the answer passed on raw as it
arrives. What httpx gave us is kept:

- The URL is parsed and normalised by `httpx.URL` (the same quoting, the same refusals), and
  the head is the one httpx sent: Host first, httpx's defaults (Accept, Connection, User-Agent)
  where the caller gave none, Content-Length from the body (0 for an empty POST, PUT or PATCH).
- TLS is verified as httpx verifies (`httpx.create_ssl_context`: certifi's bundle, or
  SSL_CERT_FILE / SSL_CERT_DIR), with SNI and ALPN http/1.1.
- Connecting (TCP and the TLS handshake) is bounded by `CONNECT_TIMEOUT`; waiting for one of
  `MAX_CONNECTIONS` by `POOL_TIMEOUT`; nothing else (answers stream for minutes).
- Idle connections are reused last-in first-out, at most `MAX_IDLE`, each for
  `KEEPALIVE_EXPIRY` seconds; one the peer closed while idle is dropped when taken. A request
  that finds its reused connection dead before any byte of an answer is sent again once on a
  new connection, only when its method is idempotent (RFC 9110 §9.2.2): Anthropic may have
  acted on a POST, so a POST is never sent twice (httpx never resent one either).
- A connection goes back to the pool only when both messages ended cleanly and neither side
  asked to close; an answer closed early, a failure or a cancel closes it.
- When the environment names a proxy for the origin (HTTPS_PROXY and the like, which httpx
  honoured), calls keep going through httpx (llm/upstream_httpx.py).

`Unreachable` is every failure before an answer's head, `Broken` one after it.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import h11
import httpx
import trio

READ_SIZE = 64 * 1024
CONNECT_TIMEOUT = 10.0
POOL_TIMEOUT = 30.0
MAX_CONNECTIONS = 512
MAX_IDLE = 64
KEEPALIVE_EXPIRY = 5.0
MAX_HEAD = 64 * 1024
# Request bodies up to this size share one write with their head.
JOINED = 64 * 1024
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_DEFAULTS = (
    (b"accept", b"*/*"),
    (b"connection", b"keep-alive"),
    (b"user-agent", f"python-httpx/{httpx.__version__}".encode()),
)
_SIZED = frozenset({b"POST", b"PUT", b"PATCH"})
_FAILURES = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)
Headers = list[tuple[bytes, bytes]]


class UpstreamError(Exception):
    """The call to the Anthropic API failed; the message names how."""


class Unreachable(UpstreamError):
    """No answer: the connection could not be made, or broke before an answer's head."""


class Broken(UpstreamError):
    """The answer broke off after its head."""


class InvalidRequest(ValueError):
    """The URL or a header cannot be sent."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str  # as connected to and named in SNI (IDNA-encoded, no brackets)
    port: int


@dataclass(frozen=True, slots=True)
class Request:
    """A request ready to send: its origin and its head as h11 writes it."""

    origin: Origin
    url: httpx.URL
    head: h11.Request
    body: bytes

    @property
    def method(self) -> bytes:
        return bytes(self.head.method)


def build_request(method: str, url: str, headers: Headers, body: bytes) -> Request:
    """The request httpx would have sent for `method url` with `headers` and `body`."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidRequest(str(exc)) from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise InvalidRequest("the URL is not http(s)")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    origin = Origin(parsed.scheme, parsed.raw_host.decode("ascii"), port)
    given = {name.lower() for name, _ in headers}
    head: Headers = [(b"host", parsed.netloc)]
    head += [(name, value) for name, value in _DEFAULTS if name not in given]
    head += headers
    verb = method.encode("ascii")
    if b"content-length" not in given and (body or verb in _SIZED):
        head.append((b"content-length", b"%d" % len(body)))
    try:
        request = h11.Request(method=verb, target=parsed.raw_path, headers=head)
    except h11.LocalProtocolError as exc:
        raise InvalidRequest(str(exc)) from None
    return Request(origin, parsed, request, body)


class Answer(Protocol):
    """An answer's head, its body still arriving (`Response` here, or httpx's through
    llm/upstream_httpx.py)."""

    status_code: int
    headers: Headers

    def header(self, name: bytes) -> bytes | None: ...

    def chunks(self) -> AsyncIterator[tuple[bytes, bool]]: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    """What the proxy sends its calls through."""

    async def send(self, request: Request) -> Answer: ...


class _Connection:
    __slots__ = ("h11", "idle_since", "origin", "received", "socket", "stream")

    def __init__(
        self, origin: Origin, stream: trio.abc.Stream, sock: trio.socket.SocketType
    ) -> None:
        self.origin, self.stream, self.socket = origin, stream, sock
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.idle_since = 0.0
        self.received = False  # any byte of an answer on this request

    def usable(self, now: float) -> bool:
        """Idle not too long, and nothing to read (a peer's close, most likely)."""
        return now - self.idle_since < KEEPALIVE_EXPIRY and not self.socket.is_readable()

    async def next_event(self) -> object:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                await trio.lowlevel.checkpoint_if_cancelled()  # buffered: no scheduler trip
                return event
            data = bytes(await self.stream.receive_some(READ_SIZE))
            self.received = self.received or bool(data)
            self.h11.receive_data(data)

    def close(self) -> None:
        """Close at once, without awaiting (also from a cancelled task)."""
        self.socket.close()


class Response:
    """An answer's head, its body still arriving; `aclose` it (it frees its connection)."""

    def __init__(self, client: UpstreamClient, conn: _Connection, head: h11.Response) -> None:
        self.status_code = head.status_code
        self.headers: Headers = list(head.headers)
        self._client, self._conn = client, conn
        self._done = False
        self._closed = False

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    async def chunks(self) -> AsyncIterator[tuple[bytes, bool]]:
        """The body as it arrives (de-chunked, never decoded), each piece with whether it is
        the last (known when the end came with it; a last piece may also be b""); read once."""
        machine = self._conn.h11
        pending: object = h11.NEED_DATA
        while True:
            try:
                if pending is h11.NEED_DATA:
                    event = await self._conn.next_event()
                else:
                    event = pending
                    await trio.lowlevel.checkpoint_if_cancelled()
                # What follows, if it came with this piece (no I/O): the end, maybe.
                pending = machine.next_event() if isinstance(event, h11.Data) else h11.NEED_DATA
            except _FAILURES as exc:
                raise Broken(type(exc).__name__) from exc
            if isinstance(event, h11.Data):
                self._done = isinstance(pending, h11.EndOfMessage)
                yield bytes(event.data), self._done
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
                yield b"", True
            else:  # ConnectionClosed: the peer closed before the body's end
                raise Broken("the connection closed mid-answer")
            if self._done:
                await trio.lowlevel.checkpoint_if_cancelled()
                return

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.release(self._conn, reusable=self._done)
        await trio.lowlevel.checkpoint_if_cancelled()


@dataclass
class UpstreamClient:
    """Pooled HTTP/1.1 connections to the Anthropic API (see the module docstring)."""

    ssl_context: ssl.SSLContext = field(default_factory=httpx.create_ssl_context)
    idle: dict[Origin, list[_Connection]] = field(default_factory=dict)
    slots: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(MAX_CONNECTIONS))

    def __post_init__(self) -> None:
        self.ssl_context.set_alpn_protocols(["http/1.1"])

    async def send(self, request: Request) -> Response:
        """Send `request` and return its answer once its head has arrived."""
        try:
            self.slots.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_after(POOL_TIMEOUT) as waiting:
                await self.slots.acquire()
            if waiting.cancelled_caught:
                raise Unreachable("PoolTimeout") from None
        try:
            return await self._send(request)
        except BaseException:
            self.slots.release()
            raise

    async def _send(self, request: Request) -> Response:
        conn = self._take(request.origin)
        if conn is not None:
            try:
                return await self._exchange(conn, request)
            except Unreachable:
                if conn.received or request.method not in IDEMPOTENT:
                    raise
        return await self._exchange(await self._connect(request.origin), request)

    async def _exchange(self, conn: _Connection, request: Request) -> Response:
        try:
            machine = conn.h11
            head = machine.send(request.head) or b""
            body = (machine.send(h11.Data(data=request.body)) or b"") if request.body else b""
            end = machine.send(h11.EndOfMessage()) or b""
            try:
                if len(body) > JOINED:  # not copied again to share one write
                    for part in (head, body, end):
                        await conn.stream.send_all(part)
                else:
                    await conn.stream.send_all(head + body + end)
            except (OSError, trio.BrokenResourceError):
                # The server may have answered early and stopped reading (a 413, say): its
                # answer is read below, as httpx did; if there is none, it is unreachable.
                pass
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.Response):
                    return Response(self, conn, event)
                if not isinstance(event, h11.InformationalResponse):
                    raise Unreachable("the connection closed before an answer")
        except _FAILURES as exc:
            conn.close()
            raise Unreachable(type(exc).__name__) from exc
        except BaseException:
            conn.close()
            raise

    async def _connect(self, origin: Origin) -> _Connection:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                tcp = await trio.open_tcp_stream(origin.host, origin.port)
                if origin.scheme != "https":
                    return _Connection(origin, tcp, tcp.socket)
                try:
                    tls = trio.SSLStream(
                        tcp, self.ssl_context, server_hostname=origin.host, https_compatible=True
                    )
                    await tls.do_handshake()
                except BaseException:
                    tcp.socket.close()
                    raise
                return _Connection(origin, tls, tcp.socket)
        except (*_FAILURES, trio.TooSlowError) as exc:
            raise Unreachable(type(exc).__name__) from exc

    def _take(self, origin: Origin) -> _Connection | None:
        stack = self.idle.get(origin)
        now = time.monotonic()
        while stack:
            conn = stack.pop()
            if conn.usable(now):
                conn.received = False
                return conn
            conn.close()
        return None

    def release(self, conn: _Connection, *, reusable: bool) -> None:
        """An answer is done with `conn`: pooled when both messages ended cleanly."""
        self.slots.release()
        machine = conn.h11
        if reusable and machine.our_state is h11.DONE and machine.their_state is h11.DONE:
            machine.start_next_cycle()
            stack = self.idle.setdefault(conn.origin, [])
            if len(stack) < MAX_IDLE:
                conn.idle_since = time.monotonic()
                stack.append(conn)
                return
        conn.close()

    def close(self) -> None:
        for stack in self.idle.values():
            for conn in stack:
                conn.close()
        self.idle.clear()

"""A sandbox's one way to the server: its LLM relay, on the host's end of its veth pair.

A sandbox in its own network namespace cannot reach the server's listener (netns.py drops it),
yet its agent must call the LLM proxy. The relay listens on the sandbox's host-side address and
passes on requests under the proxy's path only (`/proxy/anthropic/...`), one per connection
(`Connection: close`, so no second request rides along unchecked), to the server's own
listener; everything else is answered 404 here. Bytes are relayed as they come (answers stream).
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import trio

log = logging.getLogger(__name__)
HEAD_LIMIT = 64 * 1024  # a request head beyond this is refused
CHUNK = 64 * 1024
# Connections one sandbox may hold open to its relay at once; more are answered 503.
MAX_CONNECTIONS = 32
# Replaced, never passed on: the hop's own fields, and Host (the server routes by it: a
# sandbox's request reaches the server's main site, whatever Host the sandbox wrote).
_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"host"}
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 38\r\n"
    b"connection: close\r\n\r\ntoo many connections to the LLM relay\n"
)
_REFUSED = (
    b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
    b"connection: close\r\n\r\n%s"
)


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the relay passes requests on: the server's listener and the LLM proxy's path."""

    host: str
    port: int
    prefix: str

    @classmethod
    def of_url(cls, url: str) -> Upstream | None:
        """From the LLM proxy's URL; None where it is not plain HTTP with a host (https: the
        sandbox goes there itself)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            return None
        return cls(parts.hostname, parts.port or 80, parts.path.rstrip("/"))

    @property
    def host_header(self) -> bytes:
        """The Host the relay sends: the server's own listener."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}".encode()


def allowed_target(target: bytes, prefix: str) -> bool:
    """Whether a request target is under the proxy's path (origin form, no dot segments)."""
    path = target.split(b"?", 1)[0]
    if not path.startswith(b"/") or b"%" in path:
        return False
    if any(part in (b".", b"..") for part in path.split(b"/")):
        return False
    want = prefix.encode()
    return path == want or path.startswith(want + b"/")


def rewrite_head(head: bytes, prefix: str, host: bytes) -> bytes | None:
    """The request head to pass on (one request per connection), or None to refuse it."""
    request_line, *header_lines = head.split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    if not allowed_target(parts[1], prefix):
        return None
    kept = [
        line
        for line in header_lines
        if line and line.split(b":", 1)[0].strip().lower() not in _HOP_BY_HOP
    ]
    return b"\r\n".join([request_line, b"host: " + host, *kept, b"connection: close", b"", b""])


async def _read_head(stream: trio.abc.Stream) -> tuple[bytes, bytes] | None:
    """The request head (without its blank line) and what came after it; None if it never ends."""
    data = bytes(await stream.receive_some(CHUNK))
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(CHUNK)
        if not chunk or len(data) > HEAD_LIMIT:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


async def _pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    """Copy until the source ends. A client's half-close is not passed on: the server could
    take it for a client gone and drop the answer."""
    while chunk := await source.receive_some(CHUNK):
        await sink.send_all(chunk)


async def _relay(
    upstream: Upstream, limiter: trio.CapacityLimiter, client: trio.SocketStream
) -> None:
    """One sandbox connection. Whatever happens to it ends here: a sandbox's connection never
    takes the relay (or the server) down, and it holds at most `limiter`'s many at once."""
    async with client:
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await client.send_all(_BUSY)
            return
        try:
            await _pass_on(upstream, client)
        except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as group:
            log.debug("LLM relay: a connection ended: %s", group.exceptions[0])
        except* Exception:
            log.exception("LLM relay: a connection failed")
        finally:
            limiter.release()


async def _pass_on(upstream: Upstream, client: trio.SocketStream) -> None:
    got = await _read_head(client)
    head = rewrite_head(got[0], upstream.prefix, upstream.host_header) if got is not None else None
    if got is None or head is None:
        body = b"only the LLM proxy is reachable here\n"
        await client.send_all(_REFUSED % (len(body), body))
        return
    server = await trio.open_tcp_stream(upstream.host, upstream.port)
    async with server, trio.open_nursery() as nursery:
        await server.send_all(head + got[1])
        nursery.start_soon(_pump, client, server)
        await _pump(server, client)
        nursery.cancel_scope.cancel()


async def serve(
    address: str,
    upstream: Upstream,
    *,
    max_connections: int = MAX_CONNECTIONS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Relay on `address` (a free port) until cancelled; reports the port once listening."""
    limiter = trio.CapacityLimiter(max_connections)
    listeners = await trio.open_tcp_listeners(0, host=address)
    port = int(listeners[0].socket.getsockname()[1])
    async with trio.open_nursery() as nursery:
        task_status.started(port)
        handler = partial(_relay, upstream, limiter)
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)

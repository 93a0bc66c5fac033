"""Dialling the tunnel's WebSocket as a client: TCP (TLS for wss://), the opening handshake,
then our own link (tunnel/websocket.py) on the same stream.

A refused upgrade raises `handshake.Refused` with the server's status and (up to 64 KiB of) its
body, which `agent connect` reads (a 426 names the versions); an answer that is no valid 101
raises `handshake.HandshakeError`; a server that cannot be reached, the `OSError`; one that does
not answer within `connect_timeout`, `trio.TooSlowError`. TLS verifies the server's certificate
against the system's roots, for the URL's host name (SNI).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio

from .handshake import (
    MAX_RESPONSE_HEAD,
    HandshakeError,
    Headers,
    Refused,
    client_request,
    new_key,
    parse_response,
    response_length,
)
from .websocket import WebSocket

__all__ = ["connect_websocket", "open_websocket"]

CONNECT_TIMEOUT = 30.0
MAX_REFUSAL_BODY = 64 * 1024
_READ = 64 * 1024


@asynccontextmanager
async def open_websocket(
    url: str,
    headers: Headers,
    *,
    max_message: int,
    connect_timeout: float = CONNECT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[WebSocket]:
    """The link to `url` (ws:// or wss://) for the block; closed after it."""
    link = await connect_websocket(
        url,
        headers,
        max_message=max_message,
        connect_timeout=connect_timeout,
        ssl_context=ssl_context,
    )
    try:
        yield link
    finally:
        with trio.CancelScope(shield=True):
            await link.aclose()  # bounded by the link itself


async def connect_websocket(
    url: str,
    headers: Headers,
    *,
    max_message: int,
    connect_timeout: float = CONNECT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> WebSocket:
    """Connect and upgrade within `connect_timeout`; the open link (`ssl_context`: for
    wss://, the system's default verification unless given)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    host = parts.netloc.rpartition("@")[2]
    if not host.isascii():
        name = parts.hostname.encode("idna").decode("ascii")
        host = name if parts.port is None else f"{name}:{parts.port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    with trio.fail_after(connect_timeout):
        stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
        try:
            if secure:
                stream = trio.SSLStream(
                    stream,
                    ssl_context or ssl.create_default_context(),
                    server_hostname=parts.hostname,
                    https_compatible=True,
                )
                await stream.do_handshake()
            key = new_key()
            await stream.send_all(client_request(host, target, key, headers))
            head, rest = await _response_head(stream)
            try:
                parse_response(head, key)
            except Refused as refused:
                refused.body = await _refusal_body(stream, refused.headers, rest)
                raise
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    return WebSocket(stream, client=True, max_message=max_message, buffered=rest)


async def _response_head(stream: trio.abc.Stream) -> tuple[bytes, bytes]:
    """The answer's head (through its blank line) and whatever came after it."""
    data = b""
    await trio.lowlevel.checkpoint_if_cancelled()
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > MAX_RESPONSE_HEAD:
            raise HandshakeError("the server's answer has an overlong head")
        chunk = await stream.receive_some(_READ)
        if not chunk:
            raise HandshakeError("the server closed the connection before answering")
        data += chunk
    return data[: end + 4], data[end + 4 :]


async def _refusal_body(stream: trio.abc.Stream, headers: Headers, body: bytes) -> bytes:
    """A refusal's body: by its Content-Length, else until the server closes (at most 64 KiB)."""
    length = response_length(headers)
    want = MAX_REFUSAL_BODY if length is None else min(length, MAX_REFUSAL_BODY)
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        while len(body) < want:
            chunk = await stream.receive_some(_READ)
            if not chunk:
                break
            body += chunk
    except (trio.BrokenResourceError, OSError):
        pass  # what arrived is what the server said
    return body[:want]

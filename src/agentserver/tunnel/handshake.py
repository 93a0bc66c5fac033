"""The RFC 6455 opening handshake of the tunnel's own WebSocket, both sides (pure: no I/O).

The client asks with `client_request` and checks the answer with `parse_response`; the server
checks a request's headers with `upgrade_refusal` and answers `switching_protocols`. Only what
the tunnel needs: HTTP/1.1 GET, version 13, no subprotocols, no extensions (permessage-deflate
would let a small message inflate past any cap before anything sees it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
Headers = list[tuple[bytes, bytes]]
MAX_RESPONSE_HEAD = 64 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?: [\x09\x20-\x7e\x80-\xff]*)?")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*")


class HandshakeError(Exception):
    """The server's answer to the upgrade is not a WebSocket's (malformed, or a bad accept)."""


class Refused(HandshakeError):
    """The server answered the upgrade with a status other than 101 (`body`: what it said)."""

    def __init__(self, status: int, headers: Headers, body: bytes = b"") -> None:
        super().__init__(status)
        self.status, self.headers, self.body = status, headers, body

    def __str__(self) -> str:
        return f"the server refused the WebSocket upgrade with HTTP {self.status}"


def new_key() -> bytes:
    """A fresh Sec-WebSocket-Key: 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16))


def accept_key(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept that answers `key`."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324 - RFC 6455 §4.2.2


def valid_key(key: bytes) -> bool:
    """Whether `key` is base64 of exactly 16 bytes (RFC 6455 §4.1)."""
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


def client_request(host: str, target: str, key: bytes, headers: Headers) -> bytes:
    """The upgrade request's head, with the caller's `headers` after ours."""
    lines = [
        b"GET %s HTTP/1.1" % target.encode("ascii"),
        b"Host: %s" % host.encode("ascii"),
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: %s" % key,
        b"Sec-WebSocket-Version: 13",
        *(b"%s: %s" % pair for pair in headers),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",")}


def parse_response(head: bytes, key: bytes) -> Headers:
    """The headers of a 101 answering the request sent with `key`; `Refused` for any other
    status (its body is the caller's to read), `HandshakeError` when it is not a valid accept."""
    lines = head.removesuffix(b"\r\n\r\n").split(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise HandshakeError("the server's answer is not HTTP/1.1")
    headers: Headers = []
    for line in lines[1:]:
        field = _FIELD.fullmatch(line)
        if field is None:
            raise HandshakeError("the server's answer has a malformed header line")
        headers.append((field[1].lower(), field[2]))
    status = int(status_line[1])
    if status != 101:
        raise Refused(status, headers, b"")
    values = dict(headers)
    if b"websocket" not in _tokens(values.get(b"upgrade", b"")):
        raise HandshakeError("the server's 101 does not upgrade to websocket")
    if b"upgrade" not in _tokens(values.get(b"connection", b"")):
        raise HandshakeError("the server's 101 lacks Connection: upgrade")
    if values.get(b"sec-websocket-accept") != accept_key(key):
        raise HandshakeError("the server's Sec-WebSocket-Accept does not match our key")
    if values.get(b"sec-websocket-extensions") or values.get(b"sec-websocket-protocol"):
        raise HandshakeError("the server chose an extension or subprotocol we did not offer")
    return headers


def response_length(headers: Headers) -> int | None:
    """A refusal's Content-Length, when it gives exactly one valid one."""
    values = {v for n, v in headers if n == b"content-length"}
    if len(values) != 1:
        return None
    value = values.pop()
    return int(value) if value.isdigit() and len(value) <= 18 else None


def upgrade_refusal(headers: Headers) -> str | None:
    """Why a request (lower-case header names) is not a WebSocket upgrade the tunnel's server
    side takes, or None when it is one: Upgrade: websocket, Connection: upgrade, version 13,
    a valid key, and no body."""
    upgrade = [v for n, v in headers if n == b"upgrade"]
    connection = set().union(*(_tokens(v) for n, v in headers if n == b"connection"))
    versions = [v for n, v in headers if n == b"sec-websocket-version"]
    keys = [v for n, v in headers if n == b"sec-websocket-key"]
    if len(upgrade) != 1 or _tokens(upgrade[0]) != {b"websocket"}:
        return "Upgrade: websocket"
    if b"upgrade" not in connection:
        return "Connection: upgrade"
    if versions != [b"13"]:
        return "Sec-WebSocket-Version: 13"
    if len(keys) != 1 or not valid_key(keys[0]):
        return "a valid Sec-WebSocket-Key"
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return "no body"
    return None


def switching_protocols(key: bytes) -> bytes:
    """The server's 101 accepting the upgrade sent with `key`."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept_key(key)
    )

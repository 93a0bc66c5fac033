"""Dialling the tunnel's WebSocket as a client, against trio-websocket's server on loopback."""

from __future__ import annotations

import contextlib
import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agentserver.tunnel.dial import connect_websocket, open_websocket
from agentserver.tunnel.handshake import HandshakeError, Refused

CAP = 1 << 20


async def echo_server(nursery: trio.Nursery, seen: list[list[tuple[bytes, bytes]]]) -> int:
    """A trio-websocket server echoing binary messages; it records each request's headers."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        seen.append(list(request.headers))
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            pass

    listeners = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
    return int(listeners.port)


async def test_messages_go_both_ways_with_our_headers(nursery: trio.Nursery) -> None:
    """The upgrade carries our headers; messages of every size come back as sent."""
    seen: list[list[tuple[bytes, bytes]]] = []
    port = await echo_server(nursery, seen)
    url = f"ws://127.0.0.1:{port}/api/tunnel/abc?x=1"
    async with open_websocket(url, [(b"authorization", b"Bearer t")], max_message=CAP) as link:
        for size in (0, 10, 70_000, 300_000):
            message = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            await link.send_message(message)
            assert await link.get_message() == message
    assert (b"authorization", b"Bearer t") in seen[0]


async def test_a_refusal_carries_the_status_and_body(nursery: trio.Nursery) -> None:
    """A server answering 426 with a body raises `Refused` with both."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(426, body=b"tunnel protocol 9")

    listeners = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
    with pytest.raises(Refused) as refused:
        await connect_websocket(f"ws://127.0.0.1:{listeners.port}/", [], max_message=CAP)
    assert refused.value.status == 426
    assert refused.value.body == b"tunnel protocol 9"


async def answering(nursery: trio.Nursery, answer: bytes | None) -> int:
    """A TCP server that reads a request head and sends `answer` (None: never answers)."""

    async def handler(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        if answer is None:
            await trio.sleep_forever()
        await stream.send_all(answer)
        await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    return int(listeners[0].socket.getsockname()[1])


async def test_a_101_with_a_wrong_accept_is_refused(nursery: trio.Nursery) -> None:
    """An accept value for another key fails the handshake."""
    port = await answering(
        nursery,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    )
    with pytest.raises(HandshakeError):
        await connect_websocket(f"ws://127.0.0.1:{port}/", [], max_message=CAP)


async def test_a_server_that_never_answers_times_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """No answer within the connect timeout raises TooSlowError."""
    port = await answering(nursery, None)
    with pytest.raises(trio.TooSlowError):
        await connect_websocket(f"ws://127.0.0.1:{port}/", [], max_message=CAP, connect_timeout=30)


async def test_nothing_listening_is_an_os_error() -> None:
    """A refused TCP connection raises the OSError (the agent says "unreachable")."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(OSError):
        await connect_websocket(f"ws://127.0.0.1:{port}/", [], max_message=CAP)


def certificates(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for "localhost" from a fresh CA, and a client
    context trusting that CA (with the default checks: host name, chain)."""
    now = datetime.datetime.now(datetime.UTC)

    def issue(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: Any, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
            ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = issue("test CA", ca_key, ca_name, ca_key, ca=True)
    leaf = issue("localhost", server_key, ca_name, ca_key, ca=False)
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp / "leaf.pem", tmp / "key.pem")
    client = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    return server, client


async def tls_echo_server(nursery: trio.Nursery, context: ssl.SSLContext) -> int:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            while True:
                await ws.send_message(await ws.get_message())

    listeners = await nursery.start(
        trio_websocket.serve_websocket, handler, "127.0.0.1", 0, context
    )
    return int(listeners.port)


async def test_wss_verifies_the_server_for_the_urls_host(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Over wss:// a certificate for the URL's host from a trusted CA works; the same server
    is refused under the system's roots (untrusted) and under another host name."""
    server, client = certificates(tmp_path)
    port = await tls_echo_server(nursery, server)
    async with open_websocket(
        f"wss://localhost:{port}/", [], max_message=CAP, ssl_context=client
    ) as link:
        await link.send_message(b"over TLS")
        assert await link.get_message() == b"over TLS"
    with pytest.raises(trio.BrokenResourceError):  # default verification: an unknown CA
        await connect_websocket(f"wss://localhost:{port}/", [], max_message=CAP)
    with pytest.raises(trio.BrokenResourceError):  # the certificate names another host
        await connect_websocket(f"wss://127.0.0.1:{port}/", [], max_message=CAP, ssl_context=client)

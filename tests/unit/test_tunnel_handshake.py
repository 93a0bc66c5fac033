"""The tunnel WebSocket's opening handshake against wsproto's, both ways, and its refusals."""

from __future__ import annotations

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request

from agentserver.tunnel.handshake import (
    HandshakeError,
    Refused,
    accept_key,
    client_request,
    new_key,
    parse_response,
    switching_protocols,
    upgrade_refusal,
    valid_key,
)


def headers_of(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.removesuffix(b"\r\n\r\n").split(b"\r\n")[1:]
    return [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(b":") for line in lines)]


def test_the_rfc_example_key_is_accepted_as_the_rfc_says() -> None:
    """RFC 6455 §1.3's example: that key's accept value."""
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_wsproto_server_accepts_our_request_and_we_accept_its_answer() -> None:
    """Our client's request is one wsproto's server takes (with our headers), and its 101
    passes our checks."""
    key = new_key()
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(
        client_request("example.test:8080", "/api/tunnel/abc", key, [(b"x-a", b"1")])
    )
    request = next(server.events())
    assert isinstance(request, Request)
    assert request.target == "/api/tunnel/abc"
    assert (b"x-a", b"1") in request.extra_headers
    answer = server.send(AcceptConnection())
    assert parse_response(answer, key)


def test_a_wsproto_client_accepts_our_servers_answer() -> None:
    """What a wsproto client sends passes `upgrade_refusal`, and it accepts our 101."""
    client = WSConnection(ConnectionType.CLIENT)
    head = client.send(Request(host="example.test", target="/api/tunnel/abc"))
    headers = headers_of(head)
    assert upgrade_refusal(headers) is None
    key = dict(headers)[b"sec-websocket-key"]
    client.receive_data(switching_protocols(key))
    assert isinstance(next(client.events()), AcceptConnection)


def test_a_refusal_carries_its_status_and_a_wrong_accept_fails() -> None:
    """A non-101 answer is `Refused` with its status; a 101 with another key's accept fails."""
    key = new_key()
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client_request("h", "/", key, []))
    next(server.events())
    rejected = server.send(RejectConnection(status_code=426, has_body=False))
    with pytest.raises(Refused) as refused:
        parse_response(rejected, key)
    assert refused.value.status == 426
    with pytest.raises(HandshakeError):
        parse_response(switching_protocols(new_key()), key)


GOOD = [
    (b"upgrade", b"websocket"),
    (b"connection", b"keep-alive, Upgrade"),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
]


def replaced(name: bytes, value: bytes | None) -> list[tuple[bytes, bytes]]:
    kept = [(n, v) for n, v in GOOD if n != name]
    return kept if value is None else [*kept, (name, value)]


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (replaced(b"upgrade", None), "Upgrade: websocket"),
        (replaced(b"upgrade", b"h2c"), "Upgrade: websocket"),
        (replaced(b"connection", b"keep-alive"), "Connection: upgrade"),
        (replaced(b"sec-websocket-version", b"8"), "Sec-WebSocket-Version: 13"),
        (replaced(b"sec-websocket-key", b"short"), "a valid Sec-WebSocket-Key"),
        (replaced(b"sec-websocket-key", None), "a valid Sec-WebSocket-Key"),
        ([*GOOD, (b"content-length", b"5")], "no body"),
        ([*GOOD, (b"transfer-encoding", b"chunked")], "no body"),
    ],
)
def test_requests_that_are_no_plain_upgrade_are_refused(
    headers: list[tuple[bytes, bytes]], why: str
) -> None:
    """Each missing or wrong piece of the upgrade is named."""
    assert upgrade_refusal(GOOD) is None
    assert upgrade_refusal(headers) == why


def test_keys_must_be_16_bytes_of_base64() -> None:
    """A key of another length or not base64 is invalid."""
    assert valid_key(new_key())
    assert not valid_key(b"AAAAAAAAAAAAAAAAAAAAAA==="[:23])
    assert not valid_key(b"!" * 24)

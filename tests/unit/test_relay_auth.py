"""The relay credential between replicas, and what the owner forwards of a relayed request."""

from __future__ import annotations

import pytest

from agentserver.cluster.relay_auth import (
    HEADER,
    WINDOW,
    Nonces,
    Relayed,
    RelayRefused,
    carries_relay,
    sign,
    strip,
    verify,
)
from agentserver.proxy.relay import owner_headers

KEY = b"k" * 32
WHO = Relayed("replica-1", 42, "u1", read_only=False)
HOST = b"oc-abc.example.com"
NOW = 1_800_000_000.0


def test_a_credential_verifies_for_exactly_the_request_it_was_made_for() -> None:
    """What was signed comes back: the owner, generation and identity (no user: public)."""
    value = sign(KEY, WHO, "GET", HOST, b"/a?b=1", NOW)
    assert verify(KEY, value, "GET", HOST, b"/a?b=1", NOW + 1)[0] == WHO
    anonymous = Relayed("replica-1", 1, None, read_only=True)
    value = sign(KEY, anonymous, "WEBSOCKET", HOST, b"/pty", NOW)
    assert verify(KEY, value, "WEBSOCKET", HOST.upper(), b"/pty", NOW)[0] == anonymous


@pytest.mark.parametrize(
    ("key", "method", "host", "target", "now"),
    [
        (b"x" * 32, "GET", HOST, b"/a", NOW),  # another cluster's secret
        (KEY, "POST", HOST, b"/a", NOW),  # another method
        (KEY, "WEBSOCKET", HOST, b"/a", NOW),  # an upgrade instead of the GET
        (KEY, "GET", b"oc-abd.example.com", b"/a", NOW),  # another sandbox
        (KEY, "GET", HOST, b"/b", NOW),  # another path
        (KEY, "GET", HOST, b"/a?x", NOW),  # another query
        (KEY, "GET", HOST, b"/a", NOW + WINDOW + 1),  # too old
        (KEY, "GET", HOST, b"/a", NOW - WINDOW - 1),  # from the future
    ],
)
def test_a_credential_used_for_anything_else_is_refused(
    key: bytes, method: str, host: bytes, target: bytes, now: float
) -> None:
    """Changing any signed part of the request, the key, or waiting too long fails."""
    value = sign(KEY, WHO, "GET", HOST, b"/a", NOW)
    with pytest.raises(RelayRefused):
        verify(key, value, method, host, target, now)


@pytest.mark.parametrize(
    "value",
    [b"", b"v1", b"v2 a 1 2 3 - 0 ff", b"v1 a 1 2 3 - 0 ff", "v1 \u00e9".encode(), b"v1 " * 9],
)
def test_malformed_credentials_are_refused(value: bytes) -> None:
    """Garbage, another version or a guessed MAC never verifies."""
    with pytest.raises(RelayRefused):
        verify(KEY, value, "GET", HOST, b"/a", NOW)


def test_tampered_identity_fields_break_the_mac() -> None:
    """Turning a read-only member into a full one (or naming another owner) is refused."""
    value = sign(KEY, Relayed("r", 1, "u1", read_only=True), "GET", HOST, b"/", NOW).decode()
    parts = value.split(" ")
    for index, replacement in ((6, "0"), (1, "other"), (2, "2"), (5, "u2")):
        forged = " ".join([*parts[:index], replacement, *parts[index + 1 :]]).encode()
        with pytest.raises(RelayRefused):
            verify(KEY, forged, "GET", HOST, b"/", NOW)


def test_each_credential_is_accepted_once() -> None:
    """A nonce seen within the window is a replay; old ones are forgotten."""
    nonces = Nonces(window=10)
    _, nonce = verify(KEY, sign(KEY, WHO, "GET", HOST, b"/", NOW), "GET", HOST, b"/", NOW)
    assert nonces.first_use(nonce, NOW)
    assert not nonces.first_use(nonce, NOW + 5)
    assert nonces.first_use("another", NOW + 30)
    assert nonces.first_use(nonce, NOW + 30)  # its credential is expired by then anyway


def test_carries_relay_tells_relayed_requests_from_ordinary_ones() -> None:
    """No header of ours: ordinary. One credential: it. Twice, or any other name of ours: a
    refusal (empty)."""
    assert carries_relay([(b"host", HOST)]) is None
    assert carries_relay([(HEADER, b"v1 x")]) == b"v1 x"
    assert carries_relay([(HEADER, b"a"), (HEADER, b"b")]) == b""
    assert carries_relay([(b"x-agentserver-relay-stale", b"1")]) == b""


def test_the_owner_forwards_no_header_of_ours_nor_hop_by_hop_or_handshake_fields() -> None:
    """Into the tunnel go the first replica's rewritten headers, minus the relay's, Host and
    hop-by-hop fields (and a WebSocket's own handshake)."""
    headers = [
        (b"host", HOST),
        (HEADER, b"v1 ..."),
        (b"connection", b"keep-alive, x-drop"),
        (b"x-drop", b"1"),
        (b"authorization", b"Basic agent"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"sec-websocket-key", b"abc"),
        (b"upgrade", b"websocket"),
    ]
    assert owner_headers(headers, websocket=False) == [
        (b"authorization", b"Basic agent"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"sec-websocket-key", b"abc"),
    ]
    assert owner_headers(headers, websocket=True) == [
        (b"authorization", b"Basic agent"),
        (b"x-forwarded-for", b"10.0.0.1"),
    ]
    assert strip([(HEADER, b"x"), (b"a", b"b")]) == [(b"a", b"b")]

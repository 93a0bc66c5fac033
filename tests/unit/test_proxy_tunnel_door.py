"""Which request heads the front door serves as agents' tunnels itself (the rest: hypercorn)."""

from __future__ import annotations

import pytest

from agentserver.proxy.tunnel_door import ask_of, parse_tunnel_upgrade

GOOD = (
    b"GET /api/tunnel/abc-123?x=1 HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer t\r\n\r\n"
)


def test_a_plain_tunnel_upgrade_is_taken() -> None:
    """The sandbox id, query, host and headers are read from a well-formed upgrade."""
    upgrade = parse_tunnel_upgrade(GOOD)
    assert upgrade is not None
    assert (upgrade.sandbox_id, upgrade.query, upgrade.host) == ("abc-123", b"x=1", b"example.test")
    ask = ask_of(upgrade, "127.0.0.1")
    assert ask.authorization == "Bearer t"
    assert not ask.token_in_url


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"GET ", b"POST "),
        (b"/api/tunnel/abc-123", b"/api/tunnel/abc%2D123"),  # escapes: hypercorn decodes them
        (b"/api/tunnel/abc-123", b"/api/tunnel/abc/123"),
        (b"/api/tunnel/abc-123", b"/api/tunnels/abc"),
        (b"HTTP/1.1", b"HTTP/1.0"),
        (b"Host: example.test\r\n", b""),
        (b"Host: example.test\r\n", b"Host: a\r\nHost: b\r\n"),
        (b"Upgrade: websocket", b"Upgrade: h2c"),
        (b"Connection: Upgrade", b"Connection: keep-alive"),
        (b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
        (b"dGhlIHNhbXBsZSBub25jZQ==", b"bm90IGEga2V5"),
        (b"Authorization: Bearer t", b"Content-Length: 4"),
        (b"Authorization: Bearer t", b"Authorization: Bearer\r\n t"),  # obs-fold
    ],
)
def test_anything_else_is_left_to_hypercorn(old: bytes, new: bytes) -> None:
    """Each change makes the head one the door does not serve."""
    assert old in GOOD
    assert parse_tunnel_upgrade(GOOD.replace(old, new)) is None


@pytest.mark.parametrize("query", [b"token=x", b"a=1&token", b"%74oken=x"])
def test_a_token_in_the_query_is_seen_as_the_route_sees_it(query: bytes) -> None:
    """`token` in the query, however written, is noticed (and refused by the checks)."""
    upgrade = parse_tunnel_upgrade(GOOD.replace(b"x=1", query))
    assert upgrade is not None
    assert ask_of(upgrade, "127.0.0.1").token_in_url

"""The real client behind trusted proxies: only a trusted peer's forwarding headers count."""

from __future__ import annotations

import pytest

from agentserver.auth.client_address import client_address, parse_address
from agentserver.settings import parse_networks

TRUSTED = parse_networks("127.0.0.1, 10.0.0.0/8, fd00::/8")


@pytest.mark.parametrize(
    ("peer", "forwarded", "xff", "expected"),
    [
        # An untrusted peer is the client, whatever it claims.
        ("198.51.100.7", [], ["203.0.113.5"], "198.51.100.7"),
        ("198.51.100.7", ["for=203.0.113.5"], [], "198.51.100.7"),
        # A trusted proxy's report names the client.
        ("127.0.0.1", [], ["203.0.113.5"], "203.0.113.5"),
        # Entries a client wrote itself sit left of what the proxy appended and never count.
        ("127.0.0.1", [], ["1.1.1.1, 203.0.113.5"], "203.0.113.5"),
        ("127.0.0.1", [], ["1.1.1.1", "203.0.113.5"], "203.0.113.5"),
        # A chain of trusted proxies is walked through to the first untrusted hop.
        ("127.0.0.1", [], ["1.1.1.1, 203.0.113.5, 10.1.2.3"], "203.0.113.5"),
        # RFC 7239 Forwarded wins over X-Forwarded-For, with quotes, brackets and ports.
        ("127.0.0.1", ['for="[2001:db8::1]:4711";proto=https'], ["9.9.9.9"], "2001:db8::1"),
        ("127.0.0.1", ["for=1.1.1.1, for=203.0.113.5:1234"], [], "203.0.113.5"),
        # Nothing usable reported: the trusted peer itself is the client.
        ("127.0.0.1", [], [], "127.0.0.1"),
        ("127.0.0.1", [], ["unknown"], "127.0.0.1"),
        ("10.0.0.9", [], ["10.0.0.8"], "10.0.0.8"),
        # An IPv4-mapped IPv6 peer is matched against the IPv4 networks.
        ("::ffff:127.0.0.1", [], ["203.0.113.5"], "203.0.113.5"),
        (None, [], ["203.0.113.5"], "unknown"),
    ],
)
def test_client_address(
    peer: str | None, forwarded: list[str], xff: list[str], expected: str
) -> None:
    """Each peer/header combination yields the address a throttle should key on."""
    assert client_address(peer, TRUSTED, forwarded, xff) == expected


def test_without_trusted_proxies_headers_are_ignored() -> None:
    """With no trusted proxies configured, a loopback peer's X-Forwarded-For is not believed."""
    assert client_address("127.0.0.1", (), [], ["203.0.113.5"]) == "127.0.0.1"


def test_parse_address_forms() -> None:
    """Addresses come out of header entries with ports and brackets removed; junk is None."""
    assert str(parse_address(" 1.2.3.4:80 ")) == "1.2.3.4"
    assert str(parse_address('"[::1]:443"')) == "::1"
    assert str(parse_address("2001:db8::2")) == "2001:db8::2"
    assert parse_address("_hidden") is None


def test_bad_trusted_proxy_setting_names_the_item() -> None:
    """A value that is not an address or CIDR is refused with the offending item named."""
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33'"):
        parse_networks("127.0.0.1, 10.0.0.0/33")

"""Who the client really is behind trusted reverse proxies (pure).

Only a proxy we trust may tell us the client's address: a header from anyone else is ignored,
since any browser or script can send `X-Forwarded-For`. Proxies append the address they saw, so
the chain is read from the right: hops that are trusted proxies are skipped and the first one
that is not is the client. Entries further left were written by the client and never count.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from agentserver.settings import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# A `for=` parameter of RFC 7239: a token or a quoted string; IPv6 in brackets, maybe a port.
_FOR = re.compile(r'(?:^|[;,\s])for\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)', re.IGNORECASE)
_MAX_HOPS = 32  # a longer chain is cut: nobody runs that many proxies


def parse_address(text: str) -> IPAddress | None:
    """An address from a header entry: `1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `::1`, else None."""
    value = text.strip().strip('"').strip()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # IPv4 with a port (IPv6 has at least two colons)
        value = value.partition(":")[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def forwarded_chain(forwarded: Sequence[str], x_forwarded_for: Sequence[str]) -> list[str]:
    """The hops the proxies reported, leftmost first: `Forwarded` if sent, else X-Forwarded-For."""
    if forwarded:
        return [m.group(1) for value in forwarded for m in _FOR.finditer(value)]
    return [hop for value in x_forwarded_for for hop in value.split(",") if hop.strip()]


def client_address(
    peer: str | None,
    trusted: Sequence[IPNetwork],
    forwarded: Sequence[str] = (),
    x_forwarded_for: Sequence[str] = (),
) -> str:
    """The real client of a request that came from `peer` (its socket address)."""
    if peer is None:
        return "unknown"
    if not _is_trusted(parse_address(peer), trusted):
        return peer
    client = peer
    for hop in reversed(forwarded_chain(forwarded, x_forwarded_for)[-_MAX_HOPS:]):
        address = parse_address(hop)
        if address is None:
            # A trusted proxy wrote something that is not an address ("unknown", an obfuscated
            # name): the last address we could read is as close to the client as we get.
            return client
        client = str(address)
        if not _is_trusted(address, trusted):
            return client
    return client


def _is_trusted(address: IPAddress | None, trusted: Sequence[IPNetwork]) -> bool:
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in trusted)

"""Process sandboxes' addresses: one /30 each out of --sandbox-subnet, and their link names (pure).

Slot `n` of the subnet is its n-th /30: the host's end of the sandbox's veth pair has the first
address, the sandbox the second. The host's end is named `as<n>` (interface names are at most
15 characters): creating it claims the slot, so servers sharing a host never take the same one.
The namespace is named after the sandbox (`as-<id>`), so its leftovers are found by id.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterator
from dataclasses import dataclass

LINK_PREFIX = "as"
NAMESPACE_PREFIX = "as-"
INSIDE_LINK = "eth0"  # the sandbox's end, inside its namespace
MAX_SLOTS = 1 << 16  # `as65535` is 7 characters: far below the limit


@dataclass(frozen=True, slots=True)
class Slot:
    """One sandbox's /30: its link's name and both ends' addresses."""

    network: ipaddress.IPv4Network
    index: int

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((int(self.network.network_address) + 4 * self.index, 30))

    @property
    def host_address(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def sandbox_address(self) -> str:
        return str(self.subnet.network_address + 2)

    @property
    def link(self) -> str:
        return f"{LINK_PREFIX}{self.index}"


def slot_count(network: ipaddress.IPv4Network) -> int:
    """How many /30s the subnet holds (at most MAX_SLOTS)."""
    if network.prefixlen > 30:
        return 0
    return min(network.num_addresses // 4, MAX_SLOTS)


def slot_of_link(network: ipaddress.IPv4Network, name: str) -> Slot | None:
    """The slot a host-side link name claims (`as12` → slot 12), or None for other links."""
    digits = name.removeprefix(LINK_PREFIX)
    if digits == name or not digits.isdigit() or (digits != "0" and digits.startswith("0")):
        return None
    index = int(digits)
    return Slot(network, index) if index < slot_count(network) else None


def free_slots(network: ipaddress.IPv4Network, links: Collection[str]) -> Iterator[Slot]:
    """The slots no existing link claims, lowest first (the caller claims one by creating its
    link, and tries the next when another server was quicker)."""
    taken = {s.index for s in (slot_of_link(network, name) for name in links) if s is not None}
    for index in range(slot_count(network)):
        if index not in taken:
            yield Slot(network, index)


def namespace_name(sandbox_id: str) -> str:
    return f"{NAMESPACE_PREFIX}{sandbox_id}"


def sandbox_of_namespace(name: str) -> str | None:
    """The sandbox id a namespace name carries (`as-<id>`), or None for someone else's."""
    return name.removeprefix(NAMESPACE_PREFIX) if name.startswith(NAMESPACE_PREFIX) else None

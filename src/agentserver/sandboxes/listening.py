"""Which TCP ports a sandbox listens on, read from its network namespace's /proc/net/tcp{,6}.

Pure: it parses the kernel's table text. Each line after the header is
`sl local_address rem_address st ...`, the local address `HEXADDR:HEXPORT` (the address in the
kernel's byte order: 127.0.0.1 is 0100007F) and the state a hex code, 0A for LISTEN. A listener
on loopback only counts where the backend reaches loopback (the process backend passes
connections to the sandbox's address on to its loopback; a container's address does not).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

LISTEN = "0A"


def is_loopback(address: str) -> bool:
    """Whether a table's hex address is 127.0.0.0/8, ::1 or ::ffff:127.x (kernel byte order)."""
    address = address.upper()
    if len(address) == 8:
        return address.endswith("7F")
    return address == "0" * 24 + "01000000" or (
        address.startswith("0" * 16 + "FFFF0000") and address.endswith("7F")
    )


def listening_ports(
    tables: Iterable[str], exclude: Collection[int] = (), *, loopback: bool = True
) -> list[int]:
    """The sorted, distinct ports in LISTEN state in the given tcp/tcp6 tables, minus `exclude`
    (the agent's own port and any a backend uses itself) and, unless `loopback`, those listened
    on only at a loopback address. Malformed lines are skipped."""
    ports: set[int] = set()
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3].upper() != LISTEN:
                continue
            address, _, port_hex = fields[1].rpartition(":")
            if not loopback and is_loopback(address):
                continue
            try:
                port = int(port_hex, 16)
            except ValueError:
                continue
            if 0 < port < 65536 and port not in exclude:
                ports.add(port)
    return sorted(ports)

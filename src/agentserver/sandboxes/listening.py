"""Which TCP ports a sandbox listens on, read from its network namespace's /proc/net/tcp{,6}.

Pure: it parses the kernel's table text. Each line after the header is
`sl local_address rem_address st ...`, the local address `HEXADDR:HEXPORT` and the state a hex
code, 0A for LISTEN. Any address counts, loopback included: a backend that reaches loopback
listeners (the process backend forwards to them) shows them; one that does not may filter.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

LISTEN = "0A"


def listening_ports(tables: Iterable[str], exclude: Collection[int] = ()) -> list[int]:
    """The sorted, distinct ports in LISTEN state in the given tcp/tcp6 tables, minus `exclude`
    (the agent's own port and any a backend uses itself). Malformed lines are skipped."""
    ports: set[int] = set()
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3].upper() != LISTEN:
                continue
            _, _, port_hex = fields[1].rpartition(":")
            try:
                port = int(port_hex, 16)
            except ValueError:
                continue
            if 0 < port < 65536 and port not in exclude:
                ports.add(port)
    return sorted(ports)

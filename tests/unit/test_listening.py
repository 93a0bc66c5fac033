"""The previews list: LISTEN ports out of /proc/net/tcp{,6} text (sandboxes/listening.py)."""

from __future__ import annotations

from agentserver.sandboxes.listening import listening_ports

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1000 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1
   1: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2 1
   2: 0200FA0A:1000 0100FA0A:C350 01 00000000:00000000 00:00000000 00000000  1000        0 3 1
   3: 0100007F:1F90 0100007F:9C40 06 00000000:00000000 00:00000000 00000000  1000        0 4 1
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000000000000:1435 00000000000000000000000000000000:0000 0A 00000000
   1: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000
"""


def test_listen_lines_of_both_tables_give_sorted_distinct_ports() -> None:
    """Only LISTEN (0A) lines count, IPv4 and IPv6 alike, loopback included; a port in both
    tables is listed once; established and time-wait connections are not listening."""
    assert listening_ports([TCP, TCP6]) == [3000, 4096, 5173]


def test_excluded_ports_are_left_out() -> None:
    """The agent's own port is never offered as a preview."""
    assert listening_ports([TCP, TCP6], exclude={4096}) == [3000, 5173]


def test_headers_blank_and_malformed_lines_are_skipped() -> None:
    """A second table's header (as `cat tcp tcp6` gives), short lines and a bad port are
    skipped rather than failing the list."""
    text = TCP + TCP6.splitlines()[0] + "\n\n   9: 00000000:ZZZZ 00000000:0000 0A\n   7: x\n"
    assert listening_ports([text]) == [3000, 4096]


def test_an_empty_table_lists_nothing() -> None:
    """A namespace where nothing listens (or a table that could not be read) lists nothing."""
    assert listening_ports([]) == []
    assert listening_ports([TCP.splitlines()[0]]) == []


def test_loopback_only_listeners_can_be_left_out() -> None:
    """Where a backend cannot reach a sandbox's loopback (a container's address), ports
    listened on only at 127.x or ::1 are not previews; a port also on any address still is."""
    assert listening_ports([TCP, TCP6], loopback=False) == [4096, 5173]
    mapped = "h\n 0: 0000000000000000FFFF00000100007F:1F90 00:0000 0A\n"
    assert listening_ports([mapped], loopback=False) == []
    assert listening_ports([mapped]) == [8080]

"""The listener's connection budget (proxy/connections.py) and bare-LF heads (http1.py)."""

from __future__ import annotations

import resource

import pytest

from agentserver.http1 import has_bare_lf
from agentserver.proxy.connections import MIN_CAP, RESERVED_FILES, Connections, default_cap


def admitted(budget: Connections) -> int:
    key = budget.admit()
    assert key is not None
    return key


def test_under_the_cap_every_connection_is_admitted() -> None:
    """Below the cap each newcomer gets its own key and nothing is closed."""
    closed: list[int] = []
    budget = Connections(3)
    keys = [budget.admit() for _ in range(3)]
    for key in keys:
        assert key is not None
        budget.idle(key, lambda key=key: closed.append(key), 0.0)
    assert len(set(keys)) == 3
    assert budget.open == 3
    assert closed == []


def test_at_the_cap_the_connection_idle_longest_makes_room() -> None:
    """At the cap a newcomer closes the connection that became idle first, not the newest."""
    closed: list[str] = []
    budget = Connections(2)
    a, b = admitted(budget), admitted(budget)
    budget.idle(b, lambda: closed.append("b"), 0.0)
    budget.idle(a, lambda: closed.append("a"), 0.0)
    assert budget.admit() is not None
    assert closed == ["b"]
    assert budget.open == 2


def test_a_connection_idle_again_goes_to_the_back_of_the_line() -> None:
    """A connection that served a request and is idle again is no longer the oldest idle."""
    closed: list[str] = []
    budget = Connections(2)
    a, b = admitted(budget), admitted(budget)
    budget.idle(a, lambda: closed.append("a"), 0.0)
    budget.idle(b, lambda: closed.append("b"), 0.0)
    budget.busy(a)
    budget.idle(a, lambda: closed.append("a"), 0.0)
    budget.admit()
    assert closed == ["b"]


def test_with_every_connection_busy_a_newcomer_is_refused() -> None:
    """At the cap with no idle connection, admit says no and closes nothing."""
    closed: list[str] = []
    budget = Connections(1)
    a = admitted(budget)
    budget.idle(a, lambda: closed.append("a"), 0.0)
    budget.busy(a)
    assert budget.admit() is None
    assert closed == []


def test_releasing_frees_the_slot_and_a_closed_one_is_released_once() -> None:
    """A released key frees its slot; releasing one already closed for room changes nothing."""
    budget = Connections(1)
    a = admitted(budget)
    budget.idle(a, lambda: None, 0.0)
    b = admitted(budget)  # closes a
    budget.release(a)
    assert budget.open == 1
    budget.release(b)
    assert budget.open == 0
    assert budget.admit() is not None


def test_shutdown_closes_every_idle_connection_and_no_busy_one() -> None:
    """close_idle closes the waiting connections only."""
    closed: list[str] = []
    budget = Connections(5)
    a, _, c = admitted(budget), admitted(budget), admitted(budget)
    budget.idle(a, lambda: closed.append("a"), 0.0)
    budget.idle(c, lambda: closed.append("c"), 0.0)
    budget.close_idle()
    assert sorted(closed) == ["a", "c"]
    assert budget.idle_count == 0


def test_the_default_cap_leaves_room_for_other_files() -> None:
    """Without a setting the cap is half of what the open-files limit leaves after the reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = max(MIN_CAP, (soft - RESERVED_FILES) // 2)
    assert default_cap() == expected
    assert default_cap() + RESERVED_FILES < soft or soft == resource.RLIM_INFINITY


@pytest.mark.parametrize(
    ("head", "bare"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: h\r", False),  # the LF may still come
        (b"GET / HTTP/1.1\nHost: h\n\n", True),
        (b"GET / HTTP/1.1\r\nHost: h\n\r\n", True),
        (b"GET / HTTP/1.1\r\nX: a\nb\r\n\r\n", True),
    ],
)
def test_bare_lf_is_found_anywhere_in_a_head(head: bytes, bare: bool) -> None:
    """Any LF not preceded by CR marks the head malformed; CRLF line ends do not."""
    assert has_bare_lf(head, len(head)) is bare


def test_bare_lf_after_the_head_is_not_the_heads_concern() -> None:
    """Bytes past the head's end (a body) are not searched."""
    head = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n"
    assert not has_bare_lf(head + b"\n\n", len(head))


@pytest.mark.parametrize(
    ("head", "start", "bare"),
    [
        (b"GET / HTTP/1.1\r\n", 15, False),  # a CRLF split across two reads
        (b"GET / HTTP/1.1\r\nHost: h\n", 15, True),
        (b"GET / HTTP/1.1\nHost: h\r\n", 16, False),  # before `start`: searched already
    ],
)
def test_a_head_arriving_in_pieces_is_searched_from_where_the_last_piece_ended(
    head: bytes, start: int, bare: bool
) -> None:
    """With `start`, only the new bytes are searched, and a CRLF straddling it is no bare LF."""
    assert has_bare_lf(head, len(head), start) is bare


def test_connections_idle_since_the_cutoff_or_before_are_closed_oldest_first() -> None:
    """The keep-alive sweep closes (and forgets) exactly the connections idle since the cutoff
    or earlier; one that became busy, or idle again later, stays."""
    closed: list[str] = []
    budget = Connections(8)
    a, b, c, d = (admitted(budget) for _ in range(4))
    budget.idle(a, lambda: closed.append("a"), 10.0)
    budget.idle(b, lambda: closed.append("b"), 11.0)
    budget.idle(c, lambda: closed.append("c"), 12.0)
    budget.busy(b)
    budget.idle(d, lambda: closed.append("d"), 13.0)
    budget.idle(a, lambda: closed.append("a"), 14.0)  # idle anew: not since 10 any more
    assert budget.close_idle_since(13.0) == 2
    assert closed == ["c", "d"]
    assert budget.open == 2  # a (idle since 14) and b (busy)
    assert budget.close_idle_since(13.5) == 0
    assert budget.close_idle_since(14.0) == 1
    assert closed == ["c", "d", "a"]

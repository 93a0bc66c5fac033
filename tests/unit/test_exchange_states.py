"""The fast-path exchange's two state tables (proxy/exchange_states.py), without an event loop."""

from __future__ import annotations

import itertools

import pytest

from agentserver.proxy.exchange_states import (
    BROWSER_NEXT,
    ENDED,
    REPLY_NEXT,
    BadTransition,
    Browser,
    Reply,
    browser_moves,
    keeps_connection,
    reply_ends,
    reply_moves,
)


def test_every_state_has_a_row() -> None:
    """Each table names every state of its side, and only states of that side."""
    assert set(BROWSER_NEXT) == set(Browser)
    assert set(REPLY_NEXT) == set(Reply)
    assert all(to <= set(Browser) for to in BROWSER_NEXT.values())
    assert all(to <= set(Reply) for to in REPLY_NEXT.values())


@pytest.mark.parametrize(("now", "to"), list(itertools.product(Reply, Reply)))
def test_a_reply_moves_only_as_its_table_says(now: Reply, to: Reply) -> None:
    """A reply goes head first, then to one end; it never goes back or skips its head."""
    allowed = {
        (Reply.WAITING, Reply.SIZED),
        (Reply.WAITING, Reply.CHUNKED),
        (Reply.SIZED, Reply.COMPLETE),
        (Reply.SIZED, Reply.SHORT),
        (Reply.CHUNKED, Reply.COMPLETE),
    }
    if (now, to) in allowed:
        assert reply_moves(now, to) is to
    else:
        with pytest.raises(BadTransition):
            reply_moves(now, to)


@pytest.mark.parametrize(("now", "to"), list(itertools.product(Browser, Browser)))
def test_the_browser_moves_only_as_its_table_says(now: Browser, to: Browser) -> None:
    """The request side only goes forward: sending, sent, gone (gone from either)."""
    allowed = {
        (Browser.SENDING, Browser.SENT),
        (Browser.SENDING, Browser.GONE),
        (Browser.SENT, Browser.GONE),
    }
    if (now, to) in allowed:
        assert browser_moves(now, to) is to
    else:
        with pytest.raises(BadTransition):
            browser_moves(now, to)


@pytest.mark.parametrize(
    ("now", "declared", "sent", "body_allowed", "ends"),
    [
        (Reply.CHUNKED, None, 0, True, Reply.COMPLETE),
        (Reply.SIZED, 10, 10, True, Reply.COMPLETE),
        (Reply.SIZED, 10, 4, True, Reply.SHORT),
        (Reply.SIZED, 10, 0, False, Reply.COMPLETE),  # HEAD, 204, 304: no body follows
        (Reply.SIZED, None, 0, False, Reply.COMPLETE),
    ],
)
def test_a_reply_ends_short_only_below_its_declared_length(
    now: Reply, declared: int | None, sent: int, body_allowed: bool, ends: Reply
) -> None:
    """Only a body that stopped before the length its head declared ends SHORT."""
    assert reply_ends(now, declared, sent, body_allowed) is ends
    assert ends in ENDED


def test_a_reply_cannot_end_before_its_head() -> None:
    """Ending a reply whose head was never written is a bug, not a state."""
    with pytest.raises(BadTransition):
        reply_ends(Reply.WAITING, None, 0, True)


@pytest.mark.parametrize(
    ("browser", "reply", "unread", "closing"),
    list(itertools.product(Browser, Reply, (0, 5), (False, True))),
)
def test_only_a_whole_reply_to_a_read_request_keeps_the_connection(
    browser: Browser, reply: Reply, unread: int, closing: bool
) -> None:
    """The connection carries another request only after a COMPLETE reply, with the browser
    still there, its body read to the end and no `Connection: close` either way."""
    expected = (
        reply is Reply.COMPLETE and browser is not Browser.GONE and unread == 0 and not closing
    )
    assert keeps_connection(browser, reply, unread, closing) is expected

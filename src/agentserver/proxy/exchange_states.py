"""Where one fast-path exchange (proxy/exchange.py) stands, declared as two tables (pure).

An exchange has two sides that move independently: the browser hands its request over and
may leave at any moment (`Browser`), while the answer goes out head first, then its body,
framed by length or chunked (`Reply`). A browser that stopped reading may still be answered
(it half-closed its socket), so neither side's state says anything about the other's. Whether
the connection may carry another request afterwards is decided from both, once, by
`keeps_connection`.
"""

from __future__ import annotations

import enum


class Browser(enum.Enum):
    """The request side: what `receive` has handed the proxy so far."""

    SENDING = "the request body is still being handed to the proxy"
    SENT = "the whole request body was handed over; only the browser leaving is news now"
    GONE = "the browser closed its connection (or writing to it failed)"

    # Members are singletons, so identity is their equality; Enum's own hash reads the name
    # in Python, and these are looked up several times for every proxied request.
    __hash__ = object.__hash__


class Reply(enum.Enum):
    """The response side: what has been written to the browser so far."""

    WAITING = "nothing written yet"
    SIZED = "the head is out; a body of the length it declares follows (or none may)"
    CHUNKED = "the head is out; a chunked body follows"
    COMPLETE = "written to the end its head framed"
    SHORT = "ended before the length its head declared: the browser cannot find the next reply"

    __hash__ = object.__hash__  # as Browser's


# The members as module names too: loading an attribute of an Enum class is not specialised by
# CPython 3.11 (about 50 ns more than a global), and the fast path reads these on every request.
SENDING, SENT, GONE = Browser.SENDING, Browser.SENT, Browser.GONE
WAITING, SIZED, CHUNKED = Reply.WAITING, Reply.SIZED, Reply.CHUNKED
COMPLETE, SHORT = Reply.COMPLETE, Reply.SHORT

BROWSER_NEXT: dict[Browser, frozenset[Browser]] = {
    SENDING: frozenset({SENT, GONE}),
    SENT: frozenset({GONE}),
    GONE: frozenset(),
}
REPLY_NEXT: dict[Reply, frozenset[Reply]] = {
    WAITING: frozenset({SIZED, CHUNKED}),
    SIZED: frozenset({COMPLETE, SHORT}),
    CHUNKED: frozenset({COMPLETE}),
    COMPLETE: frozenset(),
    SHORT: frozenset(),
}
ENDED = frozenset({COMPLETE, SHORT})


class BadTransition(RuntimeError):
    """A move the tables do not allow: a bug in the exchange, never the browser's doing."""


def browser_moves(now: Browser, to: Browser) -> Browser:
    """`to`, if the request side may go there from `now`."""
    if to not in BROWSER_NEXT[now]:
        raise BadTransition(f"the browser cannot go from {now.name} to {to.name}")
    return to


def reply_moves(now: Reply, to: Reply) -> Reply:
    """`to`, if the response side may go there from `now`."""
    if to not in REPLY_NEXT[now]:
        raise BadTransition(f"a reply cannot go from {now.name} to {to.name}")
    return to


def reply_ends(now: Reply, declared: int | None, sent: int, body_allowed: bool) -> Reply:
    """Where a reply written to its end goes from `now`: COMPLETE when the browser can tell
    where it stops (chunked, no body allowed, or exactly the length declared), else SHORT."""
    framed = now is CHUNKED or not body_allowed or declared is None or sent == declared
    return reply_moves(now, COMPLETE if framed else SHORT)


def keeps_connection(browser: Browser, reply: Reply, unread: int, closing: bool) -> bool:
    """Whether the connection may carry another request: the reply was written whole and
    framed, the browser is still there, its request body was read to the end, and neither
    side said `Connection: close`."""
    return reply is COMPLETE and browser is not GONE and unread == 0 and not closing

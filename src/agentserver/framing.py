"""Request bodies held to their declared length, for every writer of a forwarded request (pure).

The subdomain proxy's TCP and tunnel upstreams and the local agent each write a request whose
framing they set themselves; a body that does not match the length they declared must never
become a complete request on the other side.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from agentserver.errors import Invalid


class BadFraming(Invalid):
    """A request whose body the parties on its path could delimit differently (RFC 9112 §6.3,
    §11.2): it is refused, never forwarded."""

    code = "bad_framing"


class BodyMismatch(BadFraming):
    """The request body's byte count differs from the length its head declared: the request
    must not be completed, and the connection that carried part of it must be closed."""


def exactly(body: AsyncIterable[bytes], length: int | None) -> AsyncIterator[bytes]:
    """`body`'s non-empty pieces, held to its declared `length` (None: any length, which the
    writer sends chunked): BodyMismatch when it runs longer or ends shorter. The bytes that
    complete the declared length are held back until the body is seen to end there, so the
    receiver never gets a complete request whose body was not exactly the one declared."""
    return _Exactly(body, length)


class _Exactly:
    """`exactly` as a plain iterator: it runs on every proxied request, and an async generator
    costs more there (trio registers each one for finalization)."""

    def __init__(self, body: AsyncIterable[bytes], length: int | None) -> None:
        self._body = aiter(body)
        self._length = length
        self._sent = 0
        self._held = b""  # the piece that completes the length, until the body ends
        self._ended = False

    def __aiter__(self) -> _Exactly:
        return self

    async def __anext__(self) -> bytes:
        # Pure (no trio here): the body it wraps checkpoints; a piece held back at the end is
        # handed out without awaiting anything (flake8-async's ASYNC910 is silenced for that).
        while not self._ended:
            try:
                piece = await anext(self._body)
            except StopAsyncIteration:
                self._ended = True
                if self._length is not None and self._sent != self._length:
                    raise BodyMismatch(
                        "the request body is shorter than its Content-Length"
                    ) from None
                break
            if not piece:
                continue
            if self._length is None:
                return piece  # noqa: ASYNC910
            if self._sent + len(piece) > self._length:
                raise BodyMismatch("the request body is longer than its Content-Length")
            self._sent += len(piece)
            if self._sent < self._length:
                return piece  # noqa: ASYNC910
            self._held = piece
        held, self._held = self._held, b""
        if held:
            return held  # noqa: ASYNC910
        raise StopAsyncIteration

"""Request bodies held to their declared length, for every writer of a forwarded request (pure).

The subdomain proxy's TCP and tunnel upstreams and the local agent each write a request whose
framing they set themselves; a body that does not match the length they declared must never
become a complete request on the other side.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from agentserver.errors import Invalid


class BodyMismatch(Invalid):
    """The request body's byte count differs from the length its head declared: the request
    must not be completed, and the connection that carried part of it must be closed."""

    code = "bad_framing"


async def exactly(body: AsyncIterable[bytes], length: int | None) -> AsyncIterator[bytes]:
    """`body`'s non-empty pieces, held to its declared `length` (None: any length, which the
    writer sends chunked): BodyMismatch when it runs longer or ends shorter. The bytes that
    complete the declared length are held back until the body is seen to end there, so the
    receiver never gets a complete request whose body was not exactly the one declared."""
    if length is None:
        async for piece in body:
            if piece:
                yield piece
        return
    sent = 0
    last = b""
    async for piece in body:
        if not piece:
            continue
        if sent + len(piece) > length:
            raise BodyMismatch("the request body is longer than its Content-Length")
        sent += len(piece)
        if sent < length:
            yield piece
        else:
            last = piece
    if sent != length:
        raise BodyMismatch("the request body is shorter than its Content-Length")
    if last:
        yield last

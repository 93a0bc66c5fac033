"""The request side of the agent's client to the local opencode: a head checked and serialized
with `agentserver.http1`, and a body framed by its length or chunked.

The check stands where h11 (and httpx before it) stood: a method, target, header name or value
that HTTP/1.1 cannot carry is refused before a byte is sent. The tunnel's frame decoding
(tunnel/frames.py) already refuses names that are not tokens and CR, LF or NUL in values, but
not every field reaches the client from there (Host and Authorization are ours) and it lets
other controls and surrounding whitespace through, so the client checks every head itself.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Sequence

from agentserver.agent.local_connection import Connection
from agentserver.http1 import LAST_CHUNK, chunk, request_head

# RFC 9110 §5.6.2 tokens; field values of visible ASCII or obs-text with inner SP/HTAB only
# (RFC 9110 §5.5). Names and values are each checked joined by LF, which none of them may
# contain (the count of LFs proves it), so a head costs two regex runs, not two per field.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE = rb"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?"
_NAME = re.compile(_TOKEN)
_FIELD_VALUE = re.compile(_VALUE)
_TARGET = re.compile(rb"[\x21-\x7e]+")
_NAMES = re.compile(_TOKEN + rb"(?:\n" + _TOKEN + rb")*")
_VALUES = re.compile(_VALUE + rb"(?:\n" + _VALUE + rb")*")


class LengthMismatch(Exception):
    """A request body of more or fewer bytes than the Content-Length it was sent with."""


class Request:
    """A request ready to go: its serialized head and what sending it and reading its answer
    need."""

    __slots__ = ("head", "keep_alive", "length", "method")

    def __init__(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], length: int | None
    ) -> None:
        """`headers` complete, framing included (`length`: the Content-Length among them,
        None when the body, if any, goes chunked); ValueError names what HTTP/1.1 cannot
        carry."""
        self.head = encode_head(method, target, headers)
        self.method = method.encode("latin-1")
        self.length = length
        # The connection may carry another exchange unless the request said it closes.
        self.keep_alive = not any(
            len(n) == 10 and n.lower() == "connection" and "close" in v.lower() for n, v in headers
        )


def encode_head(method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """The serialized request head, or ValueError naming what HTTP/1.1 cannot carry."""
    verb, path = method.encode("latin-1"), target.encode("latin-1")
    fields = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
    if not _NAME.fullmatch(verb):
        raise ValueError(f"illegal method {method!r}")
    if not _TARGET.fullmatch(path):
        raise ValueError(f"illegal target {target!r}")
    names = b"\n".join([n for n, _ in fields])
    values = b"\n".join([v for _, v in fields])
    lines = len(fields) - 1
    if fields and not (
        _NAMES.fullmatch(names)
        and _VALUES.fullmatch(values)
        and names.count(b"\n") == lines
        and values.count(b"\n") == lines
    ):
        for (name, value), (raw_name, raw_value) in zip(headers, fields, strict=True):
            if not _NAME.fullmatch(raw_name):  # the slow path names the culprit
                raise ValueError(f"illegal header name {name!r}")
            if not _FIELD_VALUE.fullmatch(raw_value):
                raise ValueError(f"illegal header value {value!r} for {name!r}")
    return request_head(verb, path, fields)


async def send_body(conn: Connection, body: AsyncIterable[bytes], length: int | None) -> None:
    """The whole body: exactly `length` bytes as they come, or chunked when it is None."""
    sent = 0
    async for data in body:
        if not data:
            continue
        sent += len(data)
        if length is None:
            await conn.send(chunk(data))
        elif sent > length:
            raise LengthMismatch("the request body is longer than its Content-Length")
        else:
            await conn.send(data)
    if length is None:
        await conn.send(LAST_CHUNK)
    elif sent < length:
        raise LengthMismatch("the request body is shorter than its Content-Length")

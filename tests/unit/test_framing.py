"""A request body held to its declared length (agentserver/framing.py): Hypothesis over any
chunking, and what a receiver may have seen when the body does not match."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from agentserver.framing import BodyMismatch, exactly


async def pieces(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        await trio.lowlevel.checkpoint()
        yield part


def run(parts: list[bytes], length: int | None) -> tuple[list[bytes], bool]:
    """What `exactly` hands on before it ends, and whether it raised BodyMismatch."""
    out: list[bytes] = []

    async def main() -> bool:
        try:
            async for piece in exactly(pieces(parts), length):
                out.append(piece)
        except BodyMismatch:
            return True
        return False

    return out, trio.run(main)


@given(st.lists(st.binary(max_size=20), max_size=8), st.integers(0, 100) | st.none())
def test_a_body_passes_whole_only_when_it_matches_its_length(
    parts: list[bytes], length: int | None
) -> None:
    """A body passes unchanged exactly when its size is the declared one (or none is declared);
    otherwise BodyMismatch, and what went out is a part short of the declared length."""
    out, mismatch = run(parts, length)
    body = b"".join(parts)
    if length is None or len(body) == length:
        assert (b"".join(out), mismatch) == (body, False)
        assert b"" not in out  # an empty piece would end a chunked body
    else:
        sent = b"".join(out)
        assert mismatch
        assert len(sent) < length or not sent
        assert body.startswith(sent)


@pytest.mark.parametrize(
    ("parts", "length", "handed_on"),
    [
        ([b"abc", b"def"], 3, [b""]),  # "abc" completes the length: held, then "def" is too much
        ([b"abc", b"def"], 4, [b"abc"]),
        ([b"ab"], 3, [b"ab"]),
    ],
)
def test_the_bytes_completing_a_length_wait_for_the_end(
    parts: list[bytes], length: int, handed_on: list[bytes]
) -> None:
    """On a mismatch, a receiver got at most the bytes before the declared end: never a
    complete request."""
    out, mismatch = run(parts, length)
    assert mismatch
    assert b"".join(out) == b"".join(handed_on)

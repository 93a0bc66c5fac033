"""How frames travel in link messages: one frame, or a batch of them, and on byte streams each
message behind its length.

A message is normally one frame (`frames.encode`). A side whose Hello announced ``"batch": true``
also takes a batch: several frames in one message, so a response's head, body and end cost the
link (WebSocket framing, the ASGI server's queues, a system call and a wake-up of the peer) once
instead of three times::

    [u32 0][u32 length N1][N1 bytes: one frame][u32 length N2][N2 bytes: one frame]...

A single frame's message never starts with four zero bytes (its JSON header is never empty), so
the two forms cannot be confused; a peer that did not announce batches is never sent one.

On byte streams (not message-oriented), each message is additionally prefixed with its u32
length (`frame_message`); `FrameDecoder` reassembles frames from arbitrary chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final

from .frames import (
    DEFAULT_MAX_PAYLOAD,
    MAX_HEADER,
    MAX_MAX_PAYLOAD,
    Data,
    Frame,
    ProtocolError,
    decode,
    header_bytes,
)

_LEN: Final = 4
BATCH_MARK: Final = bytes(_LEN)


def pack(frames: Sequence[Frame], *, batch: bool, limit: int) -> Iterator[tuple[bytes, int]]:
    """The messages carrying `frames` in order, each with the Data payload bytes it holds.

    With `batch`, consecutive frames share a message while it stays within `limit` bytes (the
    peer's frame payload limit: its link takes that plus a header); a frame that alone exceeds
    it, such as a full Data frame, travels on its own, as does every frame without `batch`.
    """
    group: list[tuple[bytes, bytes]] = []  # (header, payload) of each frame in the batch
    size = _LEN
    for frame in frames:
        header = header_bytes(frame)
        payload = frame.payload if type(frame) is Data else b""
        cost = 2 * _LEN + len(header) + len(payload)
        if group and (not batch or size + cost > limit):
            yield _message(group)
            group, size = [], _LEN
        group.append((header, payload))
        size += cost
    if group:
        yield _message(group)


def _message(group: list[tuple[bytes, bytes]]) -> tuple[bytes, int]:
    data = sum(len(payload) for _, payload in group)
    if len(group) == 1:
        header, payload = group[0]
        return b"".join((len(header).to_bytes(_LEN, "big"), header, payload)), data
    parts = [BATCH_MARK]
    for header, payload in group:
        parts += (
            (_LEN + len(header) + len(payload)).to_bytes(_LEN, "big"),
            len(header).to_bytes(_LEN, "big"),
            header,
            payload,
        )
    return b"".join(parts), data


def unpack(
    message: bytes | bytearray | memoryview,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    max_header: int = MAX_HEADER,
) -> list[Frame]:
    """The frames in one message (one, or a batch); `ProtocolError` if any is malformed."""
    view = memoryview(message)
    if view[:_LEN] != BATCH_MARK:
        return [decode(view, max_payload=max_payload, max_header=max_header)]
    frames: list[Frame] = []
    position = _LEN
    while position < len(view):
        if len(view) - position < _LEN:
            raise ProtocolError("a batch ends in the middle of a frame's length")
        size = int.from_bytes(view[position : position + _LEN], "big")
        start = position + _LEN
        position = start + size
        if position > len(view):
            raise ProtocolError("a frame's length runs beyond the end of its batch")
        # A batch inside a batch fails here: its header length of 0 is no JSON object.
        frames.append(decode(view[start:position], max_payload=max_payload, max_header=max_header))
    if not frames:
        raise ProtocolError("an empty batch")
    return frames


# ---------------------------------------------------------------- byte streams


def frame_message(message: bytes) -> bytes:
    """`message` with the u32 length prefix used on byte-stream transports."""
    return len(message).to_bytes(_LEN, "big") + message


class MessageBuffer:
    """Splits a byte stream of length-prefixed messages into messages, whatever the chunking."""

    def __init__(self, max_message: int = _LEN + MAX_HEADER + MAX_MAX_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._start = 0
        self._max_message = max_message

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buffer) - self._start

    def next_message(self) -> bytes | None:
        """The next complete message, or None until more bytes arrive."""
        buffer, start = self._buffer, self._start
        if len(buffer) - start < _LEN:
            return None
        size = int.from_bytes(buffer[start : start + _LEN], "big")
        if size > self._max_message:
            raise ProtocolError(f"message of {size} bytes exceeds {self._max_message}")
        end = start + _LEN + size
        if len(buffer) < end:
            return None
        with memoryview(buffer) as view:  # one copy (a bytearray slice would make two)
            message = bytes(view[start + _LEN : end])
        if end * 2 >= len(buffer):  # compact once most of the buffer is consumed: amortised O(1)
            del buffer[:end]
            self._start = 0
        else:
            self._start = end
        return message


class FrameDecoder:
    """Decodes frames from a byte stream of length-prefixed messages fed in arbitrary chunks."""

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD, max_header: int = MAX_HEADER):
        self._messages = MessageBuffer(_LEN + max_header + max_payload)
        self._max_payload = max_payload
        self._max_header = max_header

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Every frame completed by `data`, in order."""
        self._messages.feed(data)
        frames = []
        while (message := self._messages.next_message()) is not None:
            frame = decode(message, max_payload=self._max_payload, max_header=self._max_header)
            frames.append(frame)
        return frames

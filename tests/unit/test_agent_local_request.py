"""Tests for the request side of the agent's client (agent/local_request.py, pure): a head
written as HTTP/1.1 with `http1.request_head`, and refused whole when a method, target, header
name or value cannot travel in it, never looser than h11 was."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentserver.agent.local_request import Request, encode_head

FIELDS = [("host", "127.0.0.1:4096"), ("x-a", "é; q=1"), ("x-b", "a\tb  c"), ("x-empty", "")]


def test_a_head_is_the_request_line_then_each_field_in_order() -> None:
    """The request line, every field as given (repeats, obs-text, inner whitespace, empty
    values kept), then the blank line."""
    assert encode_head("GET", "/p?q=1", FIELDS) == (
        b"GET /p?q=1 HTTP/1.1\r\nhost: 127.0.0.1:4096\r\nx-a: \xe9; q=1\r\n"
        b"x-b: a\tb  c\r\nx-empty: \r\n\r\n"
    )


@pytest.mark.parametrize(
    ("method", "target", "fields", "culprit"),
    [
        ("GE T", "/", [], "method"),
        ("GET", "/a b", [], "target"),
        ("GET", "/\x7f", [], "target"),
        ("GET", "/", [("x-a", "1\r\nx-evil: 1")], "header value"),
        ("GET", "/", [("x-a", "1\nx-b")], "header value"),
        ("GET", "/", [("x-a", "1\x00")], "header value"),
        ("GET", "/", [("x-a", "\x01")], "header value"),
        ("GET", "/", [("x-a", " 1")], "header value"),
        ("GET", "/", [("x-a", "1\t")], "header value"),
        ("GET", "/", [("x a", "1")], "header name"),
        ("GET", "/", [("x: y", "1")], "header name"),
        ("GET", "/", [("", "1")], "header name"),
        ("GET", "/", [("x\nb", "1")], "header name"),
    ],
)
def test_what_http_1_1_cannot_carry_is_refused_naming_it(
    method: str, target: str, fields: list[tuple[str, str]], culprit: str
) -> None:
    """A method or header name that is not a token, a target with a space or control, a
    value with a line break, a control or surrounding whitespace: ValueError naming which."""
    with pytest.raises(ValueError, match=f"illegal {culprit}"):
        encode_head(method, target, [("host", "x"), *fields, ("x-z", "ok")])


def test_a_request_knows_its_framing_and_whether_it_keeps_the_connection() -> None:
    """The Content-Length it was given, and keep-alive unless a Connection field says close."""
    request = Request("POST", "/", [("host", "x"), ("content-length", "3")], 3)
    assert (request.method, request.length, request.keep_alive) == (b"POST", 3, True)
    assert not Request("GET", "/", [("host", "x"), ("Connection", "Close")], None).keep_alive


def _h11_accepts(name: str, value: str) -> bool:
    """Whether h11 took the field, encoded as the client gave it to h11 (latin-1)."""
    field = (name.encode("latin-1"), value.encode("latin-1"))
    try:
        h11.Request(method="GET", target=b"/", headers=[(b"host", b"x"), field])
    except h11.LocalProtocolError:
        return False
    return True


_LATIN1 = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=8)


@given(name=_LATIN1, value=_LATIN1)
def test_nothing_h11_refused_is_sent(name: str, value: str) -> None:
    """Whatever field this client writes, h11 (which it replaced) would have written too: the
    check is never looser than h11's, so no head it stopped goes out now."""
    try:
        encode_head("GET", "/", [("host", "x"), (name, value)])
    except ValueError:
        return
    assert _h11_accepts(name, value)

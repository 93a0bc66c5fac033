"""Header rewriting for the subdomain proxy: table tests of proxy/headers.py (pure)."""

from __future__ import annotations

import base64

import pytest

from agentserver.kinds import authorization
from agentserver.models import SandboxType
from agentserver.proxy.headers import (
    Forwarding,
    connection_tokens,
    cookie_values,
    framing_headers,
    request_headers,
    response_headers,
    rewrite_set_cookie,
    strip_cookies,
    websocket_headers,
)

FWD = Forwarding(client_ip="10.0.0.7", proto="https", host=b"oc-abc.example.com")
AUTH = authorization(SandboxType.OPENCODE, "s3cret")


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [n for n, _ in headers]


def values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        (b"agentserver_session=main; theme=dark", b"theme=dark"),
        (b"theme=dark; agentserver_sandbox=tok; lang=en", b"theme=dark; lang=en"),
        (b"agentserver_session=a; agentserver_sandbox=b", b""),
        (b"a=1;b=2", b"a=1; b=2"),
        (b"agentserver_sandboxx=1", b"agentserver_sandboxx=1"),
        (b" ; ;", b""),
    ],
)
def test_strip_cookies(cookie: bytes, expected: bytes) -> None:
    """Only our own cookies are removed from a Cookie header; the sandbox's cookies stay."""
    assert strip_cookies(cookie) == expected


REQUEST_CASES = [
    # (incoming, must include, must not include names/values)
    (
        [(b"host", b"oc-abc.example.com"), (b"accept", b"*/*")],
        [(b"host", b"oc-abc.example.com"), (b"accept", b"*/*"), (b"authorization", AUTH)],
        [],
    ),
    (
        [(b"authorization", b"Bearer stolen"), (b"proxy-authorization", b"x")],
        [(b"authorization", AUTH)],
        [(b"authorization", b"Bearer stolen"), (b"proxy-authorization", b"x")],
    ),
    (
        [(b"cookie", b"agentserver_session=MAIN; agentserver_sandbox=SBX; keep=1")],
        [(b"cookie", b"keep=1")],
        [(b"cookie", b"agentserver_session=MAIN; agentserver_sandbox=SBX; keep=1")],
    ),
    ([(b"cookie", b"agentserver_sandbox=SBX")], [], [(b"cookie", b"")]),
    (
        [
            (b"connection", b"keep-alive, x-secret"),
            (b"x-secret", b"1"),
            (b"keep-alive", b"300"),
            (b"te", b"trailers"),
            (b"upgrade", b"h2c"),
            (b"transfer-encoding", b"chunked"),
            (b"x-other", b"2"),
        ],
        [(b"x-other", b"2")],
        [
            (b"x-secret", b"1"),
            (b"keep-alive", b"300"),
            (b"te", b"trailers"),
            (b"upgrade", b"h2c"),
            (b"connection", b"keep-alive, x-secret"),
            (b"transfer-encoding", b"chunked"),
        ],
    ),
    (
        [
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"x-forwarded-proto", b"gopher"),
            (b"x-forwarded-host", b"evil"),
            (b"forwarded", b"for=evil"),
            (b"x-real-ip", b"9.9.9.9"),
        ],
        [
            (b"x-forwarded-for", b"1.2.3.4, 10.0.0.7"),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", b"oc-abc.example.com"),
        ],
        [
            (b"x-forwarded-proto", b"gopher"),
            (b"x-forwarded-host", b"evil"),
            (b"forwarded", b"for=evil"),
            (b"x-real-ip", b"9.9.9.9"),
        ],
    ),
]


@pytest.mark.parametrize(("incoming", "present", "absent"), REQUEST_CASES)
def test_request_headers(
    incoming: list[tuple[bytes, bytes]],
    present: list[tuple[bytes, bytes]],
    absent: list[tuple[bytes, bytes]],
) -> None:
    """Upstream requests carry the agent's credentials and forwarding facts, never ours."""
    out = request_headers(incoming, AUTH, FWD)
    for item in present:
        assert item in out
    for item in absent:
        assert item not in out
    assert values(out, b"authorization") == [AUTH]
    assert len(values(out, b"x-forwarded-for")) == 1


def test_request_headers_never_carry_the_clients_framing() -> None:
    """Content-Length and Transfer-Encoding are the writer's to set: none the client sent
    survives (proxy/upstream.py frames the body it actually sends)."""
    incoming = [(b"content-length", b"5"), (b"transfer-encoding", b"chunked"), (b"x-a", b"1")]
    out = request_headers(incoming, AUTH, FWD)
    assert b"content-length" not in names(out)
    assert b"transfer-encoding" not in names(out)
    assert (b"x-a", b"1") in out


def test_connection_cannot_remove_framing_or_host() -> None:
    """A Connection list naming Content-Length, Transfer-Encoding or Host removes none of them
    from the hop-by-hop set it defines, and Host still reaches the agent."""
    incoming = [
        (b"host", b"oc-abc.example.com"),
        (b"connection", b"Content-Length, HOST, x-a ,Transfer-Encoding"),
        (b"x-a", b"1"),
    ]
    assert connection_tokens(incoming) == {b"x-a"}
    out = request_headers(incoming, AUTH, FWD)
    assert values(out, b"host") == [b"oc-abc.example.com"]
    assert b"x-a" not in names(out)


@pytest.mark.parametrize(
    ("method", "length", "expected"),
    [
        (b"GET", 0, []),
        (b"POST", 0, [(b"content-length", b"0")]),
        (b"GET", 12, [(b"content-length", b"12")]),
        (b"PUT", None, [(b"transfer-encoding", b"chunked")]),
    ],
)
def test_framing_headers(
    method: bytes, length: int | None, expected: list[tuple[bytes, bytes]]
) -> None:
    """A body is framed by its length, chunked when unknown, and a bodiless GET by nothing."""
    assert framing_headers(method, length) == expected


def test_request_headers_without_client_ip() -> None:
    """With no known client address no empty X-Forwarded-For is invented."""
    out = request_headers([], AUTH, Forwarding(None, "http", b"h"))
    assert b"x-forwarded-for" not in names(out)


def test_auth_values() -> None:
    """opencode gets Basic opencode:<secret>; OpenClaw gets Bearer <token>."""
    opencode = authorization(SandboxType.OPENCODE, "pw")
    assert opencode.startswith(b"Basic ")
    assert base64.b64decode(opencode.split(b" ")[1]) == b"opencode:pw"
    assert authorization(SandboxType.OPENCLAW, "tok") == b"Bearer tok"


def test_websocket_headers_leave_handshake_to_the_client_library() -> None:
    """The upstream WebSocket handshake gets our auth but not the browser's handshake fields."""
    incoming = [
        (b"host", b"h"),
        (b"origin", b"http://h"),
        (b"sec-websocket-key", b"k"),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", b"p"),
        (b"upgrade", b"websocket"),
        (b"connection", b"upgrade"),
        (b"cookie", b"agentserver_sandbox=S; t=1"),
        (b"user-agent", b"ua"),
    ]
    out = websocket_headers(incoming, AUTH, FWD)
    assert set(names(out)) == {
        b"cookie",
        b"user-agent",
        b"authorization",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
    assert values(out, b"cookie") == [b"t=1"]


@pytest.mark.parametrize(
    ("set_cookie", "expected"),
    [
        (b"agentserver_session=x; Path=/", None),
        (b"agentserver_sandbox=x; Domain=example.com", None),
        (b"theme=dark; Path=/; HttpOnly", b"theme=dark; Path=/; HttpOnly"),
        (b"theme=dark; Domain=example.com; Path=/", b"theme=dark; Path=/"),
        (b"theme=dark; domain=.example.com", b"theme=dark"),
        (b"=nameless", None),
    ],
)
def test_rewrite_set_cookie(set_cookie: bytes, expected: bytes | None) -> None:
    """A sandbox can never set our cookies, nor widen its cookies beyond its own host."""
    assert rewrite_set_cookie(set_cookie) == expected


def test_response_headers() -> None:
    """Responses lose hop-by-hop fields, CORS grants and unsafe cookies; repeats are kept."""
    incoming = [
        (b"Content-Type", b"text/html"),
        (b"connection", b"close, x-hop"),
        (b"x-hop", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"keep-alive", b"timeout=5"),
        (b"access-control-allow-origin", b"*"),
        (b"access-control-allow-credentials", b"true"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"agentserver_session=evil"),
        (b"set-cookie", b"b=2; Domain=example.com"),
        (b"x-keep", b"yes"),
    ]
    out = response_headers(incoming)
    assert out == [
        (b"content-type", b"text/html"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"x-keep", b"yes"),
    ]


def test_cookie_values_finds_every_copy() -> None:
    """All values of our cookie are found (a tossed duplicate must not hide the real one)."""
    headers = [
        (b"cookie", b"agentserver_sandbox=one; x=1"),
        (b"cookie", b'agentserver_sandbox="two"'),
    ]
    assert cookie_values(headers, "agentserver_sandbox") == ["one", "two"]
    assert cookie_values(headers, "missing") == []

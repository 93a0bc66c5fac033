"""The LLM proxy's request rewriting and admission rules (pure; table tests)."""

from __future__ import annotations

import pytest

from agentserver.proxy.llm_rules import (
    Caller,
    CallerCache,
    Refusal,
    check_limits,
    check_model,
    error_body,
    is_sandbox_host,
    proxy_token,
    request_model,
    response_headers,
    upstream_headers,
    upstream_url,
)
from agentserver.settings import Settings, build_settings


def settings(**values: str) -> Settings:
    return build_settings({"listen": "127.0.0.1:0", **values}, {})


@pytest.mark.parametrize(
    ("base", "raw_path", "query", "want"),
    [
        (
            "https://api.anthropic.com",
            b"/proxy/anthropic/v1/messages",
            b"",
            "https://api.anthropic.com/v1/messages",
        ),
        (
            "https://gw.example.com/anthropic",
            b"/proxy/anthropic/v1/messages",
            b"beta=true",
            "https://gw.example.com/anthropic/v1/messages?beta=true",
        ),
        ("https://gw.example.com/a/", b"/proxy/anthropic", b"", "https://gw.example.com/a/"),
        (
            "http://h",
            b"/proxy/anthropic/v1/files/f%2Fx",
            b"a=1&b=%20",
            "http://h/v1/files/f%2Fx?a=1&b=%20",
        ),
    ],
)
def test_upstream_url_keeps_base_path_and_query(
    base: str, raw_path: bytes, query: bytes, want: str
) -> None:
    """The base URL's path is kept, our prefix removed, percent-encoding and query untouched."""
    assert upstream_url(settings(anthropic_base_url=base), raw_path, query) == want


@pytest.mark.parametrize(
    "raw_path",
    [b"/proxy/anthropic/v1/../admin", b"/proxy/anthropic/%2e%2e/x", b"/proxy/anthropic/./v1"],
)
def test_dot_segments_are_refused(raw_path: bytes) -> None:
    """Paths that could climb out of the base URL's path are refused with 400."""
    with pytest.raises(Refusal) as caught:
        upstream_url(settings(anthropic_base_url="https://gw/anthropic"), raw_path, b"")
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        ([(b"x-api-key", b"tok")], "tok"),
        ([(b"authorization", b"Bearer tok")], "tok"),
        ([(b"authorization", b"bearer  tok ")], "tok"),
        ([(b"x-api-key", b"a"), (b"authorization", b"Bearer b")], "a"),
        ([(b"authorization", b"Basic tok")], None),
        ([(b"x-api-key", b"")], None),
        ([], None),
    ],
)
def test_proxy_token_sources(headers: list[tuple[bytes, bytes]], want: str | None) -> None:
    """The token comes from x-api-key, else a Bearer Authorization; nothing else counts."""
    assert proxy_token(headers) == want


def test_upstream_headers_swap_the_credential_and_drop_hop_by_hop() -> None:
    """The sandbox's credential, cookies and hop-by-hop headers go; the real key is added."""
    sent = [
        (b"x-api-key", b"proxy-token"),
        (b"authorization", b"Bearer proxy-token"),
        (b"connection", b"keep-alive, x-private"),
        (b"x-private", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"cookie", b"a=b"),
        (b"host", b"127.0.0.1:8080"),
        (b"content-length", b"10"),
        (b"accept-encoding", b"gzip"),
        (b"anthropic-beta", b"tools-2024"),
        (b"user-agent", b"opencode"),
    ]
    out = upstream_headers(sent, settings(anthropic_api_key="real"))
    assert out == [
        (b"anthropic-beta", b"tools-2024"),
        (b"user-agent", b"opencode"),
        (b"x-api-key", b"real"),
        (b"anthropic-version", b"2023-06-01"),
        (b"accept-encoding", b"identity"),
    ]
    both = dict(
        upstream_headers(
            [(b"anthropic-version", b"x")],
            settings(anthropic_api_key="k", anthropic_auth_token="t"),
        )
    )
    assert both == {
        b"anthropic-version": b"x",
        b"x-api-key": b"k",
        b"authorization": b"Bearer t",
        b"accept-encoding": b"identity",
    }


def test_response_headers_are_reframed() -> None:
    """Hop-by-hop headers and Content-Length are dropped from the answer; the rest stays."""
    got = response_headers(
        [
            (b"Content-Type", b"text/event-stream"),
            (b"Content-Length", b"5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"request-id", b"r1"),
        ]
    )
    assert got == [(b"content-type", b"text/event-stream"), (b"request-id", b"r1")]


@pytest.mark.parametrize(
    ("host", "ours"),
    [
        ("oc-abc123.localhost:8080", True),
        ("claw-x9.example.com", True),
        ("OC-ABC.example.com", True),
        ("localhost:8080", False),
        ("oc-.example.com", False),
        ("app.oc-abc.example.com", False),
        ("", False),
    ],
)
def test_sandbox_hosts(host: str, ours: bool) -> None:
    """Only oc-{id}./claw-{id}. hosts are left to the subdomain proxy."""
    assert is_sandbox_host(host) is ours


def test_request_model_and_allow_list() -> None:
    """The model is read from JSON bodies; bad JSON is a 400; the allow-list takes patterns."""
    assert request_model(b'{"model": "m"}', "application/json") == "m"
    assert request_model(b'{"model": 3}', "") is None
    assert request_model(b"--x\r\n", "multipart/form-data; boundary=x") is None
    with pytest.raises(Refusal) as caught:
        request_model(b"[1,", "application/json")
    assert caught.value.status == 400
    for odd in (b'{"model": "a\\u0000b"}', b'{"model": "' + b"m" * 300 + b'"}'):
        with pytest.raises(Refusal):
            request_model(odd, "application/json")
    allowing = settings(llm_models="claude-haiku-*,claude-sonnet-4-5")
    check_model(allowing, "claude-haiku-4-5")
    check_model(allowing, None)
    with pytest.raises(Refusal) as refused:
        check_model(allowing, "claude-sonnet-4-50")
    assert refused.value.status == 403


LOAD = {"recent_requests": 5, "window_frees_in": 12, "tokens_today": 900, "day_ends_in": 3600}


@pytest.mark.parametrize(
    ("rpm", "per_day", "retry_after"),
    [(5, 0, 12), (0, 900, 3600), (4, 10_000, 12), (6, 901, None), (0, 0, None)],
)
def test_limits(rpm: int, per_day: int, retry_after: int | None) -> None:
    """At or over a limit → 429 with the right Retry-After; 0 means unlimited."""
    if retry_after is None:
        check_limits(rpm, per_day, LOAD)
        return
    with pytest.raises(Refusal) as caught:
        check_limits(rpm, per_day, LOAD)
    assert (caught.value.status, caught.value.retry_after) == (429, retry_after)


def test_overrides_win_over_server_defaults() -> None:
    """A workspace override (even 0 = unlimited) replaces the server default; None keeps it."""
    server = settings(llm_rpm="10", llm_tokens_per_day="1000")
    base = Caller("s", "w", None, "n", "running")
    assert base.limits(server) == (10, 1000)
    assert Caller("s", "w", None, "n", "running", 0, 5).limits(server) == (0, 5)


def test_caller_cache_expires_and_forgets() -> None:
    """Entries expire after their TTL, can be forgotten, and the cache stays bounded."""
    cache = CallerCache(ttl=-1)
    caller = Caller("s", "w", None, "n", "running")
    cache.put("h", caller)
    assert cache.get("h") is None
    cache = CallerCache(size=2)
    for key in ("a", "b", "c"):
        cache.put(key, caller)
    assert cache.get("c") is caller
    assert len(cache._entries) <= 2
    cache.forget("c")
    assert cache.get("c") is None


def test_error_body_shape() -> None:
    """Errors use Anthropic's shape with the type its SDKs expect for each status."""
    assert error_body(413, "too big") == (
        b'{"type": "error", "error": {"type": "request_too_large", "message": "too big"}}'
    )
    assert b'"api_error"' in error_body(502, "x")

"""A sandbox's LLM relay passes on only the LLM proxy's path (sandboxes/llm_relay.py)."""

from __future__ import annotations

import pytest

from agentserver.sandboxes.llm_relay import Upstream, allowed_target, rewrite_head

PREFIX = "/proxy/anthropic"


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        (b"/proxy/anthropic/v1/messages", True),
        (b"/proxy/anthropic/v1/messages?beta=true", True),
        (b"/proxy/anthropic", True),
        (b"/proxy/anthropicx/v1", False),
        (b"/api/auth/config", False),
        (b"/proxy/anthropic/../../api/auth/config", False),
        (b"/proxy/anthropic/%2e%2e/api", False),
        (b"http://127.0.0.1:8080/proxy/anthropic/v1/messages", False),
        (b"*", False),
    ],
)
def test_only_the_proxy_path_is_allowed(target: bytes, allowed: bool) -> None:
    """Targets under the proxy's path pass; other paths, dot segments, escapes and absolute
    forms are refused."""
    assert allowed_target(target, PREFIX) is allowed


SERVER = b"127.0.0.1:8080"


def test_the_head_is_passed_on_for_one_request_only() -> None:
    """The sandbox's Connection and Keep-Alive headers are replaced by `connection: close`,
    its Host by the server's own; its other headers pass unchanged."""
    head = (
        b"POST /proxy/anthropic/v1/messages HTTP/1.1\r\nHost: 10.250.0.1:4000\r\n"
        b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nx-api-key: tok\r\n"
        b"content-length: 2"
    )
    assert rewrite_head(head, PREFIX, SERVER) == (
        b"POST /proxy/anthropic/v1/messages HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n"
        b"x-api-key: tok\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
    )


def test_a_sandbox_cannot_route_by_its_host_header() -> None:
    """A Host naming another sandbox's subdomain (or two Hosts) never reaches the server: the
    request goes to the main site, where the LLM proxy is."""
    head = (
        b"POST /proxy/anthropic/v1/messages HTTP/1.1\r\nHost: oc-other.example.com\r\n"
        b"HOST: p3000-other.example.com\r\ncontent-length: 2"
    )
    rewritten = rewrite_head(head, PREFIX, SERVER)
    assert rewritten is not None
    assert b"example.com" not in rewritten
    assert rewritten.lower().count(b"host:") == 1


def test_other_requests_are_refused() -> None:
    """Another path, or a line that is not HTTP/1.x, is not passed on."""
    assert rewrite_head(b"GET /api/auth/config HTTP/1.1\r\nHost: x", PREFIX, SERVER) is None
    assert rewrite_head(b"PRI * HTTP/2.0", PREFIX, SERVER) is None
    assert rewrite_head(b"garbage", PREFIX, SERVER) is None


def test_the_upstream_is_the_plain_http_proxy_url() -> None:
    """The relay forwards to the server's own listener; an https URL is left to the sandbox."""
    up = Upstream.of_url("http://127.0.0.1:8080/proxy/anthropic/")
    assert up == Upstream("127.0.0.1", 8080, PREFIX)
    assert Upstream.of_url("https://llm.example.com/proxy/anthropic") is None

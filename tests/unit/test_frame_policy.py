"""The framing policy added to sandbox responses (pure)."""

from __future__ import annotations

from agentserver.proxy.frame_policy import POLICY, with_frame_policy

OPENCODE_CSP = (b"content-security-policy", b"default-src 'self'; connect-src * data: blob:")


def test_a_csp_without_frame_ancestors_gets_ours_beside_it() -> None:
    """opencode's own CSP says nothing about framing, so ours is added and its own is kept."""
    headers = [(b"content-type", b"text/html"), OPENCODE_CSP]
    assert with_frame_policy(headers) == [*headers, *POLICY]


def test_an_apps_frame_ancestors_is_left_alone() -> None:
    """A CSP naming frame-ancestors (any case) is the app's decision: nothing is added."""
    headers = [(b"content-security-policy", b"default-src 'self'; Frame-Ancestors https://x")]
    assert with_frame_policy(headers) == headers

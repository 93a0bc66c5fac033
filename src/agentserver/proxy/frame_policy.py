"""Who may frame a sandbox's pages: the sandbox itself only (pure: no I/O).

Sibling sandboxes are same-site, so without a policy one member's sandbox page could frame
another's and trick a member into clicking in it (clickjacking). `'self'` rather than
`'none'`: opencode's UI may frame its own pages, and only the same origin is allowed.
"""

from __future__ import annotations

from agentserver.proxy.headers import Headers

POLICY: Headers = [
    (b"content-security-policy", b"frame-ancestors 'self'"),
    (b"x-frame-options", b"SAMEORIGIN"),
]


def sets_own_policy(headers: Headers) -> bool:
    """Whether the app's response says itself who may frame it."""
    for name, value in headers:
        if name == b"x-frame-options":
            return True
        if name == b"content-security-policy" and b"frame-ancestors" in value.lower():
            return True
    return False


def with_frame_policy(headers: Headers) -> Headers:
    """Response headers with our framing policy added, unless the app set its own. (Another
    Content-Security-Policy header of the app's stays: browsers enforce every one.)"""
    if sets_own_policy(headers):
        return headers
    return [*headers, *POLICY]

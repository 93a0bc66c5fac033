"""Which of opencode's own routes a guest may read, and the directory selectors they lose."""

from __future__ import annotations

import pytest

from agentserver.proxy import guest

SECRET_BEARING = [
    b"/config",
    b"/config/providers",
    b"/provider",
    b"/provider/auth",
    b"/global/config",
    b"/experimental/console",
    b"/experimental/resource",
    b"/api/provider/anthropic",
    b"/api/integration/anthropic",
    b"/tui/control/next",
    b"/mcp",
    b"/pty/shells",
]
# Spellings opencode's router also sends to /config or /provider (seen with 1.18.33).
VARIANTS = [
    b"/config/",
    b"//config",
    b"/CONFIG",
    b"/%63onfig",
    b"/%2563onfig",
    b"/config;a",
    b"/Provider",
    b"/%70rovider",
    b"/global//config",
    b"/x/../config",
    b"/%61pi/provider/anthropic",
]
READABLE = [
    b"/",
    b"/assets/index-jmcwmLQ6.js",
    b"/favicon-v3.svg",
    b"/session",
    b"/session/ses_1/message",
    b"/event",
    b"/global/event",
    b"/global/health",
    b"/file/content",
    b"/api/session",
    b"/api/fs/read/a.txt",
    b"/L3RtcC9wcm9q/session/ses_1",  # the web UI's own client-side route
    b"/configuration-notes",  # only the exact segment is refused
]


@pytest.mark.parametrize("path", SECRET_BEARING + VARIANTS)
def test_secret_bearing_routes_are_refused(path: bytes) -> None:
    """Routes that echo the config, providers or credentials are refused, however spelled."""
    assert guest.refused(path)


@pytest.mark.parametrize("path", READABLE)
def test_viewing_routes_stay_readable(path: bytes) -> None:
    """The UI, sessions, events and project files stay readable for guests."""
    assert not guest.refused(path)


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        (b"path=environ&directory=/proc/self", b"path=environ"),
        (b"%64irectory=/proc/self&path=environ", b"path=environ"),
        (b"location%5Bdirectory%5D=/proc/self&x=1", b"x=1"),
        (b"workspace=w1", b""),
        (b"Directory=/etc", b""),
    ],
)
def test_directory_selectors_are_removed(query: bytes, kept: bytes) -> None:
    """Every spelling of the directory / workspace selectors is dropped, the rest kept."""
    assert guest.query_without_selectors(query) == kept


def test_a_query_without_selectors_passes_byte_for_byte() -> None:
    """An ordinary query is forwarded exactly as sent."""
    query = b"path=a%20b.txt&limit=5&q=x+y"
    assert guest.query_without_selectors(query) is query


def test_selector_headers_are_removed() -> None:
    """The x-opencode-directory / -workspace headers go; other headers stay in order."""
    headers = [
        (b"accept", b"*/*"),
        (b"x-opencode-directory", b"/proc/self"),
        (b"x-opencode-workspace", b"w"),
        (b"x-other", b"1"),
    ]
    assert guest.headers_without_selectors(headers) == [(b"accept", b"*/*"), (b"x-other", b"1")]

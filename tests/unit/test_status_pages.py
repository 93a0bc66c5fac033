"""The shared status page and the words for why a sandbox was paused (pure)."""

from __future__ import annotations

import pytest

from agentserver import status_page
from agentserver.proxy import pages


@pytest.mark.parametrize(
    ("reason", "by", "idle", "words"),
    [
        ("idle", None, 1800, "It was paused after 30 minutes without activity."),
        ("idle", None, 5400, "It was paused after 1 hour 30 minutes without activity."),
        ("idle", None, 1, "It was paused after 1 second without activity."),
        ("idle", None, None, "It was paused because nobody used it for a while."),
        ("user", "alice", None, "It was paused by alice."),
        ("user", None, None, "It was paused by a member."),
        (None, None, None, None),
    ],
)
def test_pause_note(reason: str | None, by: str | None, idle: float | None, words: str) -> None:
    """Idle pauses say after how long; a member's pause says who; no record says nothing."""
    assert pages.pause_note(reason, by, idle) == words


def test_page_escapes_and_links_back() -> None:
    """Every text on the page is escaped, and the back link is the one given."""
    body = status_page.render(
        "<T>", "m&m", 404, note="by <b>", reason='r"', back=("/w?a=1&b=2", "Back <home>")
    ).decode()
    assert "<h1>&lt;T&gt;</h1>" in body
    assert "m&amp;m" in body
    assert "by &lt;b&gt;" in body
    assert 'href="/w?a=1&amp;b=2"' in body
    assert "Back &lt;home&gt;" in body
    assert "refresh" not in body


def test_offline_and_unreachable_pages_share_the_layout() -> None:
    """The agent-offline and the not-answering pages are the same layout around their words."""
    offline = pages.render_html(pages.OFFLINE, home="/workspaces").decode()
    unreachable = pages.render_html(pages.UNREACHABLE, home="/workspaces").decode()
    assert offline.split("<body>")[0].replace("Agent offline", "X") == unreachable.split("<body>")[
        0
    ].replace("Sandbox not answering", "X")
    for body in (offline, unreachable):
        assert '<a class="back" href="/workspaces">Back to your workspaces</a>' in body

"""What a sandbox's subdomain answers when it cannot proxy: HTML for browsers, JSON for APIs.

Pages share one self-contained layout (agentserver/status_page.py) with a link back to the
workspace list. A sandbox that is waking up or starting answers 503 with `Retry-After` and a page
that reloads itself, so the browser lands in the agent's UI as soon as it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from agentserver import status_page
from agentserver.proxy.headers import Headers, header

REFRESH_SECONDS = status_page.REFRESH_SECONDS
BACK_LABEL = "Back to your workspaces"


@dataclass(frozen=True, slots=True)
class Page:
    """One kind of answer: its status, API error code, title and explanation."""

    status: int
    code: str
    title: str
    message: str
    refresh: bool = False


NOT_FOUND = Page(
    404,
    "not_found",
    "Sandbox not found",
    "This sandbox does not exist, or you do not have access to it.",
)
UNKNOWN_HOST = Page(
    404,
    "not_found",
    "Not found",
    "Nothing is served at this address. Check the link, or open the dashboard.",
)
PREVIEWS_UNAVAILABLE = Page(
    404,
    "previews_unavailable",
    "Previews not available",
    "This server's sandboxes run where their own ports cannot be reached safely, so it "
    "serves no previews of them.",
)
PORT_OUT_OF_RANGE = Page(
    404,
    "preview_port_invalid",
    "Not a preview port",
    "Previews serve ports 1024 to 65535 of a sandbox; this address names another port.",
)
PORT_OF_AGENT = Page(
    403,
    "preview_port_reserved",
    "Port not previewed",
    "This port belongs to the sandbox's agent or to the server itself; it is never a preview. "
    "Open the agent from the dashboard.",
)
PORT_NOT_ALLOWED = Page(
    403,
    "preview_port_not_allowed",
    "Port not shared",
    "The local agent of this sandbox does not share this port. Its owner can share it with "
    "`agentserver agent connect --allow-port PORT`.",
)
FAILED = Page(
    503,
    "sandbox_failed",
    "Sandbox failed",
    "The sandbox stopped with an error. Open the dashboard to see why and start it again.",
)
OFFLINE = Page(
    503,
    "sandbox_offline",
    "Agent offline",
    "The local agent for this sandbox is not connected. Start "
    "`agentserver agent connect` on its machine again.",
)
WAKING = Page(
    503,
    "sandbox_waking",
    "Waking up",
    "This sandbox was paused and is starting again. This page reloads by itself.",
    refresh=True,
)
PAUSED = Page(
    503,
    "sandbox_paused",
    "Paused",
    "This sandbox is paused. Open or reload this page in the browser to wake it.",
)
STARTING = Page(
    503,
    "sandbox_starting",
    "Starting",
    "The sandbox is still starting. This page reloads by itself.",
    refresh=True,
)
UNREACHABLE = Page(
    502,
    "sandbox_unreachable",
    "Sandbox not answering",
    "The sandbox is running but its agent did not answer. Try again in a moment.",
)
TIMEOUT = Page(
    504,
    "sandbox_timeout",
    "Sandbox too slow",
    "The sandbox's agent did not answer in time. Try again in a moment.",
)
BUSY = Page(
    503,
    "sandbox_busy",
    "Agent busy",
    "The local agent is already serving as many requests as it may. Try again in a moment.",
)
LINK_EXPIRED = Page(
    401,
    "ticket_invalid",
    "Link expired",
    "This sign-in link was already used or has expired. Open the sandbox again from the dashboard.",
)
SIGN_IN = Page(
    401,
    "unauthenticated",
    "Sign in needed",
    "Open this sandbox from the dashboard to sign in to it.",
)
READ_ONLY = Page(
    403,
    "forbidden",
    "Read-only access",
    "Guests may look at this sandbox but not change anything in it.",
)
BODY_TIMEOUT = Page(
    408,
    "request_timeout",
    "Request too slow",
    "The request's body stopped arriving before it was complete. Try again.",
)
GUEST_HIDDEN = Page(
    403,
    "forbidden",
    "Not shown to guests",
    "This part of the agent holds the sandbox's settings and credentials; guests do not see it.",
)
CROSS_ORIGIN = Page(
    403, "forbidden", "Refused", "A request from another site may not act on this sandbox."
)


def not_listening(port: int) -> Page:
    """A preview of a port nothing listens on (yet): the page reloads itself, so it shows the
    app as soon as its dev server starts."""
    return Page(
        502,
        "preview_not_listening",
        "Nothing listening",
        f"Nothing is listening on port {port} in this sandbox yet. Start the server there "
        "and this page loads it by itself.",
        refresh=True,
    )


def wants_html(method: str, headers: Headers) -> bool:
    """A browser navigation (GET/HEAD accepting HTML) rather than an API or script call."""
    if method not in ("GET", "HEAD"):
        return False
    return b"text/html" in (header(headers, b"accept") or b"")


def render_html(
    page: Page, *, reason: str | None = None, home: str | None = None, note: str | None = None
) -> bytes:
    """The page in the layout every status and refusal shares (agentserver/status_page.py)."""
    return status_page.render(
        page.title,
        page.message,
        page.status,
        refresh=page.refresh,
        note=note,
        reason=reason,
        back=(home, BACK_LABEL) if home else None,
    )


def pause_note(reason: str | None, by: str | None, idle_seconds: float | None) -> str | None:
    """Why a sandbox was paused, in words (None when nobody recorded why)."""
    if reason == "idle":
        if idle_seconds is None:
            return "It was paused because nobody used it for a while."
        return f"It was paused after {duration_words(idle_seconds)} without activity."
    if reason == "user":
        return f"It was paused by {by}." if by else "It was paused by a member."
    return None


def duration_words(seconds: float) -> str:
    """`90` → "1 minute 30 seconds", `7200` → "2 hours"."""
    whole = max(0, round(seconds))
    parts = []
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    return " ".join(parts) or "0 seconds"


def render_json(page: Page, *, reason: str | None = None) -> bytes:
    message = f"{page.message} ({reason})" if reason else page.message
    return json.dumps({"error": {"code": page.code, "message": message}}).encode()


def answer(
    page: Page,
    method: str,
    headers: Headers,
    *,
    reason: str | None = None,
    home: str | None = None,
    note: str | None = None,
) -> tuple[int, Headers, bytes]:
    """Status, headers and body answering a request with `page`, in the form it wants (`note`
    is for people only: the JSON answer stays as it was)."""
    if wants_html(method, headers):
        body = render_html(page, reason=reason, home=home, note=note)
        kind = b"text/html; charset=utf-8"
    else:
        body = render_json(page, reason=reason)
        kind = b"application/json"
    out: Headers = [
        (b"content-type", kind),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    if page.refresh:
        out.append((b"retry-after", str(REFRESH_SECONDS).encode()))
    return page.status, out, body

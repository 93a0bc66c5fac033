"""What a sandbox's subdomain answers when it cannot proxy: HTML for browsers, JSON for APIs.

Pages are self-contained (inline CSS, no external resources) and follow the system's light or
dark scheme. A sandbox that is waking up or starting answers 503 with `Retry-After` and a page
that reloads itself, so the browser lands in the agent's UI as soon as it runs.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

from agentserver.proxy.headers import Headers, header

REFRESH_SECONDS = 2


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
PREVIEWS_DISABLED = Page(
    404,
    "previews_disabled",
    "Previews not enabled",
    "This server does not serve previews of a sandbox's ports.",
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
    "This sandbox was paused while idle and is starting again. This page reloads by itself.",
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

_STYLE = """
:root{color-scheme:light dark;--bg:#fff;--fg:#18181b;--muted:#71717a;--line:#e4e4e7}
@media (prefers-color-scheme:dark){:root{--bg:#09090b;--fg:#fafafa;--muted:#a1a1aa;--line:#27272a}}
*{box-sizing:border-box}body{margin:0;min-height:100vh;display:grid;place-items:center;
background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,Segoe UI,sans-serif}
main{max-width:28rem;padding:2rem;text-align:center}h1{font-size:1.4rem;margin:.5rem 0}
p{color:var(--muted);margin:.5rem 0 1.25rem}.badge{display:inline-block;border:1px solid
var(--line);border-radius:999px;padding:.1rem .7rem;font-size:.8rem;color:var(--muted)}
.reason{font-family:ui-monospace,monospace;font-size:.85rem;border:1px solid var(--line);
border-radius:.5rem;padding:.5rem;color:var(--fg);text-align:left;white-space:pre-wrap}
.spin{width:2rem;height:2rem;border:3px solid var(--line);border-top-color:var(--fg);
border-radius:50%;margin:0 auto;animation:s 1s linear infinite}
@keyframes s{to{transform:rotate(1turn)}}
a{color:inherit}
"""


def wants_html(method: str, headers: Headers) -> bool:
    """A browser navigation (GET/HEAD accepting HTML) rather than an API or script call."""
    if method not in ("GET", "HEAD"):
        return False
    return b"text/html" in (header(headers, b"accept") or b"")


def render_html(page: Page, *, reason: str | None = None, home: str | None = None) -> bytes:
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if page.refresh else ""
    spinner = '<div class="spin" aria-hidden="true"></div>' if page.refresh else ""
    detail = f'<p class="reason">{html.escape(reason)}</p>' if reason else ""
    back = f'<p><a href="{html.escape(home)}">Open the dashboard</a></p>' if home else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"{refresh}<title>{html.escape(page.title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{spinner}<h1>{html.escape(page.title)}</h1>"
        f"<p>{html.escape(page.message)}</p>{detail}<span class=badge>HTTP {page.status}</span>"
        f"{back}</main></body></html>"
    ).encode()


def render_json(page: Page, *, reason: str | None = None) -> bytes:
    message = f"{page.message} ({reason})" if reason else page.message
    return json.dumps({"error": {"code": page.code, "message": message}}).encode()


def answer(
    page: Page, method: str, headers: Headers, *, reason: str | None = None, home: str | None = None
) -> tuple[int, Headers, bytes]:
    """Status, headers and body answering a request with `page`, in the form it wants."""
    if wants_html(method, headers):
        body = render_html(page, reason=reason, home=home)
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

"""The one styled, self-contained HTML page every status or refusal answer is shown as (pure).

The sandbox hosts (proxy/pages.py) and the main host's `/api/sandboxes/{id}/open`
(api/sandbox_open.py) both answer a browser that cannot go on with it, so a person always sees
the same layout, never raw JSON, and always a way back. Inline CSS, no external resources; it
follows the system's light or dark scheme and fits a phone.
"""

from __future__ import annotations

import html

REFRESH_SECONDS = 2

_STYLE = """
:root{color-scheme:light dark;--bg:#fff;--fg:#18181b;--muted:#71717a;--line:#e4e4e7}
@media (prefers-color-scheme:dark){:root{--bg:#09090b;--fg:#fafafa;--muted:#a1a1aa;--line:#27272a}}
*{box-sizing:border-box}body{margin:0;min-height:100vh;display:grid;place-items:center;
background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,Segoe UI,sans-serif}
main{max-width:28rem;padding:2rem;text-align:center;overflow-wrap:anywhere}
h1{font-size:1.4rem;margin:.5rem 0}
p{color:var(--muted);margin:.5rem 0 1.25rem}.badge{display:inline-block;border:1px solid
var(--line);border-radius:999px;padding:.1rem .7rem;font-size:.8rem;color:var(--muted)}
.note{color:var(--fg);font-weight:600}
.reason{font-family:ui-monospace,monospace;font-size:.85rem;border:1px solid var(--line);
border-radius:.5rem;padding:.5rem;color:var(--fg);text-align:left;white-space:pre-wrap}
.spin{width:2rem;height:2rem;border:3px solid var(--line);border-top-color:var(--fg);
border-radius:50%;margin:0 auto;animation:s 1s linear infinite}
@keyframes s{to{transform:rotate(1turn)}}
.back{display:inline-block;margin-top:1rem;padding:.5rem 1rem;border:1px solid var(--line);
border-radius:.5rem;color:var(--fg);text-decoration:none}.back:hover{border-color:var(--muted)}
"""


def render(
    title: str,
    message: str,
    status: int,
    *,
    refresh: bool = False,
    note: str | None = None,
    reason: str | None = None,
    back: tuple[str, str] | None = None,
) -> bytes:
    """The page: `title`, `message`, an optional `note` (e.g. why a sandbox was paused) and
    `reason` (a machine's words, shown verbatim), the status, and a `back` (href, label) link."""
    head = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    spinner = '<div class="spin" aria-hidden="true"></div>' if refresh else ""
    shown_note = f'<p class="note" role="status">{html.escape(note)}</p>' if note else ""
    detail = f'<p class="reason">{html.escape(reason)}</p>' if reason else ""
    link = ""
    if back is not None:
        href, label = back
        link = f'<p><a class="back" href="{html.escape(href)}">{html.escape(label)}</a></p>'
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        # No icon request: on a sandbox's host it would reach the agent or meet a refusal.
        '<link rel="icon" href="data:,">'
        f"{head}<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{spinner}<h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(message)}</p>{shown_note}{detail}"
        f"<span class=badge>HTTP {status}</span>{link}</main></body></html>"
    ).encode()

"""What a read-only member (a guest) may read of an opencode agent's own API (pure).

Guests get GET/HEAD only (proxy/subdomain.py), but some of opencode's GET routes hand out the
sandbox's secrets. Checked against the pinned opencode-ai 1.18.33 (its API description is
served at `/doc`):

- `/config`, `/config/providers` and `/provider` echo the merged configuration, including the
  LLM proxy token we pass in `OPENCODE_CONFIG_CONTENT` (`provider.anthropic.options.apiKey`).
- The `directory` query parameter (or `x-opencode-directory` header; `location[directory]` on
  `/api/*`) opens the API on any directory, so `/file/content?path=environ&directory=/proc/self`
  reads the agent's environment: the opencode server password and the proxy token.

So, for guests: the routes below are refused, and the directory/workspace selectors are
removed, which keeps file routes inside the agent's own project (opencode refuses paths that
leave it). The refused set is a deny list over the route table because opencode's web UI is a
single-page app served for every unknown path (its own client-side routes start with an
encoded directory), so an allow list would break reloading a guest's page. Matching
normalises the path the way opencode's router does (it ignores case, repeated and trailing
slashes, percent-encoding and `;` suffixes). A member who may use the sandbox is trusted with
it and is not filtered.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlencode

# First path segment → refused for guests (None: the whole subtree; else only the listed
# second segments, or every second segment but the listed ones when `_ALLOWED_UNDER`).
_REFUSED: dict[str, frozenset[str] | None] = {
    "config": None,  # the merged config: the proxy token
    "provider": None,  # providers with their options: the proxy token
    "auth": None,  # provider credentials
    "experimental": None,  # console, MCP resources, tools, workspaces: not for guests
    "console": None,
    "mcp": None,  # MCP servers' status and auth
    "tui": None,  # a GET here takes the TUI's control requests
    "pty": None,  # terminals: guests have none
    "log": None,
    "instance": None,
    "sync": None,
    "api": frozenset({"provider", "integration", "credential", "pty", "console"}),
}
# Under `/global`, only these are readable by guests (`/global/config` is the global config).
_ALLOWED_UNDER = {"global": frozenset({"event", "health"})}
# Query parameters that choose which directory or workspace the API works on.
_SELECTORS = frozenset({"directory", "workspace"})
DROPPED_HEADERS = frozenset({b"x-opencode-directory", b"x-opencode-workspace"})
_MAX_DECODES = 4


def segments(raw_path: bytes) -> list[str]:
    """The path's segments as opencode's router matches them: decoded, lower-case, without
    empty segments and `;` suffixes, with `.` and `..` resolved."""
    path = raw_path.decode("latin-1")
    for _ in range(_MAX_DECODES):  # %2563 → %63 → c: decode until it stops changing
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    out: list[str] = []
    for part in path.replace("\\", "/").lower().split("/"):
        part = part.split(";", 1)[0].strip()
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return out


def refused(raw_path: bytes) -> bool:
    """True when a guest may not read this path of an opencode agent."""
    parts = segments(raw_path)
    if not parts:
        return False
    first, second = parts[0], parts[1] if len(parts) > 1 else ""
    if first in _ALLOWED_UNDER:
        return second not in _ALLOWED_UNDER[first]
    if first not in _REFUSED:
        return False
    only = _REFUSED[first]
    return only is None or second in only


def _selects(key: str) -> bool:
    name = key.strip().lower()
    return name in _SELECTORS or name.startswith("location")


def query_without_selectors(query: bytes) -> bytes:
    """The query string without the parameters that pick another directory or workspace
    (unchanged when it has none, so ordinary queries pass byte for byte)."""
    if not query:
        return query
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if not _selects(k)]
    if len(kept) == len(pairs):
        return query
    return urlencode(kept).encode("latin-1")


def headers_without_selectors(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request headers without opencode's directory/workspace selectors."""
    return [(k, v) for k, v in headers if k.lower() not in DROPPED_HEADERS]

"""Header rewriting between the browser and a sandbox's agent, both directions (pure: no I/O).

Headers are ASGI-style lists of `(lower-case name, value)` byte pairs, in order, repeats kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agentserver.http_headers import FRAMING, HOP_BY_HOP

Headers = list[tuple[bytes, bytes]]

# Fields a client's `Connection` list can never remove: framing (always set by whoever writes
# the message, from the bytes it actually sends: proxy/upstream.py, the tunnel) and the Host.
NOT_CONNECTION_OPTIONS = FRAMING | {b"host"}
# Our own cookies: the main session (host-only on the main host, so it should never arrive here,
# but stripped anyway), the subdomain session and the sign-in binding nonce (auth/tickets.py).
# None may ever reach a sandbox, nor be set by one.
OUR_COOKIES = frozenset(
    {
        "agentserver_session",
        "agentserver_sandbox",
        "agentserver_bind",
        "__Host-agentserver_session",
        "__Host-agentserver_sandbox",
        "__Host-agentserver_bind",
    }
)
# Rewritten by us; whatever the client sent under these names is dropped.
_REPLACED = frozenset(
    {
        b"authorization",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-for",
        b"forwarded",
        b"x-real-ip",
    }
)
_REPLACED_FOR_APPS = _REPLACED - {b"authorization"}
# The agent's CORS answers are dropped: the sandbox UI is same-origin, and a permissive answer
# would let a sibling sandbox's page read this one with the member's cookie (same-site).
_CORS = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-allow-headers",
        b"access-control-allow-methods",
        b"access-control-expose-headers",
        b"access-control-max-age",
    }
)
# The relay between replicas' own headers (cluster/relay_auth.py): never an agent's to send.
RELAY_PREFIX = b"x-agentserver-relay"
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
_NOT_FORWARDED = HOP_BY_HOP | FRAMING
_NONE: frozenset[bytes] = frozenset()
# WebSocket handshake fields the client library sets itself on the upstream leg.
WEBSOCKET_HANDSHAKE = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
        b"host",
        b"origin",
        b"content-length",
    }
)


@dataclass(frozen=True, slots=True)
class Forwarding:
    """What the proxy knows about the client side of one request."""

    client_ip: str | None
    proto: str  # http or https, as the browser sees it
    host: bytes  # the subdomain host the browser asked for


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in `Connection`, which are hop-by-hop for this message only
    (never the framing fields or Host: those are not the client's to remove)."""
    values = [value for name, value in headers if name.lower() == b"connection"]
    if not values:  # nearly always: nothing more to look at
        return _NONE
    tokens = {t.strip().lower() for value in values for t in value.split(b",") if t.strip()}
    return frozenset(tokens - NOT_CONNECTION_OPTIONS) if tokens else _NONE


def framing_headers(method: bytes, length: int | None) -> Headers:
    """The framing of a request body we send: `length` bytes, or chunked when unknown (None).

    An empty body is announced only where a body is expected (`Content-Length: 0` on POST, PUT,
    PATCH, as httpx does), so a GET stays a plain GET.
    """
    if length is None:
        return [(b"transfer-encoding", b"chunked")]
    if length or method in _BODY_METHODS:
        return [(b"content-length", b"%d" % length)]
    return []


def strip_cookies(value: bytes, drop: frozenset[str] = OUR_COOKIES) -> bytes:
    """A Cookie header value without the cookies named in `drop` (others kept, in order)."""
    kept = []
    for part in value.split(b";"):
        crumb = part.strip()
        if not crumb:
            continue
        name = crumb.split(b"=", 1)[0].strip().decode("latin-1")
        if name not in drop:
            kept.append(crumb)
    return b"; ".join(kept)


def cookie_values(headers: Iterable[tuple[bytes, bytes]], name: str) -> list[str]:
    """Every value the client sent for cookie `name` (a tossed duplicate may come first)."""
    wanted = name.encode()
    values = []
    for value in [value for key, value in headers if key == b"cookie"]:
        for part in value.split(b";"):
            crumb_name, sep, crumb_value = part.strip().partition(b"=")
            if sep and crumb_name.strip() == wanted:
                values.append(crumb_value.strip().strip(b'"').decode("latin-1"))
    return values


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def request_headers(
    incoming: Sequence[tuple[bytes, bytes]], auth: bytes | None, fwd: Forwarding
) -> Headers:
    """Headers to send upstream: no hop-by-hop, no credentials of ours or the client's, the
    agent's own credentials injected, and X-Forwarded-* describing the browser's request.

    `auth` None is a preview (a dev server in the sandbox): nothing is injected, and the
    client's own Authorization is the app's and goes through (ours never travel in one on a
    sandbox host: only in cookies, which are stripped all the same).

    No framing either: the writer of the upstream request adds it for the body it sends
    (`framing_headers`), so a client's Content-Length or Transfer-Encoding never reaches an agent.
    """
    listed = connection_tokens(incoming)
    drop = _NOT_FORWARDED | listed if listed else _NOT_FORWARDED
    replaced = _REPLACED if auth is not None else _REPLACED_FOR_APPS
    out: Headers = []
    prior_for: list[bytes] = []
    for name, value in incoming:
        name = name.lower()
        if name in drop:
            continue
        if name in replaced:
            if name == b"x-forwarded-for":
                prior_for.append(value)
            continue
        if name == b"cookie":
            value = strip_cookies(value)
            if not value:
                continue
        out.append((name, value))
    if auth is not None:
        out.append((b"authorization", auth))
    chain = b", ".join([*prior_for, *([fwd.client_ip.encode()] if fwd.client_ip else [])])
    if chain:
        out.append((b"x-forwarded-for", chain))
    out.append((b"x-forwarded-proto", fwd.proto.encode()))
    out.append((b"x-forwarded-host", fwd.host))
    return out


def websocket_headers(
    incoming: Sequence[tuple[bytes, bytes]], auth: bytes | None, fwd: Forwarding
) -> Headers:
    """Extra headers for the upstream WebSocket handshake (the client library adds its own)."""
    return [(n, v) for n, v in request_headers(incoming, auth, fwd) if n not in WEBSOCKET_HANDSHAKE]


def rewrite_set_cookie(value: bytes, protected: frozenset[str] = OUR_COOKIES) -> bytes | None:
    """A Set-Cookie the browser may receive from a sandbox, or None to drop it.

    Our cookie names are never set by a sandbox, and a `Domain` attribute is removed so the
    cookie stays on this sandbox's host: no tossing cookies into the main site or a sibling.
    """
    first, *attributes = value.split(b";")
    name = first.split(b"=", 1)[0].strip().decode("latin-1")
    if name in protected or not name:
        return None
    kept = [a for a in attributes if a.strip().split(b"=", 1)[0].strip().lower() != b"domain"]
    return b";".join([first, *kept])


def response_headers(incoming: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Headers to send the browser: no hop-by-hop, no CORS grants, safe Set-Cookie only, none
    of the relay's."""
    items = list(incoming)
    drop = HOP_BY_HOP | connection_tokens(items) | _CORS
    out: Headers = []
    for name, value in items:
        name = name.lower()
        if name in drop or name.startswith(RELAY_PREFIX):
            continue
        if name == b"set-cookie":
            rewritten = rewrite_set_cookie(value)
            if rewritten is None:
                continue
            value = rewritten
        out.append((name, value))
    return out

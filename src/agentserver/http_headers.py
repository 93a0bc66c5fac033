"""The header fields no hop of ours ever passes on, for every side that forwards HTTP (pure).

The subdomain proxy (proxy/headers.py), the LLM proxy (llm/rules.py) and the local agent
(agent/forward.py) all forward requests and responses; each drops these fields, and only
these sets say which, so the three cannot drift apart. Names are lower-case, as bytes (ASGI
headers) and as text (the tunnel's header pairs).
"""

from __future__ import annotations

# RFC 9110 §7.6.1 connection-specific fields, plus the non-standard ones still seen in the
# wild: Proxy-Connection, and `Trailers`, RFC 2616 §13.5.1's misspelling of Trailer that some
# proxies still send.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# How a message's body is delimited: always set by whoever writes the message, from the bytes
# it actually sends, never copied from the message it forwards.
FRAMING = frozenset({b"content-length", b"transfer-encoding"})

HOP_BY_HOP_NAMES = frozenset(name.decode("ascii") for name in HOP_BY_HOP)
FRAMING_NAMES = frozenset(name.decode("ascii") for name in FRAMING)

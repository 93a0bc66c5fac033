"""The relay credential: how a replica proves to a tunnel's owner that it relays a request it
checked itself (pure: hmac and the clock's value passed in).

A request for a local sandbox that lands on a replica other than its tunnel's owner is checked
there (cookie, role, Origin) and streamed to the owner with one header, `x-agentserver-relay`:

    v1 <owner replica id> <generation> <issued, unix seconds> <nonce> <user id or -> <ro 0|1> <mac>

The MAC is HMAC-SHA256, keyed by the cluster's relay secret (`Cluster.relay_secret`), over those
fields and what identifies the request: its method (`WEBSOCKET` for an upgrade), Host and
target. The owner recomputes it with `hmac.compare_digest`, accepts it only within `WINDOW`
seconds of its own clock and only once (`Nonces`), and strips the header before anything enters
the tunnel. A browser knows no secret, so it can never use the relay: any request carrying the
header is either a valid relay or refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

HEADER = b"x-agentserver-relay"
# The owner's "not me": the tunnel is not (or no longer) here under the generation asked for.
# Sent with 421 before any byte of the response; the relaying replica re-reads and retries once.
STALE_HEADER = b"x-agentserver-relay-stale"
PREFIX = b"x-agentserver-relay"  # every header of ours by this name is stripped both ways
VERSION = "v1"
WINDOW = 30.0  # seconds a credential is good for, either side of the owner's clock
ANONYMOUS = "-"


class RelayRefused(Exception):
    """A relay credential that does not hold (the message says why, for the log only)."""


@dataclass(frozen=True, slots=True)
class Relayed:
    """What a relaying replica vouches for: who asked, and which tunnel it expects to reach."""

    replica_id: str
    generation: int
    user_id: str | None  # None: anyone's request to a public preview port
    read_only: bool


def _mac(key: bytes, fields: list[str], method: str, host: bytes, target: bytes) -> str:
    message = b"\n".join(
        [*(f.encode() for f in fields), method.encode("latin-1"), host.lower(), target]
    )
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign(
    key: bytes, relayed: Relayed, method: str, host: bytes, target: bytes, now: float
) -> bytes:
    """The header value for relaying this request to `relayed.replica_id`."""
    fields = [
        VERSION,
        relayed.replica_id,
        str(relayed.generation),
        str(int(now)),
        secrets.token_hex(12),
        relayed.user_id or ANONYMOUS,
        "1" if relayed.read_only else "0",
    ]
    if any(not f or " " in f for f in fields):
        raise ValueError("a relay field is empty or has a space")
    return " ".join([*fields, _mac(key, fields, method, host, target)]).encode()


def verify(
    key: bytes, value: bytes, method: str, host: bytes, target: bytes, now: float
) -> tuple[Relayed, str]:
    """The relayed identity and the credential's nonce, or RelayRefused."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise RelayRefused("not ASCII") from None
    parts = text.split(" ")
    if len(parts) != 8 or parts[0] != VERSION:
        raise RelayRefused("not a relay credential of this version")
    *fields, mac = parts
    if not hmac.compare_digest(mac, _mac(key, fields, method, host, target)):
        raise RelayRefused("wrong MAC (another secret, host, target or method)")
    _, replica_id, generation, issued, nonce, user_id, read_only = fields
    if not (generation.isdigit() and issued.isdigit() and read_only in ("0", "1")):
        raise RelayRefused("malformed fields")
    if abs(now - int(issued)) > WINDOW:
        raise RelayRefused("expired (or the replicas' clocks disagree)")
    relayed = Relayed(
        replica_id, int(generation), None if user_id == ANONYMOUS else user_id, read_only == "1"
    )
    return relayed, nonce


class Nonces:
    """Credentials already used, for as long as they would be accepted (no replays)."""

    def __init__(self, window: float = WINDOW, most: int = 1 << 18) -> None:
        self._window = window
        self._most = most
        self._seen: dict[str, float] = {}  # nonce → when it may be forgotten (insertion order)

    def first_use(self, nonce: str, now: float) -> bool:
        """Record `nonce`; False when it was used before."""
        if nonce in self._seen:
            return False
        self._sweep(now)
        self._seen[nonce] = now + 2 * self._window
        return True

    def _sweep(self, now: float) -> None:
        while self._seen:
            oldest, until = next(iter(self._seen.items()))
            if until > now and len(self._seen) < self._most:
                return
            del self._seen[oldest]


def strip(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` without any of ours (`x-agentserver-relay*`)."""
    return [(n, v) for n, v in headers if not n.startswith(PREFIX)]


def carries_relay(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The relay credential of a request: its value, b"" for a relay header without one
    (refused like a wrong one), None for an ordinary request."""
    found: bytes | None = None
    for name, value in headers:
        if name.startswith(PREFIX):
            if name != HEADER or found is not None:
                return b""
            found = value
    return found

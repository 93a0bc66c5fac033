"""Whether an agent's tunnel request is let in: the one set of checks both doors run.

An agent's `GET /api/tunnel/<sandbox id>` upgrade reaches the server through the front door's
own WebSocket (proxy/tunnel_door.py) or, when it does not come that way, through the quart
route (api/agents.py). Both describe the request as a `TunnelAsk` and call `admit`, so what
they accept, and how they refuse it (status codes, messages), cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agentserver import __version__
from agentserver.auth.client_address import client_address as real_client
from agentserver.auth.tokens import hash_token
from agentserver.db.database import Database
from agentserver.errors import Invalid, Unauthenticated, Unavailable, UpgradeRequired
from agentserver.kinds import parse_shared_ports
from agentserver.models import Sandbox
from agentserver.settings import IPNetwork
from agentserver.tunnel import version as tunnel_version

DRAINING = "this server is shutting down and takes no new tunnels; connect again"


@dataclass(frozen=True, slots=True)
class TunnelAsk:
    """What an agent's tunnel request says, read from either door."""

    sandbox_id: str
    token_in_url: bool  # a `token` query parameter: refused, a URL is logged and cached
    authorization: str | None
    protocol: str | None  # tunnel_version.HEADER
    extensions: str | None  # Sec-WebSocket-Extensions
    preview_ports: str | None  # kinds.PREVIEW_PORTS_HEADER
    peer: str | None  # the socket's remote address
    forwarded: Sequence[str] = ()
    forwarded_for: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Admitted:
    """A tunnel request let in: what `TunnelSessions.serve` needs."""

    sandbox: Sandbox
    token_hash: str
    shared_ports: tuple[int, ...]
    client_address: str


def bearer(value: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def admit(
    ask: TunnelAsk, *, db: Database, draining: bool, trusted: Sequence[IPNetwork]
) -> Admitted:
    """Let the request in, or raise the refusal (400, 401, 503 while `draining`, 426)."""
    if ask.token_in_url:
        raise Invalid("send the tunnel token in the Authorization header, never in the URL")
    token = bearer(ask.authorization)
    if token is None:
        raise Unauthenticated("send the tunnel token as `Authorization: Bearer <token>`")
    if draining:
        # Refused before any work: the agent tries again, and the load balancer (which no
        # longer sends this replica new connections) hands it to another replica.
        raise Unavailable(DRAINING)
    token_hash = hash_token(token)
    sandbox = await db.one(
        "agent_tunnel_sandbox", Sandbox, id=ask.sandbox_id.lower(), tunnel_token_hash=token_hash
    )
    if sandbox is None:
        raise Unauthenticated(
            "the tunnel token is not valid: the sandbox was deleted or its token revoked"
        )
    spoken = tunnel_version.spoken(ask.protocol)
    if spoken != tunnel_version.PROTOCOL:
        raise UpgradeRequired(
            tunnel_version.mismatch(spoken, None, tunnel_version.PROTOCOL, __version__)
        )
    if ask.extensions:
        # permessage-deflate would let a small message inflate past any cap before it is seen.
        raise Invalid("the tunnel takes no WebSocket extensions (no compression)")
    address = real_client(ask.peer, trusted, ask.forwarded, ask.forwarded_for)
    return Admitted(sandbox, token_hash, parse_shared_ports(ask.preview_ports), address)

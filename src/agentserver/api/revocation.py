"""What must stop at once, on this server, when access ends: cached sandbox access, proxied
requests in flight (an open terminal) and workspace event streams. The database rows are
revoked by the caller's transaction; this runs after its commit."""

from __future__ import annotations

from agentserver.api.common import deps
from agentserver.auth.revocation import Revocation


def access_ended(revocation: Revocation) -> None:
    """End, on this server, everything `revocation` covers: the next sandbox-host request is
    checked against the database, open proxied requests and event streams end (a browser
    that reconnects is checked afresh)."""
    d = deps()
    d.access.revoke(revocation)
    d.events.end(revocation)

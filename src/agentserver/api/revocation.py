"""What must stop at once, on every replica, when access ends: cached sandbox access, proxied
requests in flight (an open terminal) and workspace event streams.

The database rows are revoked by the caller's transaction; `access_ended` runs after its
commit: it ends what this replica holds at once, then announces the revocation (NOTIFY on
`access_revoked`) so every other replica's `RevocationFollower` ends what it holds. A replica
whose listener missed notices (a gap) forgets its whole access cache: every sandbox request is
then checked against the database again (its event streams are ended by the event relay).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import trio

from agentserver.api.common import deps
from agentserver.auth.revocation import Revocation
from agentserver.db.notify import ACCESS_REVOKED, Notice
from agentserver.deps import Deps

log = logging.getLogger(__name__)


def end_locally(d: Deps, revocation: Revocation) -> None:
    d.access.revoke(revocation)
    d.events.end(revocation)


def payload(replica_id: str, revocation: Revocation) -> str:
    return json.dumps({"origin": replica_id, "revocation": asdict(revocation)})


async def access_ended(revocation: Revocation) -> None:
    """End everything `revocation` covers, here at once and on the other replicas after the
    notice reaches them: the next sandbox-host request is checked against the database, open
    proxied requests and event streams end (a browser that reconnects is checked afresh)."""
    d = deps()
    end_locally(d, revocation)
    try:
        await d.db.exec(
            "cluster_announce_revocation", payload=payload(d.cluster.replica_id, revocation)
        )
    except Exception:  # the change is committed; other replicas' caches expire in seconds
        log.warning("could not announce an ended access to the other replicas", exc_info=True)
        await trio.lowlevel.checkpoint()


class RevocationFollower:
    """Applies the revocations other replicas announce (a `db.notify` subscriber)."""

    def __init__(self, d: Deps) -> None:
        self._deps = d

    def notice(self, notice: Notice) -> None:
        try:
            message = json.loads(notice.payload)
            if message["origin"] == self._deps.cluster.replica_id:
                return  # ended here already, before the announcement
            revocation = Revocation(**message["revocation"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed access_revoked notice")
            return
        end_locally(self._deps, revocation)

    def reset(self) -> None:
        self._deps.access.forget_all()


def follow_revocations(d: Deps) -> RevocationFollower:
    """Subscribe this replica to the others' revocations (for as long as `d.db` lives)."""
    follower = RevocationFollower(d)
    d.db.changes.subscribe(ACCESS_REVOKED, follower)
    return follower

"""Several replicas as one service: presence, shared secrets (architecture.md §cluster)."""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from agentserver.cluster.keys import relay_secret, shared_secret
from agentserver.cluster.leader import Leader
from agentserver.cluster.leases import Leases
from agentserver.cluster.presence import DEAD_AFTER, HEARTBEAT, Presence, Replica
from agentserver.db.database import Database
from agentserver.settings import Settings
from agentserver.supervise import supervise

__all__ = [
    "DEAD_AFTER",
    "HEARTBEAT",
    "Cluster",
    "Leader",
    "Leases",
    "Presence",
    "Replica",
    "default_relay_url",
    "new_replica_id",
    "open_cluster",
    "shared_secret",
]

log = logging.getLogger(__name__)


def new_replica_id() -> str:
    """A name for this process, unique in the cluster and readable in logs (host-random)."""
    host = socket.gethostname().split(".")[0][:40] or "replica"
    return f"{host}-{secrets.token_hex(4)}"


def default_relay_url(settings: Settings) -> str:
    """http:// and the listen address; a wildcard address becomes this host's loopback."""
    host = settings.listen_host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.listen_port}"


@dataclass(frozen=True, slots=True)
class Cluster:
    """This replica's place among the others (`Deps.cluster`)."""

    replica_id: str
    relay_url: str
    # The key of the credential on relayed requests (cluster/keys.py).
    relay_secret: bytes
    presence: Presence
    # Whether this replica runs the cluster's once-only background work (cluster/leader.py).
    leader: Leader


@asynccontextmanager
async def open_cluster(
    settings: Settings, db: Database, heartbeat: float = HEARTBEAT
) -> AsyncIterator[Cluster]:
    """Join the cluster (this replica's row, kept fresh by a supervised heartbeat; its bid for
    leadership) and leave it on a clean stop. `settings.listen_port` must be the bound port."""
    replica_id = new_replica_id()
    relay_url = settings.relay_url or default_relay_url(settings)
    presence = Presence(db, replica_id, relay_url, heartbeat)
    key = await relay_secret(db, settings.relay_secret)
    conninfo = db.pool.conninfo
    leader = Leader(conninfo() if callable(conninfo) else conninfo, replica_id)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervise, "heartbeat", presence.run)
        await nursery.start(supervise, "leadership", leader.run)
        await nursery.start(leader.while_leading, "replica pruning", presence.prune)
        log.info("replica %s, relay %s", replica_id, relay_url)
        try:
            yield Cluster(replica_id, relay_url, key, presence, leader)
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await presence.leave()
                except Exception:  # the database may be gone: the row then just ages out
                    log.warning("could not remove this replica's row", exc_info=True)

"""Presence: each replica's row in `replicas`, kept fresh by a heartbeat.

A replica joins when it starts, beats every `HEARTBEAT` seconds, and leaves when it stops
cleanly. One whose heartbeat is older than `DEAD_AFTER` (three intervals) is dead: its tunnels,
leases and leadership are anybody's. Every time is the database's own clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import trio

from agentserver.db.database import Database

log = logging.getLogger(__name__)

HEARTBEAT = 2.0  # seconds between a replica's heartbeats
DEAD_AFTER = 3 * HEARTBEAT
# A dead replica's row is removed after this long (its work was taken over long before).
FORGET_AFTER = 3600.0
PRUNE_EVERY = 60.0  # seconds between the leader's passes removing such rows


@dataclass(frozen=True, slots=True)
class Replica:
    """One replica as the database last heard of it."""

    id: str
    relay_url: str
    started_at: datetime
    heartbeat_at: datetime
    draining: bool
    alive: bool


class Presence:
    """This replica's row, its heartbeat, and what the others' rows say."""

    def __init__(
        self, db: Database, replica_id: str, relay_url: str, interval: float = HEARTBEAT
    ) -> None:
        self.db = db
        self.replica_id = replica_id
        self.relay_url = relay_url
        self.interval = interval
        self.dead_after = 3 * interval
        self.draining = False
        # Set after each heartbeat that reached the database (tests and benchmarks wait on it).
        self.beats = 0

    async def join(self) -> None:
        """Write this replica's row (before it serves anything)."""
        await self.db.exec(
            "cluster_replica_join",
            id=self.replica_id,
            relay_url=self.relay_url,
            draining=self.draining,
        )

    async def beat(self) -> None:
        """One heartbeat; a row removed meanwhile (a long stall) is written again."""
        rows = await self.db.exec(
            "cluster_replica_beat", id=self.replica_id, draining=self.draining
        )
        if rows == 0:
            log.warning("this replica's row was gone (stalled too long?): joining again")
            await self.join()
        self.beats += 1

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Beat forever (run under `supervise`: a database outage is logged and retried)."""
        await self.join()
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.beat()

    async def prune(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Remove long-dead replicas' rows, every PRUNE_EVERY (the leader's work)."""
        task_status.started()
        while True:
            await self.db.exec("cluster_replicas_prune", forget_after=FORGET_AFTER)
            # A period between passes, not a wait for some state.
            await trio.sleep(PRUNE_EVERY)

    async def leave(self) -> None:
        """Remove this replica's row (a clean stop: nothing of it is left to take over)."""
        await self.db.exec("cluster_replica_leave", id=self.replica_id)

    async def drain(self) -> None:
        """Say this replica is stopping (others stop sending it new work)."""
        self.draining = True
        await self.beat()

    async def replicas(self) -> list[Replica]:
        """Every replica on record, the dead ones too (`alive` says which)."""
        return await self.db.many("cluster_replicas", Replica, dead_after=self.dead_after)

    async def replica(self, replica_id: str) -> Replica | None:
        return await self.db.one(
            "cluster_replica", Replica, id=replica_id, dead_after=self.dead_after
        )

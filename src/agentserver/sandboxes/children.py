"""Process sandboxes of dead replicas: the leader marks them paused, files kept.

A process sandbox is a child of the replica that started it (its row's `replica_id`, migration
0024). When that replica dies its processes die with it: the leader's sweep moves each such
sandbox that was running (or stopping) to `paused`, with the reason shown, so the dashboard
tells the truth and any replica can resume it (a resume starts a new process there). Docker and
Kubernetes sandboxes belong to no replica and are never swept.
"""

from __future__ import annotations

import logging

import trio

from agentserver.audit import Action
from agentserver.errors import AgentServerError
from agentserver.models import SandboxStatus as S
from agentserver.sandboxes.service import Sandboxes

log = logging.getLogger(__name__)

REASON = "its server process stopped"


class DeadReplicaSweep:
    """Every `interval` seconds (the leader's work): pause dead replicas' process sandboxes."""

    def __init__(self, sandboxes: Sandboxes, interval: float) -> None:
        self.sandboxes = sandboxes
        self.interval = interval
        self.paused = 0  # sandboxes this sweep paused

    async def sweep(self) -> int:
        """One pass; how many sandboxes it paused."""
        service = self.sandboxes
        rows = await service.db.rows("sbx_orphaned_children", dead_after=service.leases.dead_after)
        done = 0
        for row in rows:
            sid = row["id"]
            # Each step is conditional: a resume or a delete racing the sweep wins cleanly.
            if row["status"] == S.RUNNING and not await service.set_status(
                sid, S.RUNNING, S.PAUSING, REASON
            ):
                continue
            if await service.settle(sid, S.PAUSING, S.PAUSED, REASON):
                done += 1
                sandbox = await service.get(sid)
                if sandbox is not None:
                    await service.audit_system("leader", Action.SANDBOX_PAUSED, sandbox, REASON)
        if done:
            log.info("paused %d sandbox(es) of dead replicas", done)
        self.paused += done
        return done

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.sweep()
            except AgentServerError as exc:  # e.g. the database is briefly down
                log.warning("sweeping dead replicas' sandboxes failed: %s", exc.message)
            # A period between passes: a replica's death is a matter of its heartbeat's age.
            await trio.sleep(self.interval)

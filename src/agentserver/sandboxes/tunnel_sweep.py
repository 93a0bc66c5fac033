"""Local sandboxes' status across replicas: the dead-owner sweep and superseded tunnels.

Two loops per replica, next to its tunnel sessions (sandboxes/tunnel_session.py):

- the sweep, at start-up and every presence interval: the ownership rows of dead or departed
  replicas are removed (and this replica's own left behind by a release that failed), and
  every running local sandbox that no live replica serves is marked offline (one conditional
  UPDATE: idempotent, so every replica may run it at once, and a sandbox a live replica took
  over is never touched). Each change is published once, by the
  replica whose UPDATE made it;
- the watch: when a sandbox whose tunnel this replica holds changes owner (a notice, or any
  gap in notices), the database says whether this tunnel is still the current one; a
  superseded one is closed (the newer tunnel, on whichever replica, serves the sandbox).
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from agentserver.cluster.owners import Owners
from agentserver.errors import AgentServerError
from agentserver.models import Sandbox
from agentserver.tunnel import Hub

log = logging.getLogger(__name__)

SUPERSEDED = "a newer connection of this agent took over"
# A claim is registered in the hub right after it is made: a row of ours older than this with no
# tunnel here was left behind (its release failed) and is removed by the sweep.
SETTLED = 30.0


class Publisher(Protocol):
    """What the sweep needs of the lifecycle service: tell the workspace about a row."""

    def publish(self, sandbox: Sandbox) -> None: ...


class _Pending:
    """Sandboxes whose owner changed, collected from notices (never blocks) for the watch."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.everything = False
        self.wake = trio.Event()

    def add(self, sandbox_id: str | None) -> None:
        if sandbox_id is None:
            self.everything = True
        else:
            self.ids.add(sandbox_id)
        self.wake.set()

    async def take(self) -> tuple[set[str], bool]:
        await self.wake.wait()
        self.wake = trio.Event()
        taken, everything = self.ids, self.everything
        self.ids, self.everything = set(), False
        return taken, everything


class TunnelSweep:
    """The sweep and the watch of one replica."""

    def __init__(self, owners: Owners, hub: Hub, publisher: Publisher, interval: float) -> None:
        self.owners = owners
        self.hub = hub
        self.publisher = publisher
        self.interval = interval
        self._pending = _Pending()
        owners.on_change(self._changed)

    def _changed(self, sandbox_id: str | None) -> None:
        # Most notices are about other replicas' sandboxes: only this hub's tunnels matter.
        if sandbox_id is None or self.hub.get(sandbox_id) is not None:
            self._pending.add(sandbox_id)

    async def sweep(self) -> list[Sandbox]:
        """Forget dead replicas' tunnels and this one's left-over rows, then mark what nobody
        serves offline (published)."""
        await self.owners.forget_dead()
        for sandbox_id, generation in await self.owners.mine(SETTLED):
            if self.hub.generation(sandbox_id) != generation:
                log.info("removing a left-over ownership of sandbox %s", sandbox_id)
                await self.owners.release(sandbox_id, generation)
        rows = await self.owners.all_unowned_offline()
        for row in rows:
            log.info("local sandbox %s offline: no live replica serves its tunnel", row.id)
            self.publisher.publish(row)
        return rows

    async def run_sweeps(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Sweep every interval, forever (a database outage is logged; the next one repairs)."""
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            try:
                await self.sweep()
            except AgentServerError as exc:
                log.warning("tunnel ownership sweep failed: %s", exc.message)

    async def watch(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Close this replica's tunnels that a newer one superseded, as notices tell."""
        task_status.started()
        while True:
            ids, everything = await self._pending.take()
            if everything:
                ids = {sandbox_id for sandbox_id, _, _ in self.hub.tunnels()}
            for sandbox_id in sorted(ids):
                await self.check(sandbox_id)

    async def check(self, sandbox_id: str) -> bool:
        """Close the sandbox's tunnel here if it is no longer the current one; True if closed."""
        tunnel, generation = self.hub.get(sandbox_id), self.hub.generation(sandbox_id)
        if tunnel is None or generation is None:
            await trio.lowlevel.checkpoint()
            return False
        try:
            current = await self.owners.still_owner(sandbox_id, generation)
        except AgentServerError as exc:
            log.warning("ownership of sandbox %s not checked: %s", sandbox_id, exc.message)
            await trio.lowlevel.checkpoint()  # the error may come before anything was awaited
            return False
        if current:
            return False
        log.info(
            "tunnel of sandbox %s superseded (generation %d): closing it", sandbox_id, generation
        )
        await tunnel.aclose(SUPERSEDED)
        return True

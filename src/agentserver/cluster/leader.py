"""Leadership: the one replica that runs the cluster's once-only background work.

The leader is whoever holds a PostgreSQL session-level advisory lock on a dedicated connection
(db/advisory.py). Followers try for it every `POLL` seconds; PostgreSQL releases it when the
leader's connection ends (the process killed, the connection cut), so another replica leads
within seconds. Work that must run once in the cluster (the idle watcher, the reconciler, the
sweep of dead replicas' sandboxes, retention) runs through `while_leading`: started when this
replica becomes the leader, cancelled the moment it stops being one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from agentserver.db.advisory import hold_advisory_lock
from agentserver.supervise import supervise

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every replica (and not migrate.py's).
LEADER_KEY = 0x61_67_73_6C  # "agsl"
POLL = 1.0  # seconds between a follower's tries, and between the leader's connection checks


class Leader:
    """Whether this replica leads (`leading`), and the work it runs while it does."""

    def __init__(self, url: str, replica_id: str = "", poll: float = POLL) -> None:
        self.url = url
        self.replica_id = replica_id
        self.poll = poll
        self.leading = False
        self.terms = 0  # how many times this replica became the leader
        self._changed = trio.Event()

    def _on_change(self, leading: bool) -> None:
        self.leading = leading
        if leading:
            self.terms += 1
            log.info("replica %s leads the cluster's background work", self.replica_id)
        else:
            log.warning("replica %s no longer leads: its background work stops", self.replica_id)
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold or try for the lock forever; started after the first try (so a lone replica
        leads before it serves anything)."""
        await hold_advisory_lock(
            self.url, LEADER_KEY, self._on_change, poll=self.poll, task_status=task_status
        )

    async def wait_leading(self) -> None:
        """Return once this replica leads (at once if it does)."""
        await trio.lowlevel.checkpoint()
        while not self.leading:
            await self._changed.wait()

    async def wait_following(self) -> None:
        """Return once this replica no longer leads (at once if it does not)."""
        await trio.lowlevel.checkpoint()
        while self.leading:
            await self._changed.wait()

    async def while_leading(
        self,
        name: str,
        fn: Callable[..., Awaitable[object]],
        *args: Any,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run `fn(*args, task_status=…)` under `supervise` for as long as this replica leads,
        in the caller's nursery; cancel it at once when leadership is lost; again next term."""
        task_status.started()
        while True:
            await self.wait_leading()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(supervise, name, fn, *args))
                await self.wait_following()
                nursery.cancel_scope.cancel()

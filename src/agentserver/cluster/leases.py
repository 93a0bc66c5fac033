"""Operation leases: which replica runs a backend operation on a sandbox now (migration 0024).

A start, pause, restart or delete holds its sandbox's lease for as long as it runs: claimed by a
conditional UPDATE, renewed every `RENEW` seconds, released when it ends. A lease that ran out,
or whose replica is dead, is anybody's; so a replica killed mid-start blocks nobody for long.
Within one replica the lifecycle service still orders operations by its own per-sandbox chain;
the lease orders them across replicas.

A delete supersedes: it records its wish on the row, the holder gives its operation up at its
next renewal (so a start on replica A cannot undo a delete on replica B), and no other replica
claims the lease before the deleter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from agentserver.cluster.presence import DEAD_AFTER
from agentserver.db.database import Database
from agentserver.errors import AgentServerError, DatabaseUnavailable

log = logging.getLogger(__name__)

LEASE = 10.0  # seconds a claim holds without a renewal
RENEW = 1.0  # seconds between renewals
# Seconds between a waiting claim's tries: another replica's lease ends by its release or by
# the clock (its replica may be dead), and neither sends a notice.
RETRY = 0.2
RETRY_DOWN = 2.0  # seconds between tries while the database is unavailable


def _ignore() -> None:
    return None


class Leases:
    """This replica's claims on sandboxes' operation leases (`Sandboxes.leases`)."""

    def __init__(self, db: Database, replica_id: str, dead_after: float = DEAD_AFTER) -> None:
        self.db = db
        self.replica_id = replica_id
        self.dead_after = dead_after
        self.lease = LEASE
        self.renew_every = RENEW
        # Operations this replica gave up because another replica deletes their sandbox.
        self.given_up = 0
        # How many holds of this replica share each sandbox's lease (one finishing while the
        # next begins), and the lock that orders their claims and releases.
        self._holds: dict[str, int] = {}
        self._locks: dict[str, trio.Lock] = {}

    def _lock(self, sandbox_id: str) -> trio.Lock:
        return self._locks.setdefault(sandbox_id, trio.Lock())

    async def try_claim(self, sandbox_id: str, *, supersede: bool = False) -> bool | None:
        """One try: True when this replica holds the lease now, False when another does,
        None when the sandbox is gone."""
        async with self._lock(sandbox_id):
            if self._holds.get(sandbox_id, 0) > 0:  # this replica holds it already: share it
                self._holds[sandbox_id] += 1
                return True
            got = await self.db.scalar(
                "sbx_op_claim",
                id=sandbox_id,
                replica=self.replica_id,
                lease=self.lease,
                dead_after=self.dead_after,
                supersede=supersede,
            )
            if got == "claimed":
                self._holds[sandbox_id] = 1
            return None if got is None else got == "claimed"

    async def claim(self, sandbox_id: str, *, supersede: bool = False) -> bool:
        """Wait until this replica holds the lease (False: the sandbox is gone). `supersede`
        (a delete) asks the holder to give its operation up and goes before other waiters."""
        while True:
            try:
                got = await self.try_claim(sandbox_id, supersede=supersede)
            except DatabaseUnavailable as exc:  # the operation waits for the database
                log.warning("claiming sandbox %s waits: %s", sandbox_id, exc.message)
                await trio.sleep(RETRY_DOWN)
                continue
            if got is not None:
                if got:
                    return True
                if supersede:
                    await self.db.exec(
                        "sbx_op_want", id=sandbox_id, replica=self.replica_id, lease=self.lease
                    )
            else:
                return False
            # A retry against another replica's lease, which ends unannounced (see RETRY).
            await trio.sleep(RETRY)

    async def release(self, sandbox_id: str) -> None:
        """Give one claim back; the lease itself when no other hold of this replica shares it
        (shielded: it runs as the operation ends, cancelled or not)."""
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            lock = self._lock(sandbox_id)
            async with lock:
                left = self._holds.get(sandbox_id, 1) - 1
                if left > 0:
                    self._holds[sandbox_id] = left
                else:
                    self._holds.pop(sandbox_id, None)
                    try:
                        await self.db.exec("sbx_op_release", id=sandbox_id, replica=self.replica_id)
                    except AgentServerError as exc:  # it runs out by itself within LEASE s
                        log.warning(
                            "releasing the lease on sandbox %s failed: %s", sandbox_id, exc.message
                        )
            if sandbox_id not in self._holds and lock.statistics().tasks_waiting == 0:
                self._locks.pop(sandbox_id, None)
        await trio.lowlevel.checkpoint()

    @asynccontextmanager
    async def hold(
        self,
        sandbox_id: str,
        *,
        supersede: bool = False,
        on_lost: Callable[[], None] = _ignore,
        wait: float = math.inf,
    ) -> AsyncIterator[bool | None]:
        """Hold the lease for the body, renewing it meanwhile: True; or nothing is held: False
        when the sandbox is gone, None when it was not won within `wait` seconds. `on_lost` is
        called when the lease is lost or, unless this hold supersedes, when another replica
        waits to delete the sandbox: it should stop the body."""
        claimed: bool | None = None
        with trio.move_on_after(wait):
            claimed = await self.claim(sandbox_id, supersede=supersede)
        if not claimed:
            yield claimed
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._renew, sandbox_id, supersede, on_lost)
                try:
                    yield True
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await self.release(sandbox_id)

    async def _renew(self, sandbox_id: str, supersede: bool, on_lost: Callable[[], None]) -> None:
        while True:
            # The renewal period of a lease, not a wait for some state.
            await trio.sleep(self.renew_every)
            try:
                wanted = await self.db.scalar(
                    "sbx_op_renew", id=sandbox_id, replica=self.replica_id, lease=self.lease
                )
            except AgentServerError as exc:  # nobody can take it while the database is down
                log.warning("renewing the lease on sandbox %s failed: %s", sandbox_id, exc.message)
                continue
            if wanted is None:
                log.warning("the lease on sandbox %s was lost: its operation stops", sandbox_id)
                on_lost()
                return
            if wanted and not supersede:
                log.info("sandbox %s is being deleted by another replica: giving up", sandbox_id)
                self.given_up += 1
                on_lost()
                return

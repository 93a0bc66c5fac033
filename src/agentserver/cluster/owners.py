"""Tunnel ownership: which replica serves each local sandbox's tunnel, under which generation.

The replica that accepts an agent's tunnel claims the sandbox (`tunnel_owners`, migration 0022)
with a generation from one sequence; a newer tunnel anywhere takes the row over, and the tunnel
that ends removes it only while the generation is still its own. Every change is announced
(`tunnel_owner_changed`): this replica's cached lookups forget the sandbox, and whoever watches
(`on_change`) hears which sandbox's owner changed, so a superseded owner closes its tunnel at once.

Lookups for relaying are cached briefly (only while notices flow, so a change is never missed):
the hot path of a relayed request costs a dict lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from agentserver.cluster.presence import Presence
from agentserver.db.database import Database
from agentserver.db.notify import TUNNEL_OWNER_CHANGED, Notice
from agentserver.models import Sandbox

log = logging.getLogger(__name__)

# How long a lookup is trusted (a change of owner is a notice and forgets it at once; this bounds
# how long a dead owner's `alive` is believed).
CACHE_SECONDS = 1.0
CACHE_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Owner:
    """The replica serving a sandbox's tunnel, as the database last said."""

    replica_id: str
    generation: int
    relay_url: str
    alive: bool
    # The owner is draining: its tunnel is moving to another replica (a request waits for it).
    draining: bool = False

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the owner's relay address (`--relay-url`, plain HTTP)."""
        parts = urlsplit(self.relay_url)
        return parts.hostname or "127.0.0.1", parts.port or 80


class Owners:
    """This replica's view of `tunnel_owners`: claims, releases, lookups, the dead sweep."""

    def __init__(self, db: Database, presence: Presence) -> None:
        self.db = db
        self.presence = presence
        self.replica_id = presence.replica_id
        self._cache: dict[str, tuple[float, Owner | None]] = {}
        self._watchers: list[Callable[[str | None], None]] = []
        # Set when the sandbox's owner changes (`moved` waits on them); one per sandbox waited on.
        self._moves: dict[str, trio.Event] = {}
        # Counts notices: a lookup that overlapped one is not cached (it may predate it).
        self._notices = 0
        db.changes.subscribe(TUNNEL_OWNER_CHANGED, self)

    def close(self) -> None:
        self.db.changes.unsubscribe(TUNNEL_OWNER_CHANGED, self)

    # -- notices (db/notify.py's Subscriber) --------------------------------------------------

    def on_change(self, watcher: Callable[[str | None], None]) -> None:
        """Call `watcher(sandbox_id)` when the sandbox's owner changed, `watcher(None)` when
        notices may have been missed (anything may have changed). Never blocks."""
        self._watchers.append(watcher)

    def notice(self, notice: Notice) -> None:
        self._notices += 1
        self._cache.pop(notice.payload, None)
        moved = self._moves.pop(notice.payload, None)
        if moved is not None:
            moved.set()
        for watcher in self._watchers:
            watcher(notice.payload)

    def reset(self) -> None:
        self._notices += 1
        self._cache.clear()
        moves, self._moves = self._moves, {}
        for moved in moves.values():
            moved.set()
        for watcher in self._watchers:
            watcher(None)

    # -- the owner's side -----------------------------------------------------------------------

    async def claim(self, sandbox_id: str) -> int:
        """Own the sandbox's tunnel from now on; returns the new generation."""
        generation = await self.db.scalar(
            "tunnel_claim", sandbox_id=sandbox_id, replica_id=self.replica_id
        )
        return int(generation)

    async def release(self, sandbox_id: str, generation: int) -> bool:
        """The tunnel of `generation` ended: its row goes unless a newer one took over."""
        return bool(
            await self.db.exec("tunnel_release", sandbox_id=sandbox_id, generation=generation)
        )

    async def still_owner(self, sandbox_id: str, generation: int) -> bool:
        """Whether the tunnel of `generation` is still the sandbox's."""
        return bool(
            await self.db.scalar("tunnel_still_owner", sandbox_id=sandbox_id, generation=generation)
        )

    async def mine(self, settled: float) -> list[tuple[str, int]]:
        """(sandbox id, generation) of this replica's rows claimed over `settled` seconds ago."""
        rows = await self.db.rows("tunnel_owned_by", replica_id=self.replica_id, settled=settled)
        return [(str(r["sandbox_id"]), int(r["generation"])) for r in rows]

    async def forget_dead(self) -> int:
        """Remove the ownership of dead or departed replicas (idempotent; any replica may)."""
        return await self.db.exec(
            "tunnel_forget_dead", dead_after=self.presence.dead_after, me=self.replica_id
        )

    # -- local sandboxes' status, from ownership ------------------------------------------------

    async def mark_running(self, sandbox_id: str, generation: int) -> Sandbox | None:
        """`offline` → `running` while the tunnel of `generation` owns the sandbox; the row
        when it changed."""
        return await self.db.one(
            "tunnel_mark_running", Sandbox, sandbox_id=sandbox_id, generation=generation
        )

    async def mark_offline(self, sandbox_id: str, reason: str) -> Sandbox | None:
        """`running` → `offline` unless a live replica owns the sandbox's tunnel; the row when
        it changed."""
        return await self.db.one(
            "tunnel_mark_offline",
            Sandbox,
            sandbox_id=sandbox_id,
            reason=reason,
            dead_after=self.presence.dead_after,
            me=self.replica_id,
        )

    async def all_unowned_offline(self) -> list[Sandbox]:
        """Mark offline every running local sandbox that no live replica serves."""
        return await self.db.many(
            "tunnel_all_unowned_offline",
            Sandbox,
            dead_after=self.presence.dead_after,
            me=self.replica_id,
        )

    # -- everyone else's side -------------------------------------------------------------------

    async def lookup(self, sandbox_id: str, *, fresh: bool = False) -> Owner | None:
        """Who serves the sandbox's tunnel (None: nobody); `fresh` asks the database again."""
        now = trio.current_time()
        if not fresh:
            hit = self._cache.get(sandbox_id)
            if hit is not None and now - hit[0] < CACHE_SECONDS:
                await trio.lowlevel.checkpoint_if_cancelled()
                return hit[1]
        before = self._notices
        owner = await self.db.one(
            "tunnel_owner", Owner, sandbox_id=sandbox_id, dead_after=self.presence.dead_after
        )
        if (
            self.db.changes.live and self._notices == before
        ):  # without notices a cached answer could outlive a change
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[sandbox_id] = (now, owner)
        return owner

    async def moved(self, sandbox_id: str, generation: int) -> Owner | None:
        """Wait until the sandbox's tunnel is no longer the one of `generation` (its agent
        connected again, to any replica; bound the wait with a cancel scope); the owner then."""
        while True:
            # Registered before the lookup: a change between the two is not missed.
            changed = self._moves.setdefault(sandbox_id, trio.Event())
            owner = await self.lookup(sandbox_id, fresh=True)
            if owner is None or owner.generation != generation:
                return owner
            await changed.wait()

    def forget(self, sandbox_id: str) -> None:
        """Drop a cached answer (a relay found it stale)."""
        self._cache.pop(sandbox_id, None)

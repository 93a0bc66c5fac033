"""The audit log's writer: entries are queued by the action and stored in batches, off its path.

`AuditLog.record` puts an entry in a bounded buffer and returns: the action it records has
already happened and is never slowed by the database or broken by it. One writer task takes
what is queued, gathering for up to LINGER after the first entry (up to BATCH_MAX entries), and
stores it with one INSERT: a burst costs one statement, and the insert's work in its worker
thread runs after the request that recorded the entry has answered, not during it. A write
that fails is logged and tried again with a backoff, keeping the batch; meanwhile new entries
wait in the buffer. If the writer itself fails (a bug), its supervisor starts it again and it
retries the batch it held.

When the buffer is full (the database has been failing for a while, or a burst outruns it),
`record` waits up to FULL_WAIT for room: the burst is slowed instead of losing entries. If
there is still no room, the entry goes to the server log as JSON at ERROR level (so it is kept
somewhere) and is counted in `dropped`; the action itself still succeeds.

On shutdown `open_audit_log` closes the buffer, stops the writer where it is, and stores
what it held and everything still queued (up to DRAIN_TIMEOUT, shielded) before the database
closes: nothing recorded before a clean shutdown is lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import trio

from agentserver.audit.entries import (
    COLUMNS,
    NO_TARGET,
    Action,
    Actor,
    Entry,
    Result,
    Target,
    details_json,
)
from agentserver.db.database import Database, Tx
from agentserver.errors import AgentServerError, Invalid
from agentserver.supervise import supervise

log = logging.getLogger(__name__)
BUFFER = 10_000  # entries queued at most (about a kilobyte each)
BATCH_MAX = 500  # entries per INSERT
LINGER = 0.1  # seconds the writer gathers entries after the first before it stores them
FULL_WAIT = 2.0  # seconds `record` waits for room in a full buffer
RETRY_BACKOFF = (0.25, 8.0)  # first and longest pause between tries of a failed write
DRAIN_TIMEOUT = 10.0  # seconds the shutdown waits for queued entries to be stored
PRUNE_EVERY = 6 * 3600.0  # seconds between retention passes


class AuditStore(Protocol):
    """Where entries go (the database; a list in unit tests)."""

    async def insert(self, entries: Sequence[Entry]) -> None: ...

    async def prune(self, days: int) -> int: ...


class DatabaseStore:
    """The `audit_log` table: a batch is one INSERT of many rows."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, entries: Sequence[Entry]) -> None:
        columns = list(zip(*(entry.row() for entry in entries), strict=True))
        params = {name: list(values) for name, values in zip(COLUMNS, columns, strict=True)}

        def work(tx: Tx) -> None:
            tx.exec("audit_insert", **params)

        await self.db.transaction(work)

    async def prune(self, days: int) -> int:
        return await self.db.exec("audit_prune", days=days)


class _Nowhere:
    """The store of `AuditLog.off()`: it is never written to."""

    async def insert(self, entries: Sequence[Entry]) -> None:
        await trio.lowlevel.checkpoint()

    async def prune(self, days: int) -> int:
        await trio.lowlevel.checkpoint()
        return 0


def entry_json(entry: Entry) -> str:
    """An entry as one line of JSON (for the server log when it cannot be stored)."""
    values: dict[str, Any] = dict(zip(COLUMNS, entry.row(), strict=True))
    values["details"] = json.loads(entry.details)
    return json.dumps(values, default=str, separators=(",", ":"))


class AuditLog:
    """Records audit entries (`Deps.audit`). `enabled=False` records nothing: for the
    benchmark that measures what recording costs, never for a server."""

    def __init__(
        self,
        store: AuditStore,
        *,
        buffer: int = BUFFER,
        batch_max: int = BATCH_MAX,
        full_wait: float = FULL_WAIT,
        enabled: bool = True,
        linger: float = LINGER,
    ) -> None:
        self.store = store
        self.linger = linger
        self.enabled = enabled
        self.batch_max = batch_max
        self.full_wait = full_wait
        self._send, self._receive = trio.open_memory_channel[Entry](buffer)
        self._batch: list[Entry] = []  # taken from the buffer, not yet stored
        self.drained = trio.Event()  # the buffer was closed and everything in it stored
        self.written = 0
        self.dropped = 0
        self._accepted = 0  # entries that went into the buffer
        self._settled = 0  # of those, stored or given up on
        self._progress = trio.Event()  # set (and renewed) whenever some are settled

    @classmethod
    def off(cls) -> AuditLog:
        """A log that records nothing (for parts built without a server, as in tests)."""
        return cls(_Nowhere(), buffer=0, enabled=False)

    @property
    def backlog(self) -> int:
        """Entries recorded but not yet stored."""
        return len(self._batch) + self._receive.statistics().current_buffer_used

    async def record(
        self,
        actor: Actor,
        action: Action,
        target: Target | None = None,
        workspace_id: str | None = None,
        result: Result = Result.OK,
        *,
        reason: str | None = None,
        client_address: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Queue one entry, stamped now; returns at once unless the buffer is full (then it
        waits up to `full_wait` for room). Never raises for the log's sake."""
        if not self.enabled:
            await trio.lowlevel.checkpoint()
            return
        entry = Entry(
            at=datetime.now(UTC),
            actor=actor,
            action=action,
            target=target or NO_TARGET,
            workspace_id=workspace_id,
            client_address=client_address,
            result=result,
            reason=reason,
            details=details_json(details),
        )
        try:
            self._send.send_nowait(entry)
            self._accepted += 1
        except trio.WouldBlock:
            with trio.move_on_after(self.full_wait):
                try:
                    await self._send.send(entry)
                except trio.ClosedResourceError:
                    pass
                else:
                    self._accepted += 1
                    return
            self._lost(entry, "the audit buffer is full")
        except trio.ClosedResourceError:
            self._lost(entry, "the audit log is closed")
        await trio.lowlevel.checkpoint()

    def _lost(self, entry: Entry, why: str) -> None:
        self.dropped += 1
        log.error("%s; audit entry kept here only: %s", why, entry_json(entry))

    async def flush(self) -> None:
        """Wait until every entry recorded before this call is stored (or given up on)."""
        target = self._accepted
        while self._settled < target:
            await self._progress.wait()
        await trio.lowlevel.checkpoint()

    def _settle(self, count: int) -> None:
        self._settled += count
        self._progress.set()
        self._progress = trio.Event()

    def close(self) -> None:
        """No more entries: the writer stores what is queued, then returns."""
        self._send.close()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer: batch after batch until the buffer is closed and empty."""
        task_status.started()
        while True:
            if not self._batch:
                try:
                    self._batch.append(await self._receive.receive())
                except trio.EndOfChannel:
                    self.drained.set()
                    await trio.lowlevel.checkpoint()
                    return
                await self._gather()
            await self._store_batch()

    async def _gather(self) -> None:
        """Add what arrives within `linger` (a batching window, not a wait for some state)."""
        with trio.move_on_after(self.linger):
            while len(self._batch) < self.batch_max:
                try:
                    self._batch.append(await self._receive.receive())
                except trio.EndOfChannel:
                    break
        await trio.lowlevel.checkpoint()

    async def drain(self) -> None:
        """Store the batch the stopped writer held and everything still queued (the buffer
        is closed first: see `close`)."""
        while True:
            if not self._batch and not self._take_queued():
                self.drained.set()
                await trio.lowlevel.checkpoint()
                return
            await self._store_batch()

    def _take_queued(self) -> bool:
        """Add what is queued to the batch, up to `batch_max`; whether it holds any now."""
        while len(self._batch) < self.batch_max:
            try:
                self._batch.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return bool(self._batch)

    async def _store_batch(self) -> None:
        """Store the held batch, trying again (with a backoff) while the store fails."""
        delay = RETRY_BACKOFF[0]
        while True:
            try:
                await self.store.insert(self._batch)
            except Invalid:
                # A value the database cannot hold: store the others, one by one.
                await self._store_one_by_one()
                return
            except AgentServerError as exc:
                log.warning(
                    "%d audit entries not stored yet (%s); trying again in %g s",
                    len(self._batch),
                    exc.message,
                    delay,
                )
            else:
                self.written += len(self._batch)
                self._settle(len(self._batch))
                self._batch = []
                return
            # A backoff between tries against a failing database, not a wait for some state.
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_BACKOFF[1])

    async def _store_one_by_one(self) -> None:
        while self._batch:
            entry = self._batch[0]
            try:
                await self.store.insert([entry])
            except Invalid as exc:
                self._lost(entry, f"an audit entry cannot be stored ({exc.message})")
            else:
                self.written += 1
            self._batch.pop(0)
            self._settle(1)
        await trio.lowlevel.checkpoint()

    async def prune(
        self, days: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Retention: at start and every PRUNE_EVERY, drop entries older than `days`."""
        task_status.started()
        while True:
            try:
                pruned = await self.store.prune(days)
            except AgentServerError as exc:
                log.warning("pruning the audit log failed: %s", exc.message)
            else:
                if pruned:
                    log.info("pruned %d audit entries older than %d days", pruned, days)
            # A period between retention passes, not a wait for some state.
            await trio.sleep(PRUNE_EVERY)


@asynccontextmanager
async def open_audit_log(
    store: AuditStore,
    retention_days: int,
    *,
    linger: float = LINGER,
    once_in_cluster: Callable[..., Awaitable[None]] | None = None,
) -> AsyncIterator[AuditLog]:
    """The audit log with its writer (and retention, unless `retention_days` is 0) running;
    on exit everything queued is stored before this returns (up to DRAIN_TIMEOUT).
    `once_in_cluster` (the cluster leader's `while_leading`) runs retention on one replica."""
    audit = AuditLog(store, linger=linger)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervise, "audit writer", audit.run)
            if retention_days > 0:
                run = once_in_cluster or supervise
                await nursery.start(run, "audit retention", audit.prune, retention_days)
            try:
                yield audit
            finally:
                audit.close()
                # Stopped, not awaited: under a cancellation the writer could not finish; a
                # write it had begun completes first (worker threads are not abandoned).
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(DRAIN_TIMEOUT):
            await audit.drain()
        if audit.backlog:
            log.error("%d audit entries could not be stored before shutdown", audit.backlog)

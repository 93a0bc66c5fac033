"""The LLM usage rows, written off the request path in batches, and the ledger's syncs.

A finished call hands its row to `record`, which returns at once unless the buffer is full
(then the call waits: back-pressure, never a lost row). One writer task inserts what is
buffered in one transaction (one round trip for the whole batch), publishes what this replica
holds in flight, reads the fresh counts of the workspaces under a limit and installs them in the
ledger, all together, so a row is counted either as a ticket or as a row, never both or neither.
A database that cannot be reached keeps the rows buffered and is retried with backoff; a batch
the database refuses is written row by row so one bad row loses only itself (logged). `close`
makes the writer drain everything and return; the drain is shielded, with a deadline, so a
clean shutdown loses nothing.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any

import trio

from agentserver.db.database import Database, Tx
from agentserver.errors import AgentServerError, DatabaseUnavailable
from agentserver.llm.ledger import SYNC_EVERY, Ledger, Ticket

log = logging.getLogger(__name__)

BUFFER = 4096  # rows waiting to be written before `record` waits
BATCH = 512  # rows per transaction at most
FIRST_RETRY, MOST_RETRY = 0.25, 10.0
DRAIN_DEADLINE = 15.0  # a clean shutdown waits this long at most for the last rows
# Rows recorded within this long of each other go in one batch: one transaction (and one
# worker thread's turn) per window rather than per call, unless a reader or shutdown waits.
BATCH_WINDOW = 0.05


@dataclass(slots=True)
class Pending:
    """One finished call's row, and its ticket when its workspace is under a limit."""

    row: dict[str, Any]
    ticket: Ticket | None


class UsageRecorder:
    """Buffers finished calls' rows and writes them in batches (see the module docstring)."""

    def __init__(self, db: Database, ledger: Ledger, buffer: int = BUFFER) -> None:
        self.db = db
        self.ledger = ledger
        self.replica_id = uuid.uuid4().hex  # names this process's rows in llm_inflight
        self.buffer = buffer
        self._pending: list[Pending] = []
        self._recorded = 0  # rows handed to `record` so far
        self._written = 0  # of them, rows written (or given up on) so far
        self._wake = trio.Event()  # the writer has work
        self._urgent = trio.Event()  # someone waits for it: no batching window
        self._progress = trio.Event()  # a batch completed
        self._closing = False
        self._batches_begun = 0
        self._batches_done = 0
        self.published: set[str] = set()  # workspaces with a row in llm_inflight
        # Seconds per batch written, kept only when a benchmark asks.
        self.timings: list[float] | None = None

    async def record(self, row: dict[str, Any], ticket: Ticket | None) -> None:
        """Buffer one row; waits only while the buffer is full."""
        while len(self._pending) >= self.buffer:
            await self._progress.wait()
        self._pending.append(Pending(row, ticket))
        self._recorded += 1
        self._wake.set()
        if len(self._pending) >= BATCH:
            self._urgent.set()
        await trio.lowlevel.checkpoint()

    async def flush(self) -> None:
        """Return once every row recorded before this call is written."""
        target = self._recorded
        self._wake.set()
        self._urgent.set()
        await trio.lowlevel.checkpoint()
        while self._written < target:
            await self._progress.wait()

    async def sync(self) -> None:
        """Return after the writer's next batch (rows, in-flight sums and snapshots) commits."""
        target = self._batches_begun + 1
        self._wake.set()
        self._urgent.set()
        await trio.lowlevel.checkpoint()
        while self._batches_done < target:
            await self._progress.wait()

    def close(self) -> None:
        """Stop after writing everything buffered."""
        self._closing = True
        self._wake.set()
        self._urgent.set()

    async def load(self, workspace_id: str) -> None:
        """Read a workspace's counts for admission (when the ledger has none fresh)."""
        generation = self.ledger.generation
        taken_at = self.ledger.clock()
        load = await self.db.rows(
            "llm_workspace_load", workspace_id=workspace_id, replica_id=self.replica_id
        )
        self.ledger.install(workspace_id, load[0], taken_at, generation)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer: a batch whenever rows wait, a sync of the ledger every SYNC_EVERY."""
        task_status.started()
        delay = FIRST_RETRY
        try:
            while not (self._closing and not self._pending):
                every = SYNC_EVERY if self.ledger.accounts or self.published else math.inf
                with trio.move_on_after(every):
                    await self._wake.wait()
                with trio.move_on_after(BATCH_WINDOW):
                    await self._urgent.wait()
                self._wake, self._urgent = trio.Event(), trio.Event()
                try:
                    await self._write_batch()
                    delay = FIRST_RETRY
                    if self._pending:  # a backlog: on with the next batch at once
                        self._wake.set()
                        self._urgent.set()
                except DatabaseUnavailable:
                    if self._closing:
                        raise
                    log.warning("LLM usage not written yet (database unavailable); retrying")
                    await trio.sleep(delay)
                    delay = min(MOST_RETRY, delay * 2)
                    self._wake.set()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(DRAIN_DEADLINE):
                await self._drain()

    async def _drain(self) -> None:
        """Everything buffered, then this replica's in-flight rows removed (it holds none now)."""
        await trio.lowlevel.checkpoint()
        try:
            while self._pending:
                await self._write_batch()
            published, self.published = self.published, set()
            if published:
                await self.db.transaction(lambda tx: self._clear(tx, published))
        except AgentServerError as exc:
            lost = len(self._pending)
            log.error("%d LLM usage rows could not be written at shutdown: %s", lost, exc.message)
        finally:
            self._written = self._recorded  # nobody waits for rows that will never come
            self._progress.set()

    def _clear(self, tx: Tx, workspaces: set[str]) -> None:
        for workspace_id in workspaces:
            tx.exec("llm_inflight_clear", replica_id=self.replica_id, workspace_id=workspace_id)

    async def _write_batch(self) -> None:
        await trio.lowlevel.checkpoint()
        self._batches_begun += 1
        batch = self._pending[:BATCH]
        written = [p.ticket for p in batch if p.ticket is not None]
        workspaces = set(self.ledger.tracked()) | {t.workspace_id for t in written}
        held = {w: self.ledger.held_in_flight(w, written) for w in workspaces}
        taken_at = self.ledger.clock()
        started = trio.current_time()
        loads: dict[str, dict[str, Any]] = {}
        if batch or held:
            try:
                loads = await self.db.transaction(lambda tx: self._sync(tx, batch, held))
            except DatabaseUnavailable:
                raise
            except AgentServerError as exc:
                log.warning(
                    "an LLM usage batch was refused (%s); writing it row by row", exc.message
                )
                await self._one_by_one(batch)
            for workspace_id, (tokens, requests) in held.items():
                if tokens or requests:
                    self.published.add(workspace_id)
                else:
                    self.published.discard(workspace_id)
        if self.timings is not None and batch:
            self.timings.append(trio.current_time() - started)
        del self._pending[: len(batch)]
        self.ledger.synced(written, loads, taken_at)
        self._batches_done = self._batches_begun
        self._done(len(batch))

    def _done(self, rows: int) -> None:
        self._written += rows
        self._progress.set()
        self._progress = trio.Event()

    def _sync(
        self, tx: Tx, batch: list[Pending], held: dict[str, tuple[int, int]]
    ) -> dict[str, dict[str, Any]]:
        if batch:
            tx.exec_many("llm_usage_record", [p.row for p in batch])
        loads: dict[str, dict[str, Any]] = {}
        for workspace_id, (tokens, requests) in held.items():
            if tokens or requests:
                tx.exec(
                    "llm_inflight_put",
                    replica_id=self.replica_id,
                    workspace_id=workspace_id,
                    tokens=tokens,
                    requests=requests,
                )
            elif workspace_id in self.published:
                tx.exec("llm_inflight_clear", replica_id=self.replica_id, workspace_id=workspace_id)
            found = tx.rows(
                "llm_workspace_load", workspace_id=workspace_id, replica_id=self.replica_id
            )
            loads[workspace_id] = found[0]
        return loads

    async def _one_by_one(self, batch: list[Pending]) -> None:
        await trio.lowlevel.checkpoint()
        for done, pending in enumerate(batch):
            try:
                await self.db.exec("llm_usage_record", **pending.row)
            except DatabaseUnavailable:
                # Those before it are written: take them off, retry from this one.
                del self._pending[:done]
                self.ledger.synced([p.ticket for p in batch[:done] if p.ticket], {}, 0.0)
                self._done(done)
                raise
            except AgentServerError as exc:
                log.error("an LLM usage row was dropped: %s (%s)", exc.message, pending.row)

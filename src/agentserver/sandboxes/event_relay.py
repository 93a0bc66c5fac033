"""Workspace events from every replica: the database's notices on channel `workspace_event`,
re-read and handed to this replica's event streams (`WorkspaceEvents`).

A change is announced in the transaction that makes it (migration 0023's triggers for a
sandbox's row, `announce_previews` for a sandbox's previews), with ids only as the payload;
each replica's listener (db/notify.py) passes it here, and one task re-reads the sandbox and
publishes what it finds: its row, or its deletion when the row is gone. The replica that made a
change has published it already, from the row it wrote; `WorkspaceEvents` drops the echo by the
row's version, and a previews notice names the process that sent it.

A gap in the notices (the listener's connection lost, or more notices queued than the relay can
hold) cannot be replayed: every open stream is ended, and the browsers reconnect and start
again from a snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from agentserver.db.database import Database, Tx
from agentserver.db.notify import WORKSPACE_EVENT, Notice
from agentserver.errors import AgentServerError
from agentserver.models import Sandbox
from agentserver.sandboxes.events import Event, WorkspaceEvents

log = logging.getLogger(__name__)
# Notices waiting to be re-read; more than this at once is treated as a gap.
QUEUE = 1024


@dataclass(frozen=True, slots=True)
class Announced:
    """What one notice names: the kind of event (`sandbox` or `previews`), where, and for
    previews which process announced it."""

    kind: str
    workspace_id: str
    sandbox_id: str
    origin: str | None = None


def parse(payload: str) -> Announced | None:
    """The event a notice's payload names, or None for one this version does not know."""
    parts = payload.split(" ")
    if len(parts) == 3 and parts[0] == "sandbox":
        return Announced("sandbox", parts[1], parts[2])
    if len(parts) == 4 and parts[0] == "previews":
        return Announced("previews", parts[1], parts[2], parts[3])
    return None


def previews_event(sandbox_id: str) -> Event:
    return {"type": "previews", "previews": {"sandboxId": sandbox_id}}


def deleted_event(workspace_id: str, sandbox_id: str) -> Event:
    return {
        "type": "sandbox_deleted",
        "sandbox_deleted": {"id": sandbox_id, "workspaceId": workspace_id},
    }


def announce_previews(tx: Tx, events: WorkspaceEvents, workspace_id: str, sandbox_id: str) -> None:
    """In a transaction (`Database.transaction`): tell the other replicas that a sandbox's
    previews changed, once it commits (this replica publishes it itself)."""
    payload = f"previews {workspace_id} {sandbox_id} {events.origin}"
    tx.exec("event_announce", payload=payload)


class EventRelay:
    """Hands other replicas' workspace events to this replica's streams (a `Subscriber` of
    db/notify.py's `Changes`)."""

    def __init__(self, db: Database, events: WorkspaceEvents, queue: int = QUEUE) -> None:
        self.db = db
        self.events = events
        self._send, self._receive = trio.open_memory_channel[Announced](queue)

    def notice(self, notice: Notice) -> None:
        found = parse(notice.payload)
        if found is None:
            log.warning("ignoring a workspace event notice it cannot read: %r", notice.payload)
            return
        if found.kind == "previews" and found.origin == self.events.origin:
            return  # this process sent it, and published it when it did
        try:
            self._send.send_nowait(found)
        except trio.WouldBlock:
            log.warning("workspace events fell behind; ending every event stream")
            self.reset()

    def reset(self) -> None:
        """Notices may have been missed: end every stream, whose browser then reconnects
        and reads a fresh snapshot."""
        self.events.close_all()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The one task that re-reads what the notices name, in their order."""
        task_status.started()
        async for announced in self._receive:
            try:
                await self.relay(announced)
            except AgentServerError as exc:  # e.g. the database is briefly down
                log.warning(
                    "workspace event of sandbox %s lost (%s); ending the workspace's streams",
                    announced.sandbox_id,
                    exc.message,
                )
                self.events.close_workspace(announced.workspace_id)

    async def relay(self, announced: Announced) -> None:
        """Publish what one notice names, as the database has it now."""
        if announced.kind == "previews":
            await trio.lowlevel.checkpoint()
            self.events.publish_nowait(announced.workspace_id, previews_event(announced.sandbox_id))
            return
        row = await self.db.one("sbx_get", Sandbox, id=announced.sandbox_id)
        if row is None:
            event = deleted_event(announced.workspace_id, announced.sandbox_id)
            self.events.publish_nowait(announced.workspace_id, event)
        else:
            self.events.publish_nowait(row.workspace_id, {"type": "sandbox", "sandbox": row})


@asynccontextmanager
async def open_workspace_events(db: Database) -> AsyncIterator[WorkspaceEvents]:
    """This replica's workspace events, fed with every replica's changes while open."""
    events = WorkspaceEvents()
    relay = EventRelay(db, events)
    db.changes.subscribe(WORKSPACE_EVENT, relay)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            yield events
            nursery.cancel_scope.cancel()
    finally:
        db.changes.unsubscribe(WORKSPACE_EVENT, relay)

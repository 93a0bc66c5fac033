"""A sandbox's previews: the ports it serves (from its backend, or what a local agent shares),
which of them are public, and the watcher that tells open dashboards when they change.

The backend knows what listens inside a sandbox it runs (`Backend.listening_ports`; None when
it cannot tell); a local agent's previews are the ports its user shares, which it announced
when its tunnel opened (`Hub.shared_ports`). Ports marked public stay listed even when nothing
listens on them now, so they can be made private again.

The watcher polls only what someone is looking at: the running sandboxes of workspaces with an
open event stream, every few seconds, and publishes `{"type": "previews"}` for a sandbox whose
ports changed; the dashboard then reads the list again through the API (which checks access),
and the proxy forgets what it cached about the sandbox's public ports. With a database, what it
saw is recorded there (migration 0023): when several replicas watch a sandbox, the one whose
write changes the record announces the change to every replica, once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import trio

from agentserver.db.database import Database, Tx
from agentserver.errors import AgentServerError, NotFound
from agentserver.kinds import preview_refusal
from agentserver.models import Sandbox, SandboxStatus, SandboxType
from agentserver.sandboxes.base import Backend, Endpoint
from agentserver.sandboxes.event_relay import announce_previews, previews_event
from agentserver.sandboxes.events import WorkspaceEvents
from agentserver.tunnel import Hub

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class PortMark:
    """Whether a port is public, and who set that last, when (migration 0019)."""

    port: int
    public: bool
    changed_at: datetime | None = None
    changed_by_name: str | None = None


@dataclass(frozen=True, slots=True)
class Previews:
    """What the previews list shows of one sandbox: `available` False where its backend
    cannot reach its ports at all; the ports, each with its public mark if it has one."""

    available: bool
    ports: tuple[PortMark, ...]


async def serving_ports(backend: Backend, hub: Hub, sandbox: Sandbox) -> list[int] | None:
    """The ports a running sandbox serves that may be previewed (its agent's own never), or
    None where its backend cannot tell; none for a sandbox that is not running."""
    if sandbox.status != SandboxStatus.RUNNING:
        await trio.lowlevel.checkpoint()
        return []
    if sandbox.type == SandboxType.LOCAL:
        await trio.lowlevel.checkpoint()
        return list(hub.shared_ports(sandbox.id))
    return await backend_ports(backend, sandbox)


async def backend_ports(backend: Backend, sandbox: Sandbox) -> list[int] | None:
    """What listens in a sandbox the backend runs, less the ports never previewed."""
    found = await backend.listening_ports(sandbox.id)
    if found is None:
        return None
    return sorted({p for p in found if preview_refusal(p, sandbox.endpoint_port) is None})


def previews_available(backend: Backend, sandbox: Sandbox) -> bool:
    """Whether the sandbox's ports can be previewed at all: the backend's seam answers None
    for any port where it cannot reach a sandbox's ports (asked here for the lowest one)."""
    if sandbox.type == SandboxType.LOCAL:
        return True
    if not (sandbox.endpoint_host and sandbox.endpoint_port):
        return True  # not running: say so only once it runs and the backend can answer
    agent = Endpoint(sandbox.endpoint_host, sandbox.endpoint_port)
    probe = 1024 if sandbox.endpoint_port != 1024 else 1025
    return backend.preview_endpoint(sandbox.id, agent, probe) is not None


async def previews_of(db: Database, backend: Backend, hub: Hub, sandbox: Sandbox) -> Previews:
    """The previews list of one sandbox: what it serves, with every port marked public."""
    rows = await db.rows("preview_marks", sandbox_id=sandbox.id)
    marks = {r["port"]: PortMark(**r) for r in rows}
    serving = await serving_ports(backend, hub, sandbox)
    ports = set(serving or ()) | {p for p, mark in marks.items() if mark.public}
    listed = tuple(marks.get(p, PortMark(p, False)) for p in sorted(ports))
    return Previews(previews_available(backend, sandbox), listed)


class WatchedSandboxes(Protocol):
    """What the watcher needs from the lifecycle service."""

    backend: Backend

    async def list(self, workspace_id: str) -> list[Sandbox]: ...


class PreviewWatcher:
    """Publishes a `previews` event when the ports a watched, running sandbox serves change."""

    def __init__(
        self,
        sandboxes: WatchedSandboxes,
        events: WorkspaceEvents,
        interval: float = POLL_SECONDS,
        db: Database | None = None,
    ) -> None:
        self.sandboxes = sandboxes
        self.events = events
        self.interval = interval
        # Where replicas record what they saw (None: this process alone decides).
        self.db = db
        self._known: dict[str, tuple[int, ...] | None] = {}

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self.check()
            except AgentServerError as exc:  # e.g. the database is briefly down
                log.warning("checking previews failed: %s", exc.message)
            await trio.sleep(self.interval)  # a poll period, not a wait for a state

    async def check(self) -> int:
        """Look once at every watched workspace; returns how many events were published."""
        await trio.lowlevel.checkpoint()
        seen: dict[str, tuple[int, ...] | None] = {}
        published = 0
        for workspace_id in self.events.watched():
            for sandbox in await self.sandboxes.list(workspace_id):
                if sandbox.type == SandboxType.LOCAL or sandbox.status != SandboxStatus.RUNNING:
                    continue  # a local agent's ports change only when it (re)connects
                ports = await backend_ports(self.sandboxes.backend, sandbox)
                now = None if ports is None else tuple(ports)
                seen[sandbox.id] = now
                if self._known.get(sandbox.id, ()) != now and await self._claim(sandbox, now):
                    publish_previews_changed(self.events, workspace_id, sandbox.id)
                    published += 1
        self._known = seen  # sandboxes no longer watched or running are forgotten
        return published

    async def _claim(self, sandbox: Sandbox, ports: tuple[int, ...] | None) -> bool:
        """Whether this watcher is the one to publish the change it saw: always without a
        database; with one, when recording it changed the record (and then the other replicas
        are told in the same transaction). A backend that cannot tell (None) records nothing:
        another replica may well tell, and they would overwrite each other forever."""
        db = self.db
        if db is None:
            await trio.lowlevel.checkpoint()
            return True
        if ports is None:
            await trio.lowlevel.checkpoint()
            return False

        def record(tx: Tx) -> bool:
            changed = bool(
                tx.scalar("preview_serving_set", sandbox_id=sandbox.id, ports=list(ports))
            )
            if changed:
                announce_previews(tx, self.events, sandbox.workspace_id, sandbox.id)
            return changed

        try:
            return await db.transaction(record)
        except NotFound:  # deleted since it was listed
            await trio.lowlevel.checkpoint()
            return False


def publish_previews_changed(events: WorkspaceEvents, workspace_id: str, sandbox_id: str) -> None:
    """Tell this replica's streams (the dashboards, the proxy) that a sandbox's previews
    changed; other replicas hear it from `announce_previews`, in the change's transaction."""
    events.publish_nowait(workspace_id, previews_event(sandbox_id))

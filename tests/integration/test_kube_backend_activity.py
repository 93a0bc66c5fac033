"""The lifecycle's side of the Kubernetes backend's shutdownTime: each start tells the backend
the idle timeout that applies, and recorded activity reaches a backend that keeps sandboxes
alive (`KeepsAlive`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import trio

from agentserver.db.database import open_database
from agentserver.db.migrate import apply_migrations
from agentserver.sandboxes.base import Endpoint, KeepsAlive, SandboxSpec
from agentserver.sandboxes.fake import FakeBackend
from agentserver.sandboxes.service import Sandboxes
from tests.conftest import make_settings


@dataclass
class AliveBackend(FakeBackend):
    """A FakeBackend that also hears activity, and keeps the specs it started."""

    specs: list[SandboxSpec] = field(default_factory=list)
    kept_alive: trio.MemorySendChannel[str] | None = None
    created: trio.MemorySendChannel[str] | None = None

    async def create(self, spec: SandboxSpec) -> Endpoint:
        self.specs.append(spec)
        endpoint = await super().create(spec)
        assert self.created is not None
        await self.created.send(spec.id)
        return endpoint

    async def keep_alive(self, sandbox_id: str) -> None:
        assert self.kept_alive is not None
        await self.kept_alive.send(sandbox_id)


@dataclass
class AliveWorld:
    service: Sandboxes
    backend: AliveBackend
    workspace_id: str
    kept: trio.MemoryReceiveChannel[str]
    created: trio.MemoryReceiveChannel[str]


def new_workspace(db_url: str, idle_seconds: int | None) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO workspaces (name, idle_timeout_seconds) VALUES ('w', %s) RETURNING id",
            (idle_seconds,),
        ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
async def alive(db_url: str, tmp_path: Path) -> AsyncIterator[AliveWorld]:
    await trio.to_thread.run_sync(apply_migrations, db_url)
    settings = make_settings(db_url, tmp_path / "data", idle_timeout="30m")
    send, receive = trio.open_memory_channel[str](10)
    made, created = trio.open_memory_channel[str](10)
    async with open_database(db_url) as db, trio.open_nursery() as nursery:
        backend = AliveBackend(kept_alive=send, created=made)
        service = Sandboxes(db, settings, backend, nursery)
        await nursery.start(service.write_activity)
        workspace_id = await trio.to_thread.run_sync(new_workspace, db_url, 600)
        yield AliveWorld(service, backend, workspace_id, receive, created)
        nursery.cancel_scope.cancel()


async def started(alive: AliveWorld, workspace_id: str) -> str:
    sandbox = await alive.service.create(workspace_id, "box", "opencode", None)
    with trio.fail_after(30):
        assert await alive.created.receive() == sandbox.id
    return sandbox.id


async def test_activity_reaches_a_backend_that_keeps_sandboxes_alive(alive: AliveWorld) -> None:
    """Traffic recorded for a sandbox is passed to the backend's keep_alive."""
    assert isinstance(alive.backend, KeepsAlive)
    sandbox_id = await started(alive, alive.workspace_id)
    alive.service.record_activity(sandbox_id)
    with trio.fail_after(30):
        assert await alive.kept.receive() == sandbox_id


async def test_a_start_carries_the_workspaces_idle_timeout(alive: AliveWorld, db_url: str) -> None:
    """The spec of a start holds its workspace's own idle timeout, or the server's."""
    await started(alive, alive.workspace_id)
    assert alive.backend.specs[-1].idle_timeout == 600
    other = await trio.to_thread.run_sync(new_workspace, db_url, None)
    await started(alive, other)
    assert alive.backend.specs[-1].idle_timeout == 1800

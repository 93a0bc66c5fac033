"""The real lifecycle service (sandboxes/service.py) on a real database, over the FakeBackend
(sandboxes/fake.py): the world the lifecycle race tests run in (fixture `lifecycle`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from agentserver.db.database import Database, open_database
from agentserver.db.migrate import apply_migrations
from agentserver.models import Sandbox
from agentserver.sandboxes.events import Subscription
from agentserver.sandboxes.fake import FakeBackend
from agentserver.sandboxes.service import Sandboxes
from tests.conftest import make_settings

# Real time: the database runs in threads, which virtual time would jump past.
WAIT = 30.0


@dataclass
class Lifecycle:
    service: Sandboxes
    backend: FakeBackend
    db: Database
    db_url: str
    workspace_id: str
    events: Subscription
    # Every sandbox event read so far: (sandbox id, status, status reason).
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)

    async def until(self, sandbox_id: str, *statuses: str) -> dict[str, Any]:
        """Read the workspace's events until `sandbox_id` shows one of `statuses`."""
        with trio.fail_after(WAIT):
            async for event in self.events.inbox:
                if event["type"] != "sandbox":
                    continue
                row: Sandbox = event["sandbox"]  # events carry the row; the API renders it
                shown = {"id": row.id, "status": row.status, "statusReason": row.status_reason}
                self.seen.append((shown["id"], shown["status"], shown["statusReason"]))
                if shown["id"] == sandbox_id and shown["status"] in statuses:
                    return dict(shown)
        raise AssertionError("the event stream ended")

    def statuses(self, sandbox_id: str) -> list[str]:
        return [status for sid, status, _ in self.seen if sid == sandbox_id]

    async def running(self, name: str = "box") -> str:
        """A sandbox created through the service and started by the backend."""
        sandbox = await self.service.create(self.workspace_id, name, "opencode", None)
        shown = await self.until(sandbox.id, "running", "failed")
        assert shown["status"] == "running", shown
        return sandbox.id

    async def paused(self, name: str = "box") -> str:
        sandbox_id = await self.running(name)
        await self.service.pause(sandbox_id)
        assert (await self.until(sandbox_id, "paused", "failed"))["status"] == "paused"
        return sandbox_id

    async def row(self, sandbox_id: str) -> Sandbox | None:
        return await self.service.get(sandbox_id)

    async def sql(self, query: str, *params: Any) -> None:
        def run() -> None:
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                conn.execute(query, params)  # type: ignore[arg-type]

        await trio.to_thread.run_sync(run)


def _new_workspace(db_url: str) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("INSERT INTO workspaces (name) VALUES ('w') RETURNING id").fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
async def lifecycle(db_url: str, tmp_path: Path) -> AsyncIterator[Lifecycle]:
    """`Sandboxes` over a FakeBackend, its operations owned by a nursery of this fixture."""
    await trio.to_thread.run_sync(apply_migrations, db_url)
    workspace_id = await trio.to_thread.run_sync(_new_workspace, db_url)
    settings = make_settings(db_url, tmp_path / "data")
    async with open_database(db_url) as db, trio.open_nursery() as nursery:
        backend = FakeBackend()
        service = Sandboxes(db, settings, backend, nursery)
        backend.on_exit = service.on_exit
        with service.events.subscribe(workspace_id) as events:
            yield Lifecycle(service, backend, db, db_url, workspace_id, events)
        nursery.cancel_scope.cancel()
